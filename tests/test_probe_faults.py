"""Probes of the simulator's fault clips over real RTSP, against their known truth.

All probes run once, concurrently, in a module fixture; each test then checks
one clip. A sample is as long as its fault needs: a fault that ends late needs
a longer sample, one that lasts to the end is cut by the sample's own end.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from camtester.devtools.media import BIKES_TRUTH, FAULTS
from camtester.devtools.simulator import CameraSimulator
from camtester.probes.probe import ProbeOutcome, probe_stream
from tests.test_ffmpeg_runner import no_ffmpeg_left  # noqa: F401

FPS = 25
#: Audio frames per second: AAC, 1024 samples at 48 kHz.
AUDIO_FPS = 48000 / 1024
EDGE_S = 0.2

#: Sample seconds per mount: long enough for the fault to end inside, where it does.
DURATIONS = {
    "clean": 3.0,
    "bikes": 5.0,
    "noaudio": 3.0,
    "novideo": 3.0,
    "allblack": 4.0,
    "black": 7.0,
    "frozen": 8.0,
    "silent": 9.0,
    "endsfrozen": 6.0,
    "blacktail": 8.0,
    "noisy": 3.0,
    "scenecut": 8.0,
}
#: The glitch clip: clean picture with two frames of heavy noise at 5.0 s.
GLITCH_FRAMES = (125, 126)


@dataclass
class Probed:
    outcome: ProbeOutcome
    elapsed_s: float

    @property
    def payload(self) -> dict[str, Any]:
        return self.outcome.payload


def make_glitch_clip(target: Path) -> Path:
    """8 s of the clean pattern whose frames 125-126 are drowned in noise."""
    first, last = GLITCH_FRAMES
    video = (
        "testsrc2=s=640x360:r=25:d=8,format=yuv420p,"
        f"noise=alls=80:allf=t:enable='between(n,{first},{last})'"
    )
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    argv += ["-f", "lavfi", "-i", video]
    argv += ["-f", "lavfi", "-i", "aevalsrc=0.25*sin(2*PI*440*t):s=48000:d=8"]
    argv += ["-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-sc_threshold", "0"]
    argv += ["-c:a", "aac", "-b:a", "64k", "-threads", "2", str(target)]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return target


@pytest.fixture(scope="module")
def glitch_camera(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CameraSimulator]:
    clip = make_glitch_clip(tmp_path_factory.mktemp("glitch") / "glitch.mp4")
    with CameraSimulator({"glitch": clip}) as camera:
        yield camera


@pytest.fixture(scope="module")
def probed(
    camera: CameraSimulator, glitch_camera: CameraSimulator
) -> dict[str, Probed]:
    """Every mount probed once, four at a time."""
    jobs = {
        name: (camera.url(name), seconds, "tcp") for name, seconds in DURATIONS.items()
    }
    jobs["glitch"] = (glitch_camera.url("glitch"), 8.0, "tcp")
    jobs["clean-udp"] = (camera.url("clean"), 3.0, "udp")

    def run(name: str) -> tuple[str, Probed]:
        uri, seconds, transport = jobs[name]
        started = time.monotonic()
        outcome = probe_stream(uri, duration_s=seconds, transport=transport)
        return name, Probed(outcome, time.monotonic() - started)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, jobs))


def clipped(truth: list[list[float]], end: float) -> list[list[float]]:
    """The truth as a sample of `end` seconds sees it."""
    return [[s, min(e, end)] for s, e in truth if s < end]


def assert_intervals(found: list[list[float]], truth: list[list[float]]) -> None:
    assert len(found) == len(truth), (found, truth)
    for (start, end), (true_start, true_end) in zip(found, truth, strict=True):
        assert abs(start - true_start) <= EDGE_S, (found, truth)
        assert abs(end - true_end) <= EDGE_S, (found, truth)


def frames_in(intervals: list[list[float]], rate: float) -> int:
    return round(sum(e - s for s, e in intervals) * rate)


FAULT_MOUNTS = [
    "clean",
    "black",
    "frozen",
    "silent",
    "noaudio",
    "endsfrozen",
    "blacktail",
    "allblack",
    "noisy",
    "scenecut",
]


@pytest.mark.parametrize("name", FAULT_MOUNTS)
def test_faults_match_the_truth(probed: dict[str, Probed], name: str) -> None:
    truth = FAULTS[name]
    seconds = DURATIONS[name]
    payload = probed[name].payload
    black = clipped(truth["black"], seconds)
    freeze = clipped(truth["freeze"], seconds)
    silence = clipped(truth["silence"], seconds)

    assert_intervals(payload["black_intervals"], black)
    assert_intervals(payload["freeze_intervals"], freeze)
    assert_intervals(payload["silence_intervals"], silence)
    assert payload["black_frames"] == frames_in(black, FPS)
    assert payload["freeze_frames"] == frames_in(freeze, FPS)
    assert abs(payload["silence_frames"] - frames_in(silence, AUDIO_FPS)) <= 1
    assert abs(payload["video_frames"] - seconds * FPS) <= 1
    assert payload["stalled"] is False
    assert abs(payload["sample_duration_sec"] - seconds) <= 0.1


@pytest.mark.parametrize("name", FAULT_MOUNTS)
def test_stream_facts_as_found(probed: dict[str, Probed], name: str) -> None:
    truth = FAULTS[name]
    payload = probed[name].payload

    assert payload["video_codec"] == truth["video_codec"]
    assert payload["audio_codec"] == truth["audio_codec"]
    assert (payload["width"], payload["height"]) == (truth["width"], truth["height"])
    assert payload["has_video"] is True
    assert payload["has_audio"] is truth["audio"]
    assert payload["fps_declared"] == 25.0
    assert abs(payload["fps_measured"] - 25.0) <= 0.5
    # The clips have a keyframe every 25 frames.
    assert abs(payload["keyframe_interval_sec"] - 1.0) <= 0.05
    assert payload["bit_rate_kbps"] > 10
    assert payload["requested_duration_sec"] == DURATIONS[name]


def test_no_audio_is_not_silence(probed: dict[str, Probed]) -> None:
    payload = probed["noaudio"].payload

    assert payload["has_audio"] is False
    assert payload["audio_frames"] == 0
    assert payload["silence_frames"] == 0
    assert payload["silence_intervals"] == []


def test_no_video(probed: dict[str, Probed]) -> None:
    probe = probed["novideo"]
    payload = probe.payload

    assert payload["has_video"] is False
    assert payload["video_frames"] == 0
    assert payload["video_codec"] is None
    assert payload["audio_codec"] == "aac"
    assert abs(payload["audio_frames"] - 3.0 * AUDIO_FPS) <= 2
    assert payload["silence_intervals"] == []
    assert probe.outcome.snapshot_jpeg is None


def test_real_footage_has_no_faults(probed: dict[str, Probed]) -> None:
    payload = probed["bikes"].payload

    assert payload["black_intervals"] == []
    assert payload["freeze_intervals"] == []
    assert payload["temporal_outliers_peaks"] == 0
    assert (payload["width"], payload["height"]) == (
        BIKES_TRUTH["width"],
        BIKES_TRUTH["height"],
    )
    assert payload["has_audio"] is False
    assert abs(payload["video_frames"] - 5 * FPS) <= 1


def test_clean_has_no_temporal_outlier(probed: dict[str, Probed]) -> None:
    assert probed["clean"].payload["temporal_outliers_peaks"] == 0


def test_a_glitch_is_one_temporal_outlier(probed: dict[str, Probed]) -> None:
    assert probed["glitch"].payload["temporal_outliers_peaks"] == 1


def test_a_smooth_scene_cut_has_no_temporal_outlier(probed: dict[str, Probed]) -> None:
    # TOUT counts pixels unlike their vertical neighbours; the scenecut clip is
    # a smooth gradient and its negative, so TOUT is 0 before and after the cut.
    payload = probed["scenecut"].payload

    assert payload["tout_mean"] == 0.0
    assert payload["temporal_outliers_peaks"] == 0


def test_noise_raises_tout_by_an_order_of_magnitude(probed: dict[str, Probed]) -> None:
    clean = probed["clean"].payload["tout_mean"]
    noisy = probed["noisy"].payload["tout_mean"]

    assert clean > 0
    assert noisy / clean >= 10


def test_udp_transport(probed: dict[str, Probed]) -> None:
    payload = probed["clean-udp"].payload

    assert abs(payload["video_frames"] - 3 * FPS) <= 1
    assert payload["audio_codec"] == "aac"
    assert payload["black_intervals"] == payload["freeze_intervals"] == []


def test_snapshot_is_a_small_jpeg(probed: dict[str, Probed]) -> None:
    snapshot = probed["clean"].outcome.snapshot_jpeg

    assert snapshot is not None
    assert snapshot.startswith(b"\xff\xd8") and snapshot.endswith(b"\xff\xd9")
    assert jpeg_size(snapshot) == (320, 180)
    assert len(snapshot) < 50_000


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first start-of-frame segment of a JPEG."""
    offset = 2
    while offset < len(data):
        marker, length = data[offset + 1], int.from_bytes(data[offset + 2 : offset + 4])
        if 0xC0 <= marker <= 0xC3:
            height = int.from_bytes(data[offset + 5 : offset + 7])
            width = int.from_bytes(data[offset + 7 : offset + 9])
            return width, height
        offset += 2 + length
    raise ValueError("no start-of-frame segment")


def test_probes_end_soon_after_their_sample(probed: dict[str, Probed]) -> None:
    # Generous: four probes share two cores with the simulator.
    for name, seconds in DURATIONS.items():
        assert probed[name].elapsed_s < seconds + 5, name
