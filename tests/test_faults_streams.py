"""Cameras that never stop: a live stream that sends forever, and a broken one
that floods ffmpeg's log. The task still ends at its duration plus the timeout,
its stored result stays small, and no ffmpeg outlives it."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import pytest

from tests.test_faults import OwnStack
from tests.test_faults_common import (
    FfmpegCensus,
    LiveCamera,
    check_task,
    unique_geo,
    wait_gone,
)

TS_PACKET = 188
VIDEO_PID = 0x100  # where ffmpeg's mpegts muxer puts the first stream
#: A stored result must stay this small however much ffmpeg wrote.
MAX_RESULT_BYTES = 16 * 1024
#: Beyond duration + connect timeout: ffmpeg's start, its SIGINT grace, the
#: broker and the store, on a machine busy with other tests.
END_SLACK_S = 15.0


def broken_clip(directory: Path) -> bytes:
    """One second of H.264 (200 frames, 8 slices each) in MPEG-TS, with every
    second video packet that does not start a frame scrambled: a decoder error
    or more for almost every slice, thousands of lines for a 3 s sample."""
    path = directory / "broken.ts"
    subprocess.run(
        [
            *("ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=200:duration=1"),
            *("-c:v", "libx264", "-preset", "ultrafast", "-x264-params", "slices=8"),
            *("-g", "10", "-f", "mpegts", str(path)),
        ],
        check=True,
        timeout=60,
    )
    data = bytearray(path.read_bytes())
    noise = random.Random(6)
    continuing = 0
    for start in range(0, len(data) - TS_PACKET + 1, TS_PACKET):
        pid = ((data[start + 1] & 0x1F) << 8) | data[start + 2]
        starts_unit = data[start + 1] & 0x40
        if pid != VIDEO_PID or starts_unit:
            continue
        continuing += 1
        if continuing % 2 == 0:
            data[start + 4 : start + TS_PACKET] = noise.randbytes(TS_PACKET - 4)
    return bytes(data)


class EndlessHttpCamera:
    """An HTTP server that sends the same broken second of video forever.

    `slowdown` 1 sends it as fast as the client reads; 4 spreads each second of
    video over four seconds, in small pieces so that no read times out, like a
    camera whose stream time lags ever further behind.
    """

    def __init__(self, clip: bytes, slowdown: float = 1.0) -> None:
        self.clip = clip
        self.slowdown = slowdown
        self.stopping = threading.Event()
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                try:
                    camera.send_forever(self.wfile)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def send_forever(self, out: Any) -> None:
        pieces = 1 if self.slowdown <= 1 else 20
        size = -(-len(self.clip) // pieces)
        pause = (self.slowdown - 1) / pieces if self.slowdown > 1 else 0.0
        while not self.stopping.is_set():
            for offset in range(0, len(self.clip), size):
                out.write(self.clip[offset : offset + size])
                out.flush()
                self.stopping.wait(pause)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/endless.ts"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def camera() -> Iterator[LiveCamera]:
    cam = LiveCamera().start()
    yield cam
    cam.stop()


@pytest.fixture
def own(redis_factory: Any) -> OwnStack:
    return OwnStack(redis_factory())


#: The payload figure that says how much of the stream was read.
READ_S = {"check": "duration_sec", "probe": "sample_duration_sec"}


def run_check(
    own: OwnStack,
    worker_factory: Any,
    uri: str,
    marker: str,
    duration: float,
    task_type: str = "check",
) -> tuple[dict[str, Any], float, FfmpegCensus]:
    """Submit a check or probe of `uri`; the finished task and its seconds."""
    geo = unique_geo()
    worker_factory([f"{geo}.{task_type}", "results"], own.env, concurrency=2)
    task = {**check_task(geo, uri, duration=duration), "type": task_type}
    with FfmpegCensus(marker) as census:
        started = time.monotonic()
        task_id = own.submit(task)
        task = own.wait(task_id, timeout_s=120)
        elapsed = time.monotonic() - started
        for pid in census.seen:
            wait_gone(pid, 2.0)
    return task, elapsed, census


@pytest.mark.parametrize("task_type", ["check", "probe"])
def test_a_camera_that_sends_forever_is_read_for_the_duration(
    own: OwnStack, camera: LiveCamera, worker_factory: Any, task_type: str
) -> None:
    task, elapsed, census = run_check(
        own, worker_factory, camera.uri(), camera.names[0], 3, task_type
    )

    assert task["status"] == "done"
    read_s = task["result"]["payload"][READ_S[task_type]]
    assert read_s == pytest.approx(3, abs=0.5)
    assert elapsed < 3 + own.settings.connect_timeout_s + END_SLACK_S
    assert len(census.seen) == 1
    assert census.alive() == {}


@pytest.mark.parametrize("task_type", ["check", "probe"])
def test_a_camera_that_lags_ever_further_is_stopped_at_the_timeout(
    own: OwnStack, worker_factory: Any, tmp_path: Path, task_type: str
) -> None:
    # 3 s of its video take 12 s to arrive; the check gives up long before.
    with EndlessHttpCamera(broken_clip(tmp_path), slowdown=4) as camera:
        task, elapsed, census = run_check(
            own, worker_factory, camera.uri, "endless.ts", 3, task_type
        )

    assert task["status"] in ("done", "failed")
    assert elapsed < 3 + own.settings.connect_timeout_s + END_SLACK_S
    assert len(census.seen) == 1
    assert census.alive() == {}


@pytest.mark.parametrize("task_type", ["check", "probe"])
def test_a_broken_camera_flooding_the_log_leaves_a_small_result(
    own: OwnStack, worker_factory: Any, tmp_path: Path, task_type: str
) -> None:
    with EndlessHttpCamera(broken_clip(tmp_path)) as camera:
        task, elapsed, census = run_check(
            own, worker_factory, camera.uri, "endless.ts", 3, task_type
        )

    stored = own.stored_results(task["id"])[b"0"]
    assert task["status"] == "done"
    errors = "decoding_errors" if task_type == "check" else "recording_errors"
    assert task["result"]["payload"][errors] > 1000
    assert len(stored) < MAX_RESULT_BYTES
    assert json.loads(stored) == task["result"]
    assert elapsed < 3 + own.settings.connect_timeout_s + END_SLACK_S
    assert len(census.seen) == 1
    assert census.alive() == {}
