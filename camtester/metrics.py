"""Prometheus figures. Labels carry types, regions, kinds and outcomes only: never a
target, so no credential and no full URI can reach a scrape."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
