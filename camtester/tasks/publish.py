"""Putting measurements on their region's queues, through their region's broker.

Each measurement travels as a two-step Celery chain: `camtester.<type>` on
`<geo>.<type>`, then `camtester.aggregate` on `results`. The chain is written
into the measurement's own message (its `chain` option, which is how Celery
encodes `measure | aggregate`), so that the message can go through a producer
of our choosing: `chain.apply_async(producer=...)` drops the producer and would
send every message through the default broker's pool instead of the region's.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from celery import Signature
from kombu import Producer
from kombu.exceptions import KombuError, OperationalError

from camtester.errors import BrokerUnavailable
from camtester.settings import Settings
from camtester.tasks.app import celery_app
from camtester.uris import mask_uri

logger = logging.getLogger(__name__)

RESULTS_QUEUE = "results"

# A submission waits this long for a broker before the API answers 503.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5}

#: Redis commands buffered per pipeline flush: each message is an LPUSH plus the
#: PUBLISH of its task-sent event.
PIPELINE_COMMANDS = 2000

Item = tuple[str, int, dict[str, Any]]


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


def measurement_chain(task_id: str, index: int, task: dict[str, Any]) -> Signature:
    """The same two steps as one chain signature, for callers that want one."""
    measure, aggregate = measurement_steps(task_id, index, task)
    return measure | aggregate


def _measurement_at(task: dict[str, Any], index: int) -> dict[str, Any]:
    if task["type"] == "complex":
        return task["subtasks"][index]
    return {key: task[key] for key in ("type", "target", "options")}


def publish(settings: Settings, items: list[Item]) -> None:
    """Send (task id, subtask index, task) chains, one connection per broker."""
    by_broker: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_broker[settings.broker_for(item[2]["geo_location"])].append(item)

    for url, batch in by_broker.items():
        _publish_through(url, batch)


def _publish_through(url: str, batch: list[Item]) -> None:
    """Send one broker's messages over one connection, pipelined."""
    try:
        with celery_app.connection_for_write(url) as connection:
            producer = celery_app.amqp.Producer(connection)
            # The Redis transport buffers the LPUSHes (and the task-sent events)
            # of a batch in a pipeline that it flushes every PIPELINE_COMMANDS
            # commands and on leaving the block, instead of one round trip each.
            with producer.batch(max_size=PIPELINE_COMMANDS):
                for task_id, index, task in batch:
                    _send(producer, task_id, index, task)
    except (OperationalError, KombuError, OSError) as exc:
        logger.error("broker %s does not answer: %s", mask_uri(url), exc)
        raise BrokerUnavailable(f"broker does not answer: {exc}") from exc
    logger.info("queued %d tasks through broker %s", len(batch), mask_uri(url))


def _send(producer: Producer, task_id: str, index: int, task: dict[str, Any]) -> None:
    measure, aggregate = measurement_steps(task_id, index, task)
    measure.apply_async(
        producer=producer, chain=[aggregate], retry_policy=_PUBLISH_RETRY
    )
