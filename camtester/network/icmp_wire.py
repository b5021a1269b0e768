"""ICMP echo on the wire: opening the one socket per family, packets and replies.

icmplib opens the socket, so that its privileged (raw) and unprivileged (datagram)
modes and its permission errors stay the ones the library documents. The hot path
then works on the plain socket icmplib exposes as `.sock`: icmplib's own `send`
costs about 37 us a packet here (a getaddrinfo, two setsockopt calls and a
pure-Python checksum on every call, six times a bare `sendto`), and its `receive`
matches one request at a time and stamps replies after Python got round to them.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import icmplib

from camtester.errors import SetupError

logger = logging.getLogger(__name__)

ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}

#: Bytes of payload after the 8-byte ICMP header, as ping(8) sends by default.
PAYLOAD_BYTES = 56
#: Receive buffer asked for: room for thousands of replies while the I/O thread
#: is busy sending, so that the worker's own load never shows as packet loss.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024

# Linux socket options Python's socket module does not name (asm-generic values).
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
SO_RXQ_OVFL = 40
SO_ATTACH_FILTER = 26
# Classic BPF opcodes (linux/bpf_common.h).
BPF_LD, BPF_LDX, BPF_JMP, BPF_RET = 0x00, 0x01, 0x05, 0x06
BPF_H, BPF_B = 0x08, 0x10
BPF_ABS, BPF_IND, BPF_MSH = 0x20, 0x40, 0xA0
BPF_JEQ, BPF_K = 0x10, 0x00
_BPF_INSN = struct.Struct("@HBBI")

_TIMESPEC = struct.Struct("@ll")
_DROPS = struct.Struct("@I")
_HEADER = struct.Struct("!BBHHH")
ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_DROPS.size)
PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")


@dataclass
class Channel:
    """The shared ICMP socket of one address family in this process."""

    family: int
    privileged: bool
    sock: socket.socket
    kernel_timestamps: bool
    #: The icmplib object owning `sock`; kept so its finaliser does not close it.
    owner: icmplib.ICMPv4Socket | icmplib.ICMPv6Socket


def open_channel(family: int, identifier: int) -> Channel:
    """Open the family's socket, raw when permitted, else an unprivileged one.

    `identifier` goes into every request; a raw socket lets only replies that
    carry it through to us.
    """
    owner_class = (
        icmplib.ICMPv4Socket if family == socket.AF_INET else icmplib.ICMPv6Socket
    )
    for privileged in (True, False):
        try:
            owner = owner_class(privileged=privileged)
        except icmplib.SocketPermissionError:
            continue  # Not this kind of socket; try the next, then explain.
        except icmplib.ICMPSocketError as exc:
            raise SetupError(
                f"{family_name(family)} ICMP socket cannot be opened here: {exc}"
            ) from exc

        channel = _configure(Channel(family, privileged, owner.sock, False, owner))
        if privileged:
            _attach_identifier_filter(channel, identifier)
        return channel

    raise SetupError(f"ICMP not permitted for this worker: {_permission_story()}")


def family_name(family: int) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


def _permission_story() -> str:
    """Why neither kind of ICMP socket opened, in terms an operator can act on."""
    try:
        group_range = " ".join(PING_GROUP_RANGE.read_text().split())
    except OSError:
        group_range = "unknown"
    groups = sorted({os.getegid(), *os.getgroups()})
    return (
        f"raw sockets need root or CAP_NET_RAW (euid {os.geteuid()}), and "
        f"unprivileged ICMP sockets need one of the groups {groups} inside "
        f"net.ipv4.ping_group_range (now {group_range!r})"
    )


def _configure(channel: Channel) -> Channel:
    """Non-blocking, a large receive buffer, kernel receipt stamps, a type filter."""
    sock = channel.sock
    sock.setblocking(False)
    _enlarge_receive_buffer(sock)
    channel.kernel_timestamps = _try_setsockopt(
        sock, socket.SOL_SOCKET, SO_TIMESTAMPNS, 1
    )
    _try_setsockopt(sock, socket.SOL_SOCKET, SO_RXQ_OVFL, 1)

    # A raw socket gets a copy of every ICMP message reaching the host (on loopback
    # our own echo requests too); the kernel filter keeps all but echo replies out.
    if channel.privileged and channel.family == socket.AF_INET:
        blocked = 0xFFFFFFFF & ~(1 << ECHO_REPLY[socket.AF_INET])
        _try_setsockopt(sock, SOL_RAW, ICMP_FILTER, struct.pack("@I", blocked))
    elif channel.privileged:
        words = [0xFFFFFFFF] * 8
        reply = ECHO_REPLY[socket.AF_INET6]
        words[reply >> 5] &= ~(1 << (reply & 31)) & 0xFFFFFFFF
        _try_setsockopt(
            sock, socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("@8I", *words)
        )

    logger.info(
        "ICMP socket for %s opened (%s, kernel timestamps %s)",
        family_name(channel.family),
        "raw" if channel.privileged else "unprivileged datagram",
        "on" if channel.kernel_timestamps else "off",
    )
    return channel


def _attach_identifier_filter(channel: Channel, identifier: int) -> None:
    """A socket filter that drops every echo reply not carrying `identifier`.

    Without it each raw ICMP socket on the host queues every other program's
    replies too: a busy neighbour (another worker, fping) could fill our buffer
    and make our own replies look lost. iputils ping does the same.
    """
    if channel.family == socket.AF_INET:
        # A raw IPv4 socket's filter sees the IP header first: X = its length.
        program = [
            (BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0),
            (BPF_LD | BPF_H | BPF_IND, 0, 0, 4),
        ]
    else:
        program = [(BPF_LD | BPF_H | BPF_ABS, 0, 0, 4)]
    program += [
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 1, identifier),
        (BPF_RET | BPF_K, 0, 0, 0xFFFFFFFF),
        (BPF_RET | BPF_K, 0, 0, 0),
    ]

    code = array.array("B", b"".join(_BPF_INSN.pack(*insn) for insn in program))
    address, _ = code.buffer_info()
    fprog = struct.pack("@HP", len(program), address)
    if not _try_setsockopt(channel.sock, socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog):
        logger.warning("no socket filter: other programs' replies reach this socket")


def _enlarge_receive_buffer(sock: socket.socket) -> None:
    """SO_RCVBUFFORCE passes net.core.rmem_max when allowed; SO_RCVBUF otherwise."""
    if not _try_setsockopt(
        sock, socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES
    ):
        _try_setsockopt(sock, socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)


def _try_setsockopt(
    sock: socket.socket, level: int, name: int, value: int | bytes
) -> bool:
    try:
        sock.setsockopt(level, name, value)
    except OSError as exc:
        logger.debug("setsockopt(%d, %d) refused: %s", level, name, exc)
        return False
    return True


class EchoTemplate:
    """Echo requests of one channel: fixed identifier and payload, varying sequence."""

    def __init__(self, channel: Channel, identifier: int) -> None:
        self.family = channel.family
        self.identifier = identifier

        # A random cookie opens the payload, so that a reply to another program
        # that happens to use our identifier and sequence is not counted as ours.
        self.cookie = secrets.token_bytes(8)
        self.payload = self.cookie + bytes(range(PAYLOAD_BYTES - len(self.cookie)))

        # Only a raw IPv4 socket leaves the checksum to us; the kernel fills it for
        # ICMPv6 and for datagram sockets. The sum of every 16-bit word but the
        # sequence is fixed, so each packet costs one addition and a fold.
        self.needs_checksum = channel.privileged and channel.family == socket.AF_INET
        words = struct.unpack(f"!{len(self.payload) // 2}H", self.payload)
        self._fixed_sum = (ECHO_REQUEST[self.family] << 8) + identifier + sum(words)

    def packet(self, sequence: int) -> bytes:
        """The echo request with `sequence`, checksummed when the kernel will not."""
        checksum = 0
        if self.needs_checksum:
            total = self._fixed_sum + sequence
            while total >> 16:
                total = (total & 0xFFFF) + (total >> 16)
            checksum = ~total & 0xFFFF
        header = _HEADER.pack(
            ECHO_REQUEST[self.family], 0, checksum, self.identifier, sequence
        )
        return header + self.payload


def parse_reply(channel: Channel, template: EchoTemplate, data: bytes) -> int | None:
    """The sequence number of an echo reply to one of our requests, else None."""
    offset = 0
    if channel.privileged and channel.family == socket.AF_INET:
        offset = (data[0] & 0x0F) * 4 if data else 0

    if len(data) < offset + 8 + len(template.cookie):
        return None
    kind, _code, _checksum, identifier, sequence = _HEADER.unpack_from(data, offset)
    if kind != ECHO_REPLY[channel.family]:
        return None

    # A datagram socket's identifier is the kernel's choice and only replies to
    # this socket arrive on it; a raw socket's filter checked ours already, but
    # it may be missing where the kernel refused it.
    if channel.privileged and identifier != template.identifier:
        return None
    cookie_at = offset + 8
    if data[cookie_at : cookie_at + len(template.cookie)] != template.cookie:
        return None
    return int(sequence)


def receipt_details(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int | None]:
    """(receipt time in ns since the epoch, the socket's drop count if reported)."""
    stamp_ns = 0
    drops = None
    for level, kind, value in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(value)
            stamp_ns = seconds * 1_000_000_000 + nanoseconds
        elif kind == SO_RXQ_OVFL and len(value) >= _DROPS.size:
            (drops,) = _DROPS.unpack_from(value)

    # Without a kernel stamp the best we have is right after recvmsg returned.
    return (stamp_ns or time.time_ns()), drops


def is_transient_send_error(exc: OSError) -> bool:
    """A send refused for lack of buffer space: our load, to be retried, not loss."""
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
