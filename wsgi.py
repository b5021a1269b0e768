"""The WSGI entry point: `gunicorn wsgi:app`."""

from camtester.api import create_app
from camtester.logs import configure_logging
from camtester.settings import get_settings

configure_logging(get_settings().log_format, get_settings().log_level)
app = create_app()
