"""Claims that make one measurement run once, even when its message comes twice.

A claim is a key set with NX for as long as a task may live (its hard time limit).
Its value names the attempt (Celery's retry number) and the pool slot: host, pid,
the process's start time and the thread. A message redelivered because its worker
died finds the claim of a dead process: on the same host /proc tells, and the
claim is taken over; from another host the claim expires before the broker's
visibility timeout hands the message on. A retry (the store did not answer) finds
the claim of an earlier attempt, which has ended, and takes it over too.

Deliveries are counted too, so that a measurement that kills its worker every
time (the OOM killer, a crashing decoder) is given up after `MAX_DELIVERIES`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from typing import Any

from camtester.settings import Settings, SettingsError
from camtester.store import keys
from camtester.store.connection import store_errors

logger = logging.getLogger(__name__)

#: Seconds a task may take beyond its sample and its connect timeouts: ffmpeg
#: start-up and teardown, a snapshot, store and broker round trips.
TASK_OVERHEAD_S = 15.0
#: Seconds between the soft time limit (the task stops measuring and stores a
#: timeout) and the hard one (the pool process is killed).
HARD_LIMIT_GRACE_S = 10.0
#: Deliveries of one measurement that may start; the next one stores a failure.
MAX_DELIVERIES = 3


def soft_time_limit_s(settings: Settings) -> float:
    """The longest a measurement the API accepts may run, with its set-up.

    A probe may wait for the connect timeout up to four times (stream probe,
    sample, snapshot, teardown); a ping is held to the sample length by spec.py.
    """
    return (
        settings.max_sample_duration_s
        + 4 * settings.connect_timeout_s
        + TASK_OVERHEAD_S
    )


def hard_time_limit_s(settings: Settings) -> float:
    """After this long the pool process running a task is killed."""
    return soft_time_limit_s(settings) + HARD_LIMIT_GRACE_S


def visibility_timeout_s(settings: Settings) -> int:
    """The broker's visibility timeout: as set, or twice the hard time limit.

    NOTE: the Redis transport hands an unacknowledged message to another worker
    once the visibility timeout passes. It must outlast the longest task the API
    allows, or a slow task is delivered again while it still runs.
    """
    longest = math.ceil(hard_time_limit_s(settings))
    if settings.visibility_timeout_s == 0:
        return 2 * longest
    if settings.visibility_timeout_s <= longest:
        raise SettingsError(
            f"CAMTESTER_VISIBILITY_TIMEOUT_S={settings.visibility_timeout_s} must be "
            f"longer than the longest task, {longest} s "
            "(CAMTESTER_MAX_SAMPLE_DURATION_S and CAMTESTER_CONNECT_TIMEOUT_S)"
        )
    return settings.visibility_timeout_s


def deliveries_key(task_id: str, index: int, attempt: int) -> str:
    """How many deliveries of one attempt at subtask `index` started measuring."""
    return f"{keys.run_claim_key(task_id, index)}:deliveries:{attempt}"


_TAKE_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


class RunClaims:
    """Acquire the right to measure subtask `index` of a task."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self.ttl_s = math.ceil(hard_time_limit_s(settings))
        self._take_over = client.register_script(_TAKE_OVER)

    def acquire(self, task_id: str, index: int, owner: str, attempt: int = 0) -> bool:
        """True if this slot may measure; False if a live slot already does."""
        key = keys.run_claim_key(task_id, index)
        owner = f"{attempt}|{owner}"
        with store_errors(self.settings.redis_url):
            if self.redis.set(key, owner, nx=True, ex=self.ttl_s):
                return True
            holder = self.redis.get(key)
            if holder is None:
                return bool(self.redis.set(key, owner, nx=True, ex=self.ttl_s))

            holder = holder.decode()
            if holder != owner and not _stale(holder, attempt):
                return False
            # Compare-and-set: of two slots taking over the same dead claim at
            # once, only the one that still sees the dead owner wins.
            if not self._take_over(keys=[key], args=[holder, owner, self.ttl_s]):
                return False
        logger.info("claim %s of slot %s taken over by %s", key, holder, owner)
        return True

    def acquire_unclaimed(
        self, task_ids: list[str], index: int, owner: str, attempt: int = 0
    ) -> list[bool]:
        """Claim every task nobody claimed yet, in one round trip.

        A task whose claim exists is False here; `acquire` decides whether its
        holder is dead, one task at a time, as that is rare.
        """
        owner = f"{attempt}|{owner}"
        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                key = keys.run_claim_key(task_id, index)
                pipe.set(key, owner, nx=True, ex=self.ttl_s)
            return [bool(won) for won in pipe.execute()]

    def count_deliveries(
        self, task_ids: list[str], index: int, attempt: int = 0
    ) -> list[int]:
        """Count one more delivery of this attempt of each task, in one round trip.

        Each retry has a count of its own: a retry is not a lost worker.
        """
        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                key = deliveries_key(task_id, index, attempt)
                pipe.incr(key)
                pipe.expire(key, self.settings.result_ttl_s)
            replies = pipe.execute()
        return [int(count) for count in replies[0::2]]

    def count_delivery(self, task_id: str, index: int, attempt: int = 0) -> int:
        """Count one more delivery of this attempt that starts measuring."""
        return self.count_deliveries([task_id], index, attempt)[0]


def current_owner() -> str:
    """This pool slot as a claim records it: host:pid:start time:thread."""
    pid = os.getpid()
    started = process_start_ticks(pid)
    return f"{socket.gethostname()}:{pid}:{started}:{threading.get_ident()}"


def process_start_ticks(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), "" if unknown.

    NOTE: a pid alone is not enough: a restarted container numbers its
    processes as it did before, so a new pool process may get the pid of the
    dead one that holds a claim.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return ""
    # Field 22 of stat(5); fields[0] here is field 3, after "pid (comm)".
    return fields[19].decode() if len(fields) > 19 else ""


def _stale(holder: str, attempt: int) -> bool:
    """Whether a claim `attempt|slot` belongs to an attempt that has ended."""
    held_attempt, _, slot = holder.partition("|")
    if not held_attempt.isdigit() or int(held_attempt) < attempt:
        return True
    return not holder_alive(slot)


def holder_alive(holder: str) -> bool:
    """Whether the slot named `host:pid:start:thread` may still be measuring.

    Off this host it cannot be known, so the claim is left to expire.
    """
    host, pid, started, thread = (holder.split(":") + ["", "", "", ""])[:4]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    if process_start_ticks(int(pid)) != started:
        # Gone, or the pid now belongs to another process.
        return False
    if int(pid) == os.getpid() and thread.isdigit():
        # A slot of this very process: alive only if that thread still runs.
        return any(t.ident == int(thread) for t in threading.enumerate())
    return True
