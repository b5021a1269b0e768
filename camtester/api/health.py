"""`/healthz`: 200 when the store and every broker answer, 503 naming the rest."""

from __future__ import annotations

from typing import Any

import redis
from flask import current_app
from flask_restx import Namespace, Resource

from camtester.errors import ServiceUnavailable
from camtester.settings import Settings
from camtester.tasks.app import celery_app
from camtester.uris import mask_uri

ns = Namespace("health", description="Liveness of the store and the brokers", path="/")

#: Seconds to wait for a broker before calling it down.
BROKER_CHECK_TIMEOUT_S = 2.0


def broker_answers(url: str) -> bool:
    """Whether a broker answers within the check timeout."""
    if url.startswith(("redis://", "rediss://")):
        return _redis_answers(url)
    try:
        with celery_app.connection_for_write(url) as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_CHECK_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - any failure to connect means "down"
        return False
    return True


def _redis_answers(url: str) -> bool:
    """A PING with a timeout on every socket operation.

    NOTE: kombu's connection check bounds only the connect: a Redis that accepts
    connections and then does not answer (stopped, or its host swapping) held
    the check until gunicorn killed the API worker, and the client got a 500.
    """
    client = redis.Redis.from_url(
        url,
        socket_timeout=BROKER_CHECK_TIMEOUT_S,
        socket_connect_timeout=BROKER_CHECK_TIMEOUT_S,
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@ns.route("/healthz")
class Health(Resource):
    @ns.doc(security=[])
    @ns.response(200, "Store and brokers answer")
    @ns.response(503, "Something does not answer; `down` names it")
    def get(self) -> Any:
        """No auth. 200 when Redis and the broker(s) answer."""
        settings: Settings = current_app.extensions["camtester.settings"]
        down = []
        try:
            current_app.extensions["camtester.tasks"].ping()
        except ServiceUnavailable:
            down.append("store")

        brokers = {"default": settings.broker_url, **settings.broker_urls}
        for region, url in brokers.items():
            if not broker_answers(url):
                down.append(f"broker {region} ({mask_uri(url)})")

        if down:
            return {
                "status": "unavailable",
                "down": down,
                "message": ", ".join(down) + " not answering",
            }, 503
        return {"status": "ok", "down": []}, 200
