"""`/deviations`: what has been wrong with which camera, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app, request
from flask_restx import Namespace, Resource, fields

from camtester.api.errors import COMMON_RESPONSES
from camtester.errors import InvalidInput
from camtester.store.deviations import DeviationStore
from camtester.uris import mask_uri


class NullableString(fields.String):
    """A string field that may be null, as the OpenAPI spec must say."""

    def schema(self) -> dict[str, Any]:
        return {**super().schema(), "x-nullable": True}


ns = Namespace("deviations", description="Deviation records with filters", path="/")

deviation_model = ns.model(
    "Deviation",
    {
        "id": fields.String(),
        "task_id": fields.String(required=True),
        "target": fields.String(required=True),
        "geo_location": fields.String(required=True),
        "kind": fields.String(required=True),
        "severity": fields.String(required=True, enum=["warning", "critical"]),
        "value": fields.Raw(),
        "threshold": fields.Raw(),
        "intervals": fields.List(fields.List(fields.Float)),
        "detected_at": fields.String(required=True),
    },
)
page_model = ns.model(
    "DeviationPage",
    {
        "deviations": fields.List(fields.Nested(deviation_model)),
        "next_cursor": NullableString(description="null on the last page"),
    },
)

filters = ns.parser()
filters.add_argument("target", location="args", help="camera host or URI")
filters.add_argument("kind", location="args", help="e.g. black, packet_loss")
filters.add_argument("geo_location", location="args")
filters.add_argument("since", location="args", help="ISO-8601 time, inclusive")
filters.add_argument("limit", location="args", type=int, default=100)
filters.add_argument("cursor", location="args", help="next_cursor of the last page")

page_args = ns.parser()
page_args.add_argument("kind", location="args")
page_args.add_argument("since", location="args")
page_args.add_argument("limit", location="args", type=int, default=100)
page_args.add_argument("cursor", location="args")


def _since_ms(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput("since must be an ISO-8601 time") from exc
    if stamp.tzinfo is None:
        raise InvalidInput("since must carry a time zone, e.g. 2026-12-04T10:00:00Z")
    return int(stamp.timestamp() * 1000)


def _limit(value: str | None) -> int:
    if value is None:
        return 100
    if not value.isdigit():
        raise InvalidInput("limit must be a whole number")
    return int(value)


def _query(target: str | None) -> dict[str, Any]:
    store: DeviationStore = current_app.extensions["camtester.deviations"]
    args = request.args
    # Records keep targets masked, so a filter given with credentials still matches.
    records, cursor = store.query(
        target=mask_uri(target) if target else None,
        kind=args.get("kind"),
        geo_location=args.get("geo_location"),
        since_ms=_since_ms(args.get("since")),
        limit=_limit(args.get("limit")),
        cursor=args.get("cursor"),
    )
    return {"deviations": records, "next_cursor": cursor}


@ns.route("/deviations")
@ns.doc(responses=COMMON_RESPONSES)
class Deviations(Resource):
    @ns.expect(filters, validate=False)
    @ns.response(200, "A page of records", page_model)
    @ns.response(400, "A bad filter")
    def get(self) -> Any:
        """Deviation records, filtered by target, kind, geo_location and since."""
        return _query(request.args.get("target"))


@ns.route("/targets/<path:target>/deviations")
@ns.doc(responses=COMMON_RESPONSES)
class TargetDeviations(Resource):
    @ns.expect(page_args, validate=False)
    @ns.response(200, "A page of records", page_model)
    @ns.response(400, "A bad filter")
    def get(self, target: str) -> Any:
        """What has been wrong with this camera lately."""
        return _query(target)
