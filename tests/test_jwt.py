"""Bearer tokens: only an HS256 token signed with our secret, with a future
`exp`, gets in; every other token is a 401 with a JSON message."""

from __future__ import annotations

import base64
import json
import socket
import time
import warnings
from collections.abc import Iterator
from typing import Any

import jwt
import jwt.warnings
import pytest
from flask.testing import FlaskClient

from camtester.api import create_app
from camtester.settings import Settings
from tests.fixtures.services import (
    JWT_SECRET,
    ApiServer,
    RedisServer,
    make_token,
    service_env,
)

UNKNOWN_TASK = "/tasks/00000000-0000-4000-8000-000000000000"


def b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "test", "iat": now, "exp": now + 3600, **extra}


def unsigned(alg: str) -> str:
    """A token that says it needs no signature."""
    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims())}."


def signed(secret: str = JWT_SECRET, algorithm: str = "HS256", **body: Any) -> str:
    with warnings.catch_warnings():
        # pyjwt warns of short keys; these tokens are meant to be refused.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(body or claims(), secret, algorithm=algorithm)


def resigned_header(header: dict[str, Any]) -> str:
    """HS256-signed with our secret, but with a header that claims otherwise."""
    token = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
    _, body, signature = token.split(".")
    return f"{b64(header)}.{body}.{signature}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("jwt-redis")).start()
    yield server
    server.stop()


@pytest.fixture
def http(store: RedisServer) -> FlaskClient:
    env = service_env(store.url(0), store.url(1))
    return create_app(Settings.from_env(env)).test_client()


REFUSED = {
    "alg-none": unsigned("none"),
    "alg-None": unsigned("None"),
    "alg-NONE": unsigned("NONE"),
    "alg-none-with-signature": unsigned("none") + "c2lnbmF0dXJl",
    "hs512-right-secret": signed(algorithm="HS512"),
    "hs384-right-secret": signed(algorithm="HS384"),
    "header-says-hs512": resigned_header({"alg": "HS512", "typ": "JWT"}),
    "header-says-rs256": resigned_header({"alg": "RS256", "typ": "JWT"}),
    "header-without-alg": resigned_header({"typ": "JWT"}),
    "wrong-secret": signed(secret="not-the-secret-0123456789abcdef-0123"),
    "one-byte-secret": signed(secret="x"),
    "expired": signed(**claims(exp=int(time.time()) - 3600)),
    "no-exp": signed(sub="test", iat=int(time.time())),
    "exp-as-text": signed(**claims(exp="9999999999")),
    "not-yet-valid": signed(**claims(nbf=int(time.time()) + 3600)),
    "truncated": make_token()[:-10],
    "signature-stripped": make_token().rsplit(".", 1)[0] + ".",
    "garbage": "not.a.token",
    "two-parts": "abc.def",
    "empty": "",
}


@pytest.mark.parametrize("token", REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_token_is_401(http: FlaskClient, token: str) -> None:
    response = http.get(UNKNOWN_TASK, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.get_json()["message"]


def test_an_expired_token_says_so(http: FlaskClient) -> None:
    token = signed(**claims(exp=int(time.time()) - 3600))

    response = http.get(UNKNOWN_TASK, headers={"Authorization": f"Bearer {token}"})

    assert response.get_json()["message"] == "token expired"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {make_token()}",
        f"Token {make_token()}",
        make_token(),
        "Basic dXNlcjpwYXNz",
    ],
)
def test_a_missing_or_malformed_authorization_header_is_401(
    http: FlaskClient, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}

    response = http.get(UNKNOWN_TASK, headers=headers)

    assert response.status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/tasks"),
        ("post", "/tasks-batch"),
        ("get", "/deviations"),
        ("get", "/restreamers"),
        ("post", "/restreamers"),
        ("delete", "/restreamers/moscow/restreamer-1"),
        ("get", "/restreamers/lookup"),
        ("get", "/targets/rtsp:%2F%2Fcam/deviations"),
    ],
)
def test_every_api_path_asks_for_a_token(
    http: FlaskClient, method: str, path: str
) -> None:
    token = unsigned("none")

    response = getattr(http, method)(path, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401


def test_the_right_token_gets_in(http: FlaskClient) -> None:
    response = http.get(UNKNOWN_TASK, headers={"Authorization": f"Bearer {signed()}"})

    assert response.status_code == 404


def test_an_api_without_a_secret_lets_nobody_in(store: RedisServer) -> None:
    env = service_env(store.url(0), store.url(1), CAMTESTER_JWT_SECRET="")
    http = create_app(Settings.from_env(env)).test_client()
    for token in (signed(), unsigned("none")):
        response = http.get(UNKNOWN_TASK, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401


@pytest.fixture(scope="module")
def gunicorn_api(
    store: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    env = service_env(store.url(0), store.url(1))
    server = ApiServer(env, tmp_path_factory.mktemp("jwt") / "api.log").start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "path",
    [
        f"/healthz/..{UNKNOWN_TASK}",
        f"/docs/..{UNKNOWN_TASK}",
        f"/metrics/../..{UNKNOWN_TASK}",
        f"/swaggerui/%2e%2e{UNKNOWN_TASK}",
        f"//healthz/..{UNKNOWN_TASK}",
    ],
)
def test_a_public_prefix_does_not_open_other_paths(
    gunicorn_api: ApiServer, path: str
) -> None:
    # A raw request line, so that no client library normalises the dots away.
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gunicorn_api.port), timeout=30) as s:
        s.sendall(request.encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk

    status = reply.split(b" ", 2)[1]
    assert status in (b"401", b"404"), reply[:300]
    assert b'"status"' not in reply
