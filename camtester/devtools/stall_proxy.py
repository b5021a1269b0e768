"""A TCP proxy in front of an RTSP server that goes silent after a while.

A camera that streams for a few seconds and then stops sending, while its TCP
connection stays open: the classic stalled stream. Use it with RTSP over TCP
(interleaved); with RTP over UDP the media would bypass the proxy.

    with CameraSimulator({"clean": clip}) as camera, StallProxy(
        camera.address, camera.port, stall_after_s=3.0
    ) as proxy:
        proxy.url("clean")      # rtsp://127.0.0.1:<proxy port>/clean

The clock starts at the first media frame the server sends (`start="play"`,
the default, i.e. right after PLAY) or at the client's connection
(`start="connect"`). After the stall every byte from the server is read and
dropped, so the server never sees back pressure, and the client gets nothing
more; the client's own bytes still reach the server. RTSP responses that
pass before the stall have the server's host:port in their headers replaced by
the proxy's, so a client following Content-Base stays on the proxy.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal, Self

logger = logging.getLogger(__name__)

_CHUNK = 65536
_MAX_HEADER = 65536


class RtspFramer:
    """Splits the server->client byte stream into interleaved frames and responses.

    Interleaved RTP/RTCP frames are `$`, a channel byte and a 16-bit length;
    anything else is an RTSP message: headers up to a blank line, then
    Content-Length bytes of body.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Add bytes; return the complete ("media" | "rtsp", bytes) units so far."""
        self._buffer += data
        units: list[tuple[str, bytes]] = []
        while True:
            unit = self._next_unit()
            if unit is None:
                return units
            units.append(unit)

    def _next_unit(self) -> tuple[str, bytes] | None:
        buffer = self._buffer
        if buffer[:1] == b"$":
            if len(buffer) < 4:
                return None
            size = 4 + int.from_bytes(buffer[2:4], "big")
            return self._take("media", size) if len(buffer) >= size else None

        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEADER:
                # Not RTSP at all: pass it on as it is rather than hold it.
                return self._take("rtsp", len(buffer))
            return None
        size = end + 4 + _content_length(bytes(buffer[:end]))
        return self._take("rtsp", size) if len(buffer) >= size else None

    def _take(self, kind: str, size: int) -> tuple[str, bytes]:
        unit = bytes(self._buffer[:size])
        del self._buffer[:size]
        return kind, unit


def _content_length(headers: bytes) -> int:
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip() or 0)
    return 0


def rewrite_headers(message: bytes, old: bytes, new: bytes) -> bytes:
    """Replace `old` with `new` in an RTSP message's headers, not in its body."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message
    return message[:end].replace(old, new) + message[end:]


class _Session:
    """One proxied connection: client <-> server, with the stall clock."""

    def __init__(self, proxy: StallProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = socket.create_connection(
            (proxy.upstream_host, proxy.upstream_port), timeout=10
        )
        self.framer = RtspFramer()
        self.clock_started = time.monotonic() if proxy.clock_from == "connect" else None
        self.stalled = False

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.client, selectors.EVENT_READ, self._from_client)
        selector.register(self.server, selectors.EVENT_READ, self._from_server)
        try:
            while not self.proxy.stopping.is_set():
                for key, _ in selector.select(timeout=0.2):
                    if not key.data():
                        return
        except OSError as exc:
            logger.debug("Proxied connection ended: %s", exc)
        finally:
            selector.close()
            self.client.close()
            self.server.close()

    def _from_client(self) -> bool:
        data = self.client.recv(_CHUNK)
        if data:
            self.server.sendall(data)
        return bool(data)

    def _from_server(self) -> bool:
        data = self.server.recv(_CHUNK)
        if not data:
            return False
        if self._past_stall():
            return True

        out = bytearray()
        for kind, unit in self.framer.feed(data):
            if kind == "media" and self.clock_started is None:
                self.clock_started = time.monotonic()
            if kind == "rtsp":
                unit = rewrite_headers(unit, self.proxy.upstream, self.proxy.advertised)
            out += unit
        self.client.sendall(bytes(out))
        return True

    def _past_stall(self) -> bool:
        """True once the session has forwarded for stall_after_s seconds."""
        if self.stalled:
            return True
        started = self.clock_started
        if (
            started is not None
            and time.monotonic() - started >= self.proxy.stall_after_s
        ):
            self.stalled = True
            self.proxy.stalls += 1
            logger.info("Stall proxy %d went silent", self.proxy.port)
        return self.stalled


class StallProxy:
    """Listens on `address`:`port` (0: free) and proxies to upstream, then stalls."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        stall_after_s: float = 3.0,
        start: Literal["play", "connect"] = "play",
        address: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.stall_after_s = stall_after_s
        self.clock_from = start
        self.address = address
        self.port = port
        #: Sessions that have gone silent so far.
        self.stalls = 0
        self.stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def upstream(self) -> bytes:
        return f"{self.upstream_host}:{self.upstream_port}".encode()

    @property
    def advertised(self) -> bytes:
        return f"{self.address}:{self.port}".encode()

    def url(self, path: str) -> str:
        return f"rtsp://{self.address}:{self.port}/{path.lstrip('/')}"

    def open(self) -> Self:
        listener = socket.create_server((self.address, self.port), backlog=64)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept, f"stall-proxy-{self.port}")
        logger.debug(
            "Stall proxy %d -> %s, silent after %.1fs",
            self.port,
            self.upstream.decode(),
            self.stall_after_s,
        )
        return self

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self.stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                session = _Session(self, client)
            except OSError as exc:
                logger.warning("Stall proxy cannot reach upstream: %s", exc)
                client.close()
                continue
            self._spawn(session.run, f"stall-session-{self.port}")

    def close(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
