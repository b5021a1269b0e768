"""Flower, started as a deployment starts it, watches the test stack's worker.

Its own HTTP API (behind basic auth) must list the running worker and the
camtester tasks that finished, with a measurement's arguments in the masked form
camtester publishes, never with the camera's password.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.services import (
    REPO,
    VENV_BIN,
    ApiClient,
    Stack,
    free_port,
    wait_for_port,
)

FLOWER_USER = "ops"
FLOWER_PASSWORD = "flower-test-password"
CAMERA_PASSWORD = "p%40ss"


class Flower:
    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process
        self.session = requests.Session()
        self.session.auth = (FLOWER_USER, FLOWER_PASSWORD)

    def get(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        response = self.session.get(url, params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def wait_for(self, path: str, found: Any, timeout_s: float = 30.0) -> Any:
        """Poll `path` until `found(answer)` holds; return that answer."""
        deadline = time.monotonic() + timeout_s
        answer = None
        while time.monotonic() < deadline:
            answer = self.get(path)
            if found(answer):
                return answer
            time.sleep(0.3)
        raise AssertionError(f"Flower's {path} never matched: {answer}")


@pytest.fixture
def flower(stack: Stack, tmp_path: Path) -> Iterator[Flower]:
    port = free_port()
    argv = [
        str(VENV_BIN / "celery"),
        "-A",
        "camtester",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}",
    ]
    with open(tmp_path / "flower.log", "wb") as log:
        process = subprocess.Popen(
            argv, env=stack.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(port, timeout_s=60)
            yield Flower(port, process)
        finally:
            process.terminate()
            process.wait(timeout=30)


def worker_hostname(stack: Stack) -> str:
    return stack.worker.name.replace("%h", socket.gethostname())


def test_flower_api_needs_its_basic_auth(flower: Flower) -> None:
    url = f"http://127.0.0.1:{flower.port}/api/workers"

    anonymous = requests.get(url, timeout=30)
    wrong = requests.get(url, auth=(FLOWER_USER, "wrong"), timeout=30)

    assert anonymous.status_code == 401
    assert wrong.status_code == 401


def test_flower_lists_the_worker_and_finished_camtester_tasks(
    flower: Flower, stack: Stack, api: ApiClient
) -> None:
    hostname = worker_hostname(stack)
    # Heartbeats arrive as events: once Flower has one, it also sees the tasks'.
    flower.wait_for("/api/workers?status=true", lambda a: a.get(hostname) is True)
    ping_id = api.submit(
        {
            "type": "ping",
            "geo_location": "local",
            "payload": {"host": "127.0.0.1", "count": 2, "interval": 0.05},
        }
    )
    secret_uri = f"rtsp://viewer:{CAMERA_PASSWORD}@127.0.0.1:{free_port()}/x"
    probe_id = api.submit(
        {
            "type": "probe",
            "geo_location": "local",
            "payload": {"uri": secret_uri, "duration": 2},
        }
    )
    api.wait(ping_id)
    assert api.wait(probe_id)["result"]["error"]["code"] == "refused"

    workers = flower.get("/api/workers", refresh=1)
    tasks = flower.wait_for(
        "/api/tasks",
        lambda a: (
            probe_id in finished_ids(a, "camtester.aggregate")
            and any(
                ping_id in str(t["args"]) for t in finished(a, "camtester.ping_chunk")
            )
        ),
    )

    assert hostname in workers
    assert "local.ping" in queue_names(workers[hostname])
    # A plain ping travels in a chunk message, which names its task ids.
    pings = [t for t in tasks.values() if t["name"] == "camtester.ping_chunk"]
    ours = [t for t in pings if ping_id in str(t["args"])]
    assert len(ours) == 1
    assert ours[0]["state"] == "SUCCESS"
    assert ours[0]["worker"] == hostname

    probes = [t for t in tasks.values() if t["name"] == "camtester.probe"]
    probe = next(t for t in probes if probe_id in str(t["args"]))
    assert "rtsp://***@127.0.0.1" in probe["args"]
    everything = str(tasks)
    assert CAMERA_PASSWORD not in everything
    assert "viewer" not in everything


def finished(tasks: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Flower's finished tasks of `name`."""
    return [t for t in tasks.values() if t["name"] == name and t["state"] == "SUCCESS"]


def finished_ids(tasks: dict[str, Any], name: str) -> set[str]:
    """camtester task ids (first argument) of Flower's finished `name` tasks."""
    ids = set()
    for task in tasks.values():
        if task.get("name") == name and task.get("state") == "SUCCESS":
            ids.add(str(task.get("args")).split("'")[1])
    return ids


def queue_names(worker: dict[str, Any]) -> set[str]:
    return {queue["name"] for queue in worker.get("active_queues") or []}
