"""Flower's configuration file (`--conf`; the image puts it where Flower looks).

Flower runs this file while it reads its options: camtester's log set-up here
makes Flower's own lines follow CAMTESTER_LOG_FORMAT, JSON included, because
Flower adds its own handler only to a root logger that has none.
"""

from __future__ import annotations

from camtester.logs import configure_logging
from camtester.settings import get_settings

configure_logging(get_settings().log_format, get_settings().log_level)
