"""`make run` as a newcomer runs it: start, paste the printed curl, read the result,
Ctrl-C, and nothing it started is left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.fixtures.services import REPO, free_port


def _descendants(pid: int) -> set[int]:
    """Every process whose ancestry leads to `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {p for p, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def _read_until(process: subprocess.Popen[str], pattern: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    seen = ""
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen += line
        if re.search(pattern, seen):
            return seen
    raise AssertionError(f"make run printed no {pattern!r}:\n{seen}")


def test_make_run_serves_the_printed_curl_and_stops_cleanly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CAMTESTER_DEV_VAR": str(tmp_path / "var"),
        "CAMTESTER_DEV_REDIS_PORT": str(free_port()),
        "CAMTESTER_DEV_API_PORT": str(free_port()),
        "CAMTESTER_DEV_FLOWER_PORT": str(free_port()),
        "CAMTESTER_DEV_CAMERA_PORT": str(free_port()),
        "CAMTESTER_DEV_WORKER_METRICS_PORT": str(free_port()),
    }
    env = {
        k: v for k, v in env.items() if not k.startswith("CAMTESTER_") or "_DEV_" in k
    }
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        banner = _read_until(make, r"Ctrl-C stops everything", timeout_s=240)
        token = re.search(r"export TOKEN=(\S+)", banner).group(1)
        curl = re.search(r"(curl -s -X POST .*?-d '.*?')\n", banner, re.DOTALL).group(1)
        spawned = _descendants(make.pid)

        answer = subprocess.run(
            ["bash", "-c", curl.replace("\\\n", " ")],
            env={**os.environ, "TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        task_id = json.loads(answer.stdout)["id"]
        api = re.search(r"API\s+(http://\S+)", banner).group(1)
        task = _wait_done(api, task_id, token)

        assert task["status"] == "done", task
        assert task["result"]["ok"] is True
        assert task["result"]["payload"]["video_frames"] > 0

        # The worker's own figures count the probe it ran.
        metrics_port = env["CAMTESTER_DEV_WORKER_METRICS_PORT"]
        scrape = requests.get(f"http://127.0.0.1:{metrics_port}/", timeout=10).text
        assert 'camtester_results_total{outcome="ok",type="probe"} 1.0' in scrape
    finally:
        os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout=60)

    time.sleep(1.0)
    alive = {pid for pid in spawned if Path(f"/proc/{pid}").exists()}
    assert not alive, f"left behind: {alive}"


def _wait_done(api: str, task_id: str, token: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 60
    task: dict = {}
    while time.monotonic() < deadline:
        task = requests.get(
            f"{api}/tasks/{task_id}", headers=headers, timeout=10
        ).json()
        if task["status"] in ("done", "failed"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task not finished: {task}")
