"""Each task travels on `<geo>.<type>`: only a worker of that queue runs it."""

from __future__ import annotations

import time
from typing import Any

from tests.fixtures.services import ApiClient, Stack


def ping(geo: str) -> dict[str, Any]:
    return {
        "type": "ping",
        "geo_location": geo,
        "payload": {"host": "127.0.0.1", "count": 2, "interval": 0.05},
    }


def test_a_region_without_its_worker_waits_until_one_comes(
    api: ApiClient, stack: Stack, worker_factory: Any
) -> None:
    worker_factory(["north.ping"], stack.env, concurrency=2)
    south_id = api.submit(ping("south"))
    north_id = api.submit(ping("north"))

    north = api.wait(north_id)
    time.sleep(1.0)
    south = api.get(f"/tasks/{south_id}").json()

    assert north["status"] == "done"
    assert south["status"] == "pending"
    assert south.get("result") is None

    worker_factory(["south.ping"], stack.env, concurrency=2)
    south = api.wait(south_id)
    assert south["status"] == "done"
    assert south["result"]["payload"]["packets_received"] == 2


def test_broker_holds_the_message_on_the_region_queue(
    api: ApiClient, stack: Stack
) -> None:
    broker = stack.redis.client(1)

    api.submit(ping("east"))

    assert broker.llen("east.ping") == 1
    assert broker.llen("east.probe") == 0
