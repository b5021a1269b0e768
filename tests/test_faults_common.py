"""Helpers of the fault tests (no tests here): a live camera, an ffmpeg census,
a stack of one's own with short time limits, and waiting.

The fault tests need settings the session `stack` does not have (short samples,
a short visibility timeout), so each builds its own redis-server, API and
workers from the fixtures in tests/fixtures/services.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import requests

from camtester.tasks.publish import measurement_steps
from tests.fixtures.services import (
    JWT_SECRET,
    REPO,
    ApiClient,
    RedisServer,
    make_token,
    service_env,
)

SIMULATOR = REPO / "camtester" / "devtools" / "rtsp_server.py"
FFMPEG_NAMES = ("ffmpeg", "ffprobe")


class LiveCamera:
    """The simulator serving endless test pictures at `/<name>` (own process).

    Every mount name is unique per test, so that an ffmpeg reading it can be
    told from the ffmpeg of any other test running at the same time.
    """

    def __init__(self, names: int = 1, auth: tuple[str, str] | None = None) -> None:
        self.names = [f"live-{uuid.uuid4().hex[:12]}" for _ in range(names)]
        self.auth = auth
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> LiveCamera:
        argv = ["/usr/bin/python3", str(SIMULATOR), "--port", "0"]
        for name in self.names:
            argv += ["--pattern", name]
            if self.auth:
                argv += ["--auth", f"{name}={self.auth[0]}:{self.auth[1]}"]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.port = int(line.split()[2])
        return self

    def uri(self, index: int = 0, credentials: str | None = None) -> str:
        userinfo = f"{credentials}@" if credentials else ""
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/{self.names[index]}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None


def ffmpeg_processes(marker: str) -> dict[int, int]:
    """pid -> parent pid of every live ffmpeg/ffprobe whose argv holds `marker`."""
    return {pid: parent for pid, (parent, _) in _ffmpeg_table(marker).items()}


def _ffmpeg_table(marker: str) -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of the live ffmpeg/ffprobe reading `marker`."""
    found: dict[int, tuple[int, list[str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        state = stat.rpartition(b")")[2].split()
        if state and state[0] == b"Z":
            # A zombie has been killed already; only its parent's wait is due.
            continue
        name = os.path.basename(argv[0].decode(errors="replace"))
        if name in FFMPEG_NAMES and any(marker.encode() in arg for arg in argv):
            words = [arg.decode(errors="replace") for arg in argv if arg]
            found[int(entry)] = (int(state[1]), words)
    return found


class FfmpegCensus:
    """Watches /proc in a thread and remembers every ffmpeg that read `marker`."""

    def __init__(self, marker: str, period_s: float = 0.02) -> None:
        self.marker = marker
        self.period_s = period_s
        self.seen: dict[int, int] = {}
        self.argv: dict[int, list[str]] = {}
        self.last_alive_at: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for pid, (parent, argv) in _ffmpeg_table(self.marker).items():
                self.seen.setdefault(pid, parent)
                self.argv.setdefault(pid, argv)
                self.last_alive_at[pid] = now
            self._stop.wait(self.period_s)

    def alive(self) -> dict[int, int]:
        return ffmpeg_processes(self.marker)

    def wait_for_new(self, known: int, timeout_s: float = 60.0) -> tuple[int, int]:
        """The (pid, parent) of the ffmpeg started after the first `known` ones."""
        wait_until(lambda: len(self.seen) > known, timeout_s, "a new ffmpeg")
        pid = list(self.seen)[known]
        return pid, self.seen[pid]


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, period_s: float = 0.05
) -> Any:
    """Poll until `predicate()` is truthy; its value, or AssertionError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period_s)
    raise AssertionError(f"no {what} within {timeout_s:g}s")


def wait_gone(pid: int, timeout_s: float) -> float:
    """Seconds until process `pid` is gone (or a zombie); AssertionError after."""
    started = time.monotonic()

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                state = handle.read().rpartition(b")")[2].split()[0]
        except OSError:
            return True
        return state == b"Z"

    wait_until(gone, timeout_s, f"end of process {pid}", period_s=0.01)
    return time.monotonic() - started


def pool_children(worker_pid: int) -> list[int]:
    """The pids of the processes whose parent is `worker_pid`."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(state[1]) == worker_pid and state[0] != b"Z":
            children.append(int(entry))
    return children


def short_env(redis_server: RedisServer, **extra: str) -> dict[str, str]:
    """Environment of a worker or an API with samples of at most 4 s."""
    env = {
        "CAMTESTER_MAX_SAMPLE_DURATION_S": "4",
        "CAMTESTER_CONNECT_TIMEOUT_S": "2",
        **extra,
    }
    return service_env(redis_server.url(0), redis_server.url(1), **env)


def check_task(geo: str, uri: str, duration: float = 3) -> dict[str, Any]:
    return {
        "type": "check",
        "geo_location": geo,
        "payload": {"uri": uri, "duration": duration},
    }


def measurement_chain(task_id: str, index: int, task: dict[str, Any]) -> Any:
    """The chain the API publishes for subtask `index`: measure, then aggregate."""
    measure, aggregate = measurement_steps(task_id, index, task)
    return measure | aggregate


def unique_geo() -> str:
    return f"f{uuid.uuid4().hex[:10]}"


def worker_log_lines(log_path: Path, task_id: str, text: str) -> int:
    """How many lines of a worker log about `task_id` contain `text`."""
    lines = log_path.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if task_id in line and text in line)


def client_for(base_url: str) -> ApiClient:
    return ApiClient(base_url, make_token(JWT_SECRET))


def get_json(url: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token or make_token(JWT_SECRET)}"}
    return requests.get(url, headers=headers, timeout=30)
