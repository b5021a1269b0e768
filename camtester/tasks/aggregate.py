"""The aggregation task: stores a result with its deviations, and moves a
complex task on to its next subtask or stops it."""

from __future__ import annotations

import base64
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger

from camtester import metrics
from camtester.errors import StoreUnavailable
from camtester.logs import task_context
from camtester.results import utc_now_iso
from camtester.settings import get_settings
from camtester.store.deviations import DeviationStore, record_id
from camtester.store.keys import TaskStatus
from camtester.tasks.app import celery_app
from camtester.tasks.measure import task_store
from camtester.tasks.publish import publish
from camtester.uris import mask_uri

logger = get_task_logger(__name__)

_deviation_stores: dict[str, DeviationStore] = {}


def deviation_store() -> DeviationStore:
    """One deviation store per worker process, sharing the task store's client."""
    settings = get_settings()
    store = _deviation_stores.get(settings.redis_url)
    if store is None:
        store = DeviationStore(settings, task_store().redis)
        _deviation_stores[settings.redis_url] = store
    return store


@celery_app.task(
    name="camtester.aggregate",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(StoreUnavailable,),
    retry_backoff=True,
    max_retries=10,
)
def aggregate(
    self: Task,
    envelope: dict[str, Any] | None,
    task_id: str,
    index: int,
    task: dict[str, Any],
) -> None:
    """Store subtask `index`'s result; for a complex task, send the next one."""
    with task_context(task_id, task["type"]):
        if envelope is None:
            logger.info("no new result for subtask %d (duplicate delivery)", index)
            return

        snapshot = envelope.get("snapshot")
        snapshot_bytes = base64.b64decode(snapshot) if snapshot else None
        next_index = store_result(
            task_id, index, task, envelope["result"], snapshot_bytes
        )

        if next_index is not None:
            publish(get_settings(), [(task_id, next_index, task)])


def store_result(
    task_id: str,
    index: int,
    task: dict[str, Any],
    result: dict[str, Any],
    snapshot: bytes | None = None,
) -> int | None:
    """Store a result with its deviation records; the next subtask to send, if any."""
    status, next_index = complete_result(task_id, index, task, result)
    task_store().save_result(task_id, index, result, status=status, snapshot=snapshot)
    deviation_store().add(result["deviations"])
    log_stored(index, result, status)
    return next_index


def complete_result(
    task_id: str, index: int, task: dict[str, Any], result: dict[str, Any]
) -> tuple[TaskStatus, int | None]:
    """Turn the result's deviations into records; the task's status and next step."""
    measurement = _measurement_at(task, index)
    result["deviations"] = deviation_records(task_id, index, task, measurement, result)
    _count(task, measurement, result)
    return _next_step(task, index, result)


def log_stored(index: int, result: dict[str, Any], status: TaskStatus) -> None:
    """One line per stored result, inside the task's logging context."""
    logger.info(
        "stored result %d: ok=%s, %d deviations, task %s",
        index,
        result["ok"],
        len(result["deviations"]),
        status.value,
    )


def _count(
    task: dict[str, Any], measurement: dict[str, Any], result: dict[str, Any]
) -> None:
    outcome = "ok" if result["ok"] else result["error"]["code"]
    metrics.RESULTS.labels(measurement["type"], outcome).inc()
    for deviation in result["deviations"]:
        metrics.DEVIATIONS.labels(deviation["kind"], deviation["severity"]).inc()


def _measurement_at(task: dict[str, Any], index: int) -> dict[str, Any]:
    if task["type"] == "complex":
        subtask: dict[str, Any] = task["subtasks"][index]
        return subtask
    return task


def deviation_records(
    task_id: str,
    index: int,
    task: dict[str, Any],
    measurement: dict[str, Any],
    result: dict[str, Any],
) -> list[dict[str, Any]]:
    """Complete the measurement's deviations into stored records."""
    target = mask_uri(measurement["target"])
    detected_at = result.get("time") or utc_now_iso()
    records = []
    for position, deviation in enumerate(result.get("deviations") or []):
        record = {
            "id": record_id(task_id, index, position, deviation["kind"]),
            "task_id": task_id,
            "target": target,
            "geo_location": task["geo_location"],
            **deviation,
            "detected_at": detected_at,
        }
        records.append(record)
    return records


def _next_step(
    task: dict[str, Any], index: int, result: dict[str, Any]
) -> tuple[TaskStatus, int | None]:
    """The task's status after this result, and the next subtask to send."""
    more = task["type"] == "complex" and index + 1 < len(task["subtasks"])
    if more and result["ok"]:
        return TaskStatus.RUNNING, index + 1
    return (TaskStatus.DONE if result["ok"] else TaskStatus.FAILED), None
