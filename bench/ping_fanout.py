"""Fan-out benchmark: N loopback targets x count echo requests, against fping.

Usage: python bench/ping_fanout.py [--targets 1000] [--count 20] [--interval 0.05]
       [--icmplib]   (also time icmplib's async_multiping, the field case; slow)

Prints wall and CPU seconds of camtester's `ping_many` (the calling process and
its ICMP engine process), of the same call while another thread of the calling
process computes without pause (what a worker's own load does to its pings),
and of `fping -c COUNT -p INTERVAL_MS -i 0` on the same targets in the same run,
the ratios to fping, and how many targets got every reply. Needs root (or ICMP
permission) and sends only to 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import tree_cpu_s
from camtester.devtools.busy import busy_thread
from camtester.network.ping import ping_many


def targets(n: int) -> list[str]:
    return [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(n)]


def measure(run: Callable[[], list[int]], who: int) -> tuple[float, float, list[int]]:
    """(wall s, CPU s of `who`, replies per target) of one run."""
    before = resource.getrusage(who)
    started = time.monotonic()
    received = run()
    wall = time.monotonic() - started
    after = resource.getrusage(who)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, received


def measure_tree(run: Callable[[], list[int]]) -> tuple[float, float, list[int]]:
    """As `measure`, with the CPU of this process and its living children (the
    ICMP engine runs in one)."""
    before = tree_cpu_s(os.getpid())
    started = time.monotonic()
    received = run()
    wall = time.monotonic() - started
    return wall, tree_cpu_s(os.getpid()) - before, received


def with_busy_thread(run: Callable[[], list[int]]) -> Callable[[], list[int]]:
    """`run` while another thread of this process computes without pause."""

    def busy_run() -> list[int]:
        with busy_thread():
            return run()

    return busy_run


def camtester_run(hosts: list[str], count: int, interval: float) -> list[int]:
    results = ping_many(hosts, count=count, interval_s=interval, timeout_s=1.0)
    return [
        r["packets_received"] if isinstance(r, dict) else 0 for r in results.values()
    ]


def fping_run(hosts: list[str], count: int, interval: float) -> list[int]:
    command = [
        "fping",
        "-q",
        "-c",
        str(count),
        "-p",
        str(int(interval * 1000)),
        "-i",
        "0",
    ]
    done = subprocess.run(
        command, input="\n".join(hosts), capture_output=True, text=True, check=False
    )
    # Summary lines: "127.0.0.1 : xmt/rcv/%loss = 20/20/0%, ..."
    received = []
    for line in done.stderr.splitlines():
        if "xmt/rcv" in line:
            received.append(int(line.split("=")[1].split("/")[1]))
    return received


def icmplib_run(hosts: list[str], count: int, interval: float) -> list[int]:
    import icmplib

    found = asyncio.run(
        icmplib.async_multiping(
            hosts,
            count=count,
            interval=interval,
            timeout=1,
            concurrent_tasks=len(hosts),
        )
    )
    return [host.packets_received for host in found]


def report(name: str, wall: float, cpu: float, received: list[int], count: int) -> None:
    full = sum(1 for r in received if r == count)
    print(
        f"{name:10s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  "
        f"targets with {count}/{count}: {full}/{len(received)}  "
        f"fewest replies: {min(received, default=0)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--icmplib", action="store_true")
    args = parser.parse_args()
    hosts = targets(args.targets)
    own, children = resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN

    def ping() -> list[int]:
        return camtester_run(hosts, args.count, args.interval)

    ping()  # The engine process starts on first use, as in a worker.
    ours = measure_tree(ping)
    report("camtester", *ours, args.count)
    loaded = measure_tree(with_busy_thread(ping))
    report("+busy", loaded[0], float("nan"), loaded[2], args.count)
    if shutil.which("fping"):
        base = measure(lambda: fping_run(hosts, args.count, args.interval), children)
        report("fping", *base, args.count)
        print(
            f"ratio camtester/fping: wall {ours[0] / base[0]:.2f}, "
            f"cpu {ours[1] / max(base[1], 1e-3):.2f}; with a busy thread: "
            f"wall {loaded[0] / base[0]:.2f}"
        )
    if args.icmplib:
        field_case = measure(lambda: icmplib_run(hosts, args.count, args.interval), own)
        report("icmplib", *field_case, args.count)


if __name__ == "__main__":
    main()
