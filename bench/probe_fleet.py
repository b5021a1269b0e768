"""Probe fleet: N concurrent probes of 720p RTSP streams on one worker.

    .venv/bin/python -m bench.probe_fleet [--counts 1,8,32,64] [--duration 5]
        [--concurrency 64] [--no-capacity-round] [--baseline-up-to 16]

The camera simulator serves a 1280x720 25 fps H.264 + AAC clip (2.5 Mbit/s,
rendered once into var/bench-media) on one mount; every client gets its own
pipeline from the clip's start, prepared when its DESCRIBE arrives (a real
camera's stream is already running; here each client costs the simulator a
demuxer and payloaders of its own, on the same two cores). One worker,
`celery -A camtester worker -Q bench.probe,results -P threads -c C`, runs every
probe; each round POSTs N probes as one `/tasks-batch` and reads the store.

Per round it prints:
- CPU of the worker and its ffmpeg children per stream-second, as a ratio to
  plain decoding of the same stream (`ffmpeg -threads 1 ... -f null -`,
  measured in the same run), split into ffmpeg and the worker's own Python,
  and how many such streams the machine's cores could carry;
- wall time per probe, from the POST of the batch (taken just before the
  request is sent) to the result's `time` (stamped in the worker when the
  measurement has ended, just before the result is handed to the aggregation
  task and stored), as a ratio to `duration` (goal: within 1.1x). It is split
  at the moment the worker began the task (Celery's "succeeded in" line in the
  worker's log): before it, the API, the broker and the worker taking the
  message; after it, the task itself: claims, store, ffmpeg's start-up, the
  RTSP set-up, the sample, ffmpeg's end and the analysis;
- for rounds of up to 16 probes, the same ratio of N plain decodes started at
  once without camtester, from their start to the last one's exit: what the
  simulator and the machine allow (ffmpeg's own start-up, about 0.3 s for 8
  at once on two cores, and the RTSP set-up are in it too);
- memory of the worker plus its ffmpeg children at the peak, per concurrent
  probe, above the idle worker and in all, against 60 MiB. PSS, because RSS
  counts the shared libraries again in every ffmpeg.
After the listed rounds one more runs at the number of streams the cores
should carry by the CPU measured so far, and the largest N that held is
printed. The simulator's CPU is printed too: it shares the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import (
    BenchStack,
    CpuTimes,
    WorkerSpec,
    bench_clip,
    bench_stack,
    child_with,
    cpu_times,
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
#: Share of the cores the capacity round plans to use.
CAPACITY_HEADROOM = 0.9
MAX_STREAMS = 256
#: Celery's line for a finished probe task, after camtester's "[probe <id>]" context.
TASK_RAN = re.compile(
    rb"\[probe (\S+)\] Task camtester\.probe\[[^\]]*\] succeeded in ([\d.]+)s"
)
#: Seconds to wait for the last "succeeded" lines once every result is stored:
#: Celery may log a task's end just after its result reached the store.
LOG_GRACE_S = 2.0


def probe_tasks(url: str, n: int, duration_s: float) -> list[dict[str, Any]]:
    task = {
        "type": "probe",
        "geo_location": GEO,
        "payload": {"uri": url, "duration": duration_s, "transport": "tcp"},
    }
    return [task] * n


def decode_argv(url: str, duration_s: float) -> list[str]:
    """Plain decoding of `duration_s` of the stream to nothing, on one thread."""
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    argv += ["-threads", "1", "-rtsp_transport", "tcp", "-t", f"{duration_s:g}"]
    return [*argv, "-i", url, "-map", "0:v", "-map", "0:a", "-f", "null", "-"]


def decode_baseline(url: str, duration_s: float) -> float:
    """CPU seconds of plain decoding of `duration_s` of the stream."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        decode_argv(url, duration_s), check=True, timeout=duration_s + ROUND_GRACE_S
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def concurrent_decodes(url: str, n: int, duration_s: float) -> float:
    """Wall time of n plain decodes started at once, as a ratio to duration.

    What the simulator and this machine allow before camtester adds anything.
    """
    started = time.monotonic()
    processes = [subprocess.Popen(decode_argv(url, duration_s)) for _ in range(n)]
    for process in processes:
        process.wait(timeout=duration_s + ROUND_GRACE_S)
    return (time.monotonic() - started) / duration_s


def run_round(
    stack: BenchStack, url: str, n: int, duration_s: float, simulator: int | None
) -> dict[str, Any]:
    """N probes at once: CPU, the memory peak and the stored results."""
    worker = stack.workers[0].pid
    idle_pss = tree_memory_kib(worker)[1]
    cpu_before = cpu_times(worker)
    simulator_before = tree_cpu_s(simulator) if simulator else 0.0
    log_path = stack.workers[0].log_path
    log_offset = log_path.stat().st_size

    submitted = time.time()
    response = stack.api.post("/tasks-batch", json=probe_tasks(url, n, duration_s))
    response.raise_for_status()
    ids = response.json()["ids"]
    peak = watch_memory(stack, ids, worker, duration_s)

    # Every ffmpeg has been reaped once its task ended: its CPU is in the
    # worker's children's times.
    cpu: CpuTimes = cpu_times(worker) - cpu_before
    simulator_s = tree_cpu_s(simulator) - simulator_before if simulator else 0.0
    tasks = stored_tasks(stack.store, ids)
    runs = task_run_times(log_path, log_offset, ids)
    return {
        **walls(tasks, submitted, duration_s),
        **split_walls(ids, tasks, runs, submitted),
        **peak,
        "n": n,
        "cpu": cpu,
        "simulator_s": simulator_s,
        "idle_pss_kib": idle_pss,
    }


def watch_memory(
    stack: BenchStack, ids: list[str], worker: int, duration_s: float
) -> dict[str, Any]:
    """Sample the worker's tree until every task has ended; its largest PSS."""
    peak = {"peak_pss_kib": 0, "peak_rss_kib": 0, "peak_processes": 0, "threads": 0}
    deadline = time.monotonic() + duration_s + ROUND_GRACE_S
    finished = False
    while not finished and time.monotonic() < deadline:
        rss, pss, processes = tree_memory_kib(worker)
        if pss > peak["peak_pss_kib"]:
            children = descendants(worker)
            peak.update(
                peak_pss_kib=pss,
                peak_rss_kib=rss,
                peak_processes=processes,
                threads=sum(thread_count(pid) for pid in children),
            )
        finished = wait_terminal(stack.store, ids, timeout_s=0)
        time.sleep(MEMORY_SAMPLE_S)
    return {**peak, "finished": finished}


def walls(
    tasks: list[dict[str, Any]], submitted: float, duration_s: float
) -> dict[str, Any]:
    """Wall time per probe (POST to the result's time) and how many got it all."""
    ratios, full = [], 0
    errors: Counter[str] = Counter()
    for task in tasks:
        result = task["result"] or {}
        if not result.get("ok"):
            errors[(result.get("error") or {}).get("code", "no result")] += 1
            continue
        ratios.append((epoch(result["time"]) - submitted) / duration_s)
        payload = result["payload"]
        complete = payload["sample_duration_sec"] >= duration_s - FULL_SAMPLE_SLACK_S
        full += complete and not payload["stalled"]
    return {
        "ok": len(ratios),
        "full": full,
        "errors": dict(errors),
        "median_ratio": statistics.median(ratios) if ratios else float("nan"),
        "max_ratio": max(ratios) if ratios else float("nan"),
    }


def task_run_times(path: Path, offset: int, ids: list[str]) -> dict[str, float]:
    """Seconds each probe task ran in the worker, from Celery's "succeeded" lines.

    From the moment the worker began the task (claims, store, ffmpeg, the
    analysis) to its return, which comes just after the result's time.
    """
    deadline = time.monotonic() + LOG_GRACE_S
    wanted = set(ids)
    while True:
        with path.open("rb") as log:
            log.seek(offset)
            found = {
                match[1].decode(): float(match[2])
                for match in TASK_RAN.finditer(log.read())
                if match[1].decode() in wanted
            }
        if len(found) == len(wanted) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def split_walls(
    ids: list[str],
    tasks: list[dict[str, Any]],
    runs: dict[str, float],
    submitted: float,
) -> dict[str, Any]:
    """The wall time per probe split at the task's start: queued, then running."""
    queued, running = [], []
    for task_id, task in zip(ids, tasks, strict=True):
        result = task["result"] or {}
        if task_id not in runs or not result.get("ok"):
            continue
        wall = epoch(result["time"]) - submitted
        running.append(runs[task_id])
        queued.append(wall - runs[task_id])
    return {"queued_s": queued, "running_s": running}


def cpu_per_stream_s(figures: dict[str, Any], duration_s: float) -> float:
    return float(figures["cpu"].total_s / (figures["n"] * duration_s))


def holds(figures: dict[str, Any]) -> bool:
    """Every probe read a full sample within the wall-time goal."""
    return bool(
        figures["finished"]
        and figures["full"] == figures["n"]
        and figures["max_ratio"] <= WALL_GOAL
    )


def report(figures: dict[str, Any], duration_s: float, decode_s: float) -> None:
    n = figures["n"]
    stream_s = n * duration_s
    per_stream = cpu_per_stream_s(figures, duration_s)
    decode = decode_s / duration_s
    cores = os.cpu_count() or 1
    failed = ", ".join(f"{code} {k}" for code, k in figures["errors"].items())
    print(
        f"N = {n}: {figures['ok']}/{n} ok, {figures['full']}/{n} full samples"
        + (f"; failed: {failed}" if failed else "")
    )
    print(
        f"  CPU per stream-second: {per_stream:.3f} s = {per_stream / decode:.2f} x "
        f"plain decoding ({decode:.3f} s): ffmpeg "
        f"{figures['cpu'].children_s / stream_s:.3f}, worker's Python "
        f"{figures['cpu'].own_s / stream_s:.3f}; {cores} cores carry about "
        f"{cores / per_stream:.0f} such streams; simulator "
        f"{figures['simulator_s'] / stream_s:.3f} s"
    )
    wall = ratio(
        "wall per probe from the POST of the batch to the result's time, max",
        figures["max_ratio"] * duration_s,
        duration_s,
        "s",
        f"<= {WALL_GOAL}x",
    )
    verdict = "holds" if holds(figures) else "does not hold"
    print(f"  {wall}; median {figures['median_ratio']:.2f} x; {verdict}")
    report_split(figures)
    if figures.get("decodes_ratio") is not None:
        print(
            f"  baseline: plain decoding of as many streams started at once, without "
            f"camtester, start to last exit: {figures['decodes_ratio']:.2f} x duration"
        )
    report_memory(figures)


def report_split(figures: dict[str, Any]) -> None:
    """Where the wall time went: waiting for a worker thread, then the task itself."""
    queued, running = figures["queued_s"], figures["running_s"]
    if not running:
        print("  (no task run times in the worker's log)")
        return
    print(
        f"  of which POST to the task's start (API, broker, the worker taking it): "
        f"median {statistics.median(queued):.3f} s, max {max(queued):.3f} s; "
        f"the task in the worker (claims, ffmpeg, analysis): median "
        f"{statistics.median(running):.3f} s, max {max(running):.3f} s"
    )


def report_memory(figures: dict[str, Any]) -> None:
    n = figures["n"]
    marginal = (figures["peak_pss_kib"] - figures["idle_pss_kib"]) / 1024 / n
    memory = ratio(
        "memory per probe above the idle worker (PSS)",
        marginal,
        MEMORY_GOAL_MIB,
        "MiB",
        f"< {MEMORY_GOAL_MIB:g} MiB",
    )
    print(
        f"  {memory}; with the worker {figures['peak_pss_kib'] / 1024 / n:.1f} MiB; "
        f"peak RSS {figures['peak_rss_kib'] / 1024:.0f} MiB in "
        f"{figures['peak_processes']} processes, {figures['threads']} ffmpeg threads"
    )


def capacity(rounds: list[dict[str, Any]], duration_s: float) -> int:
    """Streams the cores should carry at the cheapest CPU per stream measured."""
    cheapest = min(cpu_per_stream_s(figures, duration_s) for figures in rounds)
    cores = os.cpu_count() or 1
    return max(1, min(MAX_STREAMS, int(CAPACITY_HEADROOM * cores / cheapest)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--counts", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--no-capacity-round", action="store_true")
    parser.add_argument(
        "--baseline-up-to",
        type=int,
        default=16,
        help="rounds of at most this many probes also time plain decodes at once",
    )
    args = parser.parse_args(argv)
    args.counts = [int(n) for n in args.counts.split(",")]
    if not all(1 <= n <= MAX_STREAMS for n in args.counts):
        parser.error(f"--counts must each be 1 to {MAX_STREAMS}")
    if not 1 <= args.duration <= 30:
        parser.error("--duration must be 1 to 30 s")
    if args.concurrency is None:
        args.concurrency = max(args.counts)
    return args


@dataclass
class Session:
    """What every round of one run shares."""

    stack: BenchStack
    url: str
    args: argparse.Namespace
    simulator: int | None
    decode_s: float

    def round(self, n: int) -> dict[str, Any]:
        """Run and report one round of n probes (and its baseline when small)."""
        duration_s = self.args.duration
        figures = run_round(self.stack, self.url, n, duration_s, self.simulator)
        if n <= self.args.baseline_up_to:
            figures["decodes_ratio"] = concurrent_decodes(self.url, n, duration_s)
        report(figures, duration_s, self.decode_s)
        return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clip = bench_clip(args.duration + CLIP_SLACK_S)
    spec = WorkerSpec((PROBE_QUEUE, "results"), "threads", args.concurrency)
    print(f"machine: {machine()}")
    print(f"probe fleet: {clip.name}, duration {args.duration:g} s")
    print(f"worker: {spec.describe()}")

    with CameraSimulator({"cam": clip}) as camera, bench_stack([spec]) as stack:
        url = camera.url("cam")
        decode_s = decode_baseline(url, args.duration)
        session = Session(stack, url, args, child_with("rtsp_server.py"), decode_s)
        warm_up(stack, url)
        rounds = [session.round(n) for n in args.counts]

        planned = capacity(rounds, args.duration)
        wanted = not args.no_capacity_round and planned not in args.counts
        if wanted and planned <= args.concurrency:
            print(f"capacity round at the CPU measured so far: N = {planned}")
            rounds.append(session.round(planned))

    held = [figures["n"] for figures in rounds if holds(figures)]
    print(f"largest N within {WALL_GOAL}x of duration: {max(held, default=0)}")
    return 0


def warm_up(stack: BenchStack, url: str) -> None:
    """One short probe: the worker loads the probe modules and asks ffmpeg's version."""
    ids = stack.api.post("/tasks-batch", json=probe_tasks(url, 1, 1.0)).json()["ids"]
    wait_terminal(stack.store, ids, ROUND_GRACE_S)


if __name__ == "__main__":
    sys.exit(main())
