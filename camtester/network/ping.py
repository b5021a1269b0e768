"""Ping a camera's host: packet loss and round-trip times over ICMP echo.

Every call goes through the worker's shared ICMP engine (`icmp_engine`, run in a
child process by `icmp_process`), so a worker running hundreds of pings at once
keeps one socket per address family.

Options, checked by `validate_options` (InvalidInput names the payload field):
- `count`: 1 to 10000 requests.
- `interval`: 0.001 s to 60 s between requests to one host. The floor is the same
  for a root and an unprivileged worker: ping(8) holds ordinary users to a longer
  interval to protect a shared host from its users, but here every task has passed
  the service's own validation, and the kernel rate-limits neither raw nor
  unprivileged echo requests.
- `timeout`: above 0 and at most 60 s; a reply counts only if it arrives within
  `timeout` of its own request. The ceiling keeps a run bounded and its sequence
  numbers unambiguous.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import statistics
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import icmplib

from camtester.errors import (
    InvalidInput,
    MeasurementError,
    MeasurementInternal,
    TargetUnresolvable,
)
from camtester.network import icmp_engine, icmp_process

logger = logging.getLogger(__name__)

MAX_COUNT = 10000
MIN_INTERVAL_S = 0.001
MAX_INTERVAL_S = 60.0
MAX_TIMEOUT_S = 60.0
#: Longest host name a DNS query can carry.
MAX_HOST_CHARS = 253
#: Threads that look names up at once for `ping_many`.
RESOLVER_THREADS = 16
#: How often a waiting caller checks that the engine still turns, seconds.
ENGINE_CHECK_S = 10.0

Resolved = tuple[str, int, tuple[Any, ...]]


def validate_options(count: int, interval_s: float, timeout_s: float) -> None:
    """Raise InvalidInput naming the first option out of range."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise InvalidInput(f"count must be an integer from 1 to {MAX_COUNT}")
    if not 1 <= count <= MAX_COUNT:
        raise InvalidInput(f"count must be an integer from 1 to {MAX_COUNT}")

    if not _is_number_within(interval_s, MIN_INTERVAL_S, MAX_INTERVAL_S):
        raise InvalidInput(
            f"interval must be a number of seconds from {MIN_INTERVAL_S} "
            f"to {MAX_INTERVAL_S:g}"
        )
    if not _is_number_within(timeout_s, 0.0, MAX_TIMEOUT_S) or timeout_s == 0:
        raise InvalidInput(
            f"timeout must be a number of seconds above 0, at most {MAX_TIMEOUT_S:g}"
        )


def _is_number_within(value: object, low: float, high: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and low <= value <= high


def validate_host(host: object, field: str = "host") -> str:
    """The host without brackets or surrounding blanks; InvalidInput if malformed."""
    message = f"{field} must be a host name or an IP address"
    if not isinstance(host, str):
        raise InvalidInput(message)
    cleaned = host.strip()
    if cleaned.startswith("[") and cleaned.endswith("]"):
        cleaned = cleaned[1:-1]

    printable = all(c.isprintable() and not c.isspace() for c in cleaned)
    if not cleaned or len(cleaned) > MAX_HOST_CHARS or not printable:
        raise InvalidInput(message)
    return cleaned


def resolve_host(host: str) -> Resolved:
    """(address, family, sockaddr) of `host`; TargetUnresolvable if it has none."""
    try:
        address = icmplib.resolve(host)[0]
    except (icmplib.NameLookupError, ValueError, IndexError) as exc:
        # ValueError: names the IDNA codec rejects, such as "a..b".
        raise TargetUnresolvable(f"{host} does not resolve to an address") from exc

    if ipaddress.ip_address(address.partition("%")[0]).version == 4:
        return address, socket.AF_INET, (address, 0)

    # getaddrinfo keeps the scope of a link-local address in the sockaddr.
    info = socket.getaddrinfo(
        address, None, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST
    )
    return address, socket.AF_INET6, info[0][4]


def ping_host(
    host: str, *, count: int = 100, interval_s: float = 0.1, timeout_s: float = 1.0
) -> dict[str, Any]:
    """Send `count` echo requests to `host` and summarise what came back.

    Raises InvalidInput, TargetUnresolvable, or SetupError when this worker may
    not send ICMP at all. Blocks for about (count - 1) * interval + timeout.
    """
    validate_options(count, interval_s, timeout_s)
    name = validate_host(host)
    resolved = resolve_host(name)

    engine, session = _start(resolved, count, interval_s, timeout_s)
    return _collect(name, engine, session, time.monotonic())


def ping_many(
    hosts: Iterable[str],
    *,
    count: int = 100,
    interval_s: float = 0.1,
    timeout_s: float = 1.0,
) -> dict[str, dict[str, Any] | MeasurementError]:
    """Ping every host at once; each gets its payload or its own MeasurementError.

    One name that does not resolve spoils only its own entry. SetupError and
    InvalidInput concern the whole call and are raised.
    """
    validate_options(count, interval_s, timeout_s)
    names = [validate_host(host, f"hosts[{i}]") for i, host in enumerate(hosts)]
    names = list(dict.fromkeys(names))
    resolved = _resolve_all(names)

    # Every family needed must be usable before any run starts.
    families = {o[1] for o in resolved.values() if isinstance(o, tuple)}
    engines = {family: icmp_process.get_engine(family) for family in families}

    started = time.monotonic()
    results: dict[str, dict[str, Any] | MeasurementError] = {}
    runs: dict[str, tuple[icmp_process.EngineProcess, icmp_engine.Session]] = {}
    for name, outcome in resolved.items():
        if isinstance(outcome, MeasurementError):
            results[name] = outcome
        else:
            runs[name] = (
                engines[outcome[1]],
                _session(outcome, count, interval_s, timeout_s),
            )
    # One message per engine, so that every session starts on the same tick.
    for engine in engines.values():
        engine.submit_many([s for e, s in runs.values() if e is engine])

    for name, (engine, session) in runs.items():
        try:
            results[name] = _collect(name, engine, session, started)
        except MeasurementError as exc:
            results[name] = exc
    return {name: results[name] for name in names}


def _resolve_all(names: list[str]) -> dict[str, Resolved | MeasurementError]:
    """Resolve each name on its own; lookups that may block run side by side."""

    def attempt(name: str) -> Resolved | MeasurementError:
        try:
            return resolve_host(name)
        except MeasurementError as exc:
            return exc

    literals = [name for name in names if _is_address(name)]
    lookups = [name for name in names if not _is_address(name)]
    outcomes = {name: attempt(name) for name in literals}
    if lookups:
        with ThreadPoolExecutor(min(RESOLVER_THREADS, len(lookups))) as pool:
            outcomes.update(zip(lookups, pool.map(attempt, lookups), strict=True))
    return outcomes


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return False
    return True


def _session(
    resolved: Resolved, count: int, interval_s: float, timeout_s: float
) -> icmp_engine.Session:
    address, _, sockaddr = resolved
    return icmp_engine.Session(address, sockaddr, count, interval_s, timeout_s)


def _start(
    resolved: Resolved, count: int, interval_s: float, timeout_s: float
) -> tuple[icmp_process.EngineProcess, icmp_engine.Session]:
    engine = icmp_process.get_engine(resolved[1])
    session = _session(resolved, count, interval_s, timeout_s)
    engine.submit(session)
    return engine, session


def _collect(
    name: str,
    engine: icmp_process.EngineProcess,
    session: icmp_engine.Session,
    started: float,
) -> dict[str, Any]:
    """Wait for the engine to finish the session and turn it into a payload.

    A loaded worker may stretch a run well past its nominal length, and its
    figures stay right (replies carry the kernel's receipt time), so the wait
    ends early only if the engine stops turning.
    """
    run_s = (session.count - 1) * session.interval_s + session.timeout_s
    wait_s = max(started + run_s - time.monotonic(), 0.0) + 1.0
    while not session.done.wait(wait_s):
        if not engine.responsive():
            session.cancelled = True
            raise MeasurementInternal(f"ping of {name}: the ICMP engine is stuck")
        wait_s = ENGINE_CHECK_S
    if session.error is not None:
        raise session.error

    payload = summarise(session)
    logger.debug(
        "ping %s (%s): %d of %d replies in %.2fs",
        name,
        session.address,
        payload["packets_received"],
        payload["packets_sent"],
        time.monotonic() - started,
    )
    return payload


def summarise(session: icmp_engine.Session) -> dict[str, Any]:
    """The ping payload of DESIGN.md; RTTs are 0.0 when nothing came back."""
    rtts = session.rtts_ms
    sent = session.sent
    received = len(rtts)
    payload: dict[str, Any] = {
        "packets_sent": sent,
        "packets_received": received,
        "packet_loss": (sent - received) / sent if sent else 1.0,
        "min_rtt_ms": 0.0,
        "avg_rtt_ms": 0.0,
        "max_rtt_ms": 0.0,
        "std_dev_rtt_ms": 0.0,
        "address": session.address,
    }
    if rtts:
        payload["min_rtt_ms"] = round(min(rtts), 3)
        payload["avg_rtt_ms"] = round(statistics.fmean(rtts), 3)
        payload["max_rtt_ms"] = round(max(rtts), 3)
        payload["std_dev_rtt_ms"] = round(statistics.pstdev(rtts), 3)
    return payload
