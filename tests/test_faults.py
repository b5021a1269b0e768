"""Workers killed and stopped in the middle of a measurement: nothing is lost,
nothing is measured or stored twice, no ffmpeg is left behind.

Every test has its own redis-server, its own workers and a camera that sends
forever (the simulator's pattern mount); the API is `create_app` in this process,
storing into and publishing through that redis-server for real.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from kombu import Connection

from camtester.api import create_app
from camtester.api.tasks import stored_document
from camtester.settings import Settings
from camtester.spec import validate_task
from camtester.store import keys
from camtester.store.claims import MAX_DELIVERIES
from camtester.store.tasks import TaskStore
from camtester.tasks.app import celery_app
from camtester.tasks.publish import ping_chunk_signature
from tests.fixtures.services import JWT_SECRET, RedisServer, make_token
from tests.test_faults_common import (
    FfmpegCensus,
    LiveCamera,
    check_task,
    measurement_chain,
    pool_children,
    short_env,
    unique_geo,
    wait_gone,
    wait_until,
    worker_log_lines,
)

#: A killed worker's ffmpeg must be gone this soon ("a second", with slack for
#: a machine busy with other tests).
FFMPEG_GONE_S = 2.0


class OwnStack:
    """A redis-server, the API app on it, and the environment for workers."""

    def __init__(self, redis_server: RedisServer, **env: str) -> None:
        self.redis = redis_server
        self.env = short_env(redis_server, **env)
        self.settings = Settings.from_env(self.env)
        self.app = create_app(self.settings)
        self.http: FlaskClient = self.app.test_client()
        self.headers = {"Authorization": f"Bearer {make_token(JWT_SECRET)}"}

    def submit(self, task: dict[str, Any]) -> str:
        response = self.http.post("/tasks", json=task, headers=self.headers)
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["id"])

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/tasks/{task_id}", headers=self.headers)
        assert response.status_code == 200, response.get_json()
        return dict(response.get_json())

    def wait(self, task_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
        return wait_until(
            lambda: self._finished(task_id), timeout_s, f"end of task {task_id}"
        )

    def _finished(self, task_id: str) -> dict[str, Any] | None:
        task = self.task(task_id)
        return task if task["status"] in ("done", "failed") else None

    def stored_results(self, task_id: str) -> dict[bytes, bytes]:
        return self.redis.client(0).hgetall(keys.results_key(task_id))


@pytest.fixture
def camera() -> Iterator[LiveCamera]:
    cam = LiveCamera().start()
    yield cam
    cam.stop()


@pytest.fixture
def own(redis_factory: Any) -> OwnStack:
    return OwnStack(redis_factory())


def assert_checked_once(own: OwnStack, task_id: str, duration: float) -> None:
    """The task is done with one stored result of a full sample."""
    task = own.task(task_id)
    assert task["status"] == "done", task
    assert task["result"]["ok"] is True
    assert task["result"]["payload"]["duration_sec"] == pytest.approx(duration, abs=0.5)
    assert list(own.stored_results(task_id)) == [b"0"]


# -- SIGKILL of a prefork pool process (what the OOM killer does) -------------


def test_sigkill_of_the_pool_process_mid_check_runs_it_again_once(
    own: OwnStack, camera: LiveCamera, worker_factory: Any
) -> None:
    geo = unique_geo()
    worker = worker_factory(
        [f"{geo}.check", "results"], own.env, pool="prefork", concurrency=1
    )

    with FfmpegCensus(camera.names[0]) as census:
        task_id = own.submit(check_task(geo, camera.uri(), duration=3))
        ffmpeg, pool_process = census.wait_for_new(0)
        assert pool_process in pool_children(worker.pid)

        os.kill(pool_process, signal.SIGKILL)
        assert wait_gone(ffmpeg, FFMPEG_GONE_S) < FFMPEG_GONE_S

        own.wait(task_id)
        executions = len(census.seen)

    assert executions == 2
    assert_checked_once(own, task_id, 3)
    assert worker_log_lines(worker.log_path, task_id, "stored result 0") == 1
    assert census.alive() == {}


def test_a_check_that_always_kills_its_worker_is_given_up(
    own: OwnStack, camera: LiveCamera, worker_factory: Any
) -> None:
    geo = unique_geo()
    worker = worker_factory(
        [f"{geo}.check", "results"], own.env, pool="prefork", concurrency=1
    )

    with FfmpegCensus(camera.names[0]) as census:
        task_id = own.submit(check_task(geo, camera.uri(), duration=3))
        # Each delivery's pool process dies as soon as its ffmpeg runs.
        for delivery in range(MAX_DELIVERIES):
            ffmpeg, pool_process = census.wait_for_new(delivery)
            os.kill(pool_process, signal.SIGKILL)
            wait_gone(ffmpeg, FFMPEG_GONE_S)

        task = own.wait(task_id)
        time.sleep(1.0)
        executions = len(census.seen)

    assert executions == MAX_DELIVERIES
    assert task["status"] == "failed"
    assert task["result"]["error"]["code"] == "internal"
    assert f"lost {MAX_DELIVERIES} times" in task["result"]["error"]["message"]
    assert [d["kind"] for d in task["result"]["deviations"]] == ["stream_unavailable"]
    assert worker.process is not None and worker.process.poll() is None


# -- SIGKILL of a whole worker: another one gets the message -----------------


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return int(handle.read().rpartition(b")")[2].split()[1])


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_sigkill_of_a_whole_worker_hands_the_check_to_another_once(
    redis_factory: Any, camera: LiveCamera, worker_factory: Any, pool: str
) -> None:
    # The shortest visibility timeout the settings allow: samples of at most
    # 3 s with a 1 s connect timeout make a hard time limit of 32 s.
    own = OwnStack(
        redis_factory(),
        CAMTESTER_MAX_SAMPLE_DURATION_S="3",
        CAMTESTER_CONNECT_TIMEOUT_S="1",
        CAMTESTER_VISIBILITY_TIMEOUT_S="33",
    )
    geo = unique_geo()
    queues = [f"{geo}.check", "results"]
    workers = [
        worker_factory(queues, own.env, pool=pool, concurrency=2) for _ in range(2)
    ]

    with FfmpegCensus(camera.names[0]) as census:
        task_id = own.submit(check_task(geo, camera.uri(), duration=3))
        ffmpeg, parent = census.wait_for_new(0)
        main = parent if pool == "threads" else parent_of(parent)
        killed = next(w for w in workers if w.pid == main)
        other = next(w for w in workers if w is not killed)

        # The whole worker, as the OOM killer of a container or `kill -9 -1`.
        os.killpg(killed.pid, signal.SIGKILL)
        assert wait_gone(ffmpeg, FFMPEG_GONE_S) < FFMPEG_GONE_S

        # The message comes back once the visibility timeout (33 s) has passed.
        _, parent = census.wait_for_new(1, timeout_s=90)
        own.wait(task_id)
        executions = len(census.seen)

    main = parent if pool == "threads" else parent_of(parent)
    assert main == other.pid
    assert executions == 2
    assert_checked_once(own, task_id, 3)
    assert worker_log_lines(other.log_path, task_id, "stored result 0") == 1


def test_sigkill_of_a_prefork_main_process_alone_loses_nothing(
    redis_factory: Any, camera: LiveCamera, worker_factory: Any
) -> None:
    own = OwnStack(
        redis_factory(),
        CAMTESTER_MAX_SAMPLE_DURATION_S="3",
        CAMTESTER_CONNECT_TIMEOUT_S="1",
        CAMTESTER_VISIBILITY_TIMEOUT_S="33",
    )
    geo = unique_geo()
    queues = [f"{geo}.check", "results"]
    first = worker_factory(queues, own.env, pool="prefork", concurrency=1)

    with FfmpegCensus(camera.names[0]) as census:
        task_id = own.submit(check_task(geo, camera.uri(), duration=3))
        ffmpeg, pool_process = census.wait_for_new(0)
        # Only the main process: its pool process is orphaned mid-check.
        os.kill(first.pid, signal.SIGKILL)
        orphan_gone_s = wait_gone(pool_process, 30)
        ffmpeg_gone_s = wait_gone(ffmpeg, FFMPEG_GONE_S)
        worker_factory(queues, own.env, pool="prefork", concurrency=1)
        own.wait(task_id, timeout_s=120)
        executions = len(census.seen)

    print(
        f"orphan gone after {orphan_gone_s:.2f}s, its ffmpeg {ffmpeg_gone_s:.2f}s later"
    )
    assert ffmpeg_gone_s < FFMPEG_GONE_S
    assert executions == 2
    assert_checked_once(own, task_id, 3)
    assert census.alive() == {}


def test_a_visibility_timeout_shorter_than_a_task_is_refused(
    own: OwnStack, worker_factory: Any
) -> None:
    # 4 s samples and a 2 s connect timeout: the hard limit is 4 + 8 + 15 + 10.
    env = {**own.env, "CAMTESTER_VISIBILITY_TIMEOUT_S": "37"}

    with pytest.raises(RuntimeError, match="longer than the longest task, 37 s"):
        worker_factory([f"{unique_geo()}.check"], env)


# -- a message delivered again while its task still runs ---------------------


def restore_unacked(broker_url: str) -> int:
    """Hand every unacknowledged message back to its queue at once.

    This is what the Redis transport does for a consumer whose visibility
    timeout is shorter than the task: the message comes again while it runs.
    """
    with Connection(broker_url, transport_options={"visibility_timeout": 0}) as conn:
        channel: Any = conn.default_channel
        before = channel.client.hlen(channel.unacked_key)
        channel.qos.restore_visible(num=1000)
        return int(before)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_check_delivered_again_while_it_runs_is_measured_once(
    own: OwnStack, camera: LiveCamera, worker_factory: Any, pool: str
) -> None:
    geo = unique_geo()
    worker = worker_factory(
        [f"{geo}.check", "results"], own.env, pool=pool, concurrency=2
    )

    with FfmpegCensus(camera.names[0]) as census:
        task_id = own.submit(check_task(geo, camera.uri(), duration=4))
        census.wait_for_new(0)
        restored = []
        for _ in range(3):
            restored.append(restore_unacked(own.redis.url(1)))
            time.sleep(0.7)
        own.wait(task_id)
        time.sleep(1.0)
        executions = len(census.seen)

    assert restored[0] == 1
    assert executions == 1
    assert_checked_once(own, task_id, 4)
    dropped = worker_log_lines(worker.log_path, task_id, "duplicate dropped")
    assert dropped == sum(restored)
    assert worker_log_lines(worker.log_path, task_id, "stored result 0") == 1


def test_the_api_refuses_a_sample_longer_than_the_visibility_allows(
    own: OwnStack, camera: LiveCamera
) -> None:
    task = check_task(unique_geo(), camera.uri(), duration=4.5)

    response = own.http.post("/tasks", json=task, headers=own.headers)

    assert response.status_code == 400
    assert "payload.duration must be between 1 and 4" in response.get_json()["message"]


# -- SIGTERM: the running check finishes, nothing is left ---------------------


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_sigterm_lets_the_running_check_finish_and_leaves_no_ffmpeg(
    own: OwnStack, camera: LiveCamera, worker_factory: Any, pool: str
) -> None:
    geo = unique_geo()
    worker = worker_factory([f"{geo}.check"], own.env, pool=pool, concurrency=2)

    with FfmpegCensus(camera.names[0]) as census:
        task_id = own.submit(check_task(geo, camera.uri(), duration=3))
        census.wait_for_new(0)
        # Only the main process, as `docker stop` and `kill` do.
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.process is not None
        worker.process.wait(timeout=60)
        left_at_exit = census.alive()

        # The result waits on the `results` queue for an aggregating worker.
        worker_factory(["results"], own.env, concurrency=1)
        own.wait(task_id)
        executions = len(census.seen)

    assert left_at_exit == {}
    assert executions == 1
    assert_checked_once(own, task_id, 3)


# -- time limits: ffmpeg dies with the task -----------------------------------


def publish_with_limits(
    own: OwnStack, raw: dict[str, Any], soft: float | None, hard: float
) -> str:
    """Store and queue a task as the API does, its message carrying these limits.

    Celery takes a task's time limits from its message; the API writes the
    configured ones, which are longer than ffmpeg's own timeouts and so never
    reached by a check. Shorter ones make the time limit the first to act.
    """
    task = validate_task(raw, own.settings)
    task_id = str(uuid.uuid4())
    TaskStore(own.settings).create([stored_document(task_id, task)])
    chain = measurement_chain(task_id, 0, {**task, "id": task_id})
    chain.tasks[0].set(time_limit=hard)
    if soft is not None:
        chain.tasks[0].set(soft_time_limit=soft)
    with celery_app.connection_for_write(own.redis.url(1)) as connection:
        chain.apply_async(connection=connection)
    return task_id


def test_a_soft_time_limit_stops_ffmpeg_and_stores_a_timeout(
    own: OwnStack, camera: LiveCamera, worker_factory: Any
) -> None:
    geo = unique_geo()
    worker_factory([f"{geo}.check", "results"], own.env, pool="prefork", concurrency=1)

    with FfmpegCensus(camera.names[0]) as census:
        task = check_task(geo, camera.uri(), duration=4)
        task_id = publish_with_limits(own, task, soft=1.5, hard=20)
        ffmpeg, _ = census.wait_for_new(0)
        task = own.wait(task_id)
        ended = time.monotonic()
        gone_after = census.last_alive_at.get(ffmpeg, 0) - ended

    assert task["status"] == "failed"
    assert task["result"]["error"]["code"] == "timeout"
    assert "time limit" in task["result"]["error"]["message"]
    assert gone_after < 1.0
    assert census.alive() == {}


def test_a_hard_time_limit_kills_ffmpeg_with_the_pool_process(
    own: OwnStack, camera: LiveCamera, worker_factory: Any
) -> None:
    geo = unique_geo()
    worker_factory([f"{geo}.check", "results"], own.env, pool="prefork", concurrency=1)

    with FfmpegCensus(camera.names[0]) as census:
        task = check_task(geo, camera.uri(), duration=4)
        task_id = publish_with_limits(own, task, soft=2.0, hard=3.0)
        ffmpeg, pool_process = census.wait_for_new(0)
        # A pool process that hangs (frozen here) cannot act on its soft limit;
        # only the hard limit, which kills it, ends the task.
        os.kill(pool_process, signal.SIGSTOP)
        wait_gone(pool_process, 30)
        gone_s = wait_gone(ffmpeg, FFMPEG_GONE_S)
        task = own.wait(task_id)
        time.sleep(1.0)
        executions = len(census.seen)

    assert gone_s < FFMPEG_GONE_S
    assert executions == 1
    assert task["status"] == "failed"
    assert task["result"]["error"]["code"] == "timeout"
    assert census.alive() == {}
    assert json.loads(own.stored_results(task_id)[b"0"])["ok"] is False


# -- pings travel in chunks: a chunk killed mid-way ----------------------------


def test_sigkill_mid_ping_chunk_pings_every_host_again_once(
    own: OwnStack, worker_factory: Any
) -> None:
    geo = unique_geo()
    worker = worker_factory(
        [f"{geo}.ping", "results"], own.env, pool="prefork", concurrency=1
    )
    hosts = [f"127.0.0.{n}" for n in range(1, 11)]
    tasks = [
        {
            "type": "ping",
            "geo_location": geo,
            "payload": {"host": host, "count": 20, "interval": 0.1},
        }
        for host in hosts
    ]
    response = own.http.post("/tasks-batch", json=tasks, headers=own.headers)
    ids = response.get_json()["ids"]

    wait_until(
        lambda: b"pinging a chunk of 10" in worker.log_path.read_bytes(), 30, "chunk"
    )
    (pool_process,) = pool_children(worker.pid)
    os.kill(pool_process, signal.SIGKILL)
    finished = [own.wait(task_id) for task_id in ids]

    chunks_run = worker.log_path.read_text().count("pinging a chunk of 10")
    assert chunks_run == 2
    for task, host in zip(finished, hosts, strict=True):
        assert task["status"] == "done"
        assert task["result"]["payload"]["address"] == host
        assert task["result"]["payload"]["packets_received"] == 20
        assert list(own.stored_results(task["id"])) == [b"0"]


@pytest.mark.parametrize("frozen", [False, True], ids=["soft-limit", "hard-limit"])
def test_a_ping_chunk_past_its_time_limit_fails_each_of_its_tasks(
    own: OwnStack, worker_factory: Any, frozen: bool
) -> None:
    geo = unique_geo()
    worker = worker_factory(
        [f"{geo}.ping", "results"], own.env, pool="prefork", concurrency=1
    )
    raw = {"type": "ping", "geo_location": geo, "payload": {"count": 30}}
    tasks = [
        validate_task(
            {**raw, "payload": {**raw["payload"], "host": f"127.0.0.{n}"}}, own.settings
        )
        for n in (1, 2, 3)
    ]
    ids = [str(uuid.uuid4()) for _ in tasks]
    TaskStore(own.settings).create(
        [stored_document(i, t) for i, t in zip(ids, tasks, strict=True)]
    )
    chunk = ping_chunk_signature(
        f"{geo}.ping", [(i, {**t, "id": i}) for i, t in zip(ids, tasks, strict=True)]
    )
    # 30 echoes take 3.9 s; the limits come at 1.5 s and 3 s.
    chunk.set(soft_time_limit=1.5, time_limit=3)
    with celery_app.connection_for_write(own.redis.url(1)) as connection:
        chunk.apply_async(connection=connection)

    wait_until(
        lambda: b"pinging a chunk of 3" in worker.log_path.read_bytes(), 30, "chunk"
    )
    if frozen:
        (pool_process,) = pool_children(worker.pid)
        os.kill(pool_process, signal.SIGSTOP)
    finished = [own.wait(task_id) for task_id in ids]

    for task in finished:
        assert task["status"] == "failed"
        assert task["result"]["error"]["code"] == "timeout"
        assert [d["kind"] for d in task["result"]["deviations"]] == ["unreachable"]
