"""Namespace test hosts answer, lose exactly what their filter drops, clean up."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from icmplib import ping

from camtester.devtools.netns import (
    STATE_DIR,
    Namespace,
    NetnsHost,
    sweep_stale_namespaces,
)
from camtester.devtools.simulator import CameraSimulator

HostFactory = Callable[..., NetnsHost]

# Sends N datagrams from a fixed source port inside the namespace and prints how
# many sendto() calls failed: a lossy link must lose packets on the wire, where
# the sender cannot tell, not refuse them to the socket (EPERM).
SENDER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[3])))
failed = 0
for n in range(int(sys.argv[4])):
    try:
        sock.sendto(b"x" * 100, (sys.argv[1], int(sys.argv[2])))
    except PermissionError:
        failed += 1
print(failed)
"""

# Sends N ICMP echo requests from inside the namespace on a raw socket, then
# prints how many sendto() calls failed and how many replies came back.
PINGER = """
import socket, struct, sys, time

def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

target, count, ident = sys.argv[1], int(sys.argv[2]), 0x4354
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
failed = 0
for seq in range(count):
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"camtester"
    packet = header[:2] + struct.pack("!H", checksum(header + b"\\0")) + header[4:]
    try:
        sock.sendto(packet, (target, 0))
    except PermissionError:
        failed += 1
replies = set()
sock.settimeout(0.5)
try:
    while True:
        data = sock.recv(2048)
        icmp = data[(data[0] & 0x0F) * 4:]
        kind, _, _, got_ident, seq = struct.unpack("!BBHHH", icmp[:8])
        if kind == 0 and got_ident == ident:
            replies.add(seq)
except TimeoutError:
    pass
print(failed, len(replies))
"""

# Streams N frames of H.264 over RTP from GStreamer's udpsink (RTP source port
# 40000, sequence numbers from 0, as fast as it can) and prints the last
# sequence number it sent: the namespace's payloader, batching, sockets.
RTP_SENDER = """
import sys
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
host, port, frames = sys.argv[1], sys.argv[2], sys.argv[3]
pipeline = Gst.parse_launch(
    f"videotestsrc num-buffers={frames} ! video/x-raw,width=640,height=360"
    " ! x264enc tune=zerolatency speed-preset=ultrafast bitrate=1500"
    " ! rtph264pay name=pay seqnum-offset=0 mtu=1200"
    f" ! udpsink host={host} port={port} bind-port=40000 sync=false"
)
pipeline.set_state(Gst.State.PLAYING)
done = pipeline.get_bus().timed_pop_filtered(
    60 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR
)
pipeline.set_state(Gst.State.NULL)
if done is None or done.type != Gst.MessageType.EOS:
    sys.exit("no EOS")
print(pipeline.get_by_name("pay").get_property("seqnum"))
"""

#: SO_RCVBUFFORCE (Linux, root): a receive buffer above net.core.rmem_max, so
#: that our own socket never overflows and every missing packet is the filter's.
SO_RCVBUFFORCE = 33


@dataclass
class Sent:
    received: int
    send_failures: int


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)


def namespaces() -> list[str]:
    listing = run(["ip", "netns", "list"])
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name]).returncode == 0


@contextlib.contextmanager
def receiver(host: NetnsHost) -> Iterator[socket.socket]:
    """A UDP socket on our side of the veth with room for everything sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        sock.bind((host.host_address, 0))
        sock.settimeout(0.5)
        yield sock


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on `sock`, until it stays quiet for its timeout."""
    datagrams = []
    with contextlib.suppress(TimeoutError):
        while True:
            datagrams.append(sock.recv(2048))
    return datagrams


def send_udp(host: NetnsHost, source_port: int, count: int) -> Sent:
    """Send `count` datagrams from the namespace to our side; count what came."""
    with receiver(host) as sock:
        port = sock.getsockname()[1]
        argv = ["/usr/bin/python3", "-c", SENDER, host.host_address, str(port)]
        done = host.run([*argv, str(source_port), str(count)], check=True)
        return Sent(len(drain(sock)), int(done.stdout))


def test_namespace_side_answers_ping(netns_host: HostFactory) -> None:
    host = netns_host()

    result = ping(host.address, count=10, interval=0.02, timeout=1, privileged=True)

    assert result.packets_received == 10
    assert host.dropped_packets("icmp") == 0


def test_icmp_drop_loses_exactly_the_counted_replies(netns_host: HostFactory) -> None:
    host = netns_host(icmp_drop_percent=30)

    result = ping(host.address, count=40, interval=0.01, timeout=0.2, privileged=True)

    lost = result.packets_sent - result.packets_received
    assert 0 < lost < 40
    assert lost == host.dropped_packets("icmp")


def test_drop_all_host_is_unreachable(netns_host: HostFactory) -> None:
    host = netns_host(drop_all=True)

    result = ping(host.address, count=3, interval=0.05, timeout=0.3, privileged=True)

    assert result.packets_received == 0
    assert host.dropped_packets("all") >= 3
    with pytest.raises(TimeoutError):
        socket.create_connection((host.address, 554), timeout=1)


def test_udp_drop_counter_counts_every_lost_datagram(netns_host: HostFactory) -> None:
    host = netns_host(udp_drop_percent=20)

    sent = send_udp(host, source_port=40000, count=300)

    dropped = host.dropped_packets("udp")
    assert 0 < dropped < 300
    assert sent.received + dropped == 300
    # An even source port is where RTP goes: every drop counts as RTP too.
    assert host.dropped_packets("rtp") == dropped


def test_udp_is_lost_on_the_wire_not_refused_to_the_sender(
    netns_host: HostFactory,
) -> None:
    # A real lossy link never tells the sender; a filter in the IP output hook
    # would fail each dropped sendto() with EPERM.
    host = netns_host(udp_drop_percent=20)

    sent = send_udp(host, source_port=40000, count=300)

    assert sent.send_failures == 0
    assert 0 < host.dropped_packets("udp") < 300


def test_rtp_counter_skips_odd_ports(netns_host: HostFactory) -> None:
    host = netns_host(udp_drop_percent=50)

    sent = send_udp(host, source_port=40001, count=100)

    assert sent.received + host.dropped_packets("udp") == 100
    assert host.dropped_packets("rtp") == 0


def test_host_without_loss_passes_udp(netns_host: HostFactory) -> None:
    host = netns_host()

    assert send_udp(host, source_port=40000, count=50) == Sent(50, 0)


def test_each_dropped_rtp_packet_is_one_missing_sequence_number(
    netns_host: HostFactory,
) -> None:
    # GStreamer's udpsink sends RTP in batches; had the filter refused a packet
    # to the socket, the sink would lose more of the batch than was dropped.
    host = netns_host(udp_drop_percent=10)

    with receiver(host) as sock:
        port = sock.getsockname()[1]
        argv = ["/usr/bin/python3", "-c", RTP_SENDER, host.host_address, str(port)]
        done = host.run([*argv, "50"], check=True)
        datagrams = drain(sock)

    sequence_numbers = {struct.unpack("!H", d[2:4])[0] for d in datagrams}
    sent = int(done.stdout) + 1
    assert len(datagrams) == len(sequence_numbers)
    assert sent - len(sequence_numbers) == host.dropped_packets("rtp") > 0


def test_icmp_is_lost_on_the_wire_not_refused_to_the_sender(
    netns_host: HostFactory,
) -> None:
    # Echo requests sent from user space inside the namespace: each one the
    # filter drops is simply missing, and our side answers all the others.
    count = 100
    host = netns_host(icmp_drop_percent=30)

    done = host.run(["/usr/bin/python3", "-c", PINGER, host.host_address, str(count)])
    send_failures, replies = (int(word) for word in done.stdout.split())

    assert send_failures == 0
    dropped = host.dropped_packets("icmp")
    assert 0 < dropped < count
    assert replies + dropped == count


def test_drop_all_spares_loopback_inside_the_namespace(
    netns_host: HostFactory,
) -> None:
    host = netns_host(drop_all=True)
    code = (
        "import socket; a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
        " a.bind(('127.0.0.1', 0)); a.settimeout(5);"
        " a.sendto(b'ok', a.getsockname()); print(a.recv(16).decode())"
    )

    done = host.run(["/usr/bin/python3", "-c", code])

    assert done.stdout.strip() == "ok", done.stderr


def test_camera_inside_a_namespace(
    netns_host: HostFactory, fault_clips: dict[str, Path]
) -> None:
    host = netns_host()

    with CameraSimulator(
        {"noaudio": fault_clips["noaudio"]}, netns=host.name, address=host.address
    ) as camera:
        argv = ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_streams"]
        done = run([*argv, "-of", "json", camera.url("noaudio")])

    assert camera.url("noaudio").startswith(f"rtsp://{host.address}:")
    streams = json.loads(done.stdout)["streams"]
    assert [s["codec_name"] for s in streams] == ["h264"]


def test_loopback_namespace_has_only_lo(loopback_netns: Namespace) -> None:
    links = loopback_netns.run(["ip", "-o", "link"]).stdout.splitlines()
    routes = loopback_netns.run(["ip", "-4", "route"]).stdout

    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    assert routes.strip() == ""
    assert loopback_netns.run(["getent", "hosts", "camera.invalid"]).returncode != 0


def test_exit_deletes_namespace_and_links() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with NetnsHost(udp_drop_percent=10) as host:
        assert host.name in namespaces()
        assert link_exists(host.host_link)

    assert host.name not in namespaces()
    assert not link_exists(host.host_link)


def test_exit_after_failure_still_cleans_up() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    with pytest.raises(RuntimeError), NetnsHost() as host:
        raise RuntimeError("test body failed")

    assert host.name not in namespaces()


def test_sweeper_removes_only_namespaces_of_dead_runs() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    dead = subprocess.Popen(["true"])
    dead.wait()
    with Namespace() as alive:
        stale = Namespace()
        stale.create()
        (STATE_DIR / stale.name).write_text(str(dead.pid))

        swept = sweep_stale_namespaces()

        assert stale.name in swept
        assert stale.name not in namespaces()
        assert alive.name in namespaces()


def test_lossy_camera_shows_rtp_loss_over_udp_only(
    netns_host: HostFactory, fault_clips: dict[str, Path]
) -> None:
    host = netns_host(udp_drop_percent=5)
    clip = {"noaudio": fault_clips["noaudio"]}

    with CameraSimulator(clip, netns=host.name, address=host.address) as camera:
        argv = ["ffmpeg", "-nostdin", "-nostats", "-i", camera.url("noaudio")]
        argv += ["-t", "3", "-f", "null", "-"]
        over_tcp = run([argv[0], "-rtsp_transport", "tcp", *argv[1:]])
        dropped_during_tcp = host.dropped_packets("udp")
        over_udp = run([argv[0], "-rtsp_transport", "udp", *argv[1:]])

    assert dropped_during_tcp == 0
    assert "missed" not in over_tcp.stderr
    assert host.dropped_packets("rtp") > 0
    assert re.search(r"RTP: missed \d+ packets", over_udp.stderr)
