"""camtester: tests fleets of IP cameras over ICMP and ffmpeg."""

from camtester.tasks.app import celery_app

# `celery -A camtester` looks for an attribute named `celery` or `app`.
celery = celery_app

__all__ = ["celery", "celery_app"]
