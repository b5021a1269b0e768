"""Plain ping tasks of one batch, pinged together and stored without a chain.

A ping costs the pipeline more than the ping itself: a message, a claim, an
aggregation message and its own store writes, about 9 ms of CPU each, so that
1,000 pings of one second took 6 to 8 s on two cores. Tasks with the same queue
and options therefore travel in chunks: one message, one `ping_many` call on the
worker's shared ICMP socket, claims and results written in pipelines, and no
aggregation message. Every task still has its own claim, delivery count, result,
status and deviation records, so a chunk delivered twice measures nothing twice.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger

from camtester.errors import MeasurementInternal, SetupError, StoreUnavailable
from camtester.logs import task_context
from camtester.measure import Outcome, failed_result, result_of, setup_failure
from camtester.network.ping import ping_many, validate_host
from camtester.settings import get_settings
from camtester.store.claims import MAX_DELIVERIES, RunClaims, current_owner
from camtester.tasks.aggregate import complete_result, deviation_store, log_stored
from camtester.tasks.app import celery_app
from camtester.tasks.measure import MeasureTask, first_delivery, task_store

logger = get_task_logger(__name__)

Item = tuple[str, dict[str, Any]]


@celery_app.task(
    name="camtester.ping_chunk",
    base=MeasureTask,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(StoreUnavailable,),
    retry_backoff=True,
    max_retries=5,
)
def ping_chunk(self: Task, items: list[Item]) -> None:
    """Ping every (task id, ping task) of the chunk at once and store each result."""
    attempt = int(self.request.retries or 0)
    todo, lost = _claim_all(items, attempt)
    settings = get_settings()
    finished = [(i, task, failed_result("ping", error)) for i, task, error in lost]

    if todo:
        logger.info("pinging a chunk of %d hosts", len(todo))
        started = time.monotonic()
        outcomes = _ping_all([task for _, task in todo])
        elapsed = time.monotonic() - started
        for (task_id, task), outcome in zip(todo, outcomes, strict=True):
            with task_context(task_id, "ping"):
                result = result_of(task, outcome, settings, elapsed)
            finished.append((task_id, task, result))

    _store_all(finished)


def _claim_all(
    items: list[Item], attempt: int
) -> tuple[list[Item], list[tuple[str, dict[str, Any], MeasurementInternal]]]:
    """The tasks this delivery measures, and those lost too often to try again."""
    store = task_store()
    claims = RunClaims(store.redis, get_settings())
    ids = [task_id for task_id, _ in items]

    stored = store.results_exist(ids, 0)
    fresh = [item for item, done in zip(items, stored, strict=True) if not done]
    won = claims.acquire_unclaimed([i for i, _ in fresh], 0, current_owner(), attempt)
    claimed = [item for item, ok in zip(fresh, won, strict=True) if ok]
    # A claim that exists may belong to a dead worker: decided one by one.
    for task_id, task in (item for item, ok in zip(fresh, won, strict=True) if not ok):
        with task_context(task_id, "ping"):
            if first_delivery(store, claims, task_id, 0, attempt):
                claimed.append((task_id, task))

    deliveries = claims.count_deliveries([i for i, _ in claimed], 0, attempt)
    lost = []
    retry = []
    for (task_id, task), count in zip(claimed, deliveries, strict=True):
        if count > MAX_DELIVERIES:
            with task_context(task_id, "ping"):
                logger.error("lost its worker %d times; not measured again", count - 1)
            error = MeasurementInternal(
                f"the worker was lost {count - 1} times while measuring"
            )
            lost.append((task_id, task, error))
        else:
            retry.append((task_id, task))

    running = store.mark_running_many([i for i, _ in retry], 0)
    return [item for item, ok in zip(retry, running, strict=True) if ok], lost


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


def _store_all(finished: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
    """Every result and deviation record of the chunk in two pipelined writes."""
    entries = []
    records = []
    for task_id, task, result in finished:
        status, _ = complete_result(task_id, 0, task, result)
        entries.append((task_id, 0, result, status))
        records.extend(result["deviations"])

    task_store().save_results(entries)
    deviation_store().add(records)
    for task_id, _, result, status in entries:
        with task_context(task_id, "ping"):
            log_stored(0, result, status)
