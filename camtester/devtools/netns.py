"""Test hosts in network namespaces (needs root): real addresses, real loss.

    with NetnsHost(icmp_drop_percent=30) as host:
        host.address            # "198.18.<n>.2", the namespace side
        host.host_address       # "198.18.<n>.1", our side of the veth pair
        host.dropped_packets("icmp")
        host.popen(["/usr/bin/python3", "-m", "http.server"])   # runs inside

    with loopback_only_namespace() as ns:
        ns.run(["getent", "hosts", "cam.example"])   # no lookup can leave it

Each host is a namespace `ct-<6 hex>` joined to ours by a veth pair with a /30
of 198.18.0.0/15 (RFC 2544, reserved for benchmarking: only our own test hosts
live there). The namespace has no default route, so nothing in it reaches
anything but the host side. The kernel here has no netem, so loss comes from
nftables inside the namespace: `numgen random mod 100 < P` on packets leaving
its end of the veth (a netdev egress hook, after the sending socket is done
with them, as on a real lossy link), each drop counted. Namespaces are deleted
on exit, even after a failure;
`sweep_stale_namespaces()` removes those whose creating process has died.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

logger = logging.getLogger(__name__)

PREFIX = "ct-"
TABLE = "camtester"
#: A netdev table: its chains hook the namespace's end of the veth pair.
FAMILY = "netdev"
#: Per-namespace records of the creating process, for the stale sweeper.
STATE_DIR = Path("/run/camtester-netns")
COUNTERS = ("udp", "rtp", "icmp", "all")


class NetnsError(RuntimeError):
    """A namespace, link or nftables command failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _run(
    argv: list[str], *, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


class Namespace:
    """A named network namespace with helpers to run commands inside it."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{PREFIX}{secrets.token_hex(3)}"
        self._processes: list[subprocess.Popen[Any]] = []

    def exec_argv(self, argv: list[str]) -> list[str]:
        """`argv` wrapped so that it runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: list[str], *, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.exec_argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside, in its own process group; stopped on exit."""
        kwargs.setdefault("start_new_session", True)
        process = subprocess.Popen(self.exec_argv(argv), **kwargs)
        self._processes.append(process)
        return process

    def create(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", self.name)
        (STATE_DIR / self.name).write_text(str(os.getpid()))
        _ip("-n", self.name, "link", "set", "lo", "up")

    def delete(self) -> None:
        """Stop what runs inside, then delete the namespace (and its links)."""
        for process in self._processes:
            _stop_group(process)
        self._processes.clear()
        _kill_remaining(self.name)
        _ip("netns", "del", self.name, check=False)
        (STATE_DIR / self.name).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        try:
            self.create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()


class NetnsHost(Namespace):
    """A test host: a namespace behind a veth pair, optionally lossy."""

    def __init__(
        self,
        *,
        udp_drop_percent: int = 0,
        icmp_drop_percent: int = 0,
        drop_all: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("udp", udp_drop_percent), ("icmp", icmp_drop_percent)):
            if not 0 <= value <= 100:
                raise ValueError(f"{name}_drop_percent must be 0..100, not {value}")
        self.udp_drop_percent = udp_drop_percent
        self.icmp_drop_percent = icmp_drop_percent
        self.drop_all = drop_all
        suffix = self.name[len(PREFIX) :]
        self.host_link = f"cth{suffix}"
        self.ns_link = f"ctn{suffix}"
        self.subnet: str | None = None

    @property
    def address(self) -> str:
        """The namespace side's address, where a test camera listens."""
        return f"{self._require_subnet()}.2"

    @property
    def host_address(self) -> str:
        """Our side's address: what the namespace sees connections come from."""
        return f"{self._require_subnet()}.1"

    def _require_subnet(self) -> str:
        if self.subnet is None:
            raise NetnsError(f"namespace {self.name} is not created yet")
        return self.subnet

    def create(self) -> None:
        # Under a lock, so that parallel test runs do not take the same subnet.
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with (STATE_DIR / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            super().create()
            self.subnet = _free_subnet()
            self._link()
        self._filter()
        logger.info("Namespace %s up at %s", self.name, self.address)

    def _link(self) -> None:
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
        _ip("link", "set", self.ns_link, "netns", self.name)
        _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", self.ns_link)
        _ip("-n", self.name, "link", "set", self.ns_link, "up")

    def _filter(self) -> None:
        """Load the namespace's nftables table: counters and the drop rules."""
        _run(self.exec_argv(["nft", "-f", "-"]), stdin=self.ruleset())

    def ruleset(self) -> str:
        """The nftables ruleset for the options given."""
        counters = "\n".join(f"  counter {name}_dropped {{}}" for name in COUNTERS)
        egress: list[str] = []
        ingress: list[str] = []
        if self.drop_all:
            # IP only: ARP still resolves, so a peer waits for answers that never
            # come (a timeout) instead of failing at once with "no route to host".
            drop = 'meta protocol { ip, ip6 } counter name "all_dropped" drop'
            egress.append(drop)
            ingress.append(drop)
        if self.udp_drop_percent:
            # One random draw per packet; the udp_loss chain only sorts the
            # counting: even source ports carry RTP, odd ones RTCP.
            egress.append(
                "meta protocol ip ip protocol udp"
                f" numgen random mod 100 < {self.udp_drop_percent} jump udp_loss"
            )
        if self.icmp_drop_percent:
            egress.append(
                "meta protocol ip icmp type { echo-request, echo-reply }"
                f" numgen random mod 100 < {self.icmp_drop_percent}"
                ' counter name "icmp_dropped" drop'
            )
        return _RULESET.format(
            table=TABLE,
            device=self.ns_link,
            counters=counters,
            egress="\n    ".join(egress),
            ingress="\n    ".join(ingress),
        )

    def dropped_packets(self, counter: str = "udp") -> int:
        """Packets the namespace's filter dropped: udp, rtp (a subset), icmp, all."""
        if counter not in COUNTERS:
            raise ValueError(f"counter must be one of {COUNTERS}, not {counter!r}")
        argv = ["nft", "-j", "list", "counter", FAMILY, TABLE, f"{counter}_dropped"]
        listing = json.loads(_run(self.exec_argv(argv)).stdout)
        for item in listing["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise NetnsError(f"no counter {counter}_dropped in {self.name}")

    def delete(self) -> None:
        super().delete()
        # Deleting the namespace takes the pair with it; this is for a pair
        # whose far end never made it into the namespace.
        _ip("link", "del", self.host_link, check=False)


# NOTE: the drops sit on the namespace's end of the veth (netdev egress and
# ingress), not in the IP output hook. A packet dropped in the output hook fails
# its sendto() with EPERM: the sender learns of the loss, and GStreamer's udpsink
# then loses or resends more of its batch, so a receiver saw 2-4 missing RTP
# packets per counted drop. At the device the socket has long sent the packet, as
# on a lossy network, and each drop is exactly one missing packet. Loopback
# traffic inside the namespace never passes the device, so it is never dropped.
_RULESET = """
table netdev {table} {{
{counters}
  chain udp_loss {{
    udp sport & 1 == 0 counter name "rtp_dropped" counter name "udp_dropped" drop
    counter name "udp_dropped" drop
  }}
  chain egress {{
    type filter hook egress device "{device}" priority filter; policy accept;
    {egress}
  }}
  chain ingress {{
    type filter hook ingress device "{device}" priority filter; policy accept;
    {ingress}
  }}
}}
"""


def _free_subnet() -> str:
    """A 198.18.x.0/30 or 198.19.x.0/30 that no interface of ours uses yet."""
    listing = _ip("-4", "-o", "addr", "show").stdout
    candidates = [f"198.{b}.{c}" for b in (18, 19) for c in range(256)]
    random.shuffle(candidates)
    for subnet in candidates:
        if f" {subnet}." not in listing:
            return subnet
    raise NetnsError("every 198.18.0.0/15 test subnet is in use")


def _stop_group(process: subprocess.Popen[Any]) -> None:
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _kill_remaining(name: str) -> None:
    """Kill what still runs in our namespace, which would keep it alive."""
    done = _ip("netns", "pids", name, check=False)
    pids = [int(pid) for pid in done.stdout.split()]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if pids and signum == signal.SIGTERM:
            time.sleep(0.5)


@contextlib.contextmanager
def loopback_only_namespace() -> Iterator[Namespace]:
    """A namespace with nothing but `lo` up: no packet can leave it."""
    with Namespace() as namespace:
        yield namespace


def sweep_stale_namespaces(*, everything: bool = False) -> list[str]:
    """Delete ct-* namespaces whose creating process is gone; return their names.

    With `everything`, delete every ct-* namespace, also those of test runs
    still going: only for a machine where nothing else runs.
    """
    listing = _ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    swept = []
    for name in names:
        if name.startswith(PREFIX) and (everything or not _owner_alive(name)):
            Namespace(name).delete()
            swept.append(name)
    if swept:
        logger.warning("Swept stale namespaces: %s", ", ".join(swept))
    return swept


def _owner_alive(name: str) -> bool:
    """Whether the process that made `name` still runs (unknown owner: yes)."""
    record = STATE_DIR / name
    if not record.exists():
        return True
    try:
        os.kill(int(record.read_text()), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
