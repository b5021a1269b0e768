"""End to end: POST of a probe to its result readable over HTTP, minus the sample.

    .venv/bin/python -m bench.e2e_latency [--runs 10] [--duration 2]

One probe at a time through gunicorn, the broker and one worker
(`-Q bench.probe,results -P threads -c 8`) on the 720p 25 fps H.264 + AAC
clip that bench.probe_fleet uses. Each run POSTs `/tasks` and polls
`GET /tasks/<id>/result` every POLL_S until it answers 200; the latency is
that wall time minus `duration`, against the 0.5 s goal (the polling adds up
to POLL_S). Where the time goes comes from the stored times: the POST's
answer, the end of the measurement (the result's `time`), the aggregation's
`updated_at`. The same probe run in this process with no API or broker
(`probe_stream`) is the baseline: what ffmpeg itself needs beyond the sample.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from bench._common import (
    BenchStack,
    WorkerSpec,
    bench_clip,
    bench_stack,
    epoch,
    machine,
    ratio,
    stored_tasks,
)
from camtester.devtools.simulator import CameraSimulator
from camtester.probes.probe import probe_stream

GEO = "bench"
PROBE_QUEUE = f"{GEO}.probe"
GOAL_S = 0.5
#: Interval of the result polling over HTTP, seconds.
POLL_S = 0.01
#: Seconds of clip beyond the sample.
CLIP_SLACK_S = 3.0
#: Seconds one run may take beyond its sample before it is given up.
RUN_GRACE_S = 30.0


def probe_task(url: str, duration_s: float) -> dict[str, Any]:
    return {
        "type": "probe",
        "geo_location": GEO,
        "payload": {"uri": url, "duration": duration_s, "transport": "tcp"},
    }


def one_run(stack: BenchStack, url: str, duration_s: float) -> dict[str, float]:
    """POST a probe, poll its result; seconds beyond the sample of each step."""
    started = time.time()
    task_id = stack.api.submit(probe_task(url, duration_s))
    answered = time.time()

    deadline = time.monotonic() + duration_s + RUN_GRACE_S
    while time.monotonic() < deadline:
        if stack.api.get(f"/tasks/{task_id}/result").status_code == 200:
            break
        time.sleep(POLL_S)
    else:
        raise RuntimeError(f"no result for task {task_id} in time")
    seen = time.time()

    stored = stored_tasks(stack.store, [task_id])[0]
    if not stored["result"]["ok"]:
        raise RuntimeError(f"probe failed: {stored['result']['error']}")
    return {
        "post": answered - started,
        "measured": epoch(stored["result"]["time"]) - started - duration_s,
        "stored": stored["updated_at"] - started - duration_s,
        "seen": seen - started - duration_s,
    }


def direct_run(url: str, duration_s: float) -> float:
    """Seconds beyond the sample of the same probe with no API, broker or worker."""
    started = time.monotonic()
    probe_stream(url, duration_s=duration_s, transport="tcp")
    return time.monotonic() - started - duration_s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be 1 to 100")
    if not 1 <= args.duration <= 30:
        parser.error("--duration must be 1 to 30 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clip = bench_clip(args.duration + CLIP_SLACK_S)
    spec = WorkerSpec((PROBE_QUEUE, "results"), "threads", 8)
    print(f"machine: {machine()}")
    print(
        f"end to end: {args.runs} probes one after another, {clip.name}, duration "
        f"{args.duration:g} s, polled every {POLL_S * 1000:g} ms; worker: "
        f"{spec.describe()}"
    )

    with CameraSimulator({"cam": clip}) as camera, bench_stack([spec]) as stack:
        url = camera.url("cam")
        # The first probe of a worker loads the probe modules and asks ffmpeg
        # its version; a worker in service has done both long ago.
        one_run(stack, url, 1.0)
        direct_run(url, 1.0)
        runs = [one_run(stack, url, args.duration) for _ in range(args.runs)]
        direct = [direct_run(url, args.duration) for _ in range(min(args.runs, 5))]

    seen = statistics.median(run["seen"] for run in runs)
    print(
        ratio("POST to result over HTTP, minus the sample, median", seen, GOAL_S, "s")
        + f"  (goal < {GOAL_S:g} s); max {max(run['seen'] for run in runs):.3f} s"
    )
    for step, label in (
        ("post", "POST /tasks answered after"),
        ("measured", "measurement ended, beyond the sample"),
        ("stored", "aggregation stored it, beyond the sample"),
    ):
        print(f"  {label}: {statistics.median(run[step] for run in runs):.3f} s median")
    own = statistics.median(direct)
    print(
        f"baseline: the same probe in-process, beyond the sample: {own:.3f} s median; "
        f"the pipeline adds {seen - own:.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
