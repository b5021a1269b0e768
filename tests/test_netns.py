"""Namespace test hosts answer, lose exactly what their filter drops, clean up."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Callable
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

# Sends N datagrams from a fixed source port inside the namespace; a datagram
# that the namespace's own output filter drops fails with EPERM.
SENDER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[3])))
for n in range(int(sys.argv[4])):
    try:
        sock.sendto(b"x" * 100, (sys.argv[1], int(sys.argv[2])))
    except PermissionError:
        pass
"""


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)


def namespaces() -> list[str]:
    listing = run(["ip", "netns", "list"])
    return [line.split()[0] for line in listing.stdout.splitlines() if line.strip()]


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name]).returncode == 0


def send_udp(host: NetnsHost, source_port: int, count: int) -> int:
    """Send `count` datagrams from the namespace to our side; return how many came."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        receiver.bind((host.host_address, 0))
        port = receiver.getsockname()[1]
        argv = ["/usr/bin/python3", "-c", SENDER, host.host_address, str(port)]
        host.run([*argv, str(source_port), str(count)], check=True)

        receiver.settimeout(0.5)
        received = 0
        try:
            while True:
                receiver.recv(2048)
                received += 1
        except TimeoutError:
            return received


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

    received = send_udp(host, source_port=40000, count=300)

    dropped = host.dropped_packets("udp")
    assert 0 < dropped < 300
    assert received + dropped == 300
    # An even source port is where RTP goes: every drop counts as RTP too.
    assert host.dropped_packets("rtp") == dropped


def test_rtp_counter_skips_odd_ports(netns_host: HostFactory) -> None:
    host = netns_host(udp_drop_percent=50)

    received = send_udp(host, source_port=40001, count=100)

    assert received + host.dropped_packets("udp") == 100
    assert host.dropped_packets("rtp") == 0


def test_host_without_loss_passes_udp(netns_host: HostFactory) -> None:
    host = netns_host()

    assert send_udp(host, source_port=40000, count=50) == 50


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
