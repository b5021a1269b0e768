"""Prometheus figures. Labels carry types, regions, kinds and outcomes only: never a
target, so no credential and no full URI can reach a scrape.

The API counts accepted tasks; workers count results, deviations and run times and
serve them on `CAMTESTER_WORKER_METRICS_PORT`. A process family that shares its
figures (gunicorn's workers, a prefork pool) runs in prometheus-client's
multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` names a directory, emptied by the
launcher before the first process starts, and a scrape adds up every process.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

#: The variable prometheus-client reads (once, at import) to switch modes.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The shared directory of multiprocess mode, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


# A named but missing directory would make the first count raise, deep inside
# a request or a task; creating it is harmless, emptying it is the launcher's.
if multiprocess_dir():
    os.makedirs(str(multiprocess_dir()), exist_ok=True)


TASKS_ACCEPTED = Counter(
    "camtester_tasks_accepted",
    "Tasks accepted by the API, by type and region.",
    ["type", "geo_location"],
)
RESULTS = Counter(
    "camtester_results",
    "Measurement results stored, by type and outcome (ok or the error code).",
    ["type", "outcome"],
)
DEVIATIONS = Counter(
    "camtester_deviations",
    "Deviation records stored, by kind and severity.",
    ["kind", "severity"],
)
TASK_RUN_SECONDS = Histogram(
    "camtester_task_run_seconds",
    "Wall time of one measurement, by type.",
    ["type"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300),
)


def scrape_registry() -> CollectorRegistry:
    """The registry a scrape reads: every process's files, or this process."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def scrape() -> bytes:
    """The current figures in the Prometheus text format."""
    return generate_latest(scrape_registry())


def prepare_multiprocess_dir(path: str | Path) -> Path:
    """Empty (or create) `path` for a new run; call before any process counts.

    Files left by an earlier run would add its totals to this one, and a reused
    pid would even continue another process's counts.
    """
    directory = Path(path)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def serve(port: int, address: str) -> None:
    """Serve the scrape on http://address:port/ from a daemon thread."""
    start_http_server(port, addr=address, registry=scrape_registry())
    mode = "multiprocess" if multiprocess_dir() else "single-process"
    logger.info("Prometheus figures served on %s:%d (%s mode)", address, port, mode)
