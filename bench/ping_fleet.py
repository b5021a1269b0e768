"""Ping fleet: 1,000 loopback targets x 20 echo requests through the whole pipeline.

    .venv/bin/python -m bench.ping_fleet [--targets 1000] [--count 20]
        [--interval 0.05] [--layout same|split|split2] [--concurrency N]
        [--prefetch 1] [--log-level INFO] [--sweep]

Starts redis-server, the ping worker(s) (`-P threads`), gunicorn, then POSTs
all targets as one `/tasks-batch` and reads the task store directly until every
task is done or failed. The wall time runs from the POST to the latest
`updated_at` the aggregation stored, so the benchmark's own polling does not
count. It is printed as a ratio to count x interval (the physical limit) and
to `fping -c COUNT -p INTERVAL -i 0` on the same targets in the same run, with
the CPU each part of the pipeline spent per task.

Layouts: `same` has one worker serve queues `bench.ping` and `results`;
`split` gives the aggregation (`results`) a worker of its own; `split2` runs
two ping workers of half the concurrency each beside the results worker.
`--sweep` runs every layout once. Only 127.0.0.0/8 is pinged. Exit status 1
when a run did not finish or a target missed a reply.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench._common import (
    BenchStack,
    WorkerSpec,
    bench_stack,
    machine,
    memory_kib,
    ratio,
    stored_tasks,
    wait_terminal,
)

GEO = "bench"
PING_QUEUE = f"{GEO}.ping"
#: Most targets a run may have: each is a distinct 127.0.0.0/8 address.
MAX_TARGETS = 60000
#: Goal of the issue: the pipeline within this many times count x interval.
GOAL_RATIO = 1.5
#: Seconds a run may take beyond count x interval before it is given up.
RUN_GRACE_S = 60.0
#: Pool slots of the results worker in the split layouts.
RESULTS_CONCURRENCY = 8
LAYOUTS = ("same", "split", "split2")


@dataclass(frozen=True)
class Layout:
    """Which workers serve the ping queue and the aggregation queue."""

    name: str
    workers: tuple[WorkerSpec, ...]

    def describe(self) -> str:
        return "\n    + ".join(spec.describe() for spec in self.workers)


def layout(name: str, concurrency: int, prefetch: int | None, log_level: str) -> Layout:
    """The worker command lines of one layout (see the module docstring)."""
    if name == "same":
        both = (PING_QUEUE, "results")
        return Layout(
            name, (WorkerSpec(both, "threads", concurrency, prefetch, log_level),)
        )

    results = WorkerSpec(("results",), "threads", RESULTS_CONCURRENCY, None, log_level)
    pingers = 2 if name == "split2" else 1
    share = max(1, concurrency // pingers)
    ping = WorkerSpec((PING_QUEUE,), "threads", share, prefetch, log_level)
    return Layout(name, (*([ping] * pingers), results))


def targets(n: int) -> list[str]:
    """n distinct loopback addresses from 127.0.0.1 on (all answer on Linux)."""
    return [f"127.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(n)]


def ping_tasks(hosts: list[str], count: int, interval_s: float) -> list[dict[str, Any]]:
    return [
        {
            "type": "ping",
            "geo_location": GEO,
            "payload": {"host": host, "count": count, "interval": interval_s},
        }
        for host in hosts
    ]


def fping_baseline(hosts: list[str], count: int, interval_s: float) -> dict[str, Any]:
    """Wall time of fping on the same targets and how many got every reply."""
    argv = ["fping", "-q", "-c", str(count), "-p", str(round(interval_s * 1000))]
    argv += ["-i", "0"]
    started = time.monotonic()
    done = subprocess.run(
        argv,
        input="\n".join(hosts),
        capture_output=True,
        text=True,
        timeout=count * interval_s + RUN_GRACE_S,
        check=False,
    )
    wall = time.monotonic() - started

    # Summary lines on stderr: "127.0.0.1 : xmt/rcv/%loss = 20/20/0%, min/avg/max ..."
    received = [
        int(line.split("=")[1].split("/")[1])
        for line in done.stderr.splitlines()
        if "xmt/rcv" in line
    ]
    return {"wall_s": wall, "full": sum(1 for r in received if r == count)}


def run_fleet(
    plan: Layout, hosts: list[str], count: int, interval_s: float
) -> dict[str, Any]:
    """One run of the pipeline: start the stack, warm it, ping every host once."""
    with bench_stack(plan.workers) as stack:
        warm_up(stack, hosts, interval_s)

        cpu_before = stack.cpu_by_part()
        submitted = time.time()
        response = stack.api.post(
            "/tasks-batch", json=ping_tasks(hosts, count, interval_s)
        )
        accepted = time.time()
        response.raise_for_status()
        ids = response.json()["ids"]
        finished = wait_terminal(stack.store, ids, count * interval_s + RUN_GRACE_S)
        cpu_after = stack.cpu_by_part()
        tasks = stored_tasks(stack.store, ids)
        # The pool's threads stay alive after their tasks: this is what the
        # slots of a worker that has run this many pings at once cost.
        memory = [memory_kib(worker.pid) for worker in stack.workers]

    cpu = {part: cpu_after[part] - cpu_before[part] for part in cpu_after}
    figures = summarise(tasks, submitted, count)
    return {
        **figures,
        "finished": finished,
        "accept_s": accepted - submitted,
        "cpu": cpu,
        "pss_mib": [pss / 1024 for _, pss in memory],
    }


def warm_up(stack: BenchStack, hosts: list[str], interval_s: float) -> None:
    """A few pings per worker first: a worker in service has long loaded its
    modules and opened its ICMP socket, and the API has served requests."""
    warm = ping_tasks(hosts[: 10 * len(stack.workers)], 2, interval_s)
    ids = stack.api.post("/tasks-batch", json=warm).json()["ids"]
    wait_terminal(stack.store, ids, RUN_GRACE_S)


def summarise(
    tasks: list[dict[str, Any]], submitted: float, count: int
) -> dict[str, Any]:
    """Wall times from the POST and the replies per target of one run."""
    stored = [t["updated_at"] for t in tasks if t["updated_at"] is not None]
    received = [_received(task) for task in tasks]
    return {
        "median_s": statistics.median(stored) - submitted if stored else float("nan"),
        "wall_s": max(stored) - submitted if stored else float("nan"),
        "full": sum(1 for r in received if r == count),
        "fewest": min(received, default=0),
        "targets": len(tasks),
    }


def _received(task: dict[str, Any]) -> int:
    payload = (task["result"] or {}).get("payload") or {}
    return int(payload.get("packets_received", 0))


def report(
    plan: Layout, figures: dict[str, Any], limit_s: float, fping_s: float
) -> None:
    print(f"[{plan.name}] {plan.describe()}")
    if not figures["finished"]:
        print("  NOT FINISHED within the time limit")
    wall = ratio(
        "wall, POST to last stored result",
        figures["wall_s"],
        limit_s,
        "s",
        f"< {GOAL_RATIO}x",
    )
    print(f"  {wall}; {figures['wall_s'] / fping_s:.2f} x fping")
    print(
        f"  POST /tasks-batch answered after {figures['accept_s']:.3f} s; "
        f"median task stored after {figures['median_s']:.3f} s"
    )
    print(
        f"  targets with every reply: {figures['full']}/{figures['targets']} "
        f"(fewest replies {figures['fewest']})"
    )
    per_task = ", ".join(
        f"{part} {seconds / figures['targets'] * 1000:.2f}"
        for part, seconds in figures["cpu"].items()
    )
    print(f"  CPU ms per task: {per_task}")
    pss = ", ".join(f"worker{i} {mib:.0f}" for i, mib in enumerate(figures["pss_mib"]))
    print(f"  PSS MiB after the run: {pss}")


def plans(args: argparse.Namespace) -> list[Layout]:
    names = LAYOUTS if args.sweep else (args.layout,)
    return [
        layout(name, args.concurrency, args.prefetch, args.log_level) for name in names
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--layout", choices=LAYOUTS, default="split")
    parser.add_argument(
        "--concurrency", type=int, help="ping pool slots in all (default: --targets)"
    )
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--sweep", action="store_true", help="run every layout")
    args = parser.parse_args(argv)
    if not 1 <= args.targets <= MAX_TARGETS:
        parser.error(f"--targets must be 1 to {MAX_TARGETS}")
    if args.concurrency is None:
        args.concurrency = args.targets
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hosts = targets(args.targets)
    limit_s = args.count * args.interval
    print(f"machine: {machine()}")
    print(
        f"ping fleet: {args.targets} targets on 127.0.0.0/8, count {args.count} "
        f"at {args.interval} s; limit count x interval = {limit_s:g} s"
    )
    if shutil.which("fping") is None:
        print("fping is not installed; it is this benchmark's baseline")
        return 1

    base = fping_baseline(hosts, args.count, args.interval)
    fping = f"fping -c {args.count} -p {round(args.interval * 1000)} -i 0"
    print(
        f"baseline: {ratio(fping, base['wall_s'], limit_s, 's')}; "
        f"targets with every reply: {base['full']}/{args.targets}"
    )

    broken = False
    for plan in plans(args):
        figures = run_fleet(plan, hosts, args.count, args.interval)
        report(plan, figures, limit_s, base["wall_s"])
        broken |= not figures["finished"] or figures["full"] != args.targets
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
