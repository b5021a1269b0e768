"""`/metrics`: the API's Prometheus figures in the text format.

Under gunicorn with several workers, set `PROMETHEUS_MULTIPROC_DIR` (see
`camtester.metrics`): each scrape then adds up every worker process, whichever
one answers it.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from flask_restx import Api, Namespace, Resource
from prometheus_client import CONTENT_TYPE_LATEST

from camtester import metrics

ns = Namespace("metrics", description="Prometheus scrape", path="/")


@ns.route("/metrics")
class Metrics(Resource):
    @ns.doc(security=[])
    @ns.produces([CONTENT_TYPE_LATEST])
    def get(self) -> Any:
        """Tasks accepted by type and region (results and run times: workers)."""
        return Response(metrics.scrape(), mimetype=CONTENT_TYPE_LATEST)


def register(api: Api) -> None:
    api.add_namespace(ns)
