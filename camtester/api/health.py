"""`/healthz`: 200 when the store and every broker answer, 503 naming the rest."""

from __future__ import annotations

from typing import Any

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
    """Whether a broker accepts a connection within the check timeout."""
    try:
        with celery_app.connection_for_write(url) as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_CHECK_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - any failure to connect means "down"
        return False
    return True


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
