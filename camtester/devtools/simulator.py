"""Run the GStreamer camera simulator (rtsp_server.py) from venv-side code.

Usage:

    from camtester.devtools.media import ensure_clips
    from camtester.devtools.simulator import CameraSimulator

    clips = ensure_clips(Path("var/test-media"))
    with CameraSimulator(
        mounts={"black": clips["black"]},       # file mounts, played from 0 s
        patterns=["live"],                      # endless live test picture
        auth={"black": ("viewer", "p@ss:w0rd")},  # basic auth on one mount
    ) as camera:
        camera.url("black", "viewer", "p@ss:w0rd")
        # -> rtsp://viewer:p%40ss%3Aw0rd@127.0.0.1:<port>/black
        camera.url("live")

The server picks a free port itself and reports it (no race with other tests);
pass `port=` to fix one. With `netns="ct-..."` and `address=` the server runs
inside that network namespace, bound to the namespace's address. Every client
gets a file from its start (sample time 0 == file time 0), over RTP/UDP or
RTP/TCP interleaved; a file mount ends with the file (an RTCP BYE a second
after the last packet), a pattern mount never ends. Unknown mounts answer
404, a protected mount without or with wrong credentials 401.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

logger = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")

# Variables of the venv that would steer Debian's interpreter into it.
_VENV_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


class SimulatorError(RuntimeError):
    """The simulator did not start or died."""


class CameraSimulator:
    """An RTSP camera simulator subprocess, in its own process group."""

    def __init__(
        self,
        mounts: dict[str, Path] | None = None,
        *,
        patterns: list[str] | tuple[str, ...] = (),
        auth: dict[str, tuple[str, str]] | None = None,
        address: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.mounts = dict(mounts or {})
        self.patterns = list(patterns)
        self.auth = dict(auth or {})
        self.address = address
        self.port = port or 0
        self.netns = netns
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        #: The exit status once stopped: 0 after a clean SIGTERM shutdown.
        self.returncode: int | None = None

    def argv(self) -> list[str]:
        """The command line that starts the server (inside the namespace if any)."""
        argv = [SYSTEM_PYTHON, "-I", str(SERVER_SCRIPT)]
        argv += ["--address", self.address, "--port", str(self.port)]
        for name, path in self.mounts.items():
            argv += ["--mount", f"{name}={Path(path).resolve()}"]
        for name in self.patterns:
            argv += ["--pattern", name]
        for name, (user, password) in self.auth.items():
            argv += ["--auth", f"{name}={user}:{password}"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self) -> Self:
        """Start the server and wait until its port accepts connections."""
        env = {k: v for k, v in os.environ.items() if k not in _VENV_VARIABLES}
        log_fd, log_name = tempfile.mkstemp(prefix="ct-rtsp-", suffix=".log")
        self._log_path = Path(log_name)
        logger.debug("Starting camera simulator with %d mounts", len(self.mounts))
        try:
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_fd,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        try:
            self.port = self._read_ready_port()
            self._wait_accepting()
        except BaseException:
            self.stop()
            raise
        logger.info("Camera simulator listening on %s:%d", self.address, self.port)
        return self

    def _read_ready_port(self) -> int:
        """Wait (bounded) for the `READY <address> <port>` line; return the port."""
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimulatorError(f"simulator not ready in time: {self.log_tail()}")
            readable, _, _ = select.select([self._process.stdout], [], [], left)
            chunk = os.read(self._process.stdout.fileno(), 1) if readable else b""
            if readable and not chunk:
                raise SimulatorError(f"simulator exited: {self.log_tail()}")
            line += chunk

        words = line.decode().split()
        if len(words) != 3 or words[0] != "READY":
            raise SimulatorError(f"unexpected simulator output {line!r}")
        return int(words[2])

    def _wait_accepting(self) -> None:
        """Connect until the port accepts; the ready line comes just before."""
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                with socket.create_connection((self.address, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise SimulatorError(
                        f"{self.address}:{self.port} does not accept connections"
                    ) from None
                time.sleep(0.05)

    def url(
        self, mount: str, user: str | None = None, password: str | None = None
    ) -> str:
        """The rtsp:// URL of `mount`, with percent-encoded credentials if given."""
        userinfo = ""
        if user is not None:
            userinfo = quote(user, safe="")
            if password is not None:
                userinfo += ":" + quote(password, safe="")
            userinfo += "@"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"rtsp://{userinfo}{host}:{self.port}/{mount.lstrip('/')}"

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the server's stderr, for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_bytes()[-limit:].decode(errors="replace")

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL."""
        process, self._process = self._process, None
        if process is not None:
            self.returncode = _stop_group(process)
            if process.stdout is not None:
                process.stdout.close()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _stop_group(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> int | None:
    """Terminate the process group led by `process` and reap the leader."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            logger.warning("Simulator %d ignored signal %d", process.pid, signum)
    return process.poll()
