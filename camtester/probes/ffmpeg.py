"""Running ffmpeg: version-aware input options, a bounded run, and error mapping.

Every ffmpeg camtester starts goes through `run_ffmpeg`, which guarantees that no
ffmpeg outlives its call: it runs in its own process group, the kernel kills it if
the worker dies, and the group is SIGKILLed on timeout, on any exception and in the
`finally`. stderr is drained by a thread so that a flood of messages cannot block
ffmpeg; only a bounded tail is kept for error messages.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import logging
import math
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Self
from urllib.parse import quote

from camtester.errors import (
    MeasurementError,
    MeasurementInternal,
    SetupError,
    TargetNotFound,
    TargetRefused,
    TargetTimeout,
    TargetUnauthorized,
    TargetUnresolvable,
    TargetUnsupported,
)
from camtester.settings import Settings, get_settings
from camtester.uris import (
    MASK,
    mask_uri,
    scheme_of,
    strip_credentials,
    with_encoded_credentials,
)

logger = logging.getLogger(__name__)

#: Lines of stderr kept for error messages.
TAIL_LINES = 50
#: Characters of stderr kept for error messages.
TAIL_CHARS = 64 * 1024
#: Longest stderr line kept; a longer one is cut (ffmpeg never writes one on purpose).
MAX_LINE_CHARS = 4096
#: Lines of stderr copied to the debug log per run; the rest are only counted.
DEBUG_LOG_LINES = 200
#: Lines of stderr quoted in a MeasurementInternal message.
MESSAGE_LINES = 5

#: Protocols ffmpeg may open for each URI scheme (`-protocol_whitelist`). The RTSP
#: demuxer opens tcp/tls for its control connection and rtp/udp for UDP transport;
#: HLS over http may fetch https segments and decrypt them (crypto).
PROTOCOL_WHITELIST: dict[str, str] = {
    "rtsp": "rtsp,rtp,udp,tcp",
    "rtsps": "rtsps,rtsp,rtp,srtp,udp,tcp,tls",
    "http": "http,https,tcp,tls,crypto",
    "https": "http,https,tcp,tls,crypto",
    "rtmp": "rtmp,tcp",
    "rtmps": "rtmps,rtmp,tcp,tls",
    "srt": "srt",
    "udp": "udp",
    "file": "file",
}

_PR_SET_PDEATHSIG = 1
# Loaded here, not in the forked child: the child only makes one foreign call.
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class FfmpegRun:
    """How one ffmpeg run ended."""

    #: Exit status; negative for a signal (as subprocess reports it).
    returncode: int | None
    #: The last lines of stderr, credentials masked.
    stderr_tail: str
    elapsed_s: float
    #: The wall timeout expired and camtester stopped ffmpeg.
    timed_out: bool
    #: ffmpeg had to be SIGKILLed (it did not stop on SIGINT in time).
    killed: bool
    #: camtester stopped ffmpeg because the stream stopped (see `run_ffmpeg`).
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """ffmpeg finished by itself with status 0."""
        return self.returncode == 0 and not self.timed_out and not self.stopped


# -- version and command line -------------------------------------------------


@functools.lru_cache(maxsize=8)
def ffmpeg_version(path: str) -> tuple[int, int]:
    """(major, minor) of the ffmpeg at `path`, asked once per path."""
    try:
        done = subprocess.run(
            [path, "-hide_banner", "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"ffmpeg at {path!r} cannot be run: {exc}") from exc
    first_line = done.stdout.decode("utf-8", "replace").partition("\n")[0]
    if done.returncode != 0 or not first_line.startswith("ffmpeg version"):
        raise SetupError(f"{path!r} does not answer -version like ffmpeg")
    return parse_version(first_line)


def parse_version(first_line: str) -> tuple[int, int]:
    """Parse "ffmpeg version 5.1.9-0+deb12u1 ..." (or "n6.1", "N-1234-g..") ."""
    match = re.match(r"ffmpeg version n?(\d+)\.(\d+)", first_line)
    if match:
        return int(match.group(1)), int(match.group(2))

    # A build from git master ("N-112233-gdeadbeef") is newer than any release.
    logger.warning("Unknown ffmpeg version %r; assuming a recent one.", first_line)
    return 99, 0


def base_args(
    settings: Settings | None = None, *, loglevel: str = "info", stats: bool = False
) -> list[str]:
    """The start of every ffmpeg command line: binary, no stdin, no banner.

    `stats` keeps ffmpeg's progress line (twice a second), which `run_ffmpeg`
    needs for `stall_timeout_s`; it never reaches the tail or the sink.
    """
    settings = settings or get_settings()
    return [
        settings.ffmpeg_path,
        "-nostdin",
        "-hide_banner",
        "-stats" if stats else "-nostats",
        "-loglevel",
        loglevel,
    ]


def is_local_file(uri: str) -> bool:
    """A schemeless path or a file: URI (only the CLI may pass one)."""
    scheme = scheme_of(uri)
    # A Windows-like "c:/x" has a one-letter scheme; treat it as a path too.
    return scheme in ("", "file") or len(scheme) == 1


def input_args(
    uri: str,
    *,
    transport: str = "tcp",
    connect_timeout_s: float | None = None,
    settings: Settings | None = None,
) -> list[str]:
    """The input options for `uri`, ending with `-i <uri>`.

    Chooses the timeout option the installed ffmpeg understands for the scheme and
    limits the protocols ffmpeg may open to what the scheme needs. Options that
    apply to the same input (e.g. `-t`, `-threads`) may stand before these.
    """
    settings = settings or get_settings()
    timeout_s = (
        settings.connect_timeout_s if connect_timeout_s is None else connect_timeout_s
    )
    if transport not in ("tcp", "udp"):
        raise ValueError(f"transport must be tcp or udp, not {transport!r}")

    if is_local_file(uri):
        path = uri.removeprefix("file:")
        # The "file:" prefix stops ffmpeg from reading "a:b.mp4" as protocol "a".
        return ["-protocol_whitelist", "file", "-i", "file:" + os.path.abspath(path)]

    scheme = scheme_of(uri)
    if scheme not in PROTOCOL_WHITELIST:
        raise TargetUnsupported(f"camtester cannot read {scheme}:// streams")
    version = ffmpeg_version(settings.ffmpeg_path)
    options = ["-protocol_whitelist", PROTOCOL_WHITELIST[scheme]]
    options += _timeout_options(scheme, version, timeout_s)
    if scheme in ("rtsp", "rtsps"):
        options += ["-rtsp_transport", transport]
    return [*options, "-i", with_encoded_credentials(uri)]


def _timeout_options(
    scheme: str, version: tuple[int, int], timeout_s: float
) -> list[str]:
    """Socket timeout options: connect and read give up after `timeout_s`."""
    micros = str(max(1, int(timeout_s * 1_000_000)))
    if scheme in ("rtsp", "rtsps"):
        # ffmpeg 5 renamed the RTSP socket timeout -stimeout to -timeout; in 4.x
        # -timeout meant "listen for an incoming connection" and must not be used.
        return ["-timeout" if version >= (5, 0) else "-stimeout", micros]
    if scheme in ("http", "https"):
        # http's -timeout reaches the TCP connect; -rw_timeout covers every read.
        return ["-timeout", micros, "-rw_timeout", micros]
    if scheme in ("rtmp", "rtmps"):
        # rtmp's own -timeout is a listen timeout in seconds: only -rw_timeout.
        return ["-rw_timeout", micros]
    # srt and udp: -timeout in microseconds for socket reads.
    return ["-timeout", micros]


# -- running --------------------------------------------------------------------


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL ffmpeg when the worker process dies.

    A Celery hard time limit SIGKILLs only the pool process; ffmpeg sits in a
    session of its own and would live on, still reading the camera. NOTE: the
    signal fires when the *thread* that started ffmpeg ends, which is safe
    because `run_ffmpeg` blocks that thread until ffmpeg has been reaped.
    """
    parent = os.getppid()
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    # The parent may have died between fork and prctl: then nobody kills us.
    if os.getppid() != parent:
        os._exit(1)


# ffmpeg's progress line ("frame=  74 fps= 10 ... time=00:00:02.96 ..."), which it
# ends with a carriage return and rewrites in place twice a second.
_PROGRESS = re.compile(r"(?:^|\] )(?:frame|size)=.*?time=\s*(-?)(\d+):(\d+):([\d.]+)")


def progress_time(line: str) -> float | None:
    """The stream time in a progress line, seconds; None for any other line."""
    match = _PROGRESS.search(line)
    if not match:
        return None
    sign, hours, minutes, seconds = match.groups()
    value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return -value if sign else value


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Lines ended by a newline or a carriage return, as they arrive."""
    pending = b""
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        pending += chunk
        parts = re.split(rb"[\r\n]", pending)
        pending = parts.pop()[-MAX_LINE_CHARS:]
        yield from (part for part in parts if part.strip())
    if pending.strip():
        yield pending


class _StderrTail:
    """Drains ffmpeg's stderr line by line, keeping a bounded tail and the progress."""

    def __init__(
        self,
        sink: Callable[[str], None] | None,
        stop_when: Callable[[str], bool] | None,
    ) -> None:
        self.lines: deque[str] = deque(maxlen=TAIL_LINES)
        self.sink = sink
        self.stop_when = stop_when
        self.stop = threading.Event()
        self.count = 0
        #: When the stream time in the progress line last moved on (monotonic).
        self.progressed_at: float | None = None
        self._progress = -math.inf

    def pump(self, stream: IO[bytes]) -> None:
        sink_failed = False
        for raw in _lines(stream):
            line = mask_uri(raw[:MAX_LINE_CHARS].decode("utf-8", "replace").rstrip())
            if self._is_progress(line):
                continue

            self.count += 1
            self.lines.append(line)
            if self.count <= DEBUG_LOG_LINES:
                logger.debug("ffmpeg: %s", line)
            if self.stop_when is not None and self.stop_when(line):
                self.stop.set()
            if self.sink is not None and not sink_failed:
                try:
                    self.sink(line)
                except Exception:
                    # Keep draining: a stopped reader would block ffmpeg.
                    logger.exception("The stderr sink failed; ignoring it from here.")
                    sink_failed = True

        if self.count > DEBUG_LOG_LINES:
            logger.debug(
                "ffmpeg: %d further stderr lines not logged",
                self.count - DEBUG_LOG_LINES,
            )

    def _is_progress(self, line: str) -> bool:
        """Note the stream time of a progress line; such lines go nowhere else."""
        value = progress_time(line)
        if value is None:
            return False
        if value > self._progress:
            self._progress = value
            self.progressed_at = time.monotonic()
        return True

    def stalled_for(self, now: float) -> float:
        """Seconds since the stream time last moved on; 0 before it first did."""
        return 0.0 if self.progressed_at is None else now - self.progressed_at

    def text(self) -> str:
        return "\n".join(self.lines)[-TAIL_CHARS:]


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    # start_new_session made ffmpeg the leader of a group whose id is its pid.
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


#: Seconds between the two SIGINTs that stop ffmpeg gracefully.
_SECOND_INTERRUPT_AFTER_S = 0.5


def _stop(proc: subprocess.Popen[bytes], grace_s: float) -> bool:
    """Stop ffmpeg early; True if it had to be SIGKILLed.

    With a grace period, ffmpeg first gets SIGINT, on which it stops reading and
    finishes its outputs, so that what it analysed so far is not lost. ffmpeg
    honours a first SIGINT only between two reads; a second one also breaks a
    read that blocks (and makes writes to its outputs fail, which is why outputs
    that matter should be written with `-flush_packets 1`).
    """
    if grace_s > 0:
        _signal_group(proc, signal.SIGINT)
        for wait_s in (_SECOND_INTERRUPT_AFTER_S, grace_s):
            try:
                proc.wait(timeout=wait_s)
                return False
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGINT)

    _signal_group(proc, signal.SIGKILL)
    proc.wait()
    return True


def input_timed_out(line: str) -> bool:
    """A `stop_when` predicate: ffmpeg reports that reading its input timed out.

    ffmpeg 5.1 does not end on such an error while its decoders still hold
    frames: it flushes one frame and reads again, waiting the whole socket
    timeout once per buffered frame. One timeout is enough to know the stream
    has stopped.
    """
    return "Connection timed out" in line or "Operation timed out" in line


#: Seconds between two looks at the wall timeout, a stall and a stop request.
_WAIT_STEP_S = 0.1


def _wait(
    proc: subprocess.Popen[bytes],
    wall_timeout_s: float,
    tail: _StderrTail,
    stall_timeout_s: float | None,
) -> str:
    """Wait for ffmpeg: "exited", "timeout", "stop" (asked for) or "stall"."""
    deadline = time.monotonic() + wall_timeout_s
    with _exit_fd(proc) as pidfd:
        while not tail.stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return "timeout"
            if stall_timeout_s is not None and tail.stalled_for(now) > stall_timeout_s:
                return "stall"
            if _exited_within(proc, pidfd, min(deadline - now, _WAIT_STEP_S)):
                return "exited"
    return "stop"


@contextlib.contextmanager
def _exit_fd(proc: subprocess.Popen[bytes]) -> Iterator[int | None]:
    """A pidfd of ffmpeg, readable once it has exited; None where there is none."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        # Before Linux 5.3 (or off Linux): Popen.wait's polling below.
        yield None
        return
    try:
        yield pidfd
    finally:
        os.close(pidfd)


def _exited_within(
    proc: subprocess.Popen[bytes], pidfd: int | None, timeout_s: float
) -> bool:
    """Whether ffmpeg exited within `timeout_s`; it has been reaped if so.

    Popen.wait(timeout) polls waitpid with sleeps growing to 50 ms, so a run's
    end was noticed up to 50 ms late; the pidfd wakes us the moment it exits.
    """
    if pidfd is None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    # poll, not select: a worker with a hundred probes has fds past FD_SETSIZE.
    watch = select.poll()
    watch.register(pidfd, select.POLLIN)
    if not watch.poll(max(0, math.ceil(timeout_s * 1000))):
        return False
    proc.wait()
    return True


def run_ffmpeg(
    argv: Sequence[str],
    *,
    wall_timeout_s: float,
    stderr_sink: Callable[[str], None] | None = None,
    pass_fds: Iterable[int] = (),
    interrupt_grace_s: float = 0.0,
    stop_when: Callable[[str], bool] | None = None,
    stall_timeout_s: float | None = None,
) -> FfmpegRun:
    """Run ffmpeg to its end or for at most `wall_timeout_s` (+ the grace period).

    `stderr_sink` gets every stderr line (masked, without newline) as it comes, from
    a reader thread; progress lines are not passed on. `pass_fds` stay open in
    ffmpeg, e.g. pipes for `pipe:N` outputs. ffmpeg is stopped early when
    `stop_when` returns True for a stderr line (e.g. `input_timed_out`), or when
    the stream time of its progress line (`base_args(stats=True)`) stands still for
    `stall_timeout_s`; then, as on timeout, it gets `interrupt_grace_s` to finish
    its outputs after SIGINT before SIGKILL. Raises SetupError if the binary cannot
    be started.
    """
    logger.debug("Running %s", mask_uri(" ".join(argv)))
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            # The hook only calls prctl through libc, loaded at import; it takes
            # no lock that another thread could hold at fork time.
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
    except OSError as exc:
        raise SetupError(f"ffmpeg at {argv[0]!r} cannot be started: {exc}") from exc

    tail = _StderrTail(stderr_sink, stop_when)
    assert proc.stderr is not None
    # The reader logs ffmpeg's lines: give it this thread's context, which holds
    # the running task's id for the log filter (a new thread starts without it).
    context = contextvars.copy_context()
    reader = threading.Thread(
        target=context.run, args=(tail.pump, proc.stderr), daemon=True
    )
    reader.start()
    timed_out = killed = stopped = False
    try:
        ended = _wait(proc, wall_timeout_s, tail, stall_timeout_s)
        if ended == "timeout":
            timed_out = True
            logger.warning(
                "ffmpeg ran past its %.1fs limit; stopping it.", wall_timeout_s
            )
        elif ended != "exited":
            stopped = True
            logger.info("The stream stopped sending (%s); stopping ffmpeg.", ended)
        if ended != "exited":
            killed = _stop(proc, interrupt_grace_s)
    finally:
        # Also on KeyboardInterrupt, a Celery soft time limit or any other error.
        if proc.returncode is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            killed = True
        reader.join(timeout=5)
        proc.stderr.close()

    elapsed = time.monotonic() - started
    logger.debug("ffmpeg exited %s after %.1fs", proc.returncode, elapsed)
    return FfmpegRun(proc.returncode, tail.text(), elapsed, timed_out, killed, stopped)


class PipeCollector:
    """A pipe ffmpeg writes into (`pipe:N`), drained into memory by a thread.

    Use as a context manager around `run_ffmpeg(..., pass_fds=[p.fd])`; `data()`
    closes our copy of the write end (so the reader sees the end) and returns all
    bytes, at most `max_bytes` (the rest is read and dropped).
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        read_fd, self.fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb", buffering=0)
        self._chunks: list[bytes] = []
        self._size = 0
        self._max = max_bytes
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The ffmpeg URL that writes into this pipe."""
        return f"pipe:{self.fd}"

    @property
    def path(self) -> str:
        """The same pipe as a path, which needs no escaping inside a filter graph."""
        return f"/dev/fd/{self.fd}"

    def _drain(self) -> None:
        while chunk := self._reader.read(65536):
            if self._size < self._max:
                self._chunks.append(chunk[: self._max - self._size])
                self._size += len(chunk)

    def close_write_end(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def data(self) -> bytes:
        self.close_write_end()
        self._thread.join()
        return b"".join(self._chunks)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_write_end()
        self._thread.join(timeout=5)
        self._reader.close()


# -- error mapping ----------------------------------------------------------------

# (phrases, exception class, message for a person); the first match wins, so the
# specific answers of a server come before the generic socket errors.
_FAILURE_TABLE: list[tuple[tuple[str, ...], type[MeasurementError], str]] = [
    (
        ("401 Unauthorized", "authorization failed", "403 Forbidden"),
        TargetUnauthorized,
        "the stream asks for credentials that are missing or wrong",
    ),
    (
        ("404 Not Found", "No such file or directory", "Stream not found"),
        TargetNotFound,
        "the stream path does not exist",
    ),
    (("Connection refused",), TargetRefused, "the connection was refused"),
    (
        (
            "Failed to resolve hostname",
            "Name or service not known",
            "Temporary failure in name resolution",
            "No address associated",
        ),
        TargetUnresolvable,
        "the host name does not resolve",
    ),
    (
        ("timed out", "Timeout", "No route to host", "Network is unreachable"),
        TargetTimeout,
        "the stream did not answer within the timeout",
    ),
    (
        (
            "Protocol not found",
            "not on whitelist",
            "Invalid data found",
            "Unsupported transport",
            "461 ",
            "not supported",
            "Unknown input format",
        ),
        TargetUnsupported,
        "the stream uses a protocol or format camtester cannot read",
    ),
]
_FAILURES = [
    (re.compile("|".join(map(re.escape, phrases)), re.IGNORECASE), error, text)
    for phrases, error, text in _FAILURE_TABLE
]

# ffmpeg rejecting its own command line: this worker's ffmpeg does not fit.
_SETUP_FAILURE = re.compile(
    r"Unrecognized option|Option not found|Error splitting the argument list|"
    r"No such filter|Unknown encoder|Error parsing options",
    re.IGNORECASE,
)


def redact(text: str, uri: str) -> str:
    """`text` with the credentials of `uri` masked, also outside of a URI."""
    text = mask_uri(text)
    _, _, password = strip_credentials(uri)
    if password:
        for secret in (password, quote(password, safe="")):
            text = text.replace(secret, MASK)
    return text


def classify_failure(
    run: FfmpegRun, uri: str, *, connect_timeout_s: float | None = None
) -> MeasurementError | SetupError:
    """The exception that says why `run` could not read `uri`.

    With `connect_timeout_s`, a run that lasted that long and ended in a generic
    "invalid data" is a server that sent nothing: ffmpeg's RTSP client reports
    an unanswered request that way once its socket timeout expires.
    """
    tail = redact(run.stderr_tail, uri)
    if _SETUP_FAILURE.search(tail):
        return SetupError(
            f"this worker's ffmpeg rejected camtester's options: {_last_lines(tail)}"
        )

    waited = connect_timeout_s is not None and run.elapsed_s >= 0.9 * connect_timeout_s
    said = _last_said(tail)
    for pattern, error, text in _FAILURES:
        if pattern.search(tail) and not (waited and error is TargetUnsupported):
            return error(f"{text} ({mask_uri(uri)}); ffmpeg: {said}")

    if run.timed_out or run.stopped or waited:
        return TargetTimeout(
            f"the stream sent nothing usable within {run.elapsed_s:.0f}s "
            f"({mask_uri(uri)}); ffmpeg: {said}"
        )
    return MeasurementInternal(
        f"ffmpeg exited with status {run.returncode}: {_last_lines(tail)}"
    )


def raise_for_failure(
    run: FfmpegRun, uri: str, *, connect_timeout_s: float | None = None
) -> None:
    """Raise the MeasurementError (or SetupError) fitting a failed run; else nothing."""
    if run.ok:
        return
    raise classify_failure(run, uri, connect_timeout_s=connect_timeout_s)


def _last_said(text: str) -> str:
    """ffmpeg's last line, without its "[tcp @ 0x..] [error]" prefixes."""
    lines = [line for line in text.splitlines() if line.strip()]
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", lines[-1]) if lines else "nothing"


def _last_lines(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-MESSAGE_LINES:]) or "no message"
