"""Every Redis key camtester writes, in one place.

A task's keys share the hash tag `{<task id>}`, so that in a Redis Cluster a task,
its results and its snapshot live in one slot and can be written in one pipeline.
"""

from __future__ import annotations

import enum

PREFIX = "camtester"


class TaskStatus(enum.StrEnum):
    """Where a task is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def task_key(task_id: str) -> str:
    """JSON document of a task: type, region, payload, status, times."""
    return f"{PREFIX}:task:{{{task_id}}}"


def results_key(task_id: str) -> str:
    """Hash of subtask index -> result JSON; a hash so a redelivery overwrites."""
    return f"{PREFIX}:task:{{{task_id}}}:results"


def snapshot_key(task_id: str) -> str:
    """JPEG bytes of the probe's mid-sample picture."""
    return f"{PREFIX}:task:{{{task_id}}}:snapshot"


def run_claim_key(task_id: str, index: int) -> str:
    """Who is measuring subtask `index` of a task right now (set with NX)."""
    return f"{PREFIX}:task:{{{task_id}}}:run:{index}"


def deviation_key(record_id: str) -> str:
    """JSON body of one deviation record."""
    return f"{PREFIX}:deviation:{record_id}"


def deviation_index_key(dimension: str, value: str) -> str:
    """Sorted set of deviation record ids scored by detection time (ms).

    `dimension` is `all`, `target`, `kind` or `geo`.
    """
    return f"{PREFIX}:deviations:{dimension}:{value}"


def restreamers_key(geo_location: str) -> str:
    """Set of restreamer hosts registered for a region."""
    return f"{PREFIX}:restreamers:{geo_location}"


RESTREAMER_REGIONS_KEY = f"{PREFIX}:restreamers"
