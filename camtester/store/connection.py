"""Connections to the task store, and the one place Redis errors become ours."""

from __future__ import annotations

import contextlib
import logging
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


@contextlib.contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Turn a Redis that does not answer into `StoreUnavailable`."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        logger.error("task store %s does not answer: %s", mask_uri(url), exc)
        raise StoreUnavailable(f"task store does not answer: {exc}") from exc
    except redis.exceptions.ClusterDownError as exc:
        raise StoreUnavailable(f"task store cluster is down: {exc}") from exc
