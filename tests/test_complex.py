"""Complex tasks: subtasks in order, each on its own queue, stopping at a failure."""

from __future__ import annotations

from tests.fixtures.services import ApiClient


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
