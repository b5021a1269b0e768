"""Tasks and their results in Redis, every write with the result TTL.

A task is a hash: `doc` (the JSON the client's request became, credentials
masked), `status`, `current_index`, `updated_at`. Its results are a
second hash keyed by subtask index, so a measurement delivered twice overwrites
its own result instead of adding a second one.
"""

from __future__ import annotations

import json
from typing import Any

from camtester.results import utc_now_iso, worst_severity
from camtester.settings import Settings
from camtester.store import keys
from camtester.store.connection import connect, store_errors
from camtester.store.keys import TaskStatus

# Moves a task to `running` unless it already finished: a measurement delivered
# again after its result was stored must not make a finished task look unfinished.
_MARK_RUNNING = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'done' or status == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'current_index', ARGV[1],
           'updated_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class TaskStore:
    """Reads and writes task documents, results and snapshots."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self.ttl_s = settings.result_ttl_s
        self.redis = client if client is not None else connect(settings)
        self._mark_running = self.redis.register_script(_MARK_RUNNING)

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        with store_errors(self.settings.redis_url):
            self.redis.ping()

    def create(self, documents: list[dict[str, Any]]) -> None:
        """Store new tasks as pending, in one pipelined round trip."""
        now = utc_now_iso()
        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            for document in documents:
                key = keys.task_key(document["id"])
                pipe.hset(
                    key,
                    mapping={
                        "doc": json.dumps(document),
                        "status": TaskStatus.PENDING.value,
                        "current_index": 0,
                        "updated_at": now,
                    },
                )
                pipe.expire(key, self.ttl_s)
            pipe.execute()

    def delete(self, task_ids: list[str]) -> None:
        """Forget tasks that could not be enqueued, so none stays pending forever."""
        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.delete(keys.task_key(task_id))
            pipe.execute()

    def mark_running(self, task_id: str, index: int) -> bool:
        """Record that subtask `index` started; False if the task already ended."""
        with store_errors(self.settings.redis_url):
            moved = self._mark_running(
                keys=[keys.task_key(task_id)],
                args=[index, utc_now_iso(), self.ttl_s],
            )
        return bool(moved)

    def has_result(self, task_id: str, index: int) -> bool:
        """Whether subtask `index` already has a stored result."""
        with store_errors(self.settings.redis_url):
            return bool(self.redis.hexists(keys.results_key(task_id), index))

    def save_result(
        self,
        task_id: str,
        index: int,
        result: dict[str, Any],
        *,
        status: TaskStatus,
        snapshot: bytes | None = None,
    ) -> None:
        """Store one (sub)task result and the task's new status together."""
        self.save_results([(task_id, index, result, status)], snapshot=snapshot)

    def save_results(
        self,
        entries: list[tuple[str, int, dict[str, Any], TaskStatus]],
        *,
        snapshot: bytes | None = None,
    ) -> None:
        """Store (task id, index, result, status) entries in one round trip.

        `snapshot` belongs to the first entry; only single results carry one.
        """
        now = utc_now_iso()
        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            for task_id, index, result, status in entries:
                task_key = keys.task_key(task_id)
                results_key = keys.results_key(task_id)
                fields = {
                    "status": status.value,
                    "current_index": index,
                    "updated_at": now,
                }
                pipe.hset(results_key, index, json.dumps(result))
                pipe.expire(results_key, self.ttl_s)
                pipe.hset(task_key, mapping=fields)
                pipe.expire(task_key, self.ttl_s)
            if snapshot and entries:
                pipe.set(keys.snapshot_key(entries[0][0]), snapshot, ex=self.ttl_s)
            pipe.execute()

    def results_exist(self, task_ids: list[str], index: int) -> list[bool]:
        """For each task, whether subtask `index` has a stored result."""
        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hexists(keys.results_key(task_id), index)
            return [bool(found) for found in pipe.execute()]

    def mark_running_many(self, task_ids: list[str], index: int) -> list[bool]:
        """`mark_running` for many tasks in one round trip."""
        now = utc_now_iso()
        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            for task_id in task_ids:
                self._mark_running(
                    keys=[keys.task_key(task_id)],
                    args=[index, now, self.ttl_s],
                    client=pipe,
                )
            return [bool(moved) for moved in pipe.execute()]

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The task as the API shows it, with its result(s); None if unknown."""
        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(keys.task_key(task_id))
            pipe.hgetall(keys.results_key(task_id))
            pipe.exists(keys.snapshot_key(task_id))
            fields, results, has_snapshot = pipe.execute()
        if not fields or b"doc" not in fields:
            return None
        return _assemble(fields, results, bool(has_snapshot))

    def get_snapshot(self, task_id: str) -> bytes | None:
        """The JPEG kept with a probe result, if any."""
        with store_errors(self.settings.redis_url):
            data = self.redis.get(keys.snapshot_key(task_id))
        return bytes(data) if data is not None else None


def _assemble(
    fields: dict[bytes, bytes], results: dict[bytes, bytes], has_snapshot: bool
) -> dict[str, Any]:
    task: dict[str, Any] = json.loads(fields[b"doc"])
    task["status"] = fields[b"status"].decode()
    task["updated_at"] = fields.get(b"updated_at", b"").decode() or None
    ordered = [json.loads(results[k]) for k in sorted(results, key=int)]

    if task["type"] == "complex":
        task["results"] = ordered
        task["current_index"] = int(fields.get(b"current_index", b"0"))
        task["verdict"] = worst_severity(ordered) if ordered else None
    else:
        task["result"] = ordered[0] if ordered else None
    task["has_snapshot"] = has_snapshot
    return task
