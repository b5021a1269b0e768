"""Deviation records, indexed by time for every filter the API offers.

Each record body is a key of its own with the result TTL. Four kinds of sorted
set index the record ids by detection time in milliseconds: all records, per
target, per kind and per region. A query walks the most selective index newest
first, so it never scans every key; index entries whose body has expired are
skipped, and entries older than the TTL are trimmed on every write.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from camtester.errors import InvalidInput
from camtester.settings import Settings
from camtester.store import keys
from camtester.store.connection import connect, store_errors

MAX_LIMIT = 1000
_SCAN_BATCH = 200


def record_id(task_id: str, index: int, position: int, kind: str) -> str:
    """Deterministic, so a result stored twice stores its records once."""
    return f"{task_id}:{index}:{position}:{kind}"


def detected_ms(record: dict[str, Any]) -> int:
    """The record's detection time as epoch milliseconds."""
    stamp = record["detected_at"].replace("Z", "+00:00")
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def index_keys(record: dict[str, Any]) -> list[str]:
    """Every sorted set a record belongs to."""
    return [
        keys.deviation_index_key("all", "all"),
        keys.deviation_index_key("target", record["target"]),
        keys.deviation_index_key("kind", record["kind"]),
        keys.deviation_index_key("geo", record["geo_location"]),
    ]


class DeviationStore:
    """Writes and queries deviation records."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self.ttl_s = settings.result_ttl_s
        self.redis = client if client is not None else connect(settings)

    def add(self, records: list[dict[str, Any]]) -> None:
        """Store records (each with an `id`) and index them, in one round trip."""
        if not records:
            return
        oldest_kept = int(time.time() * 1000) - self.ttl_s * 1000

        with store_errors(self.settings.redis_url):
            pipe = self.redis.pipeline(transaction=False)
            for record in records:
                score = detected_ms(record)
                pipe.set(
                    keys.deviation_key(record["id"]), json.dumps(record), ex=self.ttl_s
                )
                for index_key in index_keys(record):
                    pipe.zadd(index_key, {record["id"]: score})
                    pipe.zremrangebyscore(index_key, "-inf", oldest_kept)
                    pipe.expire(index_key, self.ttl_s)
            pipe.execute()

    def query(
        self,
        *,
        target: str | None = None,
        kind: str | None = None,
        geo_location: str | None = None,
        since_ms: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records newest first matching every filter given, and the next cursor."""
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
        index_key = _most_selective(target, kind, geo_location)
        max_score, skip = _parse_cursor(cursor)
        wanted = {"target": target, "kind": kind, "geo_location": geo_location}

        found: list[dict[str, Any]] = []
        next_cursor: str | None = None
        with store_errors(self.settings.redis_url):
            for record, score, position in self._walk(index_key, max_score, since_ms):
                if score == max_score and position < skip:
                    continue
                if not all(v is None or record.get(k) == v for k, v in wanted.items()):
                    continue
                # A cursor only where another matching record follows, so that
                # the last page says it is the last.
                if len(found) == limit:
                    next_cursor = f"{score}:{position}"
                    break
                found.append(record)
        return found, next_cursor

    def _walk(self, index_key: str, max_score: int | None, since_ms: int | None) -> Any:
        """Yield (record, score, position among equal scores), newest first."""
        high: Any = "+inf" if max_score is None else max_score
        low: Any = "-inf" if since_ms is None else since_ms
        offset = 0
        previous_score, position = None, 0

        while True:
            batch = self.redis.zrevrangebyscore(
                index_key, high, low, start=offset, num=_SCAN_BATCH, withscores=True
            )
            if not batch:
                return
            offset += len(batch)
            bodies = self._bodies([member for member, _ in batch])
            for (member, score), body in zip(batch, bodies, strict=True):
                score = int(score)
                position = position + 1 if score == previous_score else 0
                previous_score = score
                if body is None:
                    # Expired a moment before its index entry was trimmed.
                    continue
                yield json.loads(body), score, position

    def _bodies(self, members: list[bytes]) -> list[bytes | None]:
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.get(keys.deviation_key(member.decode()))
        bodies: list[bytes | None] = pipe.execute()
        return bodies


def _most_selective(target: str | None, kind: str | None, geo: str | None) -> str:
    if target is not None:
        return keys.deviation_index_key("target", target)
    if kind is not None:
        return keys.deviation_index_key("kind", kind)
    if geo is not None:
        return keys.deviation_index_key("geo", geo)
    return keys.deviation_index_key("all", "all")


def _parse_cursor(cursor: str | None) -> tuple[int | None, int]:
    """A cursor is `<score>:<n>`: resume at that score, skipping n equal ones."""
    if cursor is None:
        return None, 0
    score, sep, skip = cursor.partition(":")
    if not sep or not score.isdigit() or not skip.isdigit():
        raise InvalidInput("cursor is not one this API returned")
    return int(score), int(skip)
