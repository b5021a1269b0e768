"""docker/: a region's deployment as a compose file, and the image's entry point.

No Docker engine runs here, so the image is never built: the compose file and the
Dockerfile are read as data, and the entry point script runs for real on this
machine, where it starts the same programs it starts in a container.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.fixtures.services import (
    REPO,
    ApiClient,
    free_port,
    service_env,
    wait_for_port,
)

DOCKER = REPO / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
REGION_QUEUES = {"local.ping", "local.probe", "local.check", "results"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def queues_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert command[0] == "worker"
    return command[command.index("-Q") + 1].split(",")


def test_compose_runs_one_region_with_a_worker_per_queue(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}

    assert set(services) == {"redis", "api", "flower", *workers}
    assert sorted(q for w in workers.values() for q in queues_of(w)) == sorted(
        REGION_QUEUES
    )
    for name, worker in workers.items():
        assert len(queues_of(worker)) == 1, name
        # A fixed container name or host port would stop `--scale` at one.
        assert "container_name" not in worker and "ports" not in worker, name
        assert worker["environment"]["CAMTESTER_WORKER_METRICS_PORT"] == "9808"


def test_compose_services_share_one_store_and_broker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis_command = services["redis"]["command"]

    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    for name, service in services.items():
        if name == "redis":
            continue
        environment = service["environment"]
        assert environment["CAMTESTER_REDIS_URL"] == "redis://redis:6379/0", name
        assert environment["CAMTESTER_BROKER_URL"] == "redis://redis:6379/1", name
        assert service["build"]["dockerfile"] == "docker/Dockerfile", name
        assert (DOCKER / service["build"]["context"]).resolve() == REPO
    # Secrets come from the operator's environment; compose refuses to start
    # without them instead of running unauthenticated.
    assert services["api"]["environment"]["CAMTESTER_JWT_SECRET"].startswith(
        "${CAMTESTER_JWT_SECRET:?"
    )
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?"
    )


def test_dockerfile_builds_one_non_root_image_with_ffmpeg() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1)
        for line in text.splitlines()
        if line.strip() and not line.startswith((" ", "#"))
    ]
    froms = [arg for op, arg in instructions if op == "FROM"]
    users = [arg for op, arg in instructions if op == "USER"]
    entrypoint = [arg for op, arg in instructions if op == "ENTRYPOINT"]

    assert froms == ["python:3.11-slim-bookworm"]
    assert re.search(r"apt-get install [^&]*\bffmpeg\b", text)
    assert users and users[-1] not in ("root", "0")
    assert entrypoint == ['["tini", "--", "camtester-entrypoint"]']
    assert "COPY docker/entrypoint.sh /usr/local/bin/camtester-entrypoint" in text
    # Everything the image copies passes the Dockerfile's own ignore file.
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text()
    for copied in ("pyproject.toml", "celeryconfig.py", "wsgi.py", "camtester/"):
        assert f"!{copied}" in ignored


# -- the entry point, run for real ----------------------------------------------


class Entrypoint:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                ["sh", str(ENTRYPOINT), *args],
                env=env,
                cwd="/",
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


@pytest.fixture
def run_entrypoint(tmp_path: Path) -> Iterator[Any]:
    started: list[Entrypoint] = []

    def run(args: list[str], env: dict[str, str]) -> Entrypoint:
        started.append(Entrypoint(args, env, tmp_path / f"entry{len(started)}.log"))
        return started[-1]

    yield run
    for entry in started:
        entry.stop()


def test_entrypoint_api_serves_with_a_fresh_metrics_directory(
    redis_factory: Any, run_entrypoint: Any, tmp_path: Path
) -> None:
    server = redis_factory()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale counts of an earlier run")
    port = free_port()
    env = service_env(
        server.url(0),
        server.url(1),
        CAMTESTER_API_BIND=f"127.0.0.1:{port}",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        CAMTESTER_LOG_FORMAT="json",
    )

    api = run_entrypoint(["api"], env)
    wait_for_port(port, timeout_s=30)
    base = f"http://127.0.0.1:{port}"
    ApiClient(base).submit(
        {"type": "ping", "geo_location": "nowhere", "payload": "127.0.0.1"}
    )
    scrape = requests.get(f"{base}/metrics", timeout=30).text

    assert requests.get(f"{base}/healthz", timeout=30).status_code == 200
    assert not (metrics_dir / "counter_1.db").exists()
    assert any(metrics_dir.glob("counter_*.db"))
    expected = 'camtester_tasks_accepted_total{geo_location="nowhere",type="ping"} 1.0'
    assert expected in scrape
    assert api.process.poll() is None


def test_entrypoint_worker_passes_its_arguments_to_celery(
    redis_factory: Any, run_entrypoint: Any
) -> None:
    server = redis_factory()
    env = service_env(server.url(0), server.url(1))
    name = f"entry{free_port()}@%h"

    worker = run_entrypoint(["worker", "-Q", "local.ping", "-n", name], env)

    deadline = time.monotonic() + 60
    while " ready." not in worker.log_path.read_text():
        assert worker.process.poll() is None, worker.log_path.read_text()
        assert time.monotonic() < deadline, worker.log_path.read_text()
        time.sleep(0.2)
    log = worker.log_path.read_text()
    assert re.search(r"\.> local\.ping\s+exchange=local\.ping", log)
    assert "results" not in log.split("[queues]")[1].split("[tasks]")[0]


def test_entrypoint_refuses_flower_without_basic_auth(
    redis_factory: Any, run_entrypoint: Any
) -> None:
    server = redis_factory()
    env = service_env(server.url(0), server.url(1))
    env.pop("FLOWER_BASIC_AUTH", None)

    flower = run_entrypoint(["flower"], env)

    assert flower.process.wait(timeout=30) == 64
    assert "FLOWER_BASIC_AUTH" in flower.log_path.read_text()


def test_entrypoint_flower_logs_json_behind_basic_auth(
    redis_factory: Any, run_entrypoint: Any
) -> None:
    server = redis_factory()
    port = free_port()
    env = service_env(
        server.url(0),
        server.url(1),
        FLOWER_BASIC_AUTH="ops:flower-pw",
        FLOWER_ADDRESS="127.0.0.1",
        FLOWER_PORT=str(port),
        CAMTESTER_FLOWER_CONF=str(DOCKER / "flowerconfig.py"),
        CAMTESTER_LOG_FORMAT="json",
    )

    flower = run_entrypoint(["flower"], env)
    wait_for_port(port, timeout_s=60)
    url = f"http://127.0.0.1:{port}/api/workers"
    anonymous = requests.get(url, timeout=30)
    authorised = requests.get(url, auth=("ops", "flower-pw"), timeout=30)
    flower.stop()

    assert anonymous.status_code == 401
    assert authorised.status_code == 200
    lines = flower.log_path.read_text().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]  # each line one JSON object
    assert any(entry["logger"].startswith("flower.") for entry in entries)
