"""Complex tasks: subtasks in order, each on its own queue, stopping at a failure."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from camtester.devtools.simulator import CameraSimulator
from camtester.results import worst_severity
from tests.fixtures.services import ApiClient, Stack


def test_complex_runs_every_subtask_in_order_when_all_are_ok(api: ApiClient) -> None:
    task_id = api.submit(
        {
            "type": "complex",
            "geo_location": "local",
            "payloads": [
                {
                    "type": "ping",
                    "payload": {"host": "127.0.0.1", "count": 2, "interval": 0.05},
                },
                {
                    "type": "ping",
                    "payload": {"host": "127.0.0.2", "count": 3, "interval": 0.05},
                },
            ],
        }
    )

    task = api.wait(task_id)

    assert task["status"] == "done"
    assert [r["payload"]["packets_sent"] for r in task["results"]] == [2, 3]
    assert task["verdict"] == "ok"
    assert task["current_index"] == 1
    results = api.get(f"/tasks/{task_id}/result").json()
    assert results == task["results"]


def test_complex_stops_at_the_first_subtask_that_is_not_ok(api: ApiClient) -> None:
    # Nothing listens on port 9 of loopback: the check is refused at once.
    task_id = api.submit(
        {
            "type": "complex",
            "geo_location": "local",
            "payloads": [
                {
                    "type": "check",
                    "payload": {"uri": "rtsp://127.0.0.1:9/none", "duration": 2},
                },
                {
                    "type": "ping",
                    "payload": {"host": "127.0.0.1", "count": 2, "interval": 0.05},
                },
            ],
        }
    )

    task = api.wait(task_id)

    assert task["status"] == "failed"
    assert len(task["results"]) == 1
    assert task["results"][0]["ok"] is False
    assert task["results"][0]["error"]["code"] == "refused"
    assert task["verdict"] == "critical"
    kinds = [d["kind"] for d in task["results"][0]["deviations"]]
    assert kinds == ["stream_unavailable"]


def received(log: str, task_name: str, task_id: str) -> int:
    """How many `task_name` messages of camtester task `task_id` a worker got."""
    return sum(
        1
        for line in log.splitlines()
        if f"Task {task_name}[" in line
        and line.endswith(" received")
        and task_id in line
    )


def test_ping_check_probe_run_on_their_own_queues_and_end_critical(
    api: ApiClient, stack: Stack, worker_factory: Any, camera: CameraSimulator
) -> None:
    # One worker per queue of a region of this test's own, so each log shows
    # which queue a subtask travelled on.
    geo = f"cx{uuid.uuid4().hex[:10]}"
    workers = {
        kind: worker_factory([f"{geo}.{kind}"], stack.env, concurrency=1)
        for kind in ("ping", "check", "probe")
    }
    # The black clip is black from 3 s to 6 s: a 5 s sample holds 3.0-5.0,
    # which these thresholds make a critical black.
    black = {"black_min_s": 1.0, "black_critical_s": 1.5}
    task_id = api.submit(
        {
            "type": "complex",
            "geo_location": geo,
            "payloads": [
                {"type": "ping", "payload": {"host": "127.0.0.1", "count": 2}},
                {
                    "type": "check",
                    "payload": {"uri": camera.url("clean"), "duration": 3},
                },
                {
                    "type": "probe",
                    "payload": {
                        "uri": camera.url("black"),
                        "duration": 5,
                        "thresholds": black,
                    },
                },
            ],
        }
    )

    task = api.wait(task_id, timeout_s=120)

    assert task["status"] == "done"
    assert [r["ok"] for r in task["results"]] == [True, True, True]
    assert task["results"][0]["payload"]["packets_received"] == 2
    assert task["results"][1]["payload"]["duration_sec"] > 0
    assert task["results"][0]["deviations"] == []
    assert task["results"][1]["deviations"] == []
    probe = task["results"][2]
    assert [(d["kind"], d["severity"]) for d in probe["deviations"]] == [
        ("black", "critical")
    ]
    assert probe["payload"]["black_intervals"][0][0] == pytest.approx(3.0, abs=0.1)
    assert task["verdict"] == "critical"
    assert task["current_index"] == 2
    for kind, worker in workers.items():
        log = worker.log_path.read_text()
        assert received(log, f"camtester.{kind}", task_id) == 1


def test_an_unreachable_ping_stops_the_task_before_the_probe(
    api: ApiClient, stack: Stack, netns_host: Any, camera: CameraSimulator
) -> None:
    # The namespace drops everything: the echo requests go unanswered.
    host = netns_host(drop_all=True)
    task_id = api.submit(
        {
            "type": "complex",
            "geo_location": "local",
            "payloads": [
                {
                    "type": "ping",
                    "payload": {"host": host.address, "count": 2, "timeout": 0.5},
                },
                {
                    "type": "probe",
                    "payload": {"uri": camera.url("clean"), "duration": 2},
                },
            ],
        }
    )

    task = api.wait(task_id)

    assert task["status"] == "failed"
    assert len(task["results"]) == 1
    ping = task["results"][0]
    assert ping["ok"] is False
    assert ping["error"]["code"] == "timeout"
    assert [d["kind"] for d in ping["deviations"]] == ["unreachable"]
    assert task["verdict"] == "critical"
    assert task["current_index"] == 0
    log = stack.worker.log_path.read_text()
    assert received(log, "camtester.ping", task_id) == 1
    assert received(log, "camtester.probe", task_id) == 0
    assert host.dropped_packets("all") >= 2


def test_verdict_is_the_worst_severity_or_critical_for_a_failed_subtask() -> None:
    ok = {"ok": True, "deviations": []}
    warning = {"ok": True, "deviations": [{"severity": "warning"}]}
    critical = {"ok": True, "deviations": [{"severity": "critical"}]}
    failed = {"ok": False, "deviations": []}

    assert worst_severity([ok, ok]) == "ok"
    assert worst_severity([ok, warning]) == "warning"
    assert worst_severity([warning, critical, ok]) == "critical"
    assert worst_severity([ok, failed]) == "critical"
