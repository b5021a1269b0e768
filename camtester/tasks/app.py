"""The Celery application; `celery -A camtester worker -Q <geo>.<type>` finds it.

Worker signals here: camtester's log format instead of Celery's, the task id and
type on Celery's own lines about a task, and the Prometheus figures on
`CAMTESTER_WORKER_METRICS_PORT`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.app import trace
from celery.signals import (
    celeryd_init,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_ready,
)

from camtester import logs
from camtester.settings import get_settings

logger = logging.getLogger(__name__)

celery_app = Celery(
    "camtester",
    include=[
        "camtester.tasks.measure",
        "camtester.tasks.aggregate",
        "camtester.tasks.ping_chunk",
    ],
)
celery_app.config_from_object("celeryconfig")

# Celery's "succeeded" line prints the task's return value, and a measurement
# returns its whole result with the base64 snapshot: thousands of characters a
# probe. The result is logged by camtester in a line of its own instead.
trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"


@setup_logging.connect
def _use_camtester_logging(**_: object) -> None:
    # Connecting this signal stops Celery from installing its own handlers, so
    # worker lines carry the task id and type like every other camtester line.
    settings = get_settings()
    logs.configure_logging(settings.log_format, settings.log_level)


@celeryd_init.connect
def _log_early(**_: object) -> None:
    # The worker warns (e.g. about running as root) before it sets up logging;
    # configured here already, that warning is a line in our format too.
    _use_camtester_logging()


@task_prerun.connect
def _enter_task_logging(
    task_id: str | None = None,
    task: Any = None,
    args: Any = None,
    **_: object,
) -> None:
    # From here to task_postrun, on the thread that runs the task, every line
    # (Celery's "succeeded" and "retry" among them) names the camtester task.
    name = getattr(task, "name", "") or ""
    logs.enter_celery_task(task_id or "-", logs.identity_from_args(name, args))


@task_postrun.connect
def _leave_task_logging(**_: object) -> None:
    logs.leave_celery_task()


@worker_ready.connect
def _serve_worker_metrics(sender: Any = None, **_: object) -> None:
    # worker_ready fires in the main process once the pool runs; a prefork
    # pool's children count into the multiprocess directory, which this
    # process's scrape reads, so one port serves the whole worker.
    settings = get_settings()
    if not settings.worker_metrics_port:
        return

    from camtester import metrics

    pool = getattr(sender, "pool", None)
    forks = type(pool).__module__.endswith(".prefork")
    if forks and metrics.multiprocess_dir() is None:
        logger.warning(
            "prefork pool without %s: the scrape shows only the main process, "
            "not the tasks its children run",
            metrics.MULTIPROC_ENV,
        )
    try:
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_address)
    except OSError as exc:
        # The worker still measures; only its figures are missing.
        logger.error(
            "cannot serve Prometheus figures on %s:%d: %s",
            settings.worker_metrics_address,
            settings.worker_metrics_port,
            exc,
        )
