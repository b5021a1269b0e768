"""The HTTP API: `create_app()` builds the Flask app with every namespace."""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask_restx import Api

from camtester.api import errors
from camtester.api.auth import verify_header
from camtester.api.deviations import ns as deviations_ns
from camtester.api.health import ns as health_ns
from camtester.api.tasks import ns as tasks_ns
from camtester.settings import Settings, get_settings
from camtester.store.deviations import DeviationStore
from camtester.store.tasks import TaskStore

# Paths anyone may read: liveness for load balancers, the scrape, and the docs.
PUBLIC_PREFIXES = ("/healthz", "/metrics", "/docs", "/swagger.json", "/swaggerui")

authorizations = {
    "bearer": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "Bearer <token>, from `camtester token`",
    }
}


def create_app(
    settings: Settings | None = None, test_config: dict[str, Any] | None = None
) -> Flask:
    """Build the API app; `settings` default to the CAMTESTER_* environment."""
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["RESTX_MASK_SWAGGER"] = False
    app.config["ERROR_404_HELP"] = False
    app.config.update(test_config or {})

    app.extensions["camtester.settings"] = settings
    app.extensions["camtester.tasks"] = TaskStore(settings)
    app.extensions["camtester.deviations"] = DeviationStore(
        settings, app.extensions["camtester.tasks"].redis
    )

    api = Api(
        app,
        version="1.0",
        title="camtester",
        description="Tests fleets of IP cameras: ICMP, picture, sound, transport.",
        doc="/docs",
        authorizations=authorizations,
        security="bearer",
    )
    api.add_namespace(tasks_ns)
    api.add_namespace(deviations_ns)
    api.add_namespace(health_ns)
    errors.register(app, api)
    _register_extra_namespaces(api)

    @app.before_request
    def _authenticate() -> None:
        if request.path.startswith(PUBLIC_PREFIXES):
            return
        verify_header(request.headers.get("Authorization"), settings.jwt_secret)

    return app


def _register_extra_namespaces(api: Api) -> None:
    """Namespaces that live in modules of their own (restreamers, metrics)."""
    from camtester.api import metrics, restreamers

    api.add_namespace(restreamers.ns)
    metrics.register(api)
