"""Connections to the task store, and the one place Redis errors become ours."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import redis
import redis.cluster

from camtester.errors import StoreUnavailable
from camtester.settings import Settings
from camtester.uris import mask_uri

logger = logging.getLogger(__name__)

#: Seconds a store call may take before the API answers 503 instead of hanging.
SOCKET_TIMEOUT_S = 5.0


def connect(settings: Settings) -> Any:
    """A client for the task store: a plain Redis or a Redis Cluster."""
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
        "health_check_interval": 30,
    }
    if settings.redis_cluster:
        return redis.cluster.RedisCluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)


#: Redis answers meaning "cannot serve now", not "bad command": a server still
#: loading its append-only file, a replica after a failover (READONLY), no
#: memory left (OOM), persistence failing (MISCONF), a cluster without a master.
_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterUnreachableError,
    redis.exceptions.SlotNotCoveredError,
)
# The same answers as plain error replies; a pipeline prefixes them with
# "Command # n (...) of pipeline caused error: ".
_UNAVAILABLE_REPLY = re.compile(r"(^|error: )(MISCONF|LOADING|MASTERDOWN|NOREPLICAS)\b")


@contextlib.contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Turn a Redis that does not answer, or cannot serve, into `StoreUnavailable`."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise _unavailable(url, exc) from exc
    except redis.ResponseError as exc:
        if not _UNAVAILABLE_REPLY.search(str(exc)):
            raise
        raise _unavailable(url, exc) from exc


def _unavailable(url: str, exc: Exception) -> StoreUnavailable:
    logger.error("task store %s does not answer: %s", mask_uri(url), exc)
    return StoreUnavailable(f"task store does not answer: {mask_uri(str(exc))}")
