"""What a probe costs: CPU against plain decoding, and wall time on a live stream.

    .venv/bin/python bench/probe_cost.py [--repeat 3] [--keep DIR]

Makes a 10 s 1280x720 25 fps H.264 + AAC clip, then measures, in this one run:

- CPU seconds (user + sys of child processes) of `ffmpeg -i CLIP -f null -`,
  the baseline every other figure is divided by;
- one camtester probe of the clip (`probe_stream` on the file);
- the older two-step way: a copy-recording of the clip, then ffprobe over
  `movie=REC,signalstats,blackdetect,freezedetect` with -show_frames, and an
  `amovie=REC,silencedetect` pass;
- the wall time of a probe of a live 10 s RTSP sample of the same clip from
  the camera simulator (goal: duration + 0.5 s).

Each CPU figure is the smallest of `--repeat` runs: other work on the machine
only ever adds time. Not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from camtester.devtools.simulator import CameraSimulator
from camtester.probes.ffmpeg import ffmpeg_version
from camtester.probes.probe import probe_stream

DURATION_S = 10.0
GOALS = {"probe": 1.2}


#: The clips: a synthetic picture (cheap to decode, so the analysis weighs
#: most), and the same with light sensor noise at a camera's 4 Mbit/s.
CLIPS = {
    "synthetic": ("testsrc2=s=1280x720:r=25:d={d}", ["-crf", "23"]),
    "camera-like": (
        "testsrc2=s=1280x720:r=25:d={d},noise=alls=6:allf=t",
        ["-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M"],
    ),
}


def make_clip(directory: Path, name: str, seconds: float = DURATION_S) -> Path:
    """`seconds` of 1280x720 25 fps H.264 (a keyframe a second) with AAC sound."""
    clip = directory / f"bench-720p-{name}-{seconds:g}s.mp4"
    if clip.exists():
        return clip
    video, rate = CLIPS[name]
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    argv += ["-f", "lavfi", "-i", video.format(d=seconds)]
    argv += ["-f", "lavfi", "-i", f"sine=f=440:r=48000:d={seconds}"]
    argv += [
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "25",
        "-pix_fmt",
        "yuv420p",
    ]
    argv += [*rate, "-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart", str(clip)]
    subprocess.run(argv, check=True, timeout=300)
    return clip


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_of(work: Callable[[], object], repeat: int) -> float:
    """The least CPU seconds of children that `work` took over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        before = child_cpu_s()
        work()
        best = min(best, child_cpu_s() - before)
    return best


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=300)


def plain_decode(clip: Path, *extra: str) -> None:
    run(["ffmpeg", "-nostdin", *extra, "-i", str(clip), "-f", "null", "-"])


def two_step(clip: Path, directory: Path) -> None:
    """Record a copy, then analyse the recording with ffprobe twice."""
    recording = directory / "recording.mp4"
    run(["ffmpeg", "-nostdin", "-y", "-i", str(clip), "-c", "copy", str(recording)])
    video = f"movie={recording},signalstats=stat=tout,blackdetect,freezedetect"
    run(["ffprobe", "-v", "error", "-f", "lavfi", video, "-show_frames"])
    audio = f"amovie={recording},silencedetect"
    run(["ffprobe", "-v", "error", "-f", "lavfi", audio, "-show_frames"])


def live_wall_s(clip: Path) -> tuple[float, float]:
    """Wall time of one probe of a live 10 s RTSP sample, and the sample it got."""
    with CameraSimulator({"bench": clip}) as camera:
        started = time.monotonic()
        outcome = probe_stream(camera.url("bench"), duration_s=DURATION_S)
        return time.monotonic() - started, outcome.payload["sample_duration_sec"]


def measure(clip: Path, directory: Path, repeat: int) -> list[tuple[str, float]]:
    """CPU seconds of each way of analysing `clip`, baseline first."""
    return [
        (
            "plain decode (ffmpeg -i CLIP -f null -)",
            cpu_of(lambda: plain_decode(clip), repeat),
        ),
        (
            "plain decode, -threads 1",
            cpu_of(lambda: plain_decode(clip, "-threads", "1"), repeat),
        ),
        (
            "camtester probe (one ffmpeg)",
            cpu_of(lambda: probe_stream(str(clip), duration_s=DURATION_S), repeat),
        ),
        (
            "two-step: copy-record + 2 ffprobe passes",
            cpu_of(lambda: two_step(clip, directory), repeat),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="directory to keep the clips in")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ct-bench-") as scratch:
        directory = args.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        clips = {name: make_clip(directory, name) for name in CLIPS}
        ffmpeg_version("ffmpeg")  # asked once per process; keep it out of the figures

        tables = {
            name: measure(clip, directory, args.repeat) for name, clip in clips.items()
        }
        # A camera goes on after the sample: served a clip that ends with the
        # sample, the probe would also wait for the server's end of stream.
        live_clip = make_clip(directory, "synthetic", DURATION_S + 3)
        wall_s, sample_s = live_wall_s(live_clip)

    print(f"{DURATION_S:g} s 1280x720 25 fps H.264 + AAC; CPU = user+sys of children,")
    print(f"best of {args.repeat}; goal: probe <= {GOALS['probe']:g} x plain")
    for name, rows in tables.items():
        baseline = rows[0][1]
        print(f"\n{name + ' clip':<44} {'CPU s':>7} {'x plain':>8}")
        for what, seconds in rows:
            print(f"{what:<44} {seconds:>7.2f} {seconds / baseline:>8.2f}")
    print(
        f"\nlive RTSP probe of {DURATION_S:g} s (synthetic clip): wall {wall_s:.2f} s "
        f"(goal <= {DURATION_S + 0.5:g} s), sample {sample_s:.2f} s"
    )


if __name__ == "__main__":
    main()
