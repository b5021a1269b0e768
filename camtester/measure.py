"""Run one normalised measurement and turn it into a result document.

Shared by the Celery tasks and the command line, so that both give the same
answer for the same camera. Nothing here knows about Celery, Flask or Redis.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from camtester import metrics
from camtester.analysis.deviations import failure_deviations, find_deviations
from camtester.analysis.thresholds import merge_thresholds
from camtester.errors import (
    MeasurementError,
    MeasurementInternal,
    SetupError,
    TargetTimeout,
    WorkerCannotMeasure,
)
from camtester.results import failure, success
from camtester.settings import Settings
from camtester.uris import mask_uri

logger = logging.getLogger(__name__)

Outcome = dict[str, Any] | MeasurementError


def run_measurement(
    measurement: dict[str, Any], settings: Settings
) -> tuple[dict[str, Any], bytes | None]:
    """Measure; return the result document and a JPEG snapshot for probes."""
    started = time.monotonic()
    snapshot: bytes | None = None

    outcome: Outcome
    try:
        outcome, snapshot = _dispatch(measurement, settings)
    except MeasurementError as exc:
        outcome = exc
    except SetupError as exc:
        outcome = setup_failure(exc)

    elapsed = time.monotonic() - started
    return result_of(measurement, outcome, settings, elapsed), snapshot


def setup_failure(exc: SetupError) -> MeasurementError:
    """A worker that cannot measure at all: `internal`, and no camera is blamed."""
    return WorkerCannotMeasure(f"worker setup error: {exc}")


def result_of(
    measurement: dict[str, Any],
    outcome: Outcome,
    settings: Settings,
    elapsed_s: float,
) -> dict[str, Any]:
    """The result document of one measurement's payload or failure."""
    task_type = measurement["type"]
    target = mask_uri(measurement["target"])
    metrics.TASK_RUN_SECONDS.labels(task_type).observe(elapsed_s)

    if isinstance(outcome, dict) and outcome.get("packets_received") == 0:
        outcome = _no_reply(measurement["target"], outcome)

    if isinstance(outcome, MeasurementError):
        result = failed_result(task_type, outcome, getattr(outcome, "payload", None))
        logger.warning(
            "%s of %s failed after %.1fs: %s %s",
            task_type,
            target,
            elapsed_s,
            outcome.code,
            outcome.message,
        )
        return result

    options = measurement["options"]
    thresholds = merge_thresholds(settings.thresholds, options.get("thresholds"))
    deviations = find_deviations(
        task_type,
        outcome,
        thresholds=thresholds,
        requested_duration_s=options.get("duration"),
        expected_profile=options.get("expected"),
    )
    logger.info(
        "%s of %s measured in %.1fs with %d deviations",
        task_type,
        target,
        elapsed_s,
        len(deviations),
    )
    return success(outcome, deviations)


def failed_result(
    task_type: str, error: MeasurementError, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The result of a measurement that could not be made, its message masked.

    It carries its type's failure deviation, unless the worker itself could not
    measure: then no camera is to blame.
    """
    error.message = mask_uri(error.message)
    deviations = []
    if not isinstance(error, WorkerCannotMeasure):
        deviations = failure_deviations(task_type, error.code)
    return failure(error, deviations, payload)


def _dispatch(
    measurement: dict[str, Any], settings: Settings
) -> tuple[dict[str, Any], bytes | None]:
    # Imported here so that a ping worker never loads the ffmpeg modules and
    # the reverse.
    task_type = measurement["type"]
    target = measurement["target"]
    options = measurement["options"]

    if task_type == "ping":
        from camtester.network.ping import ping_host

        payload = ping_host(
            target,
            count=options["count"],
            interval_s=options["interval"],
            timeout_s=options["timeout"],
        )
        return payload, None

    if task_type == "probe":
        from camtester.probes.probe import probe_stream

        outcome = probe_stream(
            target,
            duration_s=options["duration"],
            transport=options["transport"],
            settings=settings,
        )
        return outcome.payload, outcome.snapshot_jpeg

    if task_type == "check":
        from camtester.probes.check import check_stream

        payload = check_stream(
            target,
            duration_s=options["duration"],
            transport=options["transport"],
            settings=settings,
        )
        return payload, None

    raise MeasurementInternal(f"unknown measurement type {task_type!r}")


class _Unreachable(TargetTimeout):
    """No echo reply came back at all: the host cannot be measured."""

    def __init__(self, message: str, payload: dict[str, Any]) -> None:
        super().__init__(message)
        self.payload = payload


def _no_reply(target: str, payload: dict[str, Any]) -> _Unreachable:
    sent = payload["packets_sent"]
    return _Unreachable(f"no echo reply from {target} to {sent} requests", payload)


def encode_snapshot(snapshot: bytes | None) -> str | None:
    """Snapshots travel in Celery's JSON messages as base64."""
    return base64.b64encode(snapshot).decode("ascii") if snapshot else None
