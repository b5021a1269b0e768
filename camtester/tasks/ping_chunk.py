"""Plain ping tasks of one batch, pinged together and stored without a chain.

A ping costs the pipeline more than the ping itself: a message, a claim, an
aggregation message and its own store writes, about 9 ms of CPU each, so that
1,000 pings of one second took 6 to 8 s on two cores. Tasks with the same queue
and options therefore travel in chunks: one message, one `ping_many` call on the
worker's shared ICMP socket, and each result stored right here. Every task still
has its own claim, delivery count, result, status and deviation records, so a
chunk delivered twice measures nothing twice.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger

from camtester.errors import MeasurementInternal, SetupError, StoreUnavailable
from camtester.logs import task_context
from camtester.measure import Outcome, result_of, setup_failure
from camtester.network.ping import ping_many, validate_host
from camtester.results import failure
from camtester.settings import get_settings
from camtester.store.claims import MAX_DELIVERIES, RunClaims
from camtester.tasks.aggregate import store_result
from camtester.tasks.app import celery_app
from camtester.tasks.measure import first_delivery, task_store

logger = get_task_logger(__name__)


@celery_app.task(
    name="camtester.ping_chunk",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(StoreUnavailable,),
    retry_backoff=True,
    max_retries=5,
)
def ping_chunk(self: Task, items: list[tuple[str, dict[str, Any]]]) -> None:
    """Ping every (task id, ping task) of the chunk at once and store each result."""
    attempt = int(self.request.retries or 0)
    todo = [
        (task_id, task) for task_id, task in items if _claim(task_id, task, attempt)
    ]
    if not todo:
        return
    logger.info("pinging a chunk of %d hosts", len(todo))

    started = time.monotonic()
    outcomes = _ping_all([task for _, task in todo])
    elapsed = time.monotonic() - started

    settings = get_settings()
    for (task_id, task), outcome in zip(todo, outcomes, strict=True):
        with task_context(task_id, "ping"):
            store_result(task_id, 0, task, result_of(task, outcome, settings, elapsed))


def _claim(task_id: str, task: dict[str, Any], attempt: int) -> bool:
    """Whether this delivery measures the task; a lost-too-often one fails here."""
    settings = get_settings()
    store = task_store()
    with task_context(task_id, "ping"):
        claims = RunClaims(store.redis, settings)
        if not first_delivery(store, claims, task_id, 0, attempt):
            return False

        deliveries = claims.count_delivery(task_id, 0, attempt)
        if deliveries > MAX_DELIVERIES:
            logger.error("lost its worker %d times; not measured again", deliveries - 1)
            error = MeasurementInternal(
                f"the worker was lost {deliveries - 1} times while measuring"
            )
            store_result(task_id, 0, task, failure(error, []))
            return False
        return store.mark_running(task_id, 0)


def _ping_all(tasks: list[dict[str, Any]]) -> list[Outcome]:
    """Each task's payload or error, from one multiplexed run over all hosts."""
    options = tasks[0]["options"]
    hosts = [task["target"] for task in tasks]
    try:
        by_host = ping_many(
            hosts,
            count=options["count"],
            interval_s=options["interval"],
            timeout_s=options["timeout"],
        )
    except SetupError as exc:
        return [setup_failure(exc) for _ in tasks]
    return [by_host[validate_host(host)] for host in hosts]
