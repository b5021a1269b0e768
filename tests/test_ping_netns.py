"""Ping against network namespaces of our own: loss, privileges, name lookups.

The namespaces come from the `netns_host` and `loopback_netns` fixtures
(camtester.devtools.netns): hosts behind a veth pair in 198.18.0.0/15, so no
packet leaves the machine. Runs that need a namespace's own settings (its
ping_group_range, a resolver that reaches nothing) run as a subprocess inside it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from camtester.devtools.netns import Namespace, NetnsHost
from camtester.network.ping import ping_host

REPO = Path(__file__).resolve().parents[1]

MakeHost = Callable[..., NetnsHost]


def run_inside(namespace: Namespace, code: str) -> Any:
    """Run `code` with this venv's Python inside `namespace`; its JSON output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = namespace.exec_argv([sys.executable, "-c", textwrap.dedent(code)])
    completed = subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def sysctl(namespace: Namespace, setting: str) -> None:
    namespace.run(["sysctl", "-w", setting], check=True)


def test_one_name_that_does_not_resolve_spoils_only_its_own_result(
    loopback_netns: Namespace,
) -> None:
    # The field case: icmplib's multi-host ping gave up on the whole batch. Here the
    # namespace has only loopback, so the lookup of the .invalid name (RFC 6761:
    # never resolves) cannot leave the machine.
    code = """
        import json
        from camtester.errors import TargetUnresolvable
        from camtester.network.ping import ping_host, ping_many

        def shown(r):
            if isinstance(r, dict):
                return r
            return {"error": type(r).__name__, "code": r.code}

        hosts = ["127.0.0.1", "127.0.0.2", "no-such-camera.invalid"]
        out = {h: shown(r) for h, r in ping_many(hosts, count=5, interval_s=0.01).items()}
        try:
            ping_host("no-such-camera.invalid", count=1)
        except TargetUnresolvable as exc:
            out["single"] = {"code": exc.code}
        print(json.dumps(out))
    """
    results = run_inside(loopback_netns, code)

    assert list(results) == [
        "127.0.0.1",
        "127.0.0.2",
        "no-such-camera.invalid",
        "single",
    ]
    for host in ("127.0.0.1", "127.0.0.2"):
        assert results[host]["address"] == host
        assert results[host]["packets_received"] == 5
    unresolvable = {"error": "TargetUnresolvable", "code": "unresolvable"}
    assert results["no-such-camera.invalid"] == unresolvable
    assert results["single"] == {"code": "unresolvable"}


# Imports happen as root; the process then becomes nobody before its first ping,
# which is when the ICMP sockets are opened and the kernel checks credentials.
# A process started as nobody would need the checkout and the interpreter readable
# by nobody; the lazily loaded IDNA codec that name lookups use is loaded first.
AS_NOBODY = """
    import encodings.idna, json, logging, os, pwd
    from camtester.errors import SetupError
    from camtester.network import icmp_process
    from camtester.network.ping import ping_host, ping_many

    class Count(logging.Handler):
        errors = []
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                self.errors.append(record.getMessage())

    logging.getLogger("camtester").addHandler(Count())
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
"""


def as_nobody(body: str) -> str:
    """A script that becomes nobody, then runs `body` (indented like AS_NOBODY)."""
    return AS_NOBODY + body


def test_worker_that_may_not_ping_says_so_once_and_fails_every_task(
    loopback_netns: Namespace,
) -> None:
    # Debian's default: no group may open unprivileged ICMP sockets, and nobody
    # has no CAP_NET_RAW for raw ones. Every task must fail with SetupError, not
    # report its camera as 100 % lost.
    code = as_nobody("""
    raised = []
    for attempt in range(2):
        try:
            ping_host("127.0.0.1", count=3, interval_s=0.01)
            raised.append(None)
        except SetupError as exc:
            raised.append(str(exc))
    try:
        ping_many(["127.0.0.1", "127.0.0.2"], count=1)
        raised.append(None)
    except SetupError as exc:
        raised.append(str(exc))
    print(json.dumps({"uid": os.getuid(), "raised": raised, "logged": Count.errors}))
    """)
    sysctl(loopback_netns, "net.ipv4.ping_group_range=1 0")
    outcome = run_inside(loopback_netns, code)

    assert outcome["uid"] == 65534
    assert len(outcome["raised"]) == 3
    for message in outcome["raised"]:
        assert message is not None
        assert message.startswith("ICMP not permitted for this worker: ")
        assert "'1 0'" in message
    assert len(outcome["logged"]) == 1
    assert outcome["logged"][0] == outcome["raised"][0]


def test_unprivileged_worker_pings_where_the_group_range_allows(
    loopback_netns: Namespace,
) -> None:
    code = as_nobody("""
    import socket
    payload = ping_host("127.0.0.1", count=10, interval_s=0.01)
    raw = icmp_process.get_engine(socket.AF_INET).privileged
    print(json.dumps({"uid": os.getuid(), "payload": payload, "raw": raw}))
    """)
    sysctl(loopback_netns, "net.ipv4.ping_group_range=0 2147483647")
    outcome = run_inside(loopback_netns, code)

    assert outcome["uid"] == 65534
    assert outcome["raw"] is False
    payload = outcome["payload"]
    assert payload["address"] == "127.0.0.1"
    assert (payload["packets_sent"], payload["packets_received"]) == (10, 10)
    assert payload["packet_loss"] == 0.0
    assert 0 < payload["min_rtt_ms"] <= payload["avg_rtt_ms"] <= payload["max_rtt_ms"]


def test_host_that_drops_all_icmp_loses_every_request(netns_host: MakeHost) -> None:
    # Control: a host without the rule answers every request.
    clean, silent = netns_host(), netns_host(drop_all=True)

    answered = ping_host(clean.address, count=5, interval_s=0.01, timeout_s=0.5)
    lost = ping_host(silent.address, count=20, interval_s=0.05, timeout_s=0.5)

    assert answered["packets_received"] == 5
    assert lost == {
        "packets_sent": 20,
        "packets_received": 0,
        "packet_loss": 1.0,
        "min_rtt_ms": 0.0,
        "avg_rtt_ms": 0.0,
        "max_rtt_ms": 0.0,
        "std_dev_rtt_ms": 0.0,
        "address": silent.address,
    }
    assert silent.dropped_packets("all") >= 20


def test_host_that_drops_thirty_percent_of_replies_shows_that_loss(
    netns_host: MakeHost,
) -> None:
    # The host's filter drops 30 % of the ICMP leaving it: our requests enter
    # untouched, and each echo reply is dropped on its own draw.
    count = 200
    host = netns_host(icmp_drop_percent=30)

    payload = ping_host(host.address, count=count, interval_s=0.01, timeout_s=0.5)

    # Each reply is lost independently with p = 0.30, so the loss over 200 is
    # binomial: sigma = sqrt(0.3 * 0.7 / 200) = 0.0324, and 4 sigma = 0.130 gives
    # the band 0.170 to 0.430 (outside it by chance: about 6 runs in 100,000).
    sigma = math.sqrt(0.3 * 0.7 / count)
    assert payload["packets_sent"] == count
    assert 0.30 - 4 * sigma <= payload["packet_loss"] <= 0.30 + 4 * sigma

    # Exactly the replies the filter dropped are missing.
    lost = count - payload["packets_received"]
    assert payload["packet_loss"] == pytest.approx(lost / count)
    assert host.dropped_packets("icmp") == lost


# A user-space echo responder for a namespace whose kernel ignores echo requests:
# it answers each request `copies` times after `delay` seconds.
RESPONDER = """
import socket, struct, sys, threading

delay, copies = float(sys.argv[1]), int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def answer(reply, source):
    for _ in range(copies):
        sock.sendto(reply, (source, 0))

print("ready", flush=True)
while True:
    data, (source, _) = sock.recvfrom(4096)
    icmp = bytearray(data[(data[0] & 0x0F) * 4:])
    if len(icmp) % 2 or icmp[0] != 8:
        continue
    icmp[0], icmp[2:4] = 0, b"\\0\\0"
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    threading.Timer(delay, answer, (bytes(icmp), source)).start()
"""


@contextlib.contextmanager
def slow_responder(host: NetnsHost, delay_s: float, copies: int) -> Iterator[None]:
    """Replace the host kernel's echo replies with late, repeated ones."""
    sysctl(host, "net.ipv4.icmp_echo_ignore_all=1")
    argv = [sys.executable, "-c", RESPONDER, str(delay_s), str(copies)]
    process = host.popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_replies_count_only_within_the_timeout_and_only_once(
    netns_host: MakeHost,
) -> None:
    # Every request gets two replies 0.15 s late: within a 1 s timeout each request
    # counts once with an RTT of at least 150 ms; with a 0.05 s timeout none counts.
    host = netns_host()
    with slow_responder(host, delay_s=0.15, copies=2):
        patient = ping_host(host.address, count=10, interval_s=0.02, timeout_s=1.0)
        hasty = ping_host(host.address, count=10, interval_s=0.02, timeout_s=0.05)

    assert (patient["packets_sent"], patient["packets_received"]) == (10, 10)
    assert patient["packet_loss"] == 0.0
    assert patient["min_rtt_ms"] >= 150
    assert (hasty["packets_sent"], hasty["packets_received"]) == (10, 0)
    assert hasty["packet_loss"] == 1.0
