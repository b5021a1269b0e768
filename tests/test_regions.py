"""A region with a broker of its own: its tasks travel only through that broker.

Three redis-servers: the central one holds the task store (db 0) and the default
broker (db 1); broker A carries region north, broker B region south. The API
knows all three; each region's worker knows only its own broker and the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.fixtures.services import ApiClient, ApiServer, RedisServer, service_env

QUEUE_TYPES = ("ping", "probe", "check")


def ping(geo: str, host: str, count: int) -> dict[str, Any]:
    return {
        "type": "ping",
        "geo_location": geo,
        "payload": {"host": host, "count": count, "interval": 0.05},
    }


def two_pings(geo: str) -> dict[str, Any]:
    subtask = {"type": "ping", "payload": {"host": "127.0.0.3", "count": 2}}
    second = {"type": "ping", "payload": {"host": "127.0.0.4", "count": 4}}
    return {"type": "complex", "geo_location": geo, "payloads": [subtask, second]}


def region_queues(geo: str) -> list[str]:
    return [f"{geo}.{kind}" for kind in QUEUE_TYPES] + ["results"]


def queue_lengths(client: redis.Redis, geos: tuple[str, ...]) -> dict[str, int]:
    names = [f"{geo}.{kind}" for geo in geos for kind in QUEUE_TYPES]
    return {name: int(client.llen(name)) for name in [*names, "results"]}


def lists_in(client: redis.Redis) -> list[bytes]:
    """Every Redis list of a broker db: Celery's queues are lists."""
    return sorted(key for key in client.keys("*") if client.type(key) == b"list")


def received(log: str, task_name: str) -> int:
    """How many messages of `task_name` a worker log says it received."""
    return sum(
        1 for line in log.splitlines() if f"{task_name}[" in line and "received" in line
    )


class Regions:
    def __init__(self, central: RedisServer, a: RedisServer, b: RedisServer) -> None:
        self.central = central
        self.a = a
        self.b = b

    def worker_env(self, broker: RedisServer) -> dict[str, str]:
        # A regional worker: its own broker, the central store, no region map.
        return service_env(self.central.url(0), broker.url(0))


@pytest.fixture
def regions(redis_factory: Any) -> Regions:
    return Regions(redis_factory(), redis_factory(), redis_factory())


@pytest.fixture
def regional_api(regions: Regions, tmp_path: Path) -> Iterator[ApiClient]:
    env = service_env(
        regions.central.url(0),
        regions.central.url(1),
        CAMTESTER_BROKER_URLS=f"north={regions.a.url(0)},south={regions.b.url(0)}",
    )
    server = ApiServer(env, tmp_path / "api.log").start()
    try:
        yield ApiClient(server.url)
    finally:
        server.stop()


def test_tasks_wait_on_their_regions_broker_only(
    regions: Regions, regional_api: ApiClient
) -> None:
    regional_api.submit(ping("north", "127.0.0.1", 2))
    regional_api.submit(ping("north", "127.0.0.1", 2))
    regional_api.submit(ping("south", "127.0.0.2", 3))
    regional_api.submit(two_pings("north"))
    regional_api.submit(ping("west", "127.0.0.5", 1))

    on_a = queue_lengths(regions.a.client(0), ("north", "south"))
    on_b = queue_lengths(regions.b.client(0), ("north", "south"))
    on_default = regions.central.client(1)

    assert on_a == {**dict.fromkeys(on_a, 0), "north.ping": 3}
    assert on_b == {**dict.fromkeys(on_b, 0), "south.ping": 1}
    # A region without a broker of its own uses the default one.
    assert lists_in(on_default) == [b"west.ping"]
    assert on_default.llen("west.ping") == 1


def test_each_region_measures_and_reports_through_its_own_broker(
    regions: Regions, regional_api: ApiClient, worker_factory: Any
) -> None:
    north_id = regional_api.submit(ping("north", "127.0.0.1", 2))
    south_id = regional_api.submit(ping("south", "127.0.0.2", 3))
    complex_id = regional_api.submit(two_pings("north"))
    north = worker_factory(
        region_queues("north"), regions.worker_env(regions.a), concurrency=2
    )
    south = worker_factory(
        region_queues("south"), regions.worker_env(regions.b), concurrency=2
    )

    north_task = regional_api.wait(north_id)
    south_task = regional_api.wait(south_id)
    complex_task = regional_api.wait(complex_id)

    # Both results reached the central store through the API.
    assert north_task["status"] == "done"
    assert north_task["result"]["payload"]["packets_sent"] == 2
    assert south_task["status"] == "done"
    assert south_task["result"]["payload"]["packets_sent"] == 3
    # The second subtask was sent by the aggregation, through broker A again.
    assert complex_task["status"] == "done"
    assert [r["payload"]["packets_sent"] for r in complex_task["results"]] == [2, 4]

    # Every message of north ran on the north worker, and south's on south's:
    # measurements, aggregations and the complex task's second subtask.
    north_log = north.log_path.read_text()
    south_log = south.log_path.read_text()
    assert north_id in north_log and complex_id in north_log
    assert south_id not in north_log
    assert south_id in south_log
    assert north_id not in south_log and complex_id not in south_log
    # A plain ping stores its own result (a chunk); a complex task's subtasks
    # are chains with an aggregation each.
    assert received(north_log, "camtester.ping_chunk") == 1
    assert received(south_log, "camtester.ping_chunk") == 1
    assert received(north_log, "camtester.aggregate") == 2
    assert received(south_log, "camtester.aggregate") == 0

    # Nothing went through the default broker, and nothing is left anywhere.
    assert lists_in(regions.central.client(1)) == []
    assert lists_in(regions.a.client(0)) == []
    assert lists_in(regions.b.client(0)) == []
