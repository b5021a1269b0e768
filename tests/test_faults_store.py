"""Redis and the broker going away: 503 naming what is down, nothing lost,
nothing half-stored, and service again once they are back, without a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camtester.api import create_app
from camtester.settings import Settings
from camtester.store import keys
from camtester.tasks.app import celery_app
from tests.fixtures.services import (
    ApiClient,
    ApiServer,
    RedisServer,
    free_port,
    make_token,
    service_env,
)
from tests.test_faults_common import (
    FfmpegCensus,
    LiveCamera,
    check_task,
    measurement_chain,
    unique_geo,
    wait_until,
    worker_log_lines,
)


def ping_task(geo: str, host: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "type": "ping",
        "geo_location": geo,
        "payload": {"host": host, "count": 2, "interval": 0.05},
    }


def stop_redis(server: RedisServer, sig: int) -> None:
    """Stop redis-server with `sig`; SIGKILL gives it no chance to flush."""
    assert server.process is not None
    server.process.send_signal(sig)
    server.process.wait(timeout=30)
    server.process = None


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[Any]:
    started: list[ApiServer] = []

    def start(env: dict[str, str]) -> ApiServer:
        server = ApiServer(env, tmp_path / f"api{len(started)}.log").start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def redis_config(server: RedisServer, name: str) -> str:
    reply = subprocess.run(
        ["redis-cli", "-p", str(server.port), "config", "get", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return reply.stdout.split()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_redis_restart_keeps_tasks_and_the_api_answers_503_meanwhile(
    redis_factory: Any, api_server: Any, worker_factory: Any, sig: int
) -> None:
    redis_server = redis_factory(appendonly=True)
    env = service_env(redis_server.url(0), redis_server.url(1))
    api = ApiClient(api_server(env).url)
    geo = unique_geo()
    worker_factory([f"{geo}.ping", "results"], env, concurrency=2)
    before_id = api.submit(ping_task(geo))
    before = api.wait(before_id)
    assert before["status"] == "done"
    assert redis_config(redis_server, "appendonly") == "yes"
    # appendfsync everysec: what was written a second ago is on disk.
    time.sleep(1.5)

    stop_redis(redis_server, sig)
    down = {
        "get": api.get(f"/tasks/{before_id}"),
        "post": api.post("/tasks", json=ping_task(geo)),
        "batch": api.post("/tasks-batch", json=[ping_task(geo)]),
        "result": api.get(f"/tasks/{before_id}/result"),
    }
    health = api.get("/healthz")

    redis_server.start()
    after = api.get(f"/tasks/{before_id}")
    again_id = api.submit(ping_task(geo))
    again = api.wait(again_id)

    for what, response in down.items():
        assert response.status_code == 503, (what, response.text)
        assert response.json()["unavailable"] == "store", what
        assert "store" in response.json()["message"], what
    assert health.status_code == 503
    assert "store" in health.json()["down"]
    assert after.status_code == 200
    assert after.json() == before
    assert again["status"] == "done"
    assert again["result"]["payload"]["packets_received"] == 2


def test_a_worker_gets_on_with_its_tasks_after_redis_comes_back(
    redis_factory: Any, worker_factory: Any
) -> None:
    redis_server = redis_factory(appendonly=True)
    env = service_env(redis_server.url(0), redis_server.url(1))
    settings = Settings.from_env(env)
    app = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {make_token()}"}
    geo = unique_geo()
    # Queued while no worker runs, then redis restarts: the queue must survive.
    response = app.post("/tasks", json=ping_task(geo), headers=headers)
    task_id = response.get_json()["id"]
    time.sleep(1.5)
    stop_redis(redis_server, signal.SIGKILL)
    redis_server.start()

    worker_factory([f"{geo}.ping", "results"], env, concurrency=2)

    def finished() -> dict[str, Any] | None:
        task = app.get(f"/tasks/{task_id}", headers=headers).get_json()
        return task if task["status"] == "done" else None

    task = wait_until(finished, 60, "the queued ping")
    assert task["result"]["payload"]["packets_sent"] == 2


# -- a broker that is down at submission ---------------------------------------


@pytest.fixture
def no_broker_app(redis_factory: Any) -> tuple[Any, RedisServer]:
    redis_server = redis_factory()
    # Nothing listens on this loopback port: connections are refused.
    broker = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings.from_env(service_env(redis_server.url(0), broker))
    return create_app(settings).test_client(), redis_server


def stored_task_keys(redis_server: RedisServer) -> list[bytes]:
    return list(redis_server.client(0).scan_iter(match=f"{keys.PREFIX}:task:*"))


@pytest.mark.parametrize("path", ["/tasks", "/tasks-batch"])
def test_a_broker_down_at_submit_is_503_and_stores_nothing(
    no_broker_app: tuple[Any, RedisServer], path: str
) -> None:
    app, redis_server = no_broker_app
    task = ping_task(unique_geo())
    body = task if path == "/tasks" else [task, task, task]

    response = app.post(
        path, json=body, headers={"Authorization": f"Bearer {make_token()}"}
    )

    assert response.status_code == 503
    assert response.get_json()["unavailable"] == "broker"
    assert "broker" in response.get_json()["message"]
    assert stored_task_keys(redis_server) == []


def test_healthz_names_the_broker_that_is_down(
    no_broker_app: tuple[Any, RedisServer],
) -> None:
    app, _ = no_broker_app

    response = app.get("/healthz")

    assert response.status_code == 503
    (down,) = response.get_json()["down"]
    assert down.startswith("broker default (redis://127.0.0.1:")


@pytest.mark.parametrize("frozen", ["broker", "store"])
def test_healthz_answers_503_when_redis_accepts_but_does_not_answer(
    redis_factory: Any, frozen: str
) -> None:
    # A stopped redis-server still accepts connections (the kernel does): the
    # check must give up on its own timeouts, well before gunicorn's 30 s
    # worker timeout turns the answer into a 500.
    store, broker = redis_factory(), redis_factory()
    settings = Settings.from_env(service_env(store.url(0), broker.url(0)))
    app = create_app(settings).test_client()
    stopped = store if frozen == "store" else broker
    assert stopped.process is not None
    os.kill(stopped.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = app.get("/healthz")
        answered_s = time.monotonic() - started
    finally:
        os.kill(stopped.process.pid, signal.SIGCONT)

    assert response.status_code == 503
    (down,) = response.get_json()["down"]
    assert down.startswith(frozen)
    assert answered_s < 15
    assert app.get("/healthz").status_code == 200


def test_a_message_of_a_withdrawn_task_is_dropped_by_the_worker(
    redis_factory: Any, worker_factory: Any
) -> None:
    # A batch whose publishing broke half-way is deleted from the store, but
    # its first messages may already be queued: they must leave no trace.
    redis_server = redis_factory()
    env = service_env(redis_server.url(0), redis_server.url(1))
    geo = unique_geo()
    worker = worker_factory([f"{geo}.ping", "results"], env, concurrency=2)
    task_id = str(uuid.uuid4())
    task = {
        "id": task_id,
        "type": "ping",
        "geo_location": geo,
        "target": "127.0.0.1",
        "options": {"count": 2, "interval": 0.05, "timeout": 1.0, "thresholds": {}},
    }

    with celery_app.connection_for_write(redis_server.url(1)) as connection:
        measurement_chain(task_id, 0, task).apply_async(connection=connection)
    wait_until(
        lambda: worker_log_lines(worker.log_path, task_id, "withdrawn"),
        30,
        "the drop",
    )
    time.sleep(0.5)

    store = redis_server.client(0)
    assert store.exists(keys.task_key(task_id)) == 0
    assert store.exists(keys.results_key(task_id)) == 0
    assert worker_log_lines(worker.log_path, task_id, "measured in") == 0


# -- a store that answers but cannot take writes ------------------------------


def redis_cli(server: RedisServer, *args: str) -> str:
    reply = subprocess.run(
        ["redis-cli", "-p", str(server.port), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return reply.stdout.strip()


@pytest.mark.parametrize(
    ("break_it", "mend_it"),
    [
        # A failover turned the store into a replica of a master that is gone.
        (("replicaof", "127.0.0.1", "1"), ("replicaof", "no", "one")),
        # The store is out of memory and may evict nothing.
        (("config", "set", "maxmemory", "1"), ("config", "set", "maxmemory", "0")),
    ],
    ids=["readonly", "oom"],
)
def test_a_store_that_refuses_writes_is_503_and_reads_still_work(
    redis_factory: Any, break_it: tuple[str, ...], mend_it: tuple[str, ...]
) -> None:
    redis_server = redis_factory()
    env = service_env(redis_server.url(0), redis_server.url(1))
    app = create_app(Settings.from_env(env)).test_client()
    headers = {"Authorization": f"Bearer {make_token()}"}
    task = ping_task(unique_geo())
    task_id = app.post("/tasks", json=task, headers=headers).get_json()["id"]

    redis_cli(redis_server, *break_it)
    refused = app.post("/tasks", json=task, headers=headers)
    read = app.get(f"/tasks/{task_id}", headers=headers)
    redis_cli(redis_server, *mend_it)
    accepted = app.post("/tasks", json=task, headers=headers)

    assert refused.status_code == 503
    assert refused.get_json()["unavailable"] == "store"
    assert read.status_code == 200
    assert read.get_json()["status"] == "pending"
    assert accepted.status_code == 202


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_redis_restart_in_the_middle_of_a_check_loses_nothing(
    redis_factory: Any, worker_factory: Any, pool: str
) -> None:
    redis_server = redis_factory(appendonly=True)
    env = service_env(
        redis_server.url(0),
        redis_server.url(1),
        CAMTESTER_MAX_SAMPLE_DURATION_S="3",
        CAMTESTER_CONNECT_TIMEOUT_S="1",
        CAMTESTER_VISIBILITY_TIMEOUT_S="33",
    )
    settings = Settings.from_env(env)
    app = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {make_token()}"}
    geo = unique_geo()
    worker_factory([f"{geo}.check", "results"], env, pool=pool, concurrency=2)
    camera = LiveCamera().start()
    try:
        with FfmpegCensus(camera.names[0]) as census:
            task = check_task(geo, camera.uri(), duration=3)
            task_id = app.post("/tasks", json=task, headers=headers).get_json()["id"]
            census.wait_for_new(0)
            time.sleep(1.5)
            # Down while the check ends, its result is handed on and acknowledged.
            stop_redis(redis_server, signal.SIGTERM)
            time.sleep(4.0)
            redis_server.start()

            def finished() -> dict[str, Any] | None:
                task = app.get(f"/tasks/{task_id}", headers=headers).get_json()
                return task if task["status"] in ("done", "failed") else None

            task = wait_until(finished, 120, "the interrupted check")
    finally:
        camera.stop()

    assert task["status"] == "done"
    assert task["result"]["payload"]["duration_sec"] == pytest.approx(3, abs=0.5)
    assert list(redis_server.client(0).hgetall(keys.results_key(task_id))) == [b"0"]
    assert census.alive() == {}
