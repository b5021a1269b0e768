"""Ping over real ICMP to loopback: figures, options, fan-out and concurrency."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from camtester.devtools.busy import busy_thread
from camtester.errors import CamtesterError, InvalidInput, MeasurementInternal
from camtester.network import icmp_process, icmp_wire
from camtester.network.ping import ping_host, ping_many, validate_options


def assert_clean_run(payload: dict[str, Any], count: int, address: str) -> None:
    """Every request answered: the figures a clean loopback run must have."""
    assert payload["address"] == address
    assert payload["packets_sent"] == count
    assert payload["packets_received"] == count
    assert payload["packet_loss"] == 0.0
    assert payload["min_rtt_ms"] > 0
    assert payload["min_rtt_ms"] <= payload["avg_rtt_ms"] <= payload["max_rtt_ms"]
    assert payload["std_dev_rtt_ms"] >= 0


def test_loopback_answers_every_request() -> None:
    payload = ping_host("127.0.0.1", count=20, interval_s=0.05)

    assert_clean_run(payload, 20, "127.0.0.1")
    assert set(payload) == {
        "packets_sent",
        "packets_received",
        "packet_loss",
        "min_rtt_ms",
        "avg_rtt_ms",
        "max_rtt_ms",
        "std_dev_rtt_ms",
        "address",
    }


def test_localhost_reports_the_address_it_resolved_to() -> None:
    payload = ping_host("localhost", count=3, interval_s=0.01)

    assert_clean_run(payload, 3, "127.0.0.1")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this machine")
def test_ipv6_loopback_answers_every_request() -> None:
    payload = ping_host("::1", count=10, interval_s=0.01)

    assert_clean_run(payload, 10, "::1")


def test_a_thousand_targets_at_once_each_get_every_reply() -> None:
    # The field case: one socket per target made each see every reply, and most
    # targets counted 1 to 3 of 20. 1,000 loopback addresses, 20 requests each.
    hosts = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(1000)]

    results = ping_many(hosts, count=20, interval_s=0.05, timeout_s=1.0)

    assert list(results) == hosts
    short = {h: r for h, r in results.items() if not isinstance(r, dict)}
    assert short == {}
    received = {h: r["packets_received"] for h, r in results.items()}
    assert received == dict.fromkeys(hosts, 20)
    assert all(results[h]["address"] == h for h in hosts)


def test_fifty_threads_pinging_at_once_each_get_every_reply() -> None:
    hosts = [f"127.0.1.{i}" for i in range(1, 51)]
    results: dict[str, dict[str, Any] | CamtesterError] = {}
    barrier = threading.Barrier(len(hosts))

    def run(host: str) -> None:
        barrier.wait()
        try:
            results[host] = ping_host(host, count=20, interval_s=0.05)
        except CamtesterError as exc:  # reported through the assertions below
            results[host] = exc

    threads = [threading.Thread(target=run, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(results) == sorted(hosts)
    for host in hosts:
        assert isinstance(results[host], dict), results[host]
        assert_clean_run(results[host], 20, host)


def test_a_busy_thread_in_the_worker_does_not_stretch_the_pings() -> None:
    # With the engine as a thread of the worker, one computing thread beside it
    # made every send wait for the interpreter lock: this run took 103 s. Its
    # nominal length is (count - 1) x interval + timeout; three times that is
    # the bound ping_host documents with room for a loaded machine.
    hosts = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(1000)]
    with busy_thread():
        started = time.monotonic()
        results = ping_many(hosts, count=20, interval_s=0.05, timeout_s=1.0)
        wall_s = time.monotonic() - started

    received = {h: r["packets_received"] for h, r in results.items()}
    assert received == dict.fromkeys(hosts, 20)
    assert wall_s < 3 * (19 * 0.05 + 1.0)


def test_a_killed_engine_fails_its_pings_and_the_next_ping_starts_another() -> None:
    engine = icmp_process.get_engine(socket.AF_INET)
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(ping_host("127.0.0.5", count=200, interval_s=0.01))
        except CamtesterError as exc:  # the assertion below looks at it
            outcome.append(exc)

    pinging = threading.Thread(target=run)
    pinging.start()
    time.sleep(0.3)
    os.kill(engine.pid, signal.SIGKILL)
    pinging.join(timeout=30)

    assert len(outcome) == 1
    assert isinstance(outcome[0], MeasurementInternal)
    assert outcome[0].code == "internal"
    assert_clean_run(ping_host("127.0.0.5", count=5, interval_s=0.01), 5, "127.0.0.5")
    assert icmp_process.get_engine(socket.AF_INET).pid != engine.pid


ORPHAN_CHECK = """
import socket, sys, time
from camtester.network import icmp_process
from camtester.network.ping import ping_host
ping_host("127.0.0.1", count=1)
print(icmp_process.get_engine(socket.AF_INET).pid, flush=True)
time.sleep(60)
"""


def test_the_engine_ends_when_its_worker_is_killed() -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_CHECK], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        engine_pid = int(worker.stdout.readline())
        assert _process_exists(engine_pid)
        worker.kill()
        worker.wait(timeout=10)

        deadline = time.monotonic() + 10
        while _process_exists(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _process_exists(engine_pid)
    finally:
        worker.kill()
        worker.wait(timeout=10)


WARM_SHUTDOWN = """
import json, signal, sys, threading
from camtester.network.ping import ping_host
ping_host("127.0.0.1", count=1)
result = []
pinging = threading.Thread(
    target=lambda: result.append(ping_host("127.0.0.6", count=40, interval_s=0.05))
)
# As Celery's warm shutdown does on either signal: finish what runs.
signal.signal(signal.SIGTERM, lambda *_: None)
signal.signal(signal.SIGINT, lambda *_: None)
pinging.start()
print("pinging", flush=True)
pinging.join()
print(json.dumps(result[0]), flush=True)
"""


def test_a_stop_signal_to_the_worker_group_lets_running_pings_finish() -> None:
    # systemd and Ctrl-C signal the whole process group, the engine child too;
    # a worker in warm shutdown finishes its tasks, so the child must go on.
    worker = subprocess.Popen(
        [sys.executable, "-c", WARM_SHUTDOWN],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "pinging"
        time.sleep(0.5)
        os.killpg(worker.pid, signal.SIGTERM)
        os.killpg(worker.pid, signal.SIGINT)
        payload = json.loads(worker.stdout.readline())
    finally:
        worker.kill()
        worker.wait(timeout=10)

    assert (payload["packets_sent"], payload["packets_received"]) == (40, 40)


def _process_exists(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_two_runs_to_one_address_at_once_keep_their_replies_apart() -> None:
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(
            target=lambda n=n: results.append(
                ping_host("127.0.0.9", count=n, interval_s=0.01)
            )
        )
        for n in (15, 25)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    counts = sorted((r["packets_sent"], r["packets_received"]) for r in results)
    assert counts == [(15, 15), (25, 25)]


def test_ping_many_keeps_order_and_pings_a_repeated_host_once() -> None:
    results = ping_many(
        ["127.0.0.3", "127.0.0.2", "127.0.0.3"], count=4, interval_s=0.01
    )

    assert list(results) == ["127.0.0.3", "127.0.0.2"]
    for host, payload in results.items():
        assert isinstance(payload, dict)
        assert_clean_run(payload, 4, host)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 10001}, "count"),
        ({"count": True}, "count"),
        ({"count": 2.0}, "count"),
        ({"interval_s": 0.0005}, "interval"),
        ({"interval_s": 0}, "interval"),
        ({"interval_s": float("nan")}, "interval"),
        ({"interval_s": "0.1"}, "interval"),
        ({"interval_s": 61}, "interval"),
        ({"timeout_s": 0}, "timeout"),
        ({"timeout_s": -1.0}, "timeout"),
        ({"timeout_s": float("inf")}, "timeout"),
        ({"timeout_s": 60.5}, "timeout"),
    ],
)
def test_options_out_of_range_name_their_field(
    options: dict[str, Any], field: str
) -> None:
    values: dict[str, Any] = {"count": 5, "interval_s": 0.1, "timeout_s": 1.0}
    values.update(options)

    with pytest.raises(InvalidInput, match=rf"^{field} must be"):
        validate_options(values["count"], values["interval_s"], values["timeout_s"])
    with pytest.raises(InvalidInput, match=rf"^{field} must be"):
        ping_host("127.0.0.1", **values)


def test_options_at_their_bounds_are_accepted() -> None:
    validate_options(1, 0.001, 60.0)
    validate_options(10000, 60.0, 0.001)


@pytest.mark.parametrize("host", ["", "  ", "cam 17", "cam\n17", "a" * 254, None])
def test_malformed_host_is_invalid_input(host: Any) -> None:
    with pytest.raises(InvalidInput, match="^host must be"):
        ping_host(host, count=1)


def test_malformed_host_in_a_list_names_its_index() -> None:
    with pytest.raises(InvalidInput, match=r"^hosts\[1\] must be"):
        ping_many(["127.0.0.1", ""], count=1)


def test_bracketed_ipv6_literal_is_accepted() -> None:
    if not _has_ipv6_loopback():
        pytest.skip("no ::1 on this machine")

    assert ping_host("[::1]", count=2, interval_s=0.01)["packets_received"] == 2


def _ones_complement_sum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.fixture
def ipv4_channel() -> Iterator[icmp_wire.Channel]:
    """An IPv4 ICMP socket of the test's own, identifier 0x1234."""
    channel = icmp_wire.open_channel(socket.AF_INET, 0x1234)
    yield channel
    channel.owner.close()


def test_raw_ipv4_requests_carry_a_valid_checksum(
    ipv4_channel: icmp_wire.Channel,
) -> None:
    # An RFC 1071 checksum makes the one's-complement sum of the packet 0xFFFF.
    if not ipv4_channel.privileged:
        pytest.skip("the kernel fills the checksum on an unprivileged socket")
    template = icmp_wire.EchoTemplate(ipv4_channel, 0x1234)

    for sequence in (0, 1, 0x7FFF, 0xFFFF):
        packet = template.packet(sequence)
        assert _ones_complement_sum(packet) == 0xFFFF
        assert struct.unpack_from("!BBxxHH", packet) == (
            8,
            0,
            template.identifier,
            sequence,
        )


def test_replies_to_other_programs_are_not_ours(
    ipv4_channel: icmp_wire.Channel,
) -> None:
    # Replies shaped as a raw IPv4 socket would see them (20-byte IP header first).
    if not ipv4_channel.privileged:
        pytest.skip("only a raw socket sees other programs' replies")
    template = icmp_wire.EchoTemplate(ipv4_channel, 0x1234)
    ip_header = bytes([0x45]) + bytes(19)

    def reply(kind: int, identifier: int, payload: bytes) -> bytes:
        return ip_header + struct.pack("!BBHHH", kind, 0, 0, identifier, 7) + payload

    ours = reply(0, template.identifier, template.payload)
    assert icmp_wire.parse_reply(ipv4_channel, template, ours) == 7
    other_id = reply(0, template.identifier ^ 1, template.payload)
    assert icmp_wire.parse_reply(ipv4_channel, template, other_id) is None
    other_payload = reply(0, template.identifier, bytes(56))
    assert icmp_wire.parse_reply(ipv4_channel, template, other_payload) is None
    request = reply(8, template.identifier, template.payload)
    assert icmp_wire.parse_reply(ipv4_channel, template, request) is None


def _drain(channel: icmp_wire.Channel, template: icmp_wire.EchoTemplate) -> list[Any]:
    """Everything queued on the channel, parsed: sequences (None: not ours)."""
    found = []
    while True:
        try:
            found.append(
                icmp_wire.parse_reply(channel, template, channel.sock.recv(2048))
            )
        except BlockingIOError:
            return found


def _wait_for_replies(
    channel: icmp_wire.Channel, template: icmp_wire.EchoTemplate, count: int
) -> list[Any]:
    found: list[Any] = []
    deadline = time.monotonic() + 5
    while len(found) < count and time.monotonic() < deadline:
        select.select([channel.sock], [], [], 0.1)
        found += _drain(channel, template)
    return found


@pytest.mark.parametrize(
    ("family", "target"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_raw_socket_queues_only_replies_carrying_its_identifier(
    family: int, target: str
) -> None:
    # Another program's replies (here: a second raw socket with another
    # identifier) must not reach our queue, where a busy neighbour could fill it.
    if family == socket.AF_INET6 and not _has_ipv6_loopback():
        pytest.skip("no ::1 on this machine")
    ours = icmp_wire.open_channel(family, 0x1111)
    theirs = icmp_wire.open_channel(family, 0x2222)
    if not (ours.privileged and theirs.privileged):
        pytest.skip("only raw sockets see other programs' replies")
    our_template = icmp_wire.EchoTemplate(ours, 0x1111)
    their_template = icmp_wire.EchoTemplate(theirs, 0x2222)

    try:
        for sequence in range(10):
            theirs.sock.sendto(their_template.packet(sequence), (target, 0))
        assert _wait_for_replies(theirs, their_template, 10) == list(range(10))
        assert _drain(ours, our_template) == []

        for sequence in range(3):
            ours.sock.sendto(our_template.packet(sequence), (target, 0))
        assert _wait_for_replies(ours, our_template, 3) == [0, 1, 2]
    finally:
        ours.owner.close()
        theirs.owner.close()
