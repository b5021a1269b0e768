"""`POST /tasks-batch` at fleet size: limits, validation first, nothing lost."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from camtester.api import create_app
from camtester.settings import Settings
from camtester.store import keys
from tests.fixtures.services import JWT_SECRET, ApiClient, Stack, make_token


def new_region() -> str:
    return f"fleet{uuid.uuid4().hex[:10]}"


def ping(geo: str, host: str = "127.0.0.1", **options: Any) -> dict[str, Any]:
    return {"type": "ping", "geo_location": geo, "payload": {"host": host, **options}}


def task_count(store: redis.Redis) -> int:
    return sum(1 for _ in store.scan_iter(match="camtester:task:{*}", count=1000))


def statuses(store: redis.Redis, ids: list[str]) -> list[bytes | None]:
    pipe = store.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(keys.task_key(task_id), "status")
    return list(pipe.execute())


def wait_all_finished(
    store: redis.Redis, ids: list[str], timeout_s: float = 600.0
) -> list[bytes | None]:
    deadline = time.monotonic() + timeout_s
    found = statuses(store, ids)
    while time.monotonic() < deadline:
        if all(s in (b"done", b"failed") for s in found):
            return found
        time.sleep(0.5)
        found = statuses(store, ids)
    left = sum(1 for s in found if s not in (b"done", b"failed"))
    raise AssertionError(f"{left} of {len(ids)} tasks unfinished after {timeout_s}s")


def test_2000_pings_are_each_measured_and_stored_exactly_once(
    api: ApiClient, stack: Stack, worker_factory: Any
) -> None:
    geo = new_region()
    worker = worker_factory([f"{geo}.ping"], stack.env, concurrency=64)
    hosts = [f"127.0.{n // 250}.{n % 250 + 1}" for n in range(2000)]
    store = stack.redis.client(0)

    response = api.post(
        "/tasks-batch", json=[ping(geo, host, count=1) for host in hosts]
    )
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    final = wait_all_finished(store, ids)

    pipe = store.pipeline(transaction=False)
    for task_id in ids:
        pipe.hlen(keys.results_key(task_id))
        pipe.hget(keys.results_key(task_id), "0")
    replies = pipe.execute()
    lengths, results = replies[0::2], [json.loads(r) for r in replies[1::2]]

    assert len(set(ids)) == 2000
    assert final == [b"done"] * 2000
    assert lengths == [1] * 2000
    assert [r["payload"]["address"] for r in results] == hosts
    assert {r["payload"]["packets_received"] for r in results} == {1}
    # Each task was stored once on the region's worker: no duplicate, none
    # dropped. Pings travel 250 to a message, so 8 messages carried them.
    log = worker.log_path.read_text().splitlines()
    stored = [line for line in log if "stored result 0" in line]
    assert len(stored) == 2000
    assert {task_id for task_id in ids if any(task_id in s for s in stored)} == set(ids)
    chunks = [line for line in log if "camtester.ping_chunk[" in line]
    assert sum(1 for line in chunks if "succeeded" in line) == 8
    assert stack.redis.client(1).llen(f"{geo}.ping") == 0
    assert api.get(f"/tasks/{ids[1234]}").json()["payload"]["host"] == hosts[1234]


@pytest.fixture
def small_limit_api(stack: Stack) -> Iterator[FlaskClient]:
    """The API in-process, with a batch limit of 5, on the stack's Redis."""
    settings = Settings(
        redis_url=stack.redis.url(0),
        broker_url=stack.redis.url(1),
        jwt_secret=JWT_SECRET,
        max_batch_tasks=5,
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {make_token()}"
    yield client


def test_a_batch_over_the_limit_is_413_before_any_task_is_looked_at(
    small_limit_api: FlaskClient, stack: Stack
) -> None:
    store = stack.redis.client(0)
    before = task_count(store)
    geo = new_region()

    # Six tasks that are all invalid: a 400 would mean they were validated.
    over = small_limit_api.post("/tasks-batch", json=[{"type": "nope"}] * 6)
    at_limit = small_limit_api.post("/tasks-batch", json=[ping(geo)] * 5)

    assert over.status_code == 413
    assert "at most 5 tasks" in over.get_json()["message"]
    assert at_limit.status_code == 202
    assert len(at_limit.get_json()["ids"]) == 5
    assert task_count(store) == before + 5
    # Five pings with the same options travel in one chunk message.
    assert stack.redis.client(1).llen(f"{geo}.ping") == 1


def test_a_bad_task_is_400_with_its_index_and_nothing_is_stored_or_queued(
    api: ApiClient, stack: Stack
) -> None:
    store = stack.redis.client(0)
    before = task_count(store)
    geo = new_region()
    tasks = [ping(geo, count=1) for _ in range(100)]
    tasks[57] = ping(geo, count=0)
    tasks[80] = {"type": "ping"}

    response = api.post("/tasks-batch", json=tasks)

    assert response.status_code == 400
    assert response.json()["index"] == 57
    assert response.json()["message"].startswith("tasks[57].payload.count")
    assert task_count(store) == before
    assert stack.redis.client(1).llen(f"{geo}.ping") == 0


def big_complex_task(geo: str, n: int) -> dict[str, Any]:
    """A complex task of about 750 bytes: three subtasks, long URIs and options."""
    uri = f"rtsp://operator:long-password-{n:05d}@camera-{n:05d}.district-{n % 97}"
    uri += ".city-video.example:554/Streaming/Channels/101?transportmode=unicast"
    thresholds = {"black_min_s": 1.5, "freeze_min_s": 2.5, "silence_min_s": 3.0}
    stream = {"uri": uri, "duration": 5, "transport": "tcp", "thresholds": thresholds}
    return {
        "type": "complex",
        "geo_location": geo,
        "payloads": [
            {
                "type": "ping",
                "payload": {"host": f"camera-{n:05d}.example", "count": 5},
            },
            {"type": "check", "payload": stream},
            {
                "type": "probe",
                "payload": {**stream, "expected": {"codec": "h264", "fps": 25}},
            },
        ],
    }


def test_the_default_body_limit_admits_10000_large_tasks(
    api: ApiClient, stack: Stack
) -> None:
    geo = new_region()
    body = json.dumps([big_complex_task(geo, n) for n in range(10000)])
    broker = stack.redis.client(1)
    store = stack.redis.client(0)

    response = api.post(
        "/tasks-batch", data=body, headers={"Content-Type": "application/json"}
    )

    try:
        assert len(body) > 7 * 1024 * 1024
        assert response.status_code == 202, response.text[:500]
        ids = response.json()["ids"]
        assert len(set(ids)) == 10000
        assert broker.llen(f"{geo}.ping") == 10000
        assert statuses(store, ids) == [b"pending"] * 10000
    finally:
        # Nobody serves this region: drop its 10,000 messages and tasks.
        broker.delete(f"{geo}.ping")
        if response.status_code == 202:
            store.delete(*[keys.task_key(i) for i in response.json()["ids"]])
