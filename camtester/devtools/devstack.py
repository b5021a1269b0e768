"""`make run`: the whole service on one machine, with a demo camera.

Starts redis-server (data and append-only file under var/redis), one Celery
worker on every queue of region `local` plus `results`, Flower, the API under
gunicorn and a simulated camera; prints a token and a ready curl; Ctrl-C (or
SIGTERM) stops everything it started. Ports come from CAMTESTER_DEV_*_PORT.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from camtester.api.auth import issue_token
from camtester.devtools.simulator import CameraSimulator
from camtester.metrics import prepare_multiprocess_dir

REPO = Path(__file__).resolve().parents[2]
# Tests point this elsewhere so that they never touch a developer's own var/.
VAR = Path(os.environ.get("CAMTESTER_DEV_VAR", REPO / "var"))
BIN = Path(sys.executable).parent
QUEUES = "local.ping,local.probe,local.check,results"


#: Pool slots of the demo worker: pings, probes and checks at once.
WORKER_SLOTS = 16


def _port(name: str, default: int) -> int:
    return int(os.environ.get(f"CAMTESTER_DEV_{name}_PORT", default))


def _jwt_secret() -> str:
    """One secret per checkout, kept in var/, so tokens survive a restart."""
    path = VAR / "jwt-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _wait_for_port(port: int, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} is not listening on port {port}; see var/log/")


def _refuse_busy_port(port: int, what: str) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(
                f"port {port} for {what} is in use; set CAMTESTER_DEV_*_PORT to another"
            )


class Stack:
    """The processes `make run` started, stopped in reverse order."""

    def __init__(self) -> None:
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.camera: CameraSimulator | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        # Open for the life of the process; the child holds it after we exit.
        log = open(VAR / "log" / f"{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes.append((name, process))

    def stop(self) -> None:
        for name, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name, process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            print(f"stopped {name}")
        if self.camera is not None:
            self.camera.stop()
            print("stopped camera")

    def first_exited(self) -> str | None:
        for name, process in self.processes:
            if process.poll() is not None:
                return name
        return None


def main() -> None:
    (VAR / "log").mkdir(parents=True, exist_ok=True)
    (VAR / "redis").mkdir(parents=True, exist_ok=True)
    ports = {
        "redis": _port("REDIS", 6379),
        "api": _port("API", 8000),
        "flower": _port("FLOWER", 5555),
        "camera": _port("CAMERA", 8554),
        "worker_metrics": _port("WORKER_METRICS", 9808),
    }
    for what, port in ports.items():
        _refuse_busy_port(port, what)

    secret = _jwt_secret()
    redis_url = f"redis://127.0.0.1:{ports['redis']}"
    env = {
        **os.environ,
        "CAMTESTER_REDIS_URL": f"{redis_url}/0",
        "CAMTESTER_BROKER_URL": f"{redis_url}/1",
        "CAMTESTER_JWT_SECRET": secret,
        "CAMTESTER_WORKER_METRICS_PORT": str(ports["worker_metrics"]),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    stack = Stack()
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        _start_all(stack, env, ports)
        _announce(ports, secret)
        while not stopping:
            exited = stack.first_exited()
            if exited:
                print(f"{exited} exited; see var/log/{exited}.log", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        print("stopping ...")
        stack.stop()


def _start_all(stack: Stack, env: dict[str, str], ports: dict[str, int]) -> None:
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    stack.start(
        "redis",
        [
            redis_server,
            "--bind",
            "127.0.0.1",
            "--port",
            str(ports["redis"]),
            "--dir",
            str(VAR / "redis"),
            "--appendonly",
            "yes",
        ],
        env,
    )
    _wait_for_port(ports["redis"], "redis-server")

    stack.camera = CameraSimulator(port=ports["camera"], patterns=["demo"])
    stack.camera.start()

    celery = str(BIN / "celery")
    stack.start(
        "worker",
        [
            celery,
            "-A",
            "camtester",
            "worker",
            "-Q",
            QUEUES,
            # The README's pool for pings and probes; its main process runs the
            # tasks, so the worker's /metrics shows their figures.
            "-P",
            "threads",
            "-c",
            str(WORKER_SLOTS),
            "-n",
            "local@%h",
            "-l",
            "INFO",
        ],
        env,
    )
    stack.start(
        "flower",
        [
            celery,
            "-A",
            "camtester",
            "flower",
            f"--port={ports['flower']}",
            "--address=127.0.0.1",
            f"--conf={REPO / 'docker' / 'flowerconfig.py'}",
        ],
        env,
    )
    # gunicorn's worker processes share their counters through this directory;
    # a stale one from the last run would add its totals to this run's.
    metrics_dir = prepare_multiprocess_dir(VAR / "metrics" / "api")
    stack.start(
        "api",
        [
            str(BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{ports['api']}",
            "--workers",
            "2",
            "--logger-class",
            "camtester.logs.GunicornLogger",
            # Its default path is one per user, shared by every gunicorn there.
            "--no-control-socket",
            "wsgi:app",
        ],
        {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    _wait_for_port(ports["api"], "the API")
    _wait_for_port(ports["flower"], "Flower")


def _announce(ports: dict[str, int], secret: str) -> None:
    token = issue_token(secret, 7 * 86400)
    api = f"http://127.0.0.1:{ports['api']}"
    camera = f"rtsp://127.0.0.1:{ports['camera']}/demo"
    body = (
        '{"type": "probe", "geo_location": "local", '
        f'"payload": {{"uri": "{camera}", "duration": 5}}}}'
    )
    print(
        f"""
camtester is running.
  API      {api}   (Swagger UI: {api}/docs)
  Flower   http://127.0.0.1:{ports["flower"]}
  metrics  {api}/metrics (API), http://127.0.0.1:{ports["worker_metrics"]}/ (worker)
  camera   {camera}   (a simulated camera)
  logs     var/log/

export TOKEN={token}

curl -s -X POST {api}/tasks -H "Authorization: Bearer $TOKEN" \\
     -H 'Content-Type: application/json' \\
     -d '{body}'

then: curl -s {api}/tasks/<id> -H "Authorization: Bearer $TOKEN"

Ctrl-C stops everything.
""",
        flush=True,
    )


if __name__ == "__main__":
    main()
