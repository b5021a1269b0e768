"""Shared parts of the fleet benchmarks: the service as a user starts it, and /proc.

`bench_stack` starts redis-server, Celery workers and the gunicorn API as
subprocesses on free loopback ports (the classes of tests/fixtures/services.py),
so that a benchmark measures the real pipeline. CPU and memory come from /proc
directly, so no extra package is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from camtester.devtools.media import ClipSpec, make_clip
from camtester.store import keys
from tests.fixtures.services import (
    REPO,
    VENV_BIN,
    ApiClient,
    ApiServer,
    CeleryWorker,
    RedisServer,
    service_env,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MEDIA_DIR = REPO / "var" / "bench-media"
#: The benchmark stream: 720p at 25 fps, H.264 (libx264 veryfast, a keyframe
#: a second) and AAC, a moving test picture and a 440 Hz tone.
CLIP_SIZE = "1280x720"
CLIP_FPS = 25
#: Seconds of the clip: the benchmarks' samples and their RTSP set-up fit.
CLIP_LENGTH_S = 8.0
TERMINAL = (b"done", b"failed")
MIB = 1024 * 1024


@dataclass(frozen=True)
class WorkerSpec:
    """One `celery -A camtester worker` command line."""

    queues: tuple[str, ...]
    pool: str = "threads"
    concurrency: int = 8
    #: `--prefetch-multiplier`; None keeps celeryconfig's value.
    prefetch: int | None = None
    #: CAMTESTER_LOG_LEVEL of the worker.
    log_level: str = "INFO"

    def argv(self, name: str) -> list[str]:
        argv = [str(VENV_BIN / "celery"), "-A", "camtester", "worker"]
        argv += ["-Q", ",".join(self.queues), "-P", self.pool]
        argv += ["-c", str(self.concurrency), "-n", name]
        argv += ["--without-gossip", "--without-mingle"]
        if self.prefetch is not None:
            argv += ["--prefetch-multiplier", str(self.prefetch)]
        return argv

    def describe(self) -> str:
        prefetch = (
            "" if self.prefetch is None else f" --prefetch-multiplier {self.prefetch}"
        )
        return (
            f"celery -A camtester worker -Q {','.join(self.queues)} "
            f"-P {self.pool} -c {self.concurrency}{prefetch}"
        )


class BenchWorker(CeleryWorker):
    """A CeleryWorker started from a WorkerSpec (prefetch and log level too)."""

    def __init__(
        self,
        spec: WorkerSpec,
        env: dict[str, str],
        log_path: Path,
        broker: redis.Redis,
    ) -> None:
        env = {**env, "CAMTESTER_LOG_LEVEL": spec.log_level}
        super().__init__(list(spec.queues), env, log_path, spec.concurrency, spec.pool)
        self.spec = spec
        self.broker = broker

    def start(self) -> BenchWorker:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            self.spec.argv(self.name),
            env=self.env,
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_consuming()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_consuming(self, timeout_s: float = 60.0) -> None:
        """Until the worker has bound its remote-control queue.

        It does so after setting up its task consumers, just before its event
        loop starts. The " ready." line the test fixtures wait for is an INFO
        line, missing at log level WARNING; the binding is there at any level.
        """
        control_queue = f"{self.name.replace('%h', socket.gethostname())}.celery.pidbox"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited: {self.log_path.read_text()[-3000:]}"
                )
            bindings = self.broker.smembers("_kombu.binding.celery.pidbox")
            if any(_text(b).endswith(control_queue) for b in bindings):
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready: {self.log_path.read_text()[-3000:]}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class BenchStack:
    """The running service: store, broker, workers and an API client."""

    redis_server: RedisServer
    api_server: ApiServer
    workers: list[BenchWorker]
    env: dict[str, str]
    directory: Path
    api: ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = ApiClient(self.api_server.url)

    @property
    def store(self) -> redis.Redis:
        return self.redis_server.client(0)

    def cpu_by_part(self) -> dict[str, float]:
        """CPU seconds so far of the API, redis-server, each worker and its children."""
        parts = {
            "api": self.api_server.process,
            "redis": self.redis_server.process,
            **{f"worker{i}": w.process for i, w in enumerate(self.workers)},
        }
        return {name: tree_cpu_s(p.pid) for name, p in parts.items() if p is not None}


@contextlib.contextmanager
def bench_stack(
    workers: Sequence[WorkerSpec], extra_env: dict[str, str] | None = None
) -> Iterator[BenchStack]:
    """redis-server (store db 0, broker db 1), workers, gunicorn; all stopped after."""
    directory = Path(tempfile.mkdtemp(prefix="ct-bench-"))
    started: list[BenchWorker] = []
    api_server: ApiServer | None = None
    with stop_on_sigterm():
        redis_server = RedisServer(directory / "redis").start()
        env = service_env(redis_server.url(0), redis_server.url(1), **(extra_env or {}))
        try:
            for i, spec in enumerate(workers):
                log_path = directory / f"worker{i}.log"
                worker = BenchWorker(spec, env, log_path, redis_server.client(1))
                started.append(worker.start())
            api_server = ApiServer(env, directory / "api.log").start()
            wait_healthy(api_server.url)
            yield BenchStack(redis_server, api_server, started, env, directory)
        finally:
            if api_server is not None:
                api_server.stop()
            for worker in started:
                worker.stop()
            redis_server.stop()
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (`timeout`, a CI runner) into SystemExit, so that the
    `finally` blocks stop every process a benchmark started."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_healthy(base_url: str, timeout_s: float = 30.0) -> None:
    """Until GET /healthz answers 200 (gunicorn listens before the app is loaded)."""
    client = ApiClient(base_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if client.get("/healthz").status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the API at {base_url} is not healthy after {timeout_s}s")


def bench_clip(at_least_s: float) -> Path:
    """The 720p benchmark clip, CLIP_LENGTH_S or longer, rendered once into var/."""
    length_s = max(CLIP_LENGTH_S, at_least_s)
    name = f"bench{CLIP_SIZE.split('x')[1]}p-{length_s:g}s"
    target = MEDIA_DIR / f"{name}.mp4"
    if target.exists():
        return target
    spec = ClipSpec(
        name,
        video=f"testsrc2=s={CLIP_SIZE}:r={CLIP_FPS}:d={length_s:g},format=yuv420p",
        audio=f"aevalsrc='0.25*sin(2*PI*440*t)':s=48000:d={length_s:g}",
    )
    MEDIA_DIR.mkdir(parents=True, exist_ok=True)
    return make_clip(spec, MEDIA_DIR)


def child_with(fragment: str) -> int | None:
    """The pid of a process below this one whose command line holds `fragment`."""
    for pid in descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if fragment.encode() in cmdline:
            return pid
    return None


def thread_count(pid: int) -> int:
    """Threads of a process, 0 once it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


# -- the store, read directly -----------------------------------------------------


def wait_terminal(
    store: redis.Redis, ids: Sequence[str], timeout_s: float, poll_s: float = 0.1
) -> bool:
    """Poll the task hashes until every task is done or failed; False on timeout.

    The end time of a run comes from the stored `updated_at`, not from this
    loop, so the polling interval only decides when the benchmark stops.
    """
    deadline = time.monotonic() + timeout_s
    waiting = list(ids)
    while True:
        pipe = store.pipeline(transaction=False)
        for task_id in waiting:
            pipe.hget(keys.task_key(task_id), "status")
        statuses = pipe.execute()
        waiting = [
            i for i, s in zip(waiting, statuses, strict=True) if s not in TERMINAL
        ]
        if not waiting or time.monotonic() >= deadline:
            return not waiting
        time.sleep(poll_s)


def stored_tasks(store: redis.Redis, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Status, `updated_at` (epoch s) and the first result of each task."""
    pipe = store.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(keys.task_key(task_id), "status", "updated_at")
        pipe.hget(keys.results_key(task_id), "0")
    replies = pipe.execute()

    tasks = []
    for (status, updated), result in zip(replies[::2], replies[1::2], strict=True):
        tasks.append(
            {
                "status": status.decode() if status else None,
                "updated_at": epoch(updated.decode()) if updated else None,
                "result": json.loads(result) if result else None,
            }
        )
    return tasks


def epoch(iso: str) -> float:
    """Seconds since the epoch of camtester's "2024-05-01T12:00:00.123Z"."""
    return datetime.fromisoformat(iso).timestamp()


# -- /proc -----------------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds of a process: its own and that of its reaped children."""

    own_s: float
    children_s: float

    @property
    def total_s(self) -> float:
        return self.own_s + self.children_s

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.own_s - other.own_s, self.children_s - other.children_s)


def cpu_times(pid: int) -> CpuTimes:
    """utime+stime and cutime+cstime of `pid` (fields 14-17 of proc_pid_stat(5))."""
    fields = _stat_fields(pid)
    # fields[0] is field 3 (state), after "pid (comm)".
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return CpuTimes((utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS)


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rpartition(b")")[2].decode().split()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and of every process below it, living or reaped."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        try:
            total += cpu_times(each).total_s
        except (OSError, IndexError, ValueError):
            # Ended between the listing and the read: its parent has its time.
            continue
    return total


def descendants(pid: int) -> list[int]:
    """Every living process below `pid` (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(entry))

    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of `pid` in KiB from smaps_rollup; (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            text = rollup.read()
    except OSError:
        return 0, 0
    rss = re.search(r"^Rss:\s+(\d+) kB", text, re.MULTILINE)
    pss = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    return (int(rss.group(1)) if rss else 0, int(pss.group(1)) if pss else 0)


def tree_memory_kib(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, processes) summed over `pid` and its descendants."""
    pids = [pid, *descendants(pid)]
    rss = pss = 0
    for each in pids:
        one_rss, one_pss = memory_kib(each)
        rss += one_rss
        pss += one_pss
    return rss, pss, len(pids)


# -- reporting -------------------------------------------------------------------


def machine() -> str:
    """One line naming the machine a figure was measured on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib_total = 0
    with contextlib.suppress(OSError, IndexError, ValueError):
        memory_kib_total = int(Path("/proc/meminfo").read_text().split()[1])
    load = os.getloadavg()[0]
    return (
        f"{model}, {os.cpu_count()} cores, {memory_kib_total / MIB:.0f} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"{_first_line(['ffmpeg', '-hide_banner', '-version'])}, "
        f"{_first_line(['redis-server', '--version'])}; load {load:.2f} at start"
    )


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]} missing"
    words = done.stdout.split()
    return " ".join(words[:3]) if words else argv[0]


def ratio(name: str, value: float, limit: float, unit: str, goal: str = "") -> str:
    """`name: value unit = R x limit` with the goal it is held against."""
    goal_text = f"  (goal {goal})" if goal else ""
    return (
        f"{name}: {value:.3f} {unit} = {value / limit:.2f} x {limit:g} {unit}"
        f"{goal_text}"
    )
