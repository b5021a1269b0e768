"""Credentials in camera URIs: masked wherever they are shown, kept only where
the worker needs them (the queued message and ffmpeg's command line).

One real run end to end: gunicorn API and a worker logging at DEBUG, a camera
that asks for a password, Celery's event stream (what Flower shows) tapped
throughout; then every answer, log line, stored key and event is searched.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from celery import Celery

from tests.fixtures.services import ApiClient, ApiServer, RedisServer, service_env
from tests.test_faults_common import (
    FfmpegCensus,
    LiveCamera,
    unique_geo,
    wait_until,
)

#: Distinctive enough to be found nowhere else; "@" and ":" must be encoded.
PASSWORD = "Zq7xWv@p:w"
TELLTALES = ("Zq7xWv", "Zq7xWv%40p")


class EventTap:
    """Collects every Celery event on a broker, as Flower would receive them."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("tap", broker=broker_url, set_as_current=False)
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection() as connection:
            self.receiver = self.app.events.Receiver(
                connection, handlers={"*": self.events.append}
            )
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Self:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=10)
        self.app.close()


def dump_redis(server: RedisServer, db: int) -> str:
    """Every key and value of one database, as text."""
    client = server.client(db)
    parts = []
    for key in client.scan_iter():
        kind = client.type(key).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def assert_no_password(where: str, text: str) -> None:
    for telltale in TELLTALES:
        assert telltale not in text, f"the password shows in {where}"


@pytest.fixture
def camera() -> Iterator[LiveCamera]:
    cam = LiveCamera(names=2, auth=("viewer", PASSWORD)).start()
    yield cam
    cam.stop()


def test_credentials_are_masked_everywhere_but_kept_for_the_worker(
    redis_factory: Any, worker_factory: Any, camera: LiveCamera, tmp_path: Path
) -> None:
    store = redis_factory()
    env = service_env(store.url(0), store.url(1), CAMTESTER_LOG_LEVEL="DEBUG")
    server = ApiServer(env, tmp_path / "api.log").start()
    api = ApiClient(server.url)
    geo = unique_geo()
    good = camera.uri(0, credentials=f"viewer:{PASSWORD}")
    wrong = camera.uri(1, credentials="viewer:Zq7xWv-wrong")
    tasks = [
        {"type": "check", "geo_location": geo, "payload": {"uri": good, "duration": 2}},
        {"type": "probe", "geo_location": geo, "payload": {"uri": good, "duration": 2}},
        {
            "type": "check",
            "geo_location": geo,
            "payload": {"uri": wrong, "duration": 2},
        },
    ]

    try:
        with EventTap(store.url(1)) as tap, FfmpegCensus(camera.names[0]) as census:
            submitted = [api.post("/tasks", json=task) for task in tasks]
            # Queued, not yet consumed: what the broker holds for the worker.
            queued = [
                json.loads(message)
                for queue in (f"{geo}.check", f"{geo}.probe")
                for message in store.client(1).lrange(queue, 0, -1)
            ]
            worker = worker_factory(
                [f"{geo}.check", f"{geo}.probe", "results"], env, concurrency=3
            )
            ids = [response.json()["id"] for response in submitted]
            finished = [api.wait(task_id) for task_id in ids]
            wait_until(lambda: len(tap.events) >= 12, 10, "the events")
        answers = [r.text for r in submitted]
        for path in [f"/tasks/{i}" for i in ids] + [f"/tasks/{i}/result" for i in ids]:
            answers.append(api.get(path).text)
        answers.append(api.get("/deviations", params={"target": good}).text)
        answers.append(api.get("/metrics").text)
    finally:
        server.stop()

    assert [t["status"] for t in finished] == ["done", "done", "failed"]
    assert finished[2]["result"]["error"]["code"] == "unauthorized"
    assert finished[0]["payload"]["uri"] == camera.uri(0, credentials="***")
    assert_no_password("API answers", "\n".join(answers))
    assert_no_password("the API log", (tmp_path / "api.log").read_text())
    assert_no_password("the worker log", worker.log_path.read_text())
    assert_no_password("the task store", dump_redis(store, 0))
    assert_no_password("Celery events", json.dumps(tap.events, default=str))
    assert {e["type"] for e in tap.events} >= {"task-received", "task-succeeded"}
    headers = json.dumps([message["headers"] for message in queued])
    assert_no_password("queued message headers", headers)
    # The worker cannot log in without it: the message body and ffmpeg have it.
    bodies = [base64.b64decode(message["body"]).decode() for message in queued]
    assert len(bodies) == 3
    assert all("Zq7xWv" in body for body in bodies)
    encoded = "viewer:Zq7xWv%40p%3Aw@"
    assert census.argv and all(encoded in " ".join(a) for a in census.argv.values())
