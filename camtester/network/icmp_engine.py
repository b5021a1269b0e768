"""One ICMP socket per address family, driven by one I/O thread.

A worker runs hundreds of ping tasks at once. One socket per task would not scale:
every raw ICMP socket receives a copy of every echo reply on the host, so N sockets
do N x N work and replies outlive their timeout in the backlog. Instead each family
has one `Engine`: callers register a `Session` and wait on it, and the engine's
thread sends each session's requests on its schedule and matches every reply to
(source address, identifier, sequence) as fping does, with the identifier left out
on an unprivileged socket, where the kernel picks it and filters for us.

The engine runs in a child process of the worker (`icmp_process`), where no other
thread competes with it for the interpreter lock.

NOTE: only the engine thread touches the socket, the heaps and the pending map;
callers reach the engine through `submit`, which takes the lock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from camtester.errors import MeasurementInternal
from camtester.network import icmp_wire

logger = logging.getLogger(__name__)

#: Requests sent before the engine drains its socket again, so replies are read
#: (and stamped, when the kernel cannot) while a large batch is still going out.
SEND_BATCH = 32
#: Longest sleep of an idle engine, seconds.
IDLE_WAIT_S = 5.0
#: Delay before retrying a send the kernel refused for lack of buffer, seconds.
SEND_RETRY_S = 0.001
#: An engine whose loop has not turned for this long is stuck, seconds. An idle
#: loop turns every IDLE_WAIT_S, a loaded one far more often.
STALL_S = 30.0
#: Shortest time between two warnings about replies the kernel dropped, seconds.
DROP_REPORT_S = 10.0
_RECEIVE_BYTES = 2048


@dataclass(eq=False)
class Session:
    """One target's ping run: its schedule, what went out and what came back."""

    address: str
    sockaddr: tuple[str, int] | tuple[str, int, int, int]
    count: int
    interval_s: float
    timeout_s: float
    sent: int = 0
    rtts_ms: list[float] = field(default_factory=list)
    error: Exception | None = None
    done: threading.Event = field(default_factory=threading.Event)
    #: Called on the engine thread once the session is done, after `done` is set.
    on_done: Callable[[Session], None] | None = None
    cancelled: bool = False
    # Engine-private from here on.
    start: float = 0.0
    finish_at: float | None = None
    pending: set[int] = field(default_factory=set)


class Engine:
    """The I/O thread of one address family and the sessions it runs."""

    def __init__(self, channel: icmp_wire.Channel, identifier: int) -> None:
        self.channel = channel
        self.template = icmp_wire.EchoTemplate(channel, identifier)
        self._lock = threading.Lock()
        self._incoming: deque[Session] = deque()
        self._stopped = False
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        self._order = itertools.count()
        self._sends: list[tuple[float, int, Session]] = []
        self._finishes: list[tuple[float, int, Session]] = []
        self._pending: dict[tuple[str, int], tuple[Session, int]] = {}
        self._next_sequence: dict[str, int] = {}
        self._active: set[Session] = set()
        self._drops_seen = 0
        self._drops_reported_at = -DROP_REPORT_S
        self._last_turn = time.monotonic()

        self._thread = threading.Thread(
            target=self._run, name="icmp-engine", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self._stopped

    def responsive(self) -> bool:
        """Running and turning its loop: slow under load is fine, stuck is not."""
        return self.alive and time.monotonic() - self._last_turn < STALL_S

    def submit(self, session: Session) -> None:
        self.submit_many([session])

    def submit_many(self, sessions: list[Session]) -> None:
        """Hand sessions to the engine thread; it starts sending at once."""
        with self._lock:
            if self._stopped:
                raise MeasurementInternal("the ICMP engine of this worker has stopped")
            self._incoming.extend(sessions)
            self._wake()

    def stop(self) -> None:
        """End the thread; sessions still running fail with MeasurementInternal."""
        with self._lock:
            self._stopped = True
            self._wake()
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            logger.warning("ICMP engine thread did not stop within 5 s")
            return

        with self._lock:
            if self._wake_write >= 0:
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_read = self._wake_write = -1
        self.channel.owner.close()

    def _wake(self) -> None:
        # NOTE: called with the lock held, so that `stop` cannot close the pipe
        # between the check and the write.
        if self._wake_write < 0:
            return
        try:
            os.write(self._wake_write, b"x")
        except BlockingIOError:
            pass  # The pipe is full, so a wake-up is pending already.

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.channel.sock.fileno(), select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        try:
            while not self._stopped:
                poller.poll(self._wait_ms())
                now = self._last_turn = time.monotonic()
                self._admit(now)
                self._drain()
                self._send_due(now)
                self._drain()
                self._expire(now)
        except Exception:
            logger.exception("ICMP engine failed; failing its sessions")
        finally:
            self._shut_down()

    def _wait_ms(self) -> int:
        """Milliseconds until the next send or finish is due (0: work is waiting)."""
        if self._incoming:
            return 0
        due = [heap[0][0] for heap in (self._sends, self._finishes) if heap]
        if not due:
            return int(IDLE_WAIT_S * 1000)
        wait_s = min(due) - time.monotonic()
        return max(0, min(int(wait_s * 1000) + 1, int(IDLE_WAIT_S * 1000)))

    def _admit(self, now: float) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

        with self._lock:
            arrivals = list(self._incoming)
            self._incoming.clear()
        for session in arrivals:
            session.start = now
            self._active.add(session)
            heapq.heappush(self._sends, (now, next(self._order), session))

    def _send_due(self, now: float) -> None:
        for _ in range(SEND_BATCH):
            if not self._sends or self._sends[0][0] > now:
                return
            _, _, session = heapq.heappop(self._sends)
            if session.cancelled or session not in self._active:
                self._finish(session)
                continue

            if not self._send_one(session):
                retry_at = time.monotonic() + SEND_RETRY_S
                heapq.heappush(self._sends, (retry_at, next(self._order), session))
                continue
            session.sent += 1
            self._schedule_next(session)

    def _schedule_next(self, session: Session) -> None:
        """Queue the next request on the session's own clock, or its finish."""
        if session.sent < session.count:
            due = session.start + session.sent * session.interval_s
            heapq.heappush(self._sends, (due, next(self._order), session))
        elif not session.pending:
            self._finish(session)
        else:
            session.finish_at = time.monotonic() + session.timeout_s
            entry = (session.finish_at, next(self._order), session)
            heapq.heappush(self._finishes, entry)

    def _send_one(self, session: Session) -> bool:
        """Send the session's next request; False when it must be retried shortly."""
        sequence = self._allocate_sequence(session.address)
        packet = self.template.packet(sequence)
        sent_ns = time.time_ns()
        try:
            self.channel.sock.sendto(packet, session.sockaddr)
        except OSError as exc:
            if icmp_wire.is_transient_send_error(exc):
                return False
            # No route, a firewall's reject: the request counts as sent and lost.
            logger.debug("echo request to %s failed: %s", session.address, exc)
            return True

        self._pending[(session.address, sequence)] = (session, sent_ns)
        session.pending.add(sequence)
        return True

    def _allocate_sequence(self, address: str) -> int:
        """The next sequence for `address`, skipping any still awaiting a reply."""
        sequence = self._next_sequence.get(address, random.getrandbits(16))
        while (address, sequence) in self._pending:
            sequence = (sequence + 1) & 0xFFFF
        self._next_sequence[address] = (sequence + 1) & 0xFFFF
        return sequence

    def _drain(self) -> None:
        """Read every reply waiting in the socket, matching each to its request."""
        sock = self.channel.sock
        while True:
            try:
                data, ancdata, _flags, source = sock.recvmsg(
                    _RECEIVE_BYTES, icmp_wire.ANCILLARY_BYTES
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # A queued ICMP error surfacing on the socket: nothing to match.
                logger.debug("ICMP receive failed: %s", exc)
                return

            received_ns, drops = icmp_wire.receipt_details(ancdata)
            if drops is not None and drops != self._drops_seen:
                self._report_drops(drops)
            sequence = icmp_wire.parse_reply(self.channel, self.template, data)
            if sequence is not None:
                self._match(source[0], sequence, received_ns)

    def _match(self, address: str, sequence: int, received_ns: int) -> None:
        entry = self._pending.pop((address, sequence), None)
        if entry is None:
            return  # A duplicate, a straggler, or someone else's.
        session, sent_ns = entry
        session.pending.discard(sequence)

        # A reply counts only within the timeout of its own request.
        rtt_ms = max(0, received_ns - sent_ns) / 1e6
        if rtt_ms <= session.timeout_s * 1000:
            session.rtts_ms.append(rtt_ms)
        if session.sent == session.count and not session.pending:
            self._finish(session)

    def _report_drops(self, drops: int) -> None:
        """Warn, at most every DROP_REPORT_S, that the kernel dropped replies."""
        now = time.monotonic()
        if now - self._drops_reported_at < DROP_REPORT_S:
            return
        logger.warning(
            "ICMP socket dropped %d replies for want of buffer; the figures of "
            "pings running now understate what came back",
            drops - self._drops_seen,
        )
        self._drops_seen = drops
        self._drops_reported_at = now

    def _expire(self, now: float) -> None:
        while self._finishes and self._finishes[0][0] <= now:
            _, _, session = heapq.heappop(self._finishes)
            self._finish(session)

    def _finish(self, session: Session) -> None:
        if session not in self._active:
            return
        self._active.discard(session)
        for sequence in session.pending:
            self._pending.pop((session.address, sequence), None)
        session.pending.clear()
        _announce(session)

    def _shut_down(self) -> None:
        with self._lock:
            self._stopped = True
            waiting = list(self._incoming)
            self._incoming.clear()
        for session in [*self._active, *waiting]:
            session.error = MeasurementInternal(
                "the ICMP engine of this worker stopped"
            )
            _announce(session)
        self._active.clear()


def _announce(session: Session) -> None:
    session.done.set()
    if session.on_done is not None:
        session.on_done(session)
