"""Putting measurements on their region's queues, through their region's broker.

Plain ping tasks travel in chunks, many pings to a message (`camtester.ping_chunk`,
see tasks/ping_chunk.py). Every other measurement travels as a two-step chain:
`camtester.<type>` on `<geo>.<type>`, then `camtester.aggregate` on `results`.
The chain is written into the measurement's own message (its `chain` option),
which is how Celery encodes `measure | aggregate`; a worker runs the measurement
and sends the aggregation with its return value, as for any chain.

A batch of 10,000 tasks must not cost 10,000 round trips, nor Celery's per-message
publishing machinery (about half a millisecond a message). So the messages are
built by Celery's own protocol code (`amqp.create_task_message`) and written by
the Redis transport's own channel (`prepare_message`, `create_publish_batch`),
which buffers the LPUSHes in one pipeline per broker connection. The bytes in the
queue are the ones `send_task` would write; workers consume them unchanged.
Celery's optional task-sent event is not written for them: it would double the
broker writes, each routed through a Redis lookup. Flower still sees every task
from the events of the worker that receives it.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Signature
from celery.utils.nodenames import anon_nodename
from kombu import serialization
from kombu.common import maybe_declare
from kombu.exceptions import KombuError, OperationalError
from kombu.utils.uuid import uuid

from camtester.errors import BrokerUnavailable
from camtester.settings import Settings
from camtester.tasks.app import celery_app
from camtester.uris import mask_uri

logger = logging.getLogger(__name__)

RESULTS_QUEUE = "results"

# A submission waits this long for a broker before the API answers 503.
_CONNECT_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5}

#: Redis commands buffered before a flush: a 10,000-task batch goes in one.
PIPELINE_COMMANDS = 10000

# Persistent, as Celery's own default exchange sends task messages.
_DELIVERY_MODE = 2

Item = tuple[str, int, dict[str, Any]]

#: Most plain ping tasks in one `camtester.ping_chunk` message.
PING_CHUNK_SIZE = 250


def queue_name(geo_location: str, task_type: str) -> str:
    """The queue of one region's measurements of one type, e.g. `moscow.probe`."""
    return f"{geo_location}.{task_type}"


def measurement_steps(
    task_id: str, index: int, task: dict[str, Any]
) -> tuple[Signature, Signature]:
    """Measure subtask `index` of `task` in its region; then aggregate its result."""
    geo = task["geo_location"]
    measurement = {**_measurement_at(task, index), "geo_location": geo}
    masked = {**measurement, "target": mask_uri(measurement["target"])}

    measure = celery_app.signature(
        f"camtester.{measurement['type']}",
        args=(task_id, index, measurement),
        queue=queue_name(geo, measurement["type"]),
        # Flower and the event stream show argsrepr instead of the real arguments.
        argsrepr=repr((task_id, index, masked)),
    )
    aggregate = celery_app.signature(
        "camtester.aggregate",
        args=(task_id, index, task),
        queue=RESULTS_QUEUE,
        argsrepr=repr((task_id, index, task["type"], geo)),
    )
    return measure, aggregate


def _measurement_at(task: dict[str, Any], index: int) -> dict[str, Any]:
    if task["type"] == "complex":
        subtask: dict[str, Any] = task["subtasks"][index]
        return subtask
    return {key: task[key] for key in ("type", "target", "options")}


def publish(settings: Settings, items: list[Item]) -> None:
    """Send (task id, subtask index, task) chains, one connection per broker."""
    by_broker: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_broker[settings.broker_for(item[2]["geo_location"])].append(item)

    for url, batch in by_broker.items():
        with _broker_errors(url):
            _publish_through(url, batch)
        logger.info("queued %d tasks through broker %s", len(batch), mask_uri(url))


@contextmanager
def _broker_errors(url: str) -> Iterator[None]:
    """Turn a broker that does not answer into `BrokerUnavailable` (503)."""
    try:
        yield
    # redis-py's own errors escape kombu's wrapping on queue declaration.
    except (OperationalError, KombuError, redis.RedisError, OSError) as exc:
        logger.error("broker %s does not answer: %s", mask_uri(url), exc)
        raise BrokerUnavailable(f"broker does not answer: {exc}") from exc


def _publish_through(url: str, batch: list[Item]) -> None:
    """Write one broker's messages over one connection."""
    with celery_app.connection_for_write(url) as connection:
        connection.ensure_connection(**_CONNECT_RETRY)
        channel = connection.default_channel
        if not getattr(channel, "supports_batch_publish", False):
            _publish_one_by_one(connection, batch)
            return

        chained, chunks = split_ping_chunks(batch)
        writer = channel.create_publish_batch(PIPELINE_COMMANDS)
        try:
            messages = _MessageMaker(channel)
            for task_id, index, task in chained:
                queue, message = messages.make(task_id, index, task)
                writer.publish(message, exchange="", routing_key=queue)
            for queue, chunk in chunks:
                message = messages.make_ping_chunk(queue, chunk)
                writer.publish(message, exchange="", routing_key=queue)
            writer.flush()
        finally:
            writer.close()


def split_ping_chunks(
    batch: list[Item],
) -> tuple[list[Item], list[tuple[str, list[tuple[str, dict[str, Any]]]]]]:
    """The items that travel as chains, and plain pings grouped into chunks.

    Pings of one chunk share their queue and options, so that one `ping_many`
    call measures them all; subtasks of complex tasks keep their chains.
    """
    chained: list[Item] = []
    groups: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for task_id, index, task in batch:
        if task["type"] != "ping":
            chained.append((task_id, index, task))
            continue
        queue = queue_name(task["geo_location"], "ping")
        options = json.dumps(task["options"], sort_keys=True)
        groups[(queue, options)].append((task_id, task))

    chunks = []
    for (queue, _), members in groups.items():
        for start in range(0, len(members), PING_CHUNK_SIZE):
            chunks.append((queue, members[start : start + PING_CHUNK_SIZE]))
    return chained, chunks


def ping_chunk_signature(
    queue: str, chunk: list[tuple[str, dict[str, Any]]]
) -> Signature:
    """One message that pings every task of `chunk`."""
    ids = [task_id for task_id, _ in chunk]
    return celery_app.signature(
        "camtester.ping_chunk",
        args=(chunk,),
        queue=queue,
        argsrepr=repr(ids),
    )


class _MessageMaker:
    """Transport messages as `send_task` writes them for `measure | aggregate`.

    Celery's settings are looked up once per batch here: a lookup costs more
    than building the message's headers.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.amqp = celery_app.amqp
        self.origin = anon_nodename()
        self.reply_to = celery_app.thread_oid
        self.ignore_result = celery_app.conf.task_ignore_result
        self.serializer = celery_app.conf.task_serializer
        self.declared: set[str] = set()
        self.limits: dict[str, dict[str, Any]] = {}

    def make(self, task_id: str, index: int, task: dict[str, Any]) -> tuple[str, Any]:
        """The queue and the message of subtask `index` of `task`."""
        measure, aggregate = measurement_steps(task_id, index, task)
        queue = measure.options["queue"]
        self._declare(queue)
        return queue, self._message(measure, chain=[aggregate])

    def make_ping_chunk(
        self, queue: str, chunk: list[tuple[str, dict[str, Any]]]
    ) -> Any:
        """The message of one ping chunk, with no chain: it stores its results."""
        self._declare(queue)
        return self._message(ping_chunk_signature(queue, chunk))

    def _message(
        self, signature: Signature, chain: list[Signature] | None = None
    ) -> Any:
        """The transport message of `signature`, as `apply_async` would write it."""
        headers, properties, body, _ = self.amqp.create_task_message(
            uuid(),
            signature.task,
            signature.args,
            {},
            chain=chain,
            reply_to=self.reply_to,
            argsrepr=signature.options["argsrepr"],
            kwargsrepr="{}",
            origin=self.origin,
            ignore_result=self.ignore_result,
            **self._time_limits(signature.task),
        )
        return self._prepare(headers, properties, body)

    def _time_limits(self, task_name: str) -> dict[str, Any]:
        """The limits `apply_async` writes into a message: those of the task when
        this process has it registered (a worker, a test), else none (the API),
        so that the worker applies its own."""
        limits = self.limits.get(task_name)
        if limits is None:
            task = celery_app.tasks.get(task_name)
            limits = {
                "time_limit": getattr(task, "time_limit", None),
                "soft_time_limit": getattr(task, "soft_time_limit", None),
            }
            self.limits[task_name] = limits
        return limits

    def _declare(self, queue: str) -> None:
        if queue not in self.declared:
            maybe_declare(self.amqp.queues[queue], self.channel)  # type: ignore[no-untyped-call]
            self.declared.add(queue)

    def _prepare(self, headers: Any, properties: Any, body: Any) -> Any:
        dumped = serialization.dumps(body, self.serializer)  # type: ignore[no-untyped-call]
        content_type, encoding, data = dumped
        properties["delivery_mode"] = _DELIVERY_MODE
        return self.channel.prepare_message(
            data, 0, content_type, encoding, headers, properties
        )


def _publish_one_by_one(connection: Any, batch: list[Item]) -> None:
    """Any other transport: Celery's ordinary publishing, one message at a time."""
    producer = celery_app.amqp.Producer(connection)
    chained, chunks = split_ping_chunks(batch)
    for task_id, index, task in chained:
        measure, aggregate = measurement_steps(task_id, index, task)
        measure.apply_async(producer=producer, chain=[aggregate])
    for queue, chunk in chunks:
        ping_chunk_signature(queue, chunk).apply_async(producer=producer)
