"""Probe fleet: N concurrent probes of 720p RTSP streams on one worker.

    .venv/bin/python -m bench.probe_fleet [--counts 1,8,32,64] [--duration 5]
        [--concurrency 64]

The camera simulator serves a 1280x720 25 fps H.264 + AAC clip (2.5 Mbit/s,
rendered once into var/bench-media) on one mount; every client gets its own
pipeline from the clip's start. One worker,
`celery -A camtester worker -Q bench.probe,results -P threads -c C`, runs every
probe; each round POSTs N probes as one `/tasks-batch` and reads the store.

Per round it prints:
- CPU of the worker and its ffmpeg children per stream-second, as a ratio to
  plain decoding of the same stream (`ffmpeg -threads 1 ... -f null -`,
  measured in the same run), and the streams the machine's cores could carry
  at that cost;
- wall time per probe, from the POST to the probe's result time, as a ratio
  to `duration` (goal: within 1.1x); the largest N that holds is printed last;
- memory of the worker plus its ffmpeg children at the peak (PSS; RSS counts
  the shared libraries once per process) per concurrent probe, above the idle
  worker and in all, against 60 MiB.
The simulator's own CPU is printed too: it shares the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from bench._common import (
    BenchStack,
    WorkerSpec,
    bench_clip,
    bench_stack,
    child_with,
    descendants,
    epoch,
    machine,
    ratio,
    stored_tasks,
    thread_count,
    tree_cpu_s,
    tree_memory_kib,
    wait_terminal,
)
from camtester.devtools.simulator import CameraSimulator

GEO = "bench"
PROBE_QUEUE = f"{GEO}.probe"
#: Goals of the issue.
WALL_GOAL = 1.1
MEMORY_GOAL_MIB = 60.0
#: Seconds of clip beyond the sample: RTSP set-up and stream probing.
CLIP_SLACK_S = 3.0
#: Seconds a round may take beyond its samples before it is given up.
ROUND_GRACE_S = 60.0
#: How often the worker's memory is sampled during a round, seconds.
MEMORY_SAMPLE_S = 0.25
#: A sample this much shorter than asked for is not a full one, seconds.
FULL_SAMPLE_SLACK_S = 0.2


def probe_tasks(url: str, n: int, duration_s: float) -> list[dict[str, Any]]:
    task = {
        "type": "probe",
        "geo_location": GEO,
        "payload": {"uri": url, "duration": duration_s, "transport": "tcp"},
    }
    return [task] * n


def decode_baseline(url: str, duration_s: float) -> float:
    """CPU seconds of ffmpeg decoding `duration_s` of the stream to nothing."""
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    argv += ["-threads", "1", "-rtsp_transport", "tcp", "-t", f"{duration_s:g}"]
    argv += ["-i", url, "-map", "0:v", "-map", "0:a", "-f", "null", "-"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, timeout=duration_s + ROUND_GRACE_S)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_round(
    stack: BenchStack, url: str, n: int, duration_s: float, simulator_pid: int | None
) -> dict[str, Any]:
    """N probes at once; CPU, memory peak and the stored results."""
    worker = stack.workers[0].pid
    idle_pss = tree_memory_kib(worker)[1]
    cpu_before = tree_cpu_s(worker)
    sim_before = tree_cpu_s(simulator_pid) if simulator_pid else 0.0

    submitted = time.time()
    response = stack.api.post("/tasks-batch", json=probe_tasks(url, n, duration_s))
    response.raise_for_status()
    ids = response.json()["ids"]
    peak = watch_memory(stack, ids, worker, duration_s)

    cpu = tree_cpu_s(worker) - cpu_before
    sim_cpu = (tree_cpu_s(simulator_pid) - sim_before) if simulator_pid else 0.0
    tasks = stored_tasks(stack.store, ids)
    return {
        **walls(tasks, submitted, duration_s),
        **peak,
        "n": n,
        "cpu_s": cpu,
        "sim_cpu_s": sim_cpu,
        "idle_pss_kib": idle_pss,
    }


def watch_memory(
    stack: BenchStack, ids: list[str], worker: int, duration_s: float
) -> dict[str, Any]:
    """Sample the worker's tree until every task ended; its largest PSS."""
    peak = {"peak_pss_kib": 0, "peak_rss_kib": 0, "peak_processes": 0, "threads": 0}
    deadline = time.monotonic() + duration_s + ROUND_GRACE_S
    while time.monotonic() < deadline:
        rss, pss, processes = tree_memory_kib(worker)
        if pss > peak["peak_pss_kib"]:
            ffmpegs = descendants(worker)
            peak.update(
                peak_pss_kib=pss,
                peak_rss_kib=rss,
                peak_processes=processes,
                threads=sum(thread_count(pid) for pid in ffmpegs),
            )
        if wait_terminal(stack.store, ids, timeout_s=0):
            break
        time.sleep(MEMORY_SAMPLE_S)
    peak["finished"] = wait_terminal(stack.store, ids, timeout_s=ROUND_GRACE_S)
    return peak


def walls(
    tasks: list[dict[str, Any]], submitted: float, duration_s: float
) -> dict[str, Any]:
    """Wall time per probe (POST to the result's time) and how many got it all."""
    ratios, full = [], 0
    for task in tasks:
        result = task["result"] or {}
        if not result.get("ok"):
            continue
        ratios.append((epoch(result["time"]) - submitted) / duration_s)
        payload = result["payload"]
        complete = payload["sample_duration_sec"] >= duration_s - FULL_SAMPLE_SLACK_S
        full += complete and not payload["stalled"]
    return {
        "ok": len(ratios),
        "full": full,
        "median_ratio": statistics.median(ratios) if ratios else float("nan"),
        "max_ratio": max(ratios) if ratios else float("nan"),
    }


def report(figures: dict[str, Any], duration_s: float, decode_s: float) -> bool:
    """Print one round; True if it holds the wall-time goal with full samples."""
    n = figures["n"]
    per_stream_s = figures["cpu_s"] / (n * duration_s)
    decode_per_s = decode_s / duration_s
    cores = os.cpu_count() or 1
    holds = (
        figures["finished"]
        and figures["full"] == n
        and figures["max_ratio"] <= WALL_GOAL
    )
    print(f"N = {n}: {figures['ok']}/{n} ok, {figures['full']}/{n} full samples")
    print(
        f"  CPU per stream-second: {per_stream_s:.3f} s = "
        f"{per_stream_s / decode_per_s:.2f} x plain decoding ({decode_per_s:.3f} s); "
        f"{cores} cores carry about {cores / per_stream_s:.0f} such streams; "
        f"simulator {figures['sim_cpu_s'] / (n * duration_s):.3f} s"
    )
    print(
        "  "
        + ratio(
            "wall per probe, max",
            figures["max_ratio"] * duration_s,
            duration_s,
            "s",
            f"<= {WALL_GOAL}x",
        )
        + f"; median {figures['median_ratio']:.2f} x"
        + ("" if holds else "  -- does not hold")
    )
    marginal = (figures["peak_pss_kib"] - figures["idle_pss_kib"]) / 1024 / n
    total = figures["peak_pss_kib"] / 1024 / n
    print(
        "  "
        + ratio(
            "memory per probe above the idle worker (PSS)",
            marginal,
            MEMORY_GOAL_MIB,
            "MiB",
            f"< {MEMORY_GOAL_MIB:g} MiB",
        )
        + f"; with the worker {total:.1f} MiB; peak RSS "
        f"{figures['peak_rss_kib'] / 1024:.0f} MiB in {figures['peak_processes']} "
        f"processes, {figures['threads']} ffmpeg threads"
    )
    return holds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--counts", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args(argv)
    args.counts = [int(n) for n in args.counts.split(",")]
    if not all(1 <= n <= 256 for n in args.counts):
        parser.error("--counts must each be 1 to 256")
    if args.concurrency is None:
        args.concurrency = max(args.counts)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clip = bench_clip(args.duration + CLIP_SLACK_S)
    spec = WorkerSpec((PROBE_QUEUE, "results"), "threads", args.concurrency)
    print(f"machine: {machine()}")
    print(
        f"probe fleet: {clip.name}, duration {args.duration:g} s; worker: "
        f"{spec.describe()}"
    )

    held = 0
    with CameraSimulator({"cam": clip}) as camera, bench_stack([spec]) as stack:
        url = camera.url("cam")
        simulator_pid = child_with("rtsp_server.py")
        decode_s = decode_baseline(url, args.duration)
        warm_up(stack, url)
        for n in args.counts:
            figures = run_round(stack, url, n, args.duration, simulator_pid)
            if report(figures, args.duration, decode_s):
                held = max(held, n)
    print(f"largest N within {WALL_GOAL}x of duration: {held or 'none'}")
    return 0


def warm_up(stack: BenchStack, url: str) -> None:
    """One short probe: the worker loads the probe modules and asks ffmpeg's version."""
    ids = stack.api.post("/tasks-batch", json=probe_tasks(url, 1, 1.0)).json()["ids"]
    wait_terminal(stack.store, ids, ROUND_GRACE_S)


if __name__ == "__main__":
    sys.exit(main())
