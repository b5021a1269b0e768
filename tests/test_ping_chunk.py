"""A ping chunk run in this process against a real redis-server: each task of
the chunk is claimed, counted and stored on its own, as a single ping would be."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from camtester.settings import Settings, reset_settings
from camtester.store import keys
from camtester.store.claims import MAX_DELIVERIES, deliveries_key
from camtester.store.tasks import TaskStore
from camtester.tasks.ping_chunk import ping_chunk
from tests.fixtures.services import RedisServer


@pytest.fixture
def store(redis_factory: Any) -> Iterator[TaskStore]:
    server: RedisServer = redis_factory()
    settings = Settings(redis_url=server.url(0))
    reset_settings(settings)
    yield TaskStore(settings, server.client(0))
    reset_settings()


def ping_task(task_id: str, host: str) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "ping",
        "geo_location": "local",
        "target": host,
        "options": {"count": 3, "interval": 0.01, "timeout": 1.0},
    }


def test_a_task_whose_worker_was_lost_too_often_fails_like_a_single_ping(
    store: TaskStore,
) -> None:
    tasks = [ping_task("lost-1", "127.0.0.7"), ping_task("fine-1", "127.0.0.8")]
    store.create(tasks)
    # Three deliveries of "lost-1" started and never finished: the next is given up.
    store.redis.set(deliveries_key("lost-1", 0, 0), MAX_DELIVERIES)

    ping_chunk.apply(args=([(task["id"], task) for task in tasks],))

    lost = json.loads(store.redis.hget(keys.results_key("lost-1"), 0))
    assert lost["ok"] is False
    assert lost["error"]["code"] == "internal"
    assert f"lost {MAX_DELIVERIES} times" in lost["error"]["message"]
    assert [(d["kind"], d["severity"]) for d in lost["deviations"]] == [
        ("unreachable", "critical")
    ]
    assert store.redis.hget(keys.task_key("lost-1"), "status") == b"failed"

    fine = json.loads(store.redis.hget(keys.results_key("fine-1"), 0))
    assert fine["ok"] is True
    assert fine["payload"]["packets_received"] == 3
    assert fine["deviations"] == []
    assert store.redis.hget(keys.task_key("fine-1"), "status") == b"done"
