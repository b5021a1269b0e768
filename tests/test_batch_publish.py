"""Publishing a batch: the messages Celery would write, one connection per broker.

The API writes task messages with Celery's protocol code and the Redis
transport's channel instead of `send_task` (see camtester/tasks/publish.py);
these tests pin that the bytes in the queue are what `send_task` writes, so that
workers consume them as any other Celery message, and that a batch costs a fixed
number of connections however large it is.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from camtester.errors import BrokerUnavailable
from camtester.settings import Settings
from camtester.tasks.app import celery_app
from camtester.tasks.publish import measurement_steps, publish

# Per-message values that differ between any two messages.
FRESH_IDS = ("id", "root_id")
FRESH_PROPERTIES = ("correlation_id", "delivery_tag")


def check_task(task_id: str, geo: str) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "check",
        "geo_location": geo,
        "target": "rtsp://127.0.0.1:9/cam",
        "options": {"duration": 2.0, "transport": "tcp", "thresholds": {}},
    }


def ping_task(task_id: str, geo: str, host: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "ping",
        "geo_location": geo,
        "target": host,
        "options": {"count": 1, "interval": 0.1, "timeout": 1.0, "thresholds": {}},
    }


def decoded(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def without_fresh_ids(message: dict[str, Any]) -> dict[str, Any]:
    headers = {k: v for k, v in message["headers"].items() if k not in FRESH_IDS}
    properties = {
        k: v for k, v in message["properties"].items() if k not in FRESH_PROPERTIES
    }
    return {**message, "headers": headers, "properties": properties}


def _differing(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """{key: (ours, theirs)} of every key whose values differ or are missing."""
    keys = set(ours) | set(theirs)
    return {
        k: (ours.get(k), theirs.get(k)) for k in keys if ours.get(k) != theirs.get(k)
    }


def connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def test_fast_path_writes_the_message_send_task_writes(redis_factory: Any) -> None:
    server = redis_factory()
    settings = Settings(broker_url=server.url(1))
    task = check_task("task-1", "fmt")

    publish(settings, [("task-1", 0, task)])
    with celery_app.connection_for_write(settings.broker_url) as connection:
        producer = celery_app.amqp.Producer(connection)
        measure, aggregate = measurement_steps("task-1", 0, task)
        measure.apply_async(producer=producer, chain=[aggregate])

    # LPUSH puts the newest first: [reference, ours].
    reference, ours = (decoded(m) for m in server.client(1).lrange("fmt.check", 0, -1))
    assert ours["headers"]["id"] == ours["headers"]["root_id"]
    assert ours["headers"]["id"] == ours["properties"]["correlation_id"]
    # Celery's path copies argsrepr into the properties too, and leaves
    # ignore_result unset outside a worker; ours states the configured value.
    assert reference["properties"].pop("argsrepr") == ours["headers"]["argsrepr"]
    assert ours["headers"].pop("ignore_result") is celery_app.conf.task_ignore_result
    reference["headers"].pop("ignore_result")
    ours, reference = without_fresh_ids(ours), without_fresh_ids(reference)
    assert _differing(ours["headers"], reference["headers"]) == {}
    assert ours == reference
    assert ours["body"][2]["chain"][0]["task"] == "camtester.aggregate"
    assert ours["body"][2]["chain"][0]["options"]["queue"] == "results"


def test_each_broker_gets_its_messages_over_a_fixed_number_of_connections(
    redis_factory: Any,
) -> None:
    default, east = redis_factory(), redis_factory()
    settings = Settings(broker_url=default.url(1), broker_urls={"east": east.url(1)})
    small = [(f"s{i}", 0, check_task(f"s{i}", "west")) for i in range(3)]
    west = [(f"w{i}", 0, check_task(f"w{i}", "west")) for i in range(2000)]
    east_items = [(f"e{i}", 0, check_task(f"e{i}", "east")) for i in range(700)]
    default_client, east_client = default.client(1), east.client(1)

    before = connections_received(default_client)
    publish(settings, small)
    for_three = connections_received(default_client) - before
    default_client.config_resetstat()
    before = connections_received(default_client)
    publish(settings, west + east_items)
    for_two_thousand = connections_received(default_client) - before

    assert for_two_thousand == for_three
    assert default_client.llen("west.check") == 2003
    assert default_client.info("commandstats")["cmdstat_lpush"]["calls"] == 2000
    assert not default_client.exists("east.check")
    assert east_client.llen("east.check") == 700
    ids = [decoded(m)["body"][0][0] for m in east_client.lrange("east.check", 0, -1)]
    assert sorted(ids) == sorted(item[0] for item in east_items)


def test_plain_pings_travel_in_chunks_of_shared_options(redis_factory: Any) -> None:
    server = redis_factory()
    settings = Settings(broker_url=server.url(1))
    fast = [(f"f{i}", 0, ping_task(f"f{i}", "west")) for i in range(600)]
    slow_task = {
        **ping_task("slow", "west"),
        "options": {**fast[0][2]["options"], "count": 5},
    }

    publish(settings, [*fast, ("slow", 0, slow_task)])

    messages = [decoded(m) for m in server.client(1).lrange("west.ping", 0, -1)]
    assert {m["headers"]["task"] for m in messages} == {"camtester.ping_chunk"}
    chunks = sorted((m["body"][0][0] for m in messages), key=len)
    assert [len(c) for c in chunks] == [1, 100, 250, 250]
    assert chunks[0][0][0] == "slow"
    ids = [task_id for chunk in chunks[1:] for task_id, _ in chunk]
    assert sorted(ids) == sorted(item[0] for item in fast)
    assert all(m["body"][2]["chain"] is None for m in messages)


def test_a_broker_that_does_not_answer_is_broker_unavailable(
    redis_factory: Any,
) -> None:
    server = redis_factory()
    url = server.url(1)
    server.stop()

    with pytest.raises(BrokerUnavailable, match="broker does not answer"):
        publish(Settings(broker_url=url), [("t", 0, ping_task("t", "west"))])


def test_a_transport_without_pipelines_gets_celerys_own_publishing() -> None:
    # kombu's in-memory transport has no publish batches: the one-by-one path.
    settings = Settings(broker_url="memory://")

    checks = [(f"m{i}", 0, check_task(f"m{i}", "mem")) for i in range(3)]
    pings = [(f"p{i}", 0, ping_task(f"p{i}", "mem")) for i in range(3)]
    publish(settings, checks + pings)

    with celery_app.connection_for_read("memory://") as connection:
        queue = connection.SimpleQueue("mem.check")
        messages = [queue.get(timeout=1) for _ in range(3)]
        chunk_queue = connection.SimpleQueue("mem.ping")
        chunk = chunk_queue.get(timeout=1)
        for message in [*messages, chunk]:
            message.ack()
        queue.close()
        chunk_queue.close()
    assert chunk.headers["task"] == "camtester.ping_chunk"
    assert [task_id for task_id, _ in chunk.payload[0][0]] == ["p0", "p1", "p2"]
    assert [m.headers["task"] for m in messages] == ["camtester.check"] * 3
    assert [m.payload[0][0] for m in messages] == ["m0", "m1", "m2"]
    assert {m.payload[2]["chain"][0]["task"] for m in messages} == {
        "camtester.aggregate"
    }
