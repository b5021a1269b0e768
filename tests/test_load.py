"""Load: 1,000 pings submitted at once through the real API, run by one worker
started with nothing but its queues (`celery -A camtester worker -Q ...`, so the
pool and its size are Celery's defaults). All complete with the right figures,
none lost and none measured or stored twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camtester.store import keys
from tests.fixtures.services import (
    REPO,
    VENV_BIN,
    ApiClient,
    ApiServer,
    RedisServer,
    service_env,
)
from tests.test_faults_common import unique_geo, wait_until

TASKS = 1000
COUNT = 5
INTERVAL_S = 0.05


class DefaultWorker:
    """`celery -A camtester worker -Q <queues>`: no pool, size or name given."""

    def __init__(self, queues: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = [str(VENV_BIN / "celery"), "-A", "camtester", "worker"]
        self.argv += ["-Q", ",".join(queues)]
        self.env = env
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DefaultWorker:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: b" ready." in self.log_path.read_bytes(), 60, "worker")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)


@pytest.fixture
def load_stack(
    redis_factory: Any, tmp_path: Path
) -> Iterator[tuple[ApiClient, RedisServer, DefaultWorker, str]]:
    store = redis_factory()
    env = service_env(store.url(0), store.url(1))
    env.pop("CAMTESTER_LOG_LEVEL", None)
    geo = unique_geo()
    api = ApiServer(env, tmp_path / "api.log").start()
    worker = DefaultWorker([f"{geo}.ping", "results"], env, tmp_path / "worker.log")
    worker.start()
    try:
        yield ApiClient(api.url), store, worker, geo
    finally:
        worker.stop()
        api.stop()


def statuses(store: RedisServer, ids: list[str]) -> Counter[str]:
    pipe = store.client(0).pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(keys.task_key(task_id), "status")
    return Counter((s or b"missing").decode() for s in pipe.execute())


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_thousand_pings_at_once_all_complete_once(
    load_stack: tuple[ApiClient, RedisServer, DefaultWorker, str],
) -> None:
    api, store, worker, geo = load_stack
    hosts = [f"127.0.0.{1 + i % 254}" for i in range(TASKS)]
    tasks = [
        {
            "type": "ping",
            "geo_location": geo,
            "payload": {"host": host, "count": COUNT, "interval": INTERVAL_S},
        }
        for host in hosts
    ]

    started = time.monotonic()
    response = api.post("/tasks-batch", json=tasks)
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    wait_until(
        lambda: statuses(store, ids)["done"] == TASKS,
        1000,
        f"all {TASKS} pings done ({statuses(store, ids)})",
        period_s=1.0,
    )
    wall_s = time.monotonic() - started
    finished = [api.get(f"/tasks/{task_id}").json() for task_id in ids]

    assert len(set(ids)) == TASKS
    for task, host in zip(finished, hosts, strict=True):
        payload = task["result"]["payload"]
        assert task["status"] == "done"
        assert payload["address"] == host
        assert payload["packets_sent"] == COUNT
        assert payload["packets_received"] == COUNT
        assert payload["packet_loss"] == 0
        assert (
            0 < payload["min_rtt_ms"] <= payload["avg_rtt_ms"] <= payload["max_rtt_ms"]
        )
        assert task["result"]["deviations"] == []
    results = store.client(0)
    assert all(results.hlen(keys.results_key(i)) == 1 for i in ids)
    log = worker.log_path.read_text(errors="replace")
    measured = Counter(
        task_id
        for line in log.splitlines()
        if "measured in" in line
        for task_id in [line.partition("[ping ")[2].partition("]")[0]]
    )
    assert set(measured) == set(ids)
    assert set(measured.values()) == {1}
    print(f"\n{TASKS} pings of {COUNT} at {INTERVAL_S}s: all done in {wall_s:.1f}s")
