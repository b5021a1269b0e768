"""A TCP listener that accepts connections and never sends a byte.

A camera whose RTSP port is open but whose server hangs: a client connects at
once and then waits for an answer that never comes, so only its own timeout
ends the wait.

    with SilentServer() as silent:
        silent.url("live")          # rtsp://127.0.0.1:<port>/live
        ...
        silent.accepted             # connections accepted so far
"""

from __future__ import annotations

import logging
import socket
import threading
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)


class SilentServer:
    """Accepts on `address`:`port` (0: a free port) and holds every connection."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.address = address
        self.port = port
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        listener = socket.create_server((self.address, self.port), backlog=64)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._serve, name=f"silent-{self.port}", daemon=True
        )
        self._thread.start()
        logger.debug("Silent server listening on %s:%d", self.address, self.port)
        return self

    def _serve(self) -> None:
        """Accept and keep every connection; a held socket is never written to."""
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._clients.append(client)
                self.accepted += 1

    def url(self, path: str = "live", scheme: str = "rtsp") -> str:
        return f"{scheme}://{self.address}:{self.port}/{path.lstrip('/')}"

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
