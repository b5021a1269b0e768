"""Every way a stream can fail gets its own answer from the probe, in bounded time."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

from camtester.devtools.netns import Namespace
from camtester.devtools.silent_server import SilentServer
from camtester.devtools.simulator import CameraSimulator
from camtester.devtools.stall_proxy import StallProxy
from camtester.errors import (
    MeasurementError,
    TargetNotFound,
    TargetRefused,
    TargetTimeout,
    TargetUnauthorized,
)
from camtester.probes.probe import ProbeOutcome, probe_stream
from tests.fixtures.media import SECURE_PASSWORD, SECURE_USER
from tests.test_ffmpeg_runner import no_ffmpeg_left  # noqa: F401

DURATION_S = 3.0
TIMEOUT_S = 5.0
#: The bound the issue sets: duration + connect timeout + a few seconds.
BOUND_S = DURATION_S + TIMEOUT_S + 3


def timed(call: Callable[[], ProbeOutcome]) -> tuple[ProbeOutcome | Exception, float]:
    started = time.monotonic()
    try:
        result: ProbeOutcome | Exception = call()
    except MeasurementError as exc:
        result = exc
    return result, time.monotonic() - started


def probe(uri: str, duration_s: float = DURATION_S) -> tuple[object, float]:
    return timed(
        lambda: probe_stream(uri, duration_s=duration_s, connect_timeout_s=TIMEOUT_S)
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_refused() -> None:
    result, elapsed = probe(f"rtsp://127.0.0.1:{closed_port()}/live")

    assert isinstance(result, TargetRefused) and result.code == "refused"
    assert elapsed < BOUND_S


def test_not_found(camera: CameraSimulator) -> None:
    result, elapsed = probe(camera.url("no-such-mount"))

    assert isinstance(result, TargetNotFound) and result.code == "not_found"
    assert elapsed < BOUND_S


def test_unauthorized_without_credentials(camera: CameraSimulator) -> None:
    result, elapsed = probe(camera.url("secure"))

    assert isinstance(result, TargetUnauthorized) and result.code == "unauthorized"
    assert elapsed < BOUND_S


def test_unauthorized_with_a_wrong_password(camera: CameraSimulator) -> None:
    result, _ = probe(camera.url("secure", SECURE_USER, "Wr0ngPass"))

    assert isinstance(result, TargetUnauthorized)
    assert "Wr0ngPass" not in str(result)


def test_password_with_at_and_colon_gets_through_unseen(
    camera: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    # Written raw, as a user would: rtsp://viewer:p@ss:w0rd@host:port/secure.
    raw = (
        f"rtsp://{SECURE_USER}:{SECURE_PASSWORD}@{camera.address}:{camera.port}/secure"
    )
    caplog.set_level(logging.DEBUG)

    result, _ = probe(raw)

    assert isinstance(result, ProbeOutcome)
    assert abs(result.payload["video_frames"] - DURATION_S * 25) <= 1
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Running ffmpeg" in logged
    for text in (json.dumps(result.payload), logged):
        assert SECURE_PASSWORD not in text
        assert "p%40ss%3Aw0rd" not in text


def test_silent_server_times_out() -> None:
    with SilentServer() as silent:
        result, elapsed = probe(silent.url("live"))

        assert silent.accepted >= 1
    assert isinstance(result, TargetTimeout) and result.code == "timeout"
    assert TIMEOUT_S * 0.9 <= elapsed < BOUND_S


def test_unresolvable_host_inside_a_loopback_only_namespace(
    loopback_netns: Namespace,
) -> None:
    # No DNS query can leave a namespace that has nothing but lo.
    code = textwrap.dedent(
        """
        import json, time
        from camtester.errors import MeasurementError
        from camtester.probes.probe import probe_stream
        started = time.monotonic()
        try:
            probe_stream("rtsp://cam-17.invalid/live", duration_s=3, connect_timeout_s=5)
            code = "ok"
        except MeasurementError as exc:
            code = exc.code
        print(json.dumps({"code": code, "elapsed": time.monotonic() - started}))
        """
    )

    done = loopback_netns.run([sys.executable, "-c", code], timeout=60)

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["code"] == "unresolvable"
    assert answer["elapsed"] < BOUND_S


def test_stalled_stream_reports_what_arrived(camera: CameraSimulator) -> None:
    # 3 s of an all-black picture, then silence with the connection open.
    requested = 5.0
    with StallProxy(camera.address, camera.port, stall_after_s=3.0) as proxy:
        result, elapsed = probe(proxy.url("allblack"), duration_s=requested)

    assert isinstance(result, ProbeOutcome)
    payload = result.payload
    assert payload["stalled"] is True
    assert payload["requested_duration_sec"] == requested
    assert 2.5 <= payload["sample_duration_sec"] <= 3.5
    # Black until the stream stopped, not until the requested end.
    [[start, end]] = payload["black_intervals"]
    assert start == 0.0 and end == payload["sample_duration_sec"]
    assert payload["black_frames"] == payload["video_frames"]
    assert elapsed < requested + TIMEOUT_S + 3


def test_uri_with_graph_syntax_stays_an_input(camera: CameraSimulator) -> None:
    # Commas, colons, quotes, brackets and movie= in the query: still one input.
    uri = camera.url("clean") + "?a=1,movie=/etc/passwd:x='y';[out0]"

    result, _ = probe(uri)

    assert isinstance(result, ProbeOutcome)
    assert abs(result.payload["video_frames"] - DURATION_S * 25) <= 1
    assert result.payload["black_intervals"] == []


def test_no_probe_leaves_a_process_behind_when_interrupted(
    camera: CameraSimulator,
) -> None:
    """A worker killed mid-probe takes its ffmpeg with it."""
    code = textwrap.dedent(
        f"""
        from camtester.probes.probe import probe_stream
        print("start", flush=True)
        probe_stream({camera.url("clean")!r}, duration_s=30)
        """
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    worker.stdout.readline()
    time.sleep(1.5)
    children = _children_named(worker.pid, "ffmpeg")
    worker.kill()
    worker.wait()

    assert len(children) == 1
    deadline = time.monotonic() + 5
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in children)


def _children_named(parent: int, name: str) -> list[int]:
    done = subprocess.run(
        ["ps", "-o", "pid=,comm=", "--ppid", str(parent)],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(line.split()[0]) for line in done.stdout.splitlines() if name in line]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            text = status.read()
    except OSError:
        return False
    return "State:\tZ" not in text
