"""Probes of local files (as the CLI allows): snapshot, downscaling, graph safety."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from camtester.errors import TargetNotFound
from camtester.probes import probe as probe_module
from camtester.probes.probe import probe_stream
from camtester.settings import Settings
from tests.test_ffmpeg_runner import no_ffmpeg_left  # noqa: F401


def mean_luma(jpeg: bytes) -> float:
    """The mean grey level of a JPEG, decoded by ffmpeg."""
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "image2pipe", "-i", "-"]
        + ["-f", "rawvideo", "-pix_fmt", "gray", "-"],
        input=jpeg,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return sum(done.stdout) / len(done.stdout)


def test_snapshot_is_from_mid_sample(fault_clips: dict[str, Path]) -> None:
    # Black from 3 s to 6 s: the middle of a 9 s sample is black, its start not.
    black = probe_stream(str(fault_clips["black"]), duration_s=9)
    clean = probe_stream(str(fault_clips["clean"]), duration_s=9)

    assert black.snapshot_jpeg is not None and clean.snapshot_jpeg is not None
    assert mean_luma(black.snapshot_jpeg) < 30
    assert mean_luma(clean.snapshot_jpeg) > 60


#: Seconds of each clip that hold its whole fault, or its start and the end.
DOWNSCALE_CASES = {"black": 7.0, "frozen": 8.0, "endsfrozen": 6.0, "allblack": 4.0}


@pytest.mark.parametrize("name", list(DOWNSCALE_CASES))
def test_downscaled_analysis_gives_the_full_pictures_answer(
    fault_clips: dict[str, Path], name: str
) -> None:
    seconds = DOWNSCALE_CASES[name]
    small = probe_stream(str(fault_clips[name]), duration_s=seconds).payload
    full = probe_stream(
        str(fault_clips[name]), duration_s=seconds, analysis_width=10_000
    ).payload

    for key in ("black_intervals", "freeze_intervals", "black_frames", "freeze_frames"):
        assert small[key] == full[key], key
    assert small["black_intervals"] or small["freeze_intervals"]


@pytest.mark.parametrize("width", [probe_module.ANALYSIS_WIDTH, 10_000])
def test_noise_shows_in_tout_at_either_size(
    fault_clips: dict[str, Path], width: int
) -> None:
    def tout(name: str) -> float:
        payload = probe_stream(
            str(fault_clips[name]), duration_s=3, analysis_width=width
        ).payload
        return float(payload["tout_mean"])

    assert tout("noisy") >= 10 * tout("clean") > 0


def test_a_file_name_with_graph_syntax_is_just_a_file(
    fault_clips: dict[str, Path], tmp_path: Path
) -> None:
    hostile = tmp_path / "a,b:c'd;[out0]movie=e.mp4"
    shutil.copy(fault_clips["black"], hostile)

    payload = probe_stream(str(hostile), duration_s=7).payload

    assert payload["black_intervals"] == [[3.0, 6.0]]
    assert payload["video_frames"] == 175


def test_the_uri_is_only_an_input_argument() -> None:
    uri = "rtsp://127.0.0.1:1/x,movie=/etc/passwd:y='z'[out0];nullsrc"
    settings = Settings()
    pipes = probe_module.ProbePipes()
    try:
        argv = probe_module.probe_command(
            uri,
            duration_s=3,
            transport="tcp",
            connect_timeout_s=5,
            settings=settings,
            pipes=pipes,
        )
    finally:
        for pipe in pipes.all():
            pipe.__exit__(None, None, None)

    assert [i for i, arg in enumerate(argv) if uri in arg] == [argv.index("-i") + 1]
    assert argv.count("-i") == 1
    # One decoding thread, set before the input it applies to.
    assert argv.index("-threads") < argv.index("-i")
    assert argv[argv.index("-threads") + 1] == "1"


def test_signalstats_is_asked_for_tout() -> None:
    # Without stat=tout, signalstats reports TOUT 0 on every frame.
    assert "signalstats=stat=tout" in probe_module.video_filters("/dev/fd/9", 1.0, 320)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(TargetNotFound):
        probe_stream(str(tmp_path / "missing.mp4"), duration_s=2)
