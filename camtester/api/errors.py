"""Where exceptions become HTTP answers: one JSON `{"message"}` shape for all."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app, request
from flask.json.provider import DefaultJSONProvider
from flask_restx import Api
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from camtester.errors import (
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)

logger = logging.getLogger(__name__)

#: Answers every operation behind the bearer token may give besides its own.
COMMON_RESPONSES = {
    401: "No valid bearer token",
    503: "The store or a broker does not answer; `unavailable` names which",
}


class _BoundedJsonProvider(DefaultJSONProvider):
    """Flask's JSON, except that a body nested too deeply is malformed JSON.

    Python's parser answers thousands of nested brackets with RecursionError,
    which `get_json(silent=True)` does not catch (it catches ValueError only),
    so a 200 KB body would otherwise be a 500.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError as exc:
            raise ValueError("JSON nested too deeply") from exc


def refuse_long_streamed_body() -> None:
    """A chunked body (no Content-Length) over the limit is a 413 as well.

    Werkzeug stops reading such a body at MAX_CONTENT_LENGTH without a word, so
    the handler would see a truncated body and answer 400 "not JSON"; one more
    byte read past the limit tells a body of exactly the limit from a longer one.
    """
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is None or request.content_length is not None:
        return
    if "wsgi.input_terminated" not in request.environ:
        # Werkzeug reads no body at all without a length or a terminated input.
        return
    at_limit = len(request.get_data(cache=True)) >= limit
    if at_limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def register(app: Flask, api: Api) -> None:
    """Attach the handlers to both the restx Api and the plain Flask app."""
    app.json = _BoundedJsonProvider(app)
    app.before_request(refuse_long_streamed_body)

    def invalid(exc: InvalidInput) -> tuple[dict[str, Any], int]:
        return {"message": str(exc)}, exc.status

    def not_found(exc: NotFound) -> tuple[dict[str, Any], int]:
        return {"message": str(exc)}, 404

    def unauthorized(exc: Unauthorized) -> tuple[dict[str, Any], int, dict[str, str]]:
        return {"message": str(exc)}, 401, {"WWW-Authenticate": "Bearer"}

    def unavailable(exc: ServiceUnavailable) -> tuple[dict[str, Any], int]:
        return {"message": str(exc), "unavailable": exc.service}, 503

    def too_large(exc: RequestEntityTooLarge) -> tuple[dict[str, Any], int]:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return {"message": f"request body is over the limit of {limit} bytes"}, 413

    handlers: list[tuple[type[Exception], Any]] = [
        (InvalidInput, invalid),
        (NotFound, not_found),
        (Unauthorized, unauthorized),
        (ServiceUnavailable, unavailable),
        (RequestEntityTooLarge, too_large),
    ]
    for exc_type, handler in handlers:
        api.errorhandler(exc_type)(handler)
        app.register_error_handler(exc_type, handler)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        return {"message": exc.description or exc.name}, exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        # The route's rule, not the path: a path may carry a camera URI with
        # its credentials (/targets/<uri>/deviations).
        rule = request.url_rule.rule if request.url_rule else "-"
        logger.exception("unhandled error on %s %s", request.method, rule)
        return {"message": "internal error"}, 500
