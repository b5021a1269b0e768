"""Pool slots that wait cost little: one threads-pool worker runs many tasks at once.

Pings travel in chunks, each chunk blocking one pool thread until its sessions
in the process's shared ICMP engine end, so one worker process multiplexes every
ping it runs through one socket; probes each wait on their own ffmpeg. These tests run them through
the real pipeline (API, broker, worker, aggregation) and check that tasks
running side by side in one process each get their own, complete answer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from camtester.devtools.media import FAULTS
from camtester.devtools.simulator import CameraSimulator
from camtester.store import keys
from tests.fixtures.services import ApiClient, Stack

PINGS = 600
COUNT = 20
INTERVAL_S = 0.05
FPS = 25
EDGE_S = 0.2
WAIT_S = 180.0


def loopback(n: int) -> list[str]:
    """n distinct addresses of 127.0.0.0/8."""
    return [f"127.0.{i // 250 + 1}.{i % 250 + 1}" for i in range(n)]


def wait_stored(store: redis.Redis, ids: list[str], timeout_s: float) -> None:
    """Poll the task store until every task is done or failed."""
    deadline = time.monotonic() + timeout_s
    waiting = list(ids)
    while waiting:
        pipe = store.pipeline(transaction=False)
        for task_id in waiting:
            pipe.hget(keys.task_key(task_id), "status")
        statuses = pipe.execute()
        waiting = [
            task_id
            for task_id, status in zip(waiting, statuses, strict=True)
            if status not in (b"done", b"failed")
        ]
        assert time.monotonic() < deadline, f"{len(waiting)} tasks not finished"
        time.sleep(0.2)


def results(store: redis.Redis, ids: list[str]) -> list[dict[str, Any]]:
    pipe = store.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(keys.results_key(task_id), "0")
    return [json.loads(raw) for raw in pipe.execute()]


def claim_owners(store: redis.Redis, ids: list[str]) -> list[str]:
    """The pool slot ("attempt|host:pid:start:thread") that measured each task."""
    pipe = store.pipeline(transaction=False)
    for task_id in ids:
        pipe.get(keys.run_claim_key(task_id, 0))
    return [raw.decode() for raw in pipe.execute()]


def test_six_hundred_pings_in_one_threads_worker_all_get_every_reply(
    api: ApiClient, stack: Stack, worker_factory: Any
) -> None:
    worker = worker_factory(["pools.ping"], stack.env, concurrency=8, pool="threads")
    hosts = loopback(PINGS)
    tasks = [
        {
            "type": "ping",
            "geo_location": "pools",
            "payload": {"host": host, "count": COUNT, "interval": INTERVAL_S},
        }
        for host in hosts
    ]

    response = api.post("/tasks-batch", json=tasks)
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    store = stack.redis.client(0)
    wait_stored(store, ids, WAIT_S)

    for host, result in zip(hosts, results(store, ids), strict=True):
        assert result["ok"] is True, (host, result)
        assert result["payload"]["address"] == host
        assert result["payload"]["packets_sent"] == COUNT
        assert result["payload"]["packets_received"] == COUNT, (host, result)

    # One process ran them all, in chunks of 250 on several pool threads at
    # once: the replies above went through that process's one ICMP engine.
    slots = [owner.partition("|")[2].split(":") for owner in claim_owners(store, ids)]
    assert {slot[1] for slot in slots} == {str(worker.pid)}
    assert len({slot[3] for slot in slots}) > 1


def clipped(truth: object, end: float) -> list[list[float]]:
    """A clip's fault intervals as a sample of `end` seconds sees them."""
    assert isinstance(truth, list)
    return [[start, min(stop, end)] for start, stop in truth if start < end]


def assert_near(found: list[list[float]], truth: list[list[float]]) -> None:
    assert len(found) == len(truth), (found, truth)
    for (start, end), (true_start, true_end) in zip(found, truth, strict=True):
        assert abs(start - true_start) <= EDGE_S, (found, truth)
        assert abs(end - true_end) <= EDGE_S, (found, truth)


def test_probes_side_by_side_in_one_worker_each_get_their_own_stream(
    api: ApiClient,
    stack: Stack,
    worker_factory: Any,
    camera: CameraSimulator,
    fault_clips: dict[str, Path],
) -> None:
    worker_factory(["pools.probe"], stack.env, concurrency=4, pool="threads")
    samples = {"clean": 3.0, "black": 4.0, "frozen": 4.0, "silent": 5.0}
    tasks = [
        {
            "type": "probe",
            "geo_location": "pools",
            "payload": {"uri": camera.url(name), "duration": seconds},
        }
        for name, seconds in samples.items()
    ]

    response = api.post("/tasks-batch", json=tasks)
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    store = stack.redis.client(0)
    wait_stored(store, ids, WAIT_S)

    for (name, seconds), result in zip(samples.items(), results(store, ids)):
        assert result["ok"] is True, (name, result)
        payload = result["payload"]
        truth = FAULTS[name]
        black = clipped(truth["black"], seconds)
        freeze = clipped(truth["freeze"], seconds)
        assert_near(payload["black_intervals"], black)
        assert_near(payload["freeze_intervals"], freeze)
        assert_near(payload["silence_intervals"], clipped(truth["silence"], seconds))
        assert payload["black_frames"] == round(sum(e - s for s, e in black) * FPS)
        assert payload["freeze_frames"] == round(sum(e - s for s, e in freeze) * FPS)
        assert abs(payload["video_frames"] - seconds * FPS) <= 1
        assert payload["stalled"] is False
