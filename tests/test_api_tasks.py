"""The whole path over real HTTP: API -> store -> broker -> worker -> result."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.fixtures.services import ApiClient, Stack, make_token


def ping_task(
    host: str = "127.0.0.1", geo: str = "local", **options: Any
) -> dict[str, Any]:
    return {"type": "ping", "geo_location": geo, "payload": {"host": host, **options}}


def test_ping_of_loopback_is_done_with_twenty_replies(api: ApiClient) -> None:
    response = api.post("/tasks", json=ping_task(count=20, interval=0.05))
    assert response.status_code == 202
    task_id = response.json()["id"]
    assert response.headers["Location"].endswith(f"/tasks/{task_id}")

    task = api.wait(task_id)

    assert task["status"] == "done"
    payload = task["result"]["payload"]
    assert task["result"]["ok"] is True
    assert payload["packets_sent"] == 20
    assert payload["packets_received"] == 20
    assert payload["packet_loss"] == 0
    assert 0 < payload["min_rtt_ms"] <= payload["avg_rtt_ms"] <= payload["max_rtt_ms"]
    assert task["result"]["deviations"] == []


def test_result_endpoint_returns_the_stored_result(api: ApiClient) -> None:
    task_id = api.submit(ping_task(count=3, interval=0.05))
    task = api.wait(task_id)

    response = api.get(f"/tasks/{task_id}/result")

    assert response.status_code == 200
    assert response.json() == task["result"]


def test_unknown_task_is_404(api: ApiClient) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    assert api.get(f"/tasks/{unknown}").status_code == 404
    assert api.get(f"/tasks/{unknown}/result").status_code == 404


def test_batch_returns_ids_in_order_and_all_complete(api: ApiClient) -> None:
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    tasks = [ping_task(host, count=2, interval=0.05) for host in hosts]

    response = api.post("/tasks-batch", json=tasks)

    assert response.status_code == 202
    ids = response.json()["ids"]
    assert len(ids) == 3
    for task_id, host in zip(ids, hosts, strict=True):
        task = api.wait(task_id)
        assert task["payload"]["host"] == host
        assert task["result"]["payload"]["packets_received"] == 2


def test_batch_with_a_bad_task_names_its_index_and_stores_nothing(
    api: ApiClient, stack: Stack
) -> None:
    store = stack.redis.client(0)
    before = len(store.keys("camtester:task:*"))
    tasks = [ping_task(), ping_task(), {"type": "ping", "payload": "127.0.0.1"}]

    response = api.post("/tasks-batch", json=tasks)

    assert response.status_code == 400
    assert "tasks[2].geo_location" in response.json()["message"]
    assert len(store.keys("camtester:task:*")) == before


BAD_TASKS = [
    ({"geo_location": "local", "type": "teleport", "payload": "x"}, "type"),
    ({"type": "ping", "payload": "127.0.0.1"}, "geo_location"),
    ({"type": "ping", "geo_location": "local", "payload": ""}, "payload"),
    ({"type": "ping", "geo_location": "local", "payload": {}}, "payload"),
    ({"type": "probe", "geo_location": "local"}, "payload"),
    ({"type": "complex", "geo_location": "local"}, "payloads"),
    ({"type": "complex", "geo_location": "local", "payloads": []}, "payloads"),
    (
        {
            "type": "complex",
            "geo_location": "local",
            "payloads": [{"type": "complex", "payloads": []}],
        },
        "payloads[0].type",
    ),
    (ping_task(count=0), "count"),
    (ping_task(interval="fast"), "interval"),
    (ping_task(host="127.0.0.1; rm -rf /"), "host"),
    (
        {"type": "probe", "geo_location": "local", "payload": "file:///etc/passwd"},
        "uri",
    ),
    (
        {
            "type": "probe",
            "geo_location": "local",
            "payload": {"uri": "rtsp://h/x", "duration": -1},
        },
        "duration",
    ),
    (
        {
            "type": "check",
            "geo_location": "local",
            "payload": {"uri": "rtsp://h/x", "expected": {"codec": "h264"}},
        },
        "task.payload.expected is not an option",
    ),
    (
        {"type": "ping", "geo_location": "mos cow", "payload": "127.0.0.1"},
        "task.geo_location must be a region name",
    ),
]


@pytest.mark.parametrize(("task", "field"), BAD_TASKS)
def test_bad_input_is_400_naming_the_field_and_stores_nothing(
    api: ApiClient, stack: Stack, task: dict[str, Any], field: str
) -> None:
    store = stack.redis.client(0)
    before = len(store.keys("camtester:task:*"))

    response = api.post("/tasks", json=task)

    assert response.status_code == 400, response.text
    assert field in response.json()["message"]
    assert len(store.keys("camtester:task:*")) == before


def test_malformed_json_is_400(api: ApiClient) -> None:
    response = api.post(
        "/tasks", data=b'{"type": "ping",', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["message"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        f"Bearer {make_token(secret='not-the-secret-of-this-api-0123456789')}",
        f"Bearer {make_token(ttl_s=-10)}",
        "Bearer not-a-jwt",
        "Basic dXNlcjpwYXNz",
    ],
    ids=["missing", "wrong-secret", "expired", "garbage", "basic"],
)
def test_requests_without_a_valid_token_are_401(
    stack: Stack, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}

    response = requests.post(
        stack.api.url + "/tasks", json=ping_task(), headers=headers, timeout=10
    )

    assert response.status_code == 401
    assert response.json()["message"]


def test_healthz_needs_no_token_and_is_200(stack: Stack) -> None:
    response = requests.get(stack.api.url + "/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_swagger_ui_and_spec_are_served(stack: Stack) -> None:
    assert requests.get(stack.api.url + "/docs", timeout=10).status_code == 200
    spec = requests.get(stack.api.url + "/swagger.json", timeout=10).json()
    assert "/tasks" in spec["paths"]
    assert "/tasks-batch" in spec["paths"]


def test_the_spec_declares_401_and_503_wherever_a_token_is_needed(
    stack: Stack,
) -> None:
    spec = requests.get(stack.api.url + "/swagger.json", timeout=10).json()
    open_paths = {"/healthz", "/metrics"}

    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters" or path in open_paths:
                continue
            if not {"401", "503"} <= set(operation["responses"]):
                missing.append(f"{method.upper()} {path}")
    assert missing == []
    assert "413" in spec["paths"]["/tasks"]["post"]["responses"]
