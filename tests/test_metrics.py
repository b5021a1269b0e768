"""Prometheus figures of the API and of a worker, read with prometheus-client's parser.

A stack of the test's own (so no other worker takes its results): redis-server,
the API under gunicorn with two processes in multiprocess mode, and one worker
serving its figures on a port. The counters must move by exactly what was done.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from camtester.devtools.simulator import CameraSimulator
from camtester.metrics import prepare_multiprocess_dir
from tests.fixtures.services import (
    LOCAL_QUEUES,
    ApiClient,
    ApiServer,
    free_port,
    service_env,
)

#: (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def camtester_delta(before: Samples, after: Samples) -> dict[Any, float]:
    """What moved between two scrapes, camtester's own figures only."""
    keys = {k for k in after if k[0].startswith("camtester_")}
    moved = {k: after[k] - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in moved.items() if v and not k[0].endswith("_created")}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


class OwnStack:
    def __init__(self, api_server: ApiServer, worker_url: str) -> None:
        self.api_server = api_server
        self.api = ApiClient(api_server.url)
        self.api_metrics = f"{api_server.url}/metrics"
        self.worker_metrics = worker_url

    def api_processes(self) -> set[int]:
        """The pids of gunicorn's worker processes (children of its master)."""
        assert self.api_server.process is not None
        master = self.api_server.process.pid
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                children.add(int(stat.parent.name))
        return children

    def replace_api_processes(self) -> None:
        """Stop every gunicorn worker; the master starts fresh ones."""
        old = self.api_processes()
        for pid in old:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = self.api_processes()
            if len(current) == len(old) and not current & old:
                return
            time.sleep(0.2)
        raise AssertionError(f"gunicorn did not replace its workers {old}")


def worker_metrics_env(pool: str, tmp_path: Path, port: int) -> dict[str, str]:
    """A threads worker counts in one process; a prefork one shares a directory."""
    env = {"CAMTESTER_WORKER_METRICS_PORT": str(port)}
    if pool == "prefork":
        directory = prepare_multiprocess_dir(tmp_path / "worker-metrics")
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return env


@pytest.fixture(params=["threads", "prefork"])
def own_stack(
    request: pytest.FixtureRequest,
    redis_factory: Any,
    worker_factory: Any,
    tmp_path: Path,
) -> Iterator[OwnStack]:
    server = redis_factory()
    metrics_dir = prepare_multiprocess_dir(tmp_path / "api-metrics")
    api_env = service_env(
        server.url(0), server.url(1), PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    )
    port = free_port()
    pool = request.param
    worker_env = service_env(
        server.url(0), server.url(1), **worker_metrics_env(pool, tmp_path, port)
    )
    worker_factory(LOCAL_QUEUES, worker_env, concurrency=3, pool=pool)
    api = ApiServer(api_env, tmp_path / "api.log").start()
    try:
        yield OwnStack(api, f"http://127.0.0.1:{port}/")
    finally:
        api.stop()


def ping(geo: str, count: int) -> dict[str, Any]:
    return {
        "type": "ping",
        "geo_location": geo,
        "payload": {"host": "127.0.0.1", "count": count, "interval": 0.02},
    }


def probe(uri: str, **options: Any) -> dict[str, Any]:
    return {
        "type": "probe",
        "geo_location": "local",
        "payload": {"uri": uri, "duration": 5, **options},
    }


def wait_for_results(url: str, before: Samples, total: int) -> Samples:
    """Scrape until `total` results were counted (the count follows the store)."""
    deadline = time.monotonic() + 30
    while True:
        after = scrape(url)
        moved = camtester_delta(before, after)
        counted = sum(v for k, v in moved.items() if k[0] == "camtester_results_total")
        if counted >= total or time.monotonic() > deadline:
            return after
        time.sleep(0.2)


def test_counters_move_by_exactly_what_was_done(
    own_stack: OwnStack, camera: CameraSimulator
) -> None:
    api_before = scrape(own_stack.api_metrics)
    worker_before = scrape(own_stack.worker_metrics)
    secret = f"rtsp://viewer:p%40ss@127.0.0.1:{free_port()}/x"

    # Given three pings and two probes in region local (one of them refused) and
    # two pings for region north, which has no worker here.
    ids = [own_stack.api.submit(ping("local", n)) for n in (2, 3, 4)]
    ids.append(own_stack.api.submit(probe(camera.url("black"), thresholds=BLACK)))
    ids.append(own_stack.api.submit(probe(secret)))
    for count in (2, 3):
        own_stack.api.submit(ping("north", count))
    tasks = [own_stack.api.wait(task_id) for task_id in ids]
    # Fresh API processes know nothing of the counts: only the multiprocess
    # files of the processes that counted can answer the scrape.
    own_stack.replace_api_processes()
    api_after = scrape(own_stack.api_metrics)
    worker_after = wait_for_results(own_stack.worker_metrics, worker_before, 5)

    # The API counted every accepted task, whichever gunicorn process took it.
    assert camtester_delta(api_before, api_after) == {
        key("camtester_tasks_accepted_total", type="ping", geo_location="local"): 3,
        key("camtester_tasks_accepted_total", type="probe", geo_location="local"): 2,
        key("camtester_tasks_accepted_total", type="ping", geo_location="north"): 2,
    }

    # The worker counted results, deviations and run times of what it ran.
    moved = camtester_delta(worker_before, worker_after)
    results = {k: v for k, v in moved.items() if k[0] == "camtester_results_total"}
    deviations = {
        k: v for k, v in moved.items() if k[0] == "camtester_deviations_total"
    }
    counts = {
        k: v for k, v in moved.items() if k[0] == "camtester_task_run_seconds_count"
    }
    assert [t["status"] for t in tasks] == ["done", "done", "done", "done", "failed"]
    assert results == {
        key("camtester_results_total", type="ping", outcome="ok"): 3,
        key("camtester_results_total", type="probe", outcome="ok"): 1,
        key("camtester_results_total", type="probe", outcome="refused"): 1,
    }
    assert deviations == {
        key("camtester_deviations_total", kind="black", severity="warning"): 1,
        key(
            "camtester_deviations_total", kind="stream_unavailable", severity="critical"
        ): 1,
    }
    assert deviations_of(tasks) == Counter(
        {("black", "warning"): 1, ("stream_unavailable", "critical"): 1}
    )
    assert counts == {
        key("camtester_task_run_seconds_count", type="ping"): 3,
        key("camtester_task_run_seconds_count", type="probe"): 2,
    }
    # Five seconds of stream were read: the probe's run time says at least that.
    probe_sum = key("camtester_task_run_seconds_sum", type="probe")
    assert moved[probe_sum] >= 5.0

    # No label anywhere holds a URI or a credential.
    for name, labels in [*api_after, *worker_after]:
        for label, value in labels:
            assert "://" not in value and "@" not in value, (name, label, value)


#: One black warning for the black clip's 3.0-5.0 s in a 5 s sample.
BLACK = {"black_min_s": 1.0}


def deviations_of(tasks: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for task in tasks:
        for deviation in task["result"]["deviations"]:
            found[(deviation["kind"], deviation["severity"])] += 1
    return found
