"""Batch acceptance: `POST /tasks-batch` of N tasks against raw pipelined writes.

Usage: python -m bench.batch_accept [--tasks 10000] [--rounds 5]

Starts redis-server and the gunicorn API (no workers: the tasks stay queued),
then alternates, `--rounds` times:
- the API round: one `POST /tasks-batch` of N ping tasks, timed from sending the
  request to reading the 202 with its N ids (validation, N task documents, N
  task messages on the broker);
- the raw round: N SETs of payloads as large as what the API wrote per task
  (document plus message, measured from the API round), in one redis-py pipeline
  over one connection, as `redis-benchmark -P` does, to the same redis-server.
Redis is flushed after every round. Prints each round, the median of each kind
and their ratio (goal: under 10), and, for reference only, `redis-benchmark`'s
own figure for the same writes when the binary is installed. On a machine busy
with other work the wall-clock ratio swings; the CPU-second ratio (the API's
processes plus redis-server, against this process plus redis-server) is printed
beside it as the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from bench._common import BenchStack, bench_stack, machine
from camtester.store import keys

GOAL_RATIO = 10.0


def ping_tasks(geo: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "ping",
            "geo_location": geo,
            "payload": {"host": f"127.0.{n // 250 % 250}.{n % 250 + 1}", "count": 1},
        }
        for n in range(count)
    ]


@dataclass(frozen=True)
class Timing:
    """Wall seconds of a round and the CPU seconds it cost."""

    wall_s: float
    cpu_s: float


def api_round(stack: BenchStack, geo: str, count: int) -> tuple[Timing, list[str]]:
    """Seconds from sending the batch to holding its ids, and the ids."""
    body = json.dumps(ping_tasks(geo, count))
    headers = {"Content-Type": "application/json"}
    cpu_before = stack.cpu_by_part()

    started = time.monotonic()
    response = stack.api.post("/tasks-batch", data=body, headers=headers)
    ids = response.json().get("ids") or []
    elapsed = time.monotonic() - started

    cpu_after = stack.cpu_by_part()
    if response.status_code != 202 or len(ids) != count:
        raise RuntimeError(f"batch not accepted: {response.status_code}")
    cpu = sum(cpu_after[p] - cpu_before[p] for p in ("api", "redis"))
    return Timing(elapsed, cpu), ids


def bytes_per_task(stack: BenchStack, geo: str, ids: list[str]) -> int:
    """Mean bytes the API wrote for one task: its document and its message."""
    store, broker = stack.store, stack.redis_server.client(1)
    pipe = store.pipeline(transaction=False)
    for task_id in ids:
        pipe.hstrlen(keys.task_key(task_id), "doc")
    documents = sum(pipe.execute())
    messages = sum(len(m) for m in broker.lrange(f"{geo}.ping", 0, -1))
    return round((documents + messages) / len(ids))


def raw_round(stack: BenchStack, count: int, size: int) -> Timing:
    """`count` pipelined SETs of `size`-byte values on a new connection."""
    client = stack.redis_server.client(2)
    payload = b"x" * size
    redis_before = stack.cpu_by_part()["redis"]
    own_before = time.process_time()

    started = time.monotonic()
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.set(f"bench:raw:{n}", payload)
    pipe.execute()
    elapsed = time.monotonic() - started

    own = time.process_time() - own_before
    client.close()
    return Timing(elapsed, own + stack.cpu_by_part()["redis"] - redis_before)


def redis_benchmark_s(port: int, count: int, size: int) -> float | None:
    """`redis-benchmark`'s own time for the same SETs (C client), if installed."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-c", "1", "-P", "1000"]
    argv += ["-n", str(count), "-d", str(size), "-t", "set", "--csv"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False
    )
    # CSV: "test","rps",...; the second line holds SET's requests per second.
    lines = [line for line in done.stdout.splitlines() if line.startswith('"SET"')]
    if not lines:
        return None
    rps = float(lines[0].split(",")[1].strip('"'))
    return count / rps


def run(count: int, rounds: int) -> float:
    """Print every round and the summary; return the median wall-clock ratio."""
    print(f"batch acceptance of {count} tasks; {machine()}")
    with bench_stack([]) as stack:
        api_round(stack, "warmup", 100)
        stack.store.flushall()
        api: list[Timing] = []
        raw: list[Timing] = []
        size = 0

        for n in range(rounds):
            geo = f"bench{n}"
            timing, ids = api_round(stack, geo, count)
            size = bytes_per_task(stack, geo, ids)
            stack.store.flushall()
            api.append(timing)
            raw.append(raw_round(stack, count, size))
            stack.store.flushall()
            print(
                f"round {n + 1}: API {api[-1].wall_s:.3f} s "
                f"({api[-1].cpu_s:.2f} CPU s), "
                f"raw {raw[-1].wall_s:.3f} s ({raw[-1].cpu_s:.2f} CPU s), "
                f"{size} B/task"
            )

        reference = redis_benchmark_s(stack.redis_server.port, count, size)

    return summarise(api, raw, reference)


def summarise(api: list[Timing], raw: list[Timing], reference: float | None) -> float:
    """Print the medians and their ratios; return the wall-clock ratio."""
    api_wall = statistics.median(t.wall_s for t in api)
    raw_wall = statistics.median(t.wall_s for t in raw)
    ratio = api_wall / raw_wall
    cpu_ratio = statistics.median(t.cpu_s for t in api) / statistics.median(
        t.cpu_s for t in raw
    )
    verdict = "met" if ratio < GOAL_RATIO else "missed"
    print(
        f"median: API {api_wall:.3f} s, raw pipelined writes {raw_wall:.3f} s; "
        f"ratio {ratio:.1f} (goal < {GOAL_RATIO:g}: {verdict}); "
        f"CPU-second ratio {cpu_ratio:.1f}"
    )
    if reference is not None:
        print(f"for reference, redis-benchmark -P 1000 (C client): {reference:.3f} s")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    run(args.tasks, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
