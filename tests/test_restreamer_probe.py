"""Probe and check read a camera through its region's restreamer when it has one.

A second camera simulator stands in for the restreamer on loopback: it serves the
clean clip under the mount `<url-safe base64 of the camera's URI>`, which is the
path camtester asks a restreamer for. The camera itself is stopped, so only a
read through the restreamer can succeed.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camtester.devtools.simulator import CameraSimulator
from tests.fixtures.services import ApiClient, Stack

SECRET = f"pw-{uuid.uuid4().hex[:12]}"


def new_region() -> str:
    return f"rs{uuid.uuid4().hex[:10]}"


def token(uri: str) -> str:
    return base64.urlsafe_b64encode(uri.encode()).decode()


def stream_task(kind: str, geo: str, uri: str) -> dict[str, Any]:
    return {"type": kind, "geo_location": geo, "payload": {"uri": uri, "duration": 3}}


@pytest.fixture
def gone_camera_uri(fault_clips: dict[str, Path]) -> str:
    """The URI of a camera (with credentials) that no longer answers."""
    camera = CameraSimulator(
        {"clean": fault_clips["clean"]}, auth={"clean": ("viewer", SECRET)}
    ).start()
    uri = camera.url("clean", "viewer", SECRET)
    camera.stop()
    return uri


@pytest.fixture
def restreamer(
    gone_camera_uri: str, fault_clips: dict[str, Path]
) -> Iterator[CameraSimulator]:
    with CameraSimulator({token(gone_camera_uri): fault_clips["clean"]}) as server:
        yield server


def region_worker(worker_factory: Any, stack: Stack, geo: str) -> None:
    worker_factory([f"{geo}.probe", f"{geo}.check"], stack.env, concurrency=2)


def test_probe_and_check_succeed_through_the_restreamer_alone(
    api: ApiClient,
    stack: Stack,
    worker_factory: Any,
    gone_camera_uri: str,
    restreamer: CameraSimulator,
) -> None:
    geo, bare = new_region(), new_region()
    host = f"127.0.0.1:{restreamer.port}"
    assert api.post("/restreamers", json={"geo_location": geo, "host": host}).ok
    region_worker(worker_factory, stack, geo)
    region_worker(worker_factory, stack, bare)

    probe = api.wait(api.submit(stream_task("probe", geo, gone_camera_uri)))
    check = api.wait(api.submit(stream_task("check", geo, gone_camera_uri)))
    direct = api.wait(api.submit(stream_task("probe", bare, gone_camera_uri)))

    assert probe["status"] == "done", probe["result"]
    assert probe["result"]["payload"]["restreamer"] == host
    assert probe["result"]["payload"]["video_frames"] > 0
    assert probe["result"]["deviations"] == []
    assert check["status"] == "done", check["result"]
    assert check["result"]["payload"]["restreamer"] == host
    # Without restreamers the region reads the camera itself, which is gone.
    assert direct["status"] == "failed"
    assert direct["result"]["error"]["code"] == "refused"
    for task in (probe, check, direct):
        assert SECRET not in str(task)
        assert token(gone_camera_uri) not in str(task)


def test_without_restreamers_the_camera_is_read_directly(
    api: ApiClient, camera: CameraSimulator
) -> None:
    task = api.wait(api.submit(stream_task("probe", "local", camera.url("clean"))))

    assert task["status"] == "done", task["result"]
    assert "restreamer" not in task["result"]["payload"]
    assert task["result"]["payload"]["video_frames"] > 0


def test_a_failing_restreamer_shows_neither_the_password_nor_its_base64(
    api: ApiClient, stack: Stack, worker_factory: Any, gone_camera_uri: str
) -> None:
    # Nothing listens on port 9 of loopback: the restreamer refuses at once.
    geo = new_region()
    api.post("/restreamers", json={"geo_location": geo, "host": "127.0.0.1:9"})
    worker = worker_factory([f"{geo}.probe"], stack.env, concurrency=1)

    task = api.wait(api.submit(stream_task("probe", geo, gone_camera_uri)))

    assert task["status"] == "failed"
    assert task["result"]["error"]["code"] == "refused"
    assert "127.0.0.1:9" in task["result"]["error"]["message"]
    log = worker.log_path.read_text()
    for text in (str(task), log):
        assert SECRET not in text
        assert token(gone_camera_uri) not in text
