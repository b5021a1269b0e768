"""Each ICMP engine in a child process of its own, out of reach of the worker's GIL.

An engine thread inside the worker shares the interpreter lock with everything
else the worker does. Every send and every receive is a system call that gives
the lock away, and while another thread computes (a chunk's claims and store
writes, Celery's bookkeeping, a probe reading ffmpeg's output) the engine waits
up to the switch interval, 5 ms, to get it back: once per packet. With one busy
thread beside it, 1,000 hosts x 20 pings of one second took 103 s
(`python -m bench.ping_fanout` measures it). So each family's engine runs in a
forked child that does nothing else; the worker sends it sessions and receives
each session's figures, a few small messages per chunk of targets.

Fork, not spawn: the child starts with what the worker has imported, so it needs
no access to the installation (nothing here imports lazily), and a worker that
dropped its privileges after start-up still starts its engine (the kernel checks
them when the socket opens, in the child). The child runs only the engine, no
Celery, store or metrics, so fork's known hazard, a lock another thread held at
the moment of the fork, does not reach it: logging re-creates its locks in a
forked child.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, Pipe
from typing import Any

from camtester.errors import MeasurementInternal, SetupError
from camtester.network import icmp_wire
from camtester.network.icmp_engine import STALL_S, Engine, Session

logger = logging.getLogger(__name__)

#: How long a new child may take to open its socket and say so, seconds.
READY_TIMEOUT_S = 10.0
#: How often the child tells the worker that its engine still turns, seconds.
HEARTBEAT_S = 1.0
#: How long the child collects finished sessions before sending them, seconds.
FLUSH_S = 0.005
#: The child's switch interval: its own threads hand the lock to the engine
#: quickly, and none of them computes for long.
CHILD_SWITCH_INTERVAL_S = 0.0005
#: How long `stop` waits for the child to end before killing it, seconds.
STOP_WAIT_S = 5.0

# One entry of a "start" message: number, address, sockaddr, count, interval, timeout.
StartEntry = tuple[int, str, tuple[Any, ...], int, float, float]
# One entry of a "done" message: number, requests sent, RTTs in ms, error or None.
DoneEntry = tuple[int, int, list[float], str | None]


class EngineProcess:
    """The worker's side of one family's engine child: submit sessions, wait on them."""

    def __init__(self, family: int) -> None:
        self._conn, child_conn = Pipe()
        self.pid = _fork_child(child_conn, self._conn, family)
        child_conn.close()

        # Two locks: the reader must never wait for a send, or a child blocked
        # sending results and a worker blocked sending sessions would wait on
        # each other once both socket buffers are full.
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._sessions: dict[int, Session] = {}
        self._numbers = itertools.count()
        self._stopped = False
        self._engine_turning = True
        self.privileged = self._await_ready()
        self._last_heartbeat = time.monotonic()

        self._reader = threading.Thread(
            target=self._read, name="icmp-engine-reader", daemon=True
        )
        self._reader.start()

    @property
    def alive(self) -> bool:
        return not self._stopped and self._reader.is_alive()

    def responsive(self) -> bool:
        """Running, and its engine turned its loop lately: slow is fine, stuck not."""
        recent = time.monotonic() - self._last_heartbeat < STALL_S
        return self.alive and recent and self._engine_turning

    def submit(self, session: Session) -> None:
        self.submit_many([session])

    def submit_many(self, sessions: list[Session]) -> None:
        """Hand sessions to the child in one message; it starts sending at once."""
        entries: list[StartEntry] = []
        with self._lock:
            if not self.alive:
                raise MeasurementInternal("the ICMP engine of this worker has stopped")
            for session in sessions:
                number = next(self._numbers)
                self._sessions[number] = session
                entries.append(
                    (
                        number,
                        session.address,
                        session.sockaddr,
                        session.count,
                        session.interval_s,
                        session.timeout_s,
                    )
                )

        try:
            with self._send_lock:
                self._conn.send(("start", entries))
        except OSError as exc:
            with self._lock:
                for number, *_ in entries:
                    self._sessions.pop(number, None)
            raise MeasurementInternal(
                f"the ICMP engine of this worker cannot be reached: {exc}"
            ) from exc

    def stop(self) -> None:
        """End the child; sessions still running fail with MeasurementInternal."""
        with self._lock:
            self._stopped = True
        try:
            with self._send_lock:
                self._conn.send(("stop",))
        except OSError:
            pass  # The child is gone already.
        self._reader.join(STOP_WAIT_S)
        if self._reader.is_alive():
            logger.warning("ICMP engine process did not stop; killing it")
            _kill(self.pid)
            self._reader.join(STOP_WAIT_S)
        self._conn.close()

    def _await_ready(self) -> bool:
        """Whether the child's socket is raw, once the child has opened it."""
        try:
            if not self._conn.poll(READY_TIMEOUT_S):
                raise EOFError("no answer")
            message = self._conn.recv()
        except (EOFError, OSError) as exc:
            _kill(self.pid)
            _reap(self.pid)
            raise MeasurementInternal(
                f"the ICMP engine process did not start: {exc}"
            ) from exc

        if message[0] == "setup_error":
            _reap(self.pid)
            raise SetupError(message[1])
        _, privileged = message
        return bool(privileged)

    def _read(self) -> None:
        """Deliver the child's results to their sessions until the child ends."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "done":
                self._deliver(message[1])
            elif message[0] == "heartbeat":
                self._last_heartbeat = time.monotonic()
                self._engine_turning = bool(message[1])

        exit_status = _reap(self.pid)
        if not self._stopped:
            logger.error(
                "ICMP engine process %d ended (wait status %s)", self.pid, exit_status
            )
        self._fail_waiting()

    def _deliver(self, entries: list[DoneEntry]) -> None:
        for number, sent, rtts_ms, error in entries:
            with self._lock:
                session = self._sessions.pop(number, None)
            if session is None:
                continue
            session.sent = sent
            session.rtts_ms = rtts_ms
            if error is not None:
                session.error = MeasurementInternal(error)
            session.done.set()

    def _fail_waiting(self) -> None:
        with self._lock:
            self._stopped = True
            waiting = list(self._sessions.values())
            self._sessions.clear()
        for session in waiting:
            session.error = MeasurementInternal(
                "the ICMP engine of this worker stopped"
            )
            session.done.set()


def _fork_child(conn: Connection, parent_end: Connection, family: int) -> int:
    """Fork the engine child; its pid. The child never returns from here.

    os.fork, not multiprocessing.Process: a prefork pool process of Celery is a
    daemonic process to multiprocessing, which refuses it children.
    """
    pid = os.fork()
    if pid:
        return pid

    status = 1
    try:
        # A stop signal to the worker's process group (Ctrl-C, systemd, kill
        # of the group) reaches the child too; a worker in warm shutdown still
        # finishes its running pings, so the child leaves only when the worker
        # does, and it sees that as the end of its connection.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        _serve(conn, parent_end, family)
        status = 0
    except BaseException:  # The child must never return into the worker's code.
        logger.exception("ICMP engine process failed")
    finally:
        os._exit(status)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # Ended already.


def _reap(pid: int) -> int | None:
    """Wait for the child to end; its wait status, None if someone else reaped it."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return status


def _serve(conn: Connection, parent_end: Connection, family: int) -> None:
    """The child: open the socket, run the engine, answer the worker until it leaves."""
    # The worker's end must close here, or the child never sees the worker go.
    parent_end.close()
    sys.setswitchinterval(CHILD_SWITCH_INTERVAL_S)

    identifier = random.getrandbits(16)
    try:
        channel = icmp_wire.open_channel(family, identifier)
    except SetupError as exc:
        conn.send(("setup_error", str(exc)))
        return
    engine = Engine(channel, identifier)
    conn.send(("ready", channel.privileged))

    try:
        _answer(conn, engine)
    finally:
        engine.stop()
        conn.close()


def _answer(conn: Connection, engine: Engine) -> None:
    """Start sessions the worker sends, send back those that finished, and beat."""
    finished: deque[tuple[int, Session]] = deque()
    running = 0
    next_beat = 0.0
    while engine.alive:
        try:
            ready = conn.poll(FLUSH_S if running else HEARTBEAT_S)
            while ready:
                message = conn.recv()
                if message[0] == "stop":
                    return
                running += _start(engine, message[1], finished)
                ready = conn.poll(0)

            done = [finished.popleft() for _ in range(len(finished))]
            if done:
                conn.send(("done", [_done_entry(n, s) for n, s in done]))
                running -= len(done)

            now = time.monotonic()
            if now >= next_beat:
                conn.send(("heartbeat", engine.responsive()))
                next_beat = now + HEARTBEAT_S
        except (EOFError, OSError):
            return  # The worker is gone: nobody is left to answer.


def _start(
    engine: Engine, entries: list[StartEntry], finished: deque[tuple[int, Session]]
) -> int:
    sessions = []
    for number, address, sockaddr, count, interval_s, timeout_s in entries:
        session = Session(address, sockaddr, count, interval_s, timeout_s)
        session.on_done = lambda s, n=number: finished.append((n, s))
        sessions.append(session)
    engine.submit_many(sessions)
    return len(sessions)


def _done_entry(number: int, session: Session) -> DoneEntry:
    error = str(session.error) if session.error is not None else None
    return number, session.sent, session.rtts_ms, error


_registry_lock = threading.Lock()
_engines: dict[int, EngineProcess] = {}
_setup_errors: dict[int, str] = {}


def get_engine(family: int) -> EngineProcess:
    """The process's engine for `family`, started on first use.

    A worker that may not send ICMP says so once in its log and then raises the
    same SetupError for every task, instead of reporting every camera as lost.
    """
    with _registry_lock:
        if family in _setup_errors:
            raise SetupError(_setup_errors[family])
        engine = _engines.get(family)
        if engine is not None and engine.alive:
            return engine
        if engine is not None:
            engine.stop()

        try:
            engine = _engines[family] = EngineProcess(family)
        except SetupError as exc:
            _setup_errors[family] = str(exc)
            logger.error("%s", exc)
            raise
        logger.info(
            "ICMP engine for %s runs in process %d",
            icmp_wire.family_name(family),
            engine.pid,
        )
        return engine


def shutdown() -> None:
    """Stop every engine and forget refusals; for tests and worker shutdown."""
    with _registry_lock:
        engines = list(_engines.values())
        _engines.clear()
        _setup_errors.clear()
    for engine in engines:
        engine.stop()


def _forget_after_fork() -> None:
    # A forked child (a pool process, an engine child) has the parent's
    # connections but not its reader threads: it closes its copies, so that each
    # engine child still sees EOF when the worker that owns it goes.
    global _registry_lock
    _registry_lock = threading.Lock()
    for engine in _engines.values():
        engine._conn.close()
    _engines.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
# Before multiprocessing's own exit handler ends the children (handlers run last
# registered first), so that an engine leaving at exit is not taken for a crash.
atexit.register(shutdown)
