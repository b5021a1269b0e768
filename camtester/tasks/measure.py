"""The measurement tasks: thin wrappers that claim, measure and hand on the result."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger

from camtester.errors import StoreUnavailable
from camtester.logs import task_context
from camtester.measure import encode_snapshot, run_measurement
from camtester.settings import get_settings
from camtester.restreamers import pick_host, restreamed_uri
from camtester.store.claims import RunClaims
from camtester.store.restreamers import RestreamerStore
from camtester.store.tasks import TaskStore
from camtester.tasks.app import celery_app

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
    task_id: str, index: int, measurement: dict[str, Any]
) -> dict[str, Any] | None:
    """Measure once per task id and index, however often the message arrives."""
    settings = get_settings()
    store = task_store()
    with task_context(task_id, measurement["type"]):
        if store.has_result(task_id, index):
            logger.info("subtask %d already has a result; duplicate dropped", index)
            return None

        claims = RunClaims(store.redis, settings)
        if not claims.acquire(task_id, index, _owner()):
            logger.warning(
                "subtask %d is being measured elsewhere; duplicate dropped", index
            )
            return None

        store.mark_running(task_id, index)
        measurement, restreamer = _through_restreamer(measurement, store)
        result, snapshot = run_measurement(measurement, settings)
        if restreamer and result["payload"] is not None:
            result["payload"]["restreamer"] = restreamer
        return {"result": result, "snapshot": encode_snapshot(snapshot)}


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


def _owner() -> str:
    """This pool slot, as a claim records it: host name, pid and thread."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


_options: dict[str, Any] = {
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
    return _measure(task_id, index, measurement)


@celery_app.task(name="camtester.probe", **_options)
def probe(self: Task, task_id: str, index: int, measurement: dict[str, Any]) -> Any:
    """Picture and sound of a live sample: black, freeze, silence, outliers."""
    return _measure(task_id, index, measurement)


@celery_app.task(name="camtester.check", **_options)
def check(self: Task, task_id: str, index: int, measurement: dict[str, Any]) -> Any:
    """Transport and decoding of a live sample: RTP loss, decoder errors."""
    return _measure(task_id, index, measurement)
