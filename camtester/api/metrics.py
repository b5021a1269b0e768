"""`/metrics`: the API's Prometheus figures in the text format."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask_restx import Api, Namespace, Resource
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ns = Namespace("metrics", description="Prometheus scrape", path="/")


@ns.route("/metrics")
class Metrics(Resource):
    @ns.doc(security=[])
    @ns.produces([CONTENT_TYPE_LATEST])
    def get(self) -> Any:
        """Tasks accepted, results, deviations and run times."""
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


def register(api: Api) -> None:
    api.add_namespace(ns)
