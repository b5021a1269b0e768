"""The measurement tasks: thin wrappers that claim, measure and hand on the result.

Every way a delivery can end hands the aggregation task a result or nothing:
a measurement (ok or not), a failure when the task ran past its soft time limit
or broke, `None` for a duplicate. A hard time limit kills the pool process, so
that failure is sent from the worker's main process in `on_failure`.
"""

from __future__ import annotations

import traceback
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.utils.log import get_task_logger

from camtester.errors import (
    MeasurementError,
    MeasurementInternal,
    StoreUnavailable,
    TargetTimeout,
)
from camtester.logs import task_context
from camtester.measure import encode_snapshot, failed_result, run_measurement
from camtester.restreamers import pick_host, restreamed_uri
from camtester.settings import Settings, get_settings
from camtester.store.claims import MAX_DELIVERIES, RunClaims, current_owner
from camtester.store.restreamers import RestreamerStore
from camtester.store.tasks import TaskStore
from camtester.tasks.app import celery_app
from camtester.uris import mask_uri

logger = get_task_logger(__name__)

_stores: dict[str, TaskStore] = {}


def task_store() -> TaskStore:
    """One store client per worker process, made on first use."""
    settings = get_settings()
    store = _stores.get(settings.redis_url)
    if store is None:
        store = _stores[settings.redis_url] = TaskStore(settings)
    return store


def _measure(
    task_id: str, index: int, measurement: dict[str, Any], attempt: int
) -> dict[str, Any] | None:
    """Measure once per task id and index, however often the message arrives."""
    settings = get_settings()
    store = task_store()
    with task_context(task_id, measurement["type"]):
        claims = RunClaims(store.redis, settings)
        if not first_delivery(store, claims, task_id, index, attempt):
            return None

        deliveries = claims.count_delivery(task_id, index, attempt)
        if deliveries > MAX_DELIVERIES:
            logger.error(
                "subtask %d lost its worker %d times; not measured again",
                index,
                deliveries - 1,
            )
            error = MeasurementInternal(
                f"the worker was lost {deliveries - 1} times while measuring"
            )
            return _failure_envelope(measurement, error)

        if not store.mark_running(task_id, index):
            logger.info("task ended or was withdrawn; subtask %d dropped", index)
            return None
        return _run(measurement, store, settings)


def first_delivery(
    store: TaskStore, claims: RunClaims, task_id: str, index: int, attempt: int
) -> bool:
    """Whether this delivery is the one to measure; log why not."""
    if store.has_result(task_id, index):
        logger.info("subtask %d already has a result; duplicate dropped", index)
        return False
    if not claims.acquire(task_id, index, current_owner(), attempt):
        logger.warning(
            "subtask %d is being measured elsewhere; duplicate dropped", index
        )
        return False
    return True


def _run(
    measurement: dict[str, Any], store: TaskStore, settings: Settings
) -> dict[str, Any]:
    """Measure and wrap the result; any failure becomes a stored result too."""
    try:
        measurement, restreamer = _through_restreamer(measurement, store)
        result, snapshot = run_measurement(measurement, settings)
    except SoftTimeLimitExceeded:
        # ffmpeg has been killed by the runner's `finally` on the way up.
        logger.warning("measurement ran past the soft time limit; stopped")
        late = TargetTimeout("the measurement ran past the task's time limit")
        return _failure_envelope(measurement, late)
    except StoreUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure must become a result
        # A bug or a worker that cannot measure (SetupError): the client gets a
        # failed result instead of a task that stays `running` until it expires.
        # The traceback goes through mask_uri: its messages may quote the URI.
        logger.error("measurement broke:\n%s", mask_uri(traceback.format_exc()))
        broke = MeasurementInternal(
            f"the worker could not measure: {type(exc).__name__}: {exc}"
        )
        return _failure_envelope(measurement, broke)

    # The operator needs to know which restreamer answered, or failed to.
    if restreamer and result["payload"] is not None:
        result["payload"]["restreamer"] = restreamer
    elif restreamer and result["error"] is not None:
        result["error"]["restreamer"] = restreamer
    return {"result": result, "snapshot": encode_snapshot(snapshot)}


def _failure_envelope(
    measurement: dict[str, Any], error: MeasurementError
) -> dict[str, Any]:
    return {"result": failed_result(measurement["type"], error), "snapshot": None}


def _through_restreamer(
    measurement: dict[str, Any], store: TaskStore
) -> tuple[dict[str, Any], str | None]:
    """Read a stream through its region's restreamer, when the region has any."""
    geo = measurement.get("geo_location")
    if measurement["type"] == "ping" or not geo:
        return measurement, None

    hosts = RestreamerStore(store.settings, store.redis).hosts(geo)
    host = pick_host(hosts, measurement["target"])
    if host is None:
        return measurement, None
    logger.info("reading the stream through restreamer %s", host)
    target = restreamed_uri(host, measurement["target"])
    return {**measurement, "target": target}, host


class MeasureTask(Task):
    """Base of the measurement tasks: a delivery that fails still yields a result.

    Celery calls `on_failure` in the pool process for an exception the task did
    not handle (a soft time limit outside the measurement, a store that stayed
    down through every retry), and in the worker's main process when the hard
    time limit killed the pool process. No aggregation comes then, so a failed
    result is sent to it here for every subtask that has none stored.
    """

    def on_failure(
        self,
        exc: Exception,
        celery_id: str,
        args: Any,
        kwargs: Any,
        einfo: ExceptionInfo,
    ) -> None:
        error = _failure_for(exc)
        for task_id, index, measurement in _subtasks_of(args):
            with task_context(task_id, measurement["type"]):
                if _has_result(task_id, index):
                    continue
                logger.error("subtask %d failed: %s", index, type(exc).__name__)
                send_failure(task_id, index, measurement, error)


def _subtasks_of(args: Any) -> list[tuple[str, int, dict[str, Any]]]:
    """(task id, index, measurement) of a measurement's or a ping chunk's args."""
    if len(args) == 3:
        task_id, index, measurement = args
        return [(task_id, index, measurement)]
    if len(args) == 1 and isinstance(args[0], list):
        # camtester.ping_chunk: [(task id, plain ping task), ...]
        return [(task_id, 0, task) for task_id, task in args[0]]
    return []


def _failure_for(exc: Exception) -> MeasurementError:
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        return TargetTimeout("the measurement ran past the task's time limit")
    return MeasurementInternal(f"the worker could not measure: {type(exc).__name__}")


def _has_result(task_id: str, index: int) -> bool:
    try:
        return task_store().has_result(task_id, index)
    except StoreUnavailable:
        # The aggregation retries until the store answers again.
        return False


def send_failure(
    task_id: str, index: int, measurement: dict[str, Any], error: MeasurementError
) -> None:
    """Have the aggregation store a failed result for subtask `index`."""
    # A task of this measurement alone: the aggregation marks it failed, which
    # also stops a complex task at this subtask.
    alone = {
        key: measurement[key] for key in ("type", "geo_location", "target", "options")
    }
    celery_app.send_task(
        "camtester.aggregate",
        args=(_failure_envelope(measurement, error), task_id, index, alone),
        queue="results",
        argsrepr=repr((task_id, index, measurement["type"], alone["geo_location"])),
    )


_options: dict[str, Any] = {
    "base": MeasureTask,
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (StoreUnavailable,),
    "retry_backoff": True,
    "max_retries": 5,
}


@celery_app.task(name="camtester.ping", **_options)
def ping(self: Task, task_id: str, index: int, measurement: dict[str, Any]) -> Any:
    """ICMP echo to a host: loss, latency, jitter."""
    return _measure(task_id, index, measurement, self.request.retries)


@celery_app.task(name="camtester.probe", **_options)
def probe(self: Task, task_id: str, index: int, measurement: dict[str, Any]) -> Any:
    """Picture and sound of a live sample: black, freeze, silence, outliers."""
    return _measure(task_id, index, measurement, self.request.retries)


@celery_app.task(name="camtester.check", **_options)
def check(self: Task, task_id: str, index: int, measurement: dict[str, Any]) -> Any:
    """Transport and decoding of a live sample: RTP loss, decoder errors."""
    return _measure(task_id, index, measurement, self.request.retries)
