"""Bad input gets a clear 4xx answer and reaches neither ffmpeg nor the store.

The API is `create_app` in this process on a redis-server of the test's own; no
worker consumes its queues except where a test starts one, so nothing a test
submits is measured unless the test means it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import pytest
import requests
from flask.testing import FlaskClient

from camtester.api import create_app
from camtester.settings import Settings
from camtester.store import keys
from tests.fixtures.services import (
    ApiServer,
    RedisServer,
    free_port,
    make_token,
    service_env,
)
from tests.test_faults import OwnStack
from tests.test_faults_common import check_task, unique_geo

HEADERS = {"Authorization": f"Bearer {make_token()}"}


@pytest.fixture
def store_server(redis_factory: Any) -> RedisServer:
    return redis_factory()


def app_for(store_server: RedisServer, **env: str) -> FlaskClient:
    environment = service_env(store_server.url(0), store_server.url(1), **env)
    return create_app(Settings.from_env(environment)).test_client()


@pytest.fixture
def http(store_server: RedisServer) -> FlaskClient:
    return app_for(store_server)


def stored_tasks(store_server: RedisServer) -> list[bytes]:
    return list(store_server.client(0).scan_iter(match=f"{keys.PREFIX}:task:*"))


def stream_task(uri: str, task_type: str = "probe") -> dict[str, Any]:
    return {"type": task_type, "geo_location": "hostile", "payload": {"uri": uri}}


# -- stream URIs: only what a camera speaks --------------------------------------

REFUSED_URIS = [
    "file:///etc/passwd",
    "FILE:/etc/passwd",
    "/etc/passwd",
    "concat:rtsp://127.0.0.1/a|file:/etc/passwd",
    "subfile,,start,0,end,0,,:/etc/passwd",
    "pipe:0",
    "data:video/mp2t;base64,R0lGODlh",
    "lavfi",
    "lavfi:testsrc",
    "tcp://127.0.0.1:554",
    "tls://127.0.0.1:443",
    "rtp://127.0.0.1:5004",
    "unix:/tmp/socket",
    "async:file:/etc/passwd",
    "cache:rtsp://127.0.0.1/x",
    "crypto:file:/etc/passwd",
    "hls+file:/etc/passwd",
    "gopher://127.0.0.1/",
    "ftp://127.0.0.1/x",
    "rtsp:/no-host",
    "rtsp://",
    "rtsp://[::1/x",
    "rtsp://127.0.0.1:99999/x",
    "rtsp://127.0.0.1/a b",
    "rtsp://127.0.0.1/a\nb",
    "rtsp://127.0.0.1/\x7f",
    "rtsp://127.0.0.1/" + "a" * 3000,
    "",
    "   ",
]


@pytest.mark.parametrize("uri", REFUSED_URIS)
def test_a_stream_uri_a_camera_does_not_speak_is_400(
    http: FlaskClient, store_server: RedisServer, uri: str
) -> None:
    response = http.post("/tasks", json=stream_task(uri), headers=HEADERS)

    assert response.status_code == 400
    assert "payload.uri" in response.get_json()["message"]
    assert stored_tasks(store_server) == []


ACCEPTED_URIS = [
    "rtsp://127.0.0.1:8554/live",
    "RTSP://cam-17.example/live",
    "rtsps://cam-17.example/live",
    "rtmp://127.0.0.1/app/stream",
    "http://127.0.0.1:8080/stream.m3u8",
    "https://[::1]:8443/stream.ts",
    "srt://127.0.0.1:9000",
    "udp://127.0.0.1:1234",
    "rtsp://user:p%40ss@127.0.0.1/live",
]


@pytest.mark.parametrize("uri", ACCEPTED_URIS)
def test_a_camera_uri_is_accepted(http: FlaskClient, uri: str) -> None:
    response = http.post("/tasks", json=stream_task(uri), headers=HEADERS)

    assert response.status_code == 202, response.get_json()


def test_a_deployment_cannot_allow_a_local_scheme(store_server: RedisServer) -> None:
    http = app_for(store_server, CAMTESTER_ALLOWED_SCHEMES="rtsp,file,concat")

    local = http.post("/tasks", json=stream_task("file:/etc/passwd"), headers=HEADERS)
    camera = http.post("/tasks", json=stream_task("rtsp://h/x"), headers=HEADERS)
    web = http.post("/tasks", json=stream_task("http://h/x"), headers=HEADERS)

    assert local.status_code == 400
    assert local.get_json()["message"].endswith("allowed schemes: rtsp")
    assert camera.status_code == 202
    assert web.status_code == 400


def test_a_bad_uri_in_a_complex_task_names_its_subtask(http: FlaskClient) -> None:
    task = {
        "type": "complex",
        "geo_location": "hostile",
        "payloads": [
            {"type": "ping", "payload": "127.0.0.1"},
            {"type": "check", "payload": "concat:/etc/passwd|/etc/shadow"},
        ],
    }

    response = http.post("/tasks", json=task, headers=HEADERS)

    assert response.status_code == 400
    assert response.get_json()["message"].startswith("task.payloads[1].payload.uri")


def test_the_restreamer_lookup_refuses_bad_uris_too(http: FlaskClient) -> None:
    for uri in ("file:/etc/passwd", "rtsp://[::1/x", "rtsp://h:70000/x"):
        response = http.get(
            "/restreamers/lookup",
            query_string={"geo_location": "hostile", "uri": uri},
            headers=HEADERS,
        )
        assert response.status_code == 400, (uri, response.get_json())


# -- nested protocols: ffmpeg's whitelist ----------------------------------------


class SdpServer:
    """Serves a session description over HTTP that sends ffmpeg on to RTP/UDP.

    Without a protocol whitelist ffmpeg follows it and listens on UDP (and sends
    RTCP wherever the description says): a nested protocol inside http.
    """

    def __init__(self, rtp_port: int) -> None:
        description = (
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=camera\r\n"
            "c=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=video {rtp_port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        ).encode()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/sdp")
                self.send_header("Content-Length", str(len(description)))
                self.end_headers()
                self.wfile.write(description)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True

    def __enter__(self) -> Self:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/camera.sdp"


@pytest.mark.parametrize("task_type", ["check", "probe"])
def test_a_stream_that_sends_ffmpeg_to_another_protocol_is_refused(
    redis_factory: Any, worker_factory: Any, task_type: str
) -> None:
    own = OwnStack(redis_factory())
    geo = unique_geo()
    worker_factory([f"{geo}.{task_type}", "results"], own.env, concurrency=1)

    with SdpServer(free_port()) as camera:
        task = {**check_task(geo, camera.uri, duration=2), "type": task_type}
        result = own.wait(own.submit(task))["result"]

    assert camera.requests == ["/camera.sdp"]
    assert result["ok"] is False
    # Followed, the description would have ended in a timeout waiting for RTP.
    assert result["error"]["code"] == "unsupported"


# -- ping targets -------------------------------------------------------------------

REFUSED_HOSTS = [
    "",
    "   ",
    "-c 1000 127.0.0.1",
    "127.0.0.1; rm -rf /",
    "127.0.0.1 127.0.0.2",
    "http://127.0.0.1/",
    "127.0.0.1/24",
    "127.0.0.1:80",
    "[::1]:80",
    "a..b",
    ".",
    "-leading.example",
    "trailing-.example",
    "under_score.example",
    "a" * 64 + ".example",
    ("a" * 60 + ".") * 5 + "example",
    "127.1",
    "2130706433",
    "0x7f.0.0.1",
    "ex\u00e4mple.com",
    "tab\there",
    "nul\x00byte",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_a_ping_target_that_is_no_host_is_400(
    http: FlaskClient, store_server: RedisServer, host: str
) -> None:
    task = {"type": "ping", "geo_location": "hostile", "payload": {"host": host}}

    response = http.post("/tasks", json=task, headers=HEADERS)

    assert response.status_code == 400
    assert "payload.host" in response.get_json()["message"]
    assert stored_tasks(store_server) == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "localhost", "cam-17.example", "CAM-17.Example."]
)
def test_a_host_name_or_address_is_accepted(http: FlaskClient, host: str) -> None:
    task = {"type": "ping", "geo_location": "hostile", "payload": host}

    response = http.post("/tasks", json=task, headers=HEADERS)

    assert response.status_code == 202, response.get_json()


@pytest.mark.parametrize(
    "payload",
    [
        {"host": 7},
        {"host": ["127.0.0.1"]},
        {"host": "127.0.0.1", "count": "5"},
        {"host": "127.0.0.1", "count": True},
        {"host": "127.0.0.1", "count": 2.5},
        {"host": "127.0.0.1", "count": 0},
        {"host": "127.0.0.1", "interval": float("1e400")},
        {"host": "127.0.0.1", "timeout": -1},
        {"host": "127.0.0.1", "thresholds": {"nope": 1}},
        {"host": "127.0.0.1", "thresholds": []},
        {"host": "127.0.0.1", "unknown": 1},
        # 10000 replies at one a minute: no task may run for a week.
        {"host": "127.0.0.1", "count": 10000, "interval": 60},
    ],
)
def test_bad_ping_options_are_400_naming_the_field(
    http: FlaskClient, payload: dict[str, Any]
) -> None:
    task = {"type": "ping", "geo_location": "hostile", "payload": payload}

    response = http.post("/tasks", json=task, headers=HEADERS)

    assert response.status_code == 400
    assert response.get_json()["message"].startswith("task.payload")


# -- bodies: malformed, nested, too large ----------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/json"),
        (b"{", "application/json"),
        (b"null", "application/json"),
        (b"[]", "application/json"),
        (b'"ping"', "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b'{"type": "ping"}', "text/plain"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json"),
        (b'{"type": NaN}', "application/json"),
    ],
    ids=[
        "empty",
        "truncated",
        "null",
        "list",
        "string",
        "not-utf8",
        "not-json-type",
        "deep-list",
        "deep-object",
        "nan",
    ],
)
@pytest.mark.parametrize("path", ["/tasks", "/tasks-batch", "/restreamers"])
def test_a_malformed_body_is_400(
    http: FlaskClient, path: str, body: bytes, content_type: str
) -> None:
    response = http.post(
        path, data=body, headers={**HEADERS, "Content-Type": content_type}
    )

    assert response.status_code == 400, response.get_data()[:200]
    assert "message" in response.get_json()


@pytest.fixture
def small_api(redis_factory: Any, tmp_path: Path) -> Iterator[ApiServer]:
    """gunicorn with a 4 KiB body limit and batches of at most 3 tasks."""
    store = redis_factory()
    env = service_env(
        store.url(0),
        store.url(1),
        CAMTESTER_MAX_BODY_BYTES="4096",
        CAMTESTER_MAX_BATCH_TASKS="3",
    )
    server = ApiServer(env, tmp_path / "api.log").start()
    yield server
    server.stop()


def raw_post(server: ApiServer, path: str, head: list[str], body: bytes) -> bytes:
    """POST over a plain socket, so that nothing in between fixes the request."""
    request = "\r\n".join(
        [
            f"POST {path} HTTP/1.1",
            f"Host: 127.0.0.1:{server.port}",
            f"Authorization: Bearer {make_token()}",
            "Content-Type: application/json",
            "Connection: close",
            *head,
            "",
            "",
        ]
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_a_body_over_the_limit_is_413(small_api: ApiServer) -> None:
    body = b'{"type": "ping", "pad": "' + b"x" * 8192 + b'"}'

    reply = raw_post(small_api, "/tasks", [f"Content-Length: {len(body)}"], body)

    assert reply.startswith(b"HTTP/1.1 413")
    assert b"4096 bytes" in reply


def test_a_chunked_body_over_the_limit_is_413(small_api: ApiServer) -> None:
    piece = b"x" * 1000
    body = b'{"pad": "'
    chunked = b"%x\r\n%s\r\n" % (len(body), body)
    for _ in range(8):
        chunked += b"%x\r\n%s\r\n" % (len(piece), piece)
    chunked += b'2\r\n"}\r\n0\r\n\r\n'

    reply = raw_post(small_api, "/tasks", ["Transfer-Encoding: chunked"], chunked)

    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]


def test_a_batch_over_the_limit_is_413_naming_the_limit(small_api: ApiServer) -> None:
    tasks = [{"type": "ping", "geo_location": "hostile", "payload": "::1"}] * 4

    response = requests.post(
        f"{small_api.url}/tasks-batch", json=tasks, headers=HEADERS, timeout=30
    )

    assert response.status_code == 413
    assert "at most 3 tasks" in response.json()["message"]


def test_a_batch_within_the_limit_is_accepted(small_api: ApiServer) -> None:
    tasks = [{"type": "ping", "geo_location": "hostile", "payload": "::1"}] * 3

    response = requests.post(
        f"{small_api.url}/tasks-batch", json=tasks, headers=HEADERS, timeout=30
    )

    assert response.status_code == 202
    assert len(response.json()["ids"]) == 3
