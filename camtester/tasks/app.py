"""The Celery application; `celery -A camtester worker -Q <geo>.<type>` finds it."""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging

from camtester.logs import configure_logging
from camtester.settings import get_settings

celery_app = Celery(
    "camtester", include=["camtester.tasks.measure", "camtester.tasks.aggregate"]
)
celery_app.config_from_object("celeryconfig")


@setup_logging.connect
def _use_camtester_logging(**_: object) -> None:
    # Connecting this signal stops Celery from installing its own handlers, so
    # worker lines carry the task id and type like every other camtester line.
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
