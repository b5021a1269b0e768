"""`/restreamers`: register restreamer hosts per region and look up a camera's."""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from flask_restx import Namespace, Resource, fields

from camtester.api.errors import COMMON_RESPONSES
from camtester.errors import InvalidInput, NotFound
from camtester.restreamers import pick_host, validate_restreamer_host
from camtester.spec import validate_geo
from camtester.store.restreamers import RestreamerStore
from camtester.uris import validate_stream_uri

ns = Namespace("restreamers", description="Restreamer hosts per region", path="/")

registration = ns.model(
    "Restreamer",
    {
        "geo_location": fields.String(required=True, example="moscow"),
        "host": fields.String(required=True, example="restreamer-1.example:8554"),
    },
)


def _store() -> RestreamerStore:
    store = current_app.extensions.get("camtester.restreamers")
    if store is None:
        tasks = current_app.extensions["camtester.tasks"]
        store = RestreamerStore(tasks.settings, tasks.redis)
        current_app.extensions["camtester.restreamers"] = store
    return store


@ns.route("/restreamers")
@ns.doc(responses=COMMON_RESPONSES)
class Restreamers(Resource):
    @ns.doc(params={"geo_location": "only this region"})
    @ns.response(200, "The hosts per region")
    @ns.response(400, "Bad region")
    def get(self) -> Any:
        """The registered hosts, per region."""
        geo = request.args.get("geo_location")
        if geo is not None:
            geo = validate_geo(geo, "geo_location")
            return {"restreamers": {geo: _store().hosts(geo)}}
        return {"restreamers": _store().all_regions()}

    @ns.expect(registration, validate=False)
    @ns.response(201, "Added")
    @ns.response(200, "Was registered already")
    @ns.response(400, "Bad region or host")
    def post(self) -> Any:
        """Register a host for a region (kept in Redis)."""
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object with geo_location and host")
        geo = validate_geo(body.get("geo_location"), "geo_location")
        host = validate_restreamer_host(body.get("host"))
        added = _store().add(geo, host)
        return {"geo_location": geo, "host": host}, 201 if added else 200


@ns.route("/restreamers/<string:geo_location>/<string:host>")
@ns.doc(responses=COMMON_RESPONSES)
class Restreamer(Resource):
    @ns.response(204, "Removed")
    @ns.response(400, "Bad region or host")
    @ns.response(404, "Was not registered")
    def delete(self, geo_location: str, host: str) -> Any:
        """Remove a host from a region."""
        geo = validate_geo(geo_location, "geo_location")
        host = validate_restreamer_host(host)
        if not _store().remove(geo, host):
            raise NotFound(f"{host} is not a restreamer of {geo}")
        return "", 204


@ns.route("/restreamers/lookup")
@ns.doc(responses=COMMON_RESPONSES)
class RestreamerLookup(Resource):
    @ns.doc(params={"geo_location": "region", "uri": "camera stream URI"})
    @ns.response(200, "The host the URI maps to")
    @ns.response(400, "Bad region or URI")
    @ns.response(404, "The region has no restreamers")
    def get(self) -> Any:
        """The restreamer a camera URI maps to in a region."""
        geo = validate_geo(request.args.get("geo_location"), "geo_location")
        uri = request.args.get("uri")
        if not uri:
            raise InvalidInput("uri is required")
        settings = current_app.extensions["camtester.settings"]
        uri = validate_stream_uri(uri, settings.allowed_schemes, "uri")
        host = pick_host(_store().hosts(geo), uri)
        if host is None:
            raise NotFound(f"region {geo} has no restreamers")
        return {"geo_location": geo, "host": host}
