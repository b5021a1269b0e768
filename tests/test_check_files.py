"""check_stream on local H.264 files with damage made byte for byte.

Every input is 4 s of lavfi's testsrc2 (640x360, 25 fps, 100 frames) encoded by
libx264 on one thread, which makes the same bytes on every run; the damage comes
from a fixed seed. The expected counts are the ones in the logs recorded from the
same inputs with check's own command line (tests/data/ffmpeg-logs/, README.md there
says how each was counted), so this test checks the whole path, runner included,
against independently counted text.

Run `python -m tests.test_check_files RECORD_DIR` to record the logs again.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from camtester.errors import TargetNotFound
from camtester.probes.check import LOGLEVEL, check_stream

DURATION_S = 4
TS_PACKET = 188

#: Every OVERWRITE_EVERY-th TS packet from packet 10 gets bytes 44..143 replaced.
OVERWRITE_EVERY = 50
OVERWRITE_SEED = 1
#: Every DROP_EVERY-th TS packet from packet 20 is cut out of the file.
DROP_EVERY = 97


def encode(target: Path, fmt: str) -> Path:
    """4 s of testsrc2 as H.264 in `fmt` (mpegts or raw h264)."""
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    argv += ["-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:d={DURATION_S}"]
    argv += ["-c:v", "libx264", "-threads", "1", "-g", "25", "-bf", "0"]
    argv += ["-pix_fmt", "yuv420p", "-f", fmt, str(target)]
    subprocess.run(argv, check=True, timeout=60)
    return target


def overwrite_packets(source: Path, target: Path) -> int:
    """Garble 100 bytes in every OVERWRITE_EVERY-th TS packet; returns how many."""
    data = bytearray(source.read_bytes())
    rng = random.Random(OVERWRITE_SEED)
    hits = 0
    for index in range(10, len(data) // TS_PACKET, OVERWRITE_EVERY):
        start = index * TS_PACKET + 44
        for offset in range(start, start + 100):
            data[offset] = rng.randrange(256)
        hits += 1
    target.write_bytes(bytes(data))
    return hits


def drop_packets(source: Path, target: Path) -> int:
    """Cut every DROP_EVERY-th TS packet from packet 20 on; returns how many."""
    data = source.read_bytes()
    kept = bytearray()
    dropped = 0
    for index in range(len(data) // TS_PACKET):
        if index >= 20 and index % DROP_EVERY == 0:
            dropped += 1
            continue
        kept += data[index * TS_PACKET : (index + 1) * TS_PACKET]
    target.write_bytes(bytes(kept))
    return dropped


def remove_pps(source: Path, target: Path) -> int:
    """Remove every PPS NAL unit (type 8) from Annex B H.264; returns how many."""
    data = source.read_bytes()
    starts = [m.start() for m in re.finditer(b"\x00\x00\x01", data)]
    units = [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]
    kept = [unit for unit in units if unit[3] & 0x1F != 8]
    target.write_bytes(data[: starts[0]] + b"".join(kept))
    return len(units) - len(kept)


def ffmpeg_processes(marker: str | None = None) -> list[int]:
    """Live ffmpeg processes started by this test process, or naming `marker`.

    A descendant is found through its parent chain; one that lost its parent (an
    orphan, re-parented to init) is found by `marker`, a string of its command line
    unique to the test, such as the simulator's port or a temporary path.
    """
    me = os.getpid()
    parents: dict[int, int] = {}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # The name in stat sits in parentheses and may hold spaces.
        fields = stat.rpartition(")")[2].split()
        if fields[0] == "Z":
            continue
        parents[int(entry.name)] = int(fields[1])
        name = os.path.basename(argv[0].decode(errors="replace"))
        if name == "ffmpeg":
            found.append((int(entry.name), b" ".join(argv).decode(errors="replace")))

    def descends(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return [
        pid
        for pid, cmdline in found
        if descends(pid) or (marker is not None and marker in cmdline)
    ]


def assert_no_ffmpeg_left(marker: str | None = None) -> None:
    assert ffmpeg_processes(marker) == []


def make_inputs(directory: Path) -> dict[str, Path]:
    """The clean and the damaged inputs, by name."""
    directory.mkdir(parents=True, exist_ok=True)
    clean = encode(directory / "clean.ts", "mpegts")
    raw = encode(directory / "clean.h264", "h264")
    inputs = {"clean": clean}
    inputs["overwritten"] = directory / "overwritten.ts"
    overwrite_packets(clean, inputs["overwritten"])
    inputs["dropped"] = directory / "dropped.ts"
    drop_packets(clean, inputs["dropped"])
    inputs["nopps"] = directory / "nopps.h264"
    remove_pps(raw, inputs["nopps"])
    return inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_inputs(tmp_path_factory.mktemp("check-files"))


def test_the_damage_is_what_the_recipe_says(inputs: dict[str, Path]) -> None:
    # Given the recipes, when they run again, then they damage as many units as
    # the recorded logs were made from (README.md in tests/data/ffmpeg-logs).
    scratch = inputs["clean"].parent
    assert overwrite_packets(inputs["clean"], scratch / "again.ts") == 46
    assert drop_packets(inputs["clean"], scratch / "again.ts") == 23
    assert remove_pps(scratch / "clean.h264", scratch / "again.h264") == 4


def test_clean_file_has_no_faults(inputs: dict[str, Path]) -> None:
    payload = check_stream(str(inputs["clean"]), duration_s=DURATION_S)

    assert payload == {
        "duration_sec": 4.0,
        "requested_duration_sec": DURATION_S,
        "stalled": False,
        "rtp_missed_packets": None,
        "corrupted_frames": 0,
        "decoding_errors": 0,
        "max_delay_reaches": 0,
        "corrupt_input_packets": 0,
        "transport": "file",
    }
    assert_no_ffmpeg_left(str(inputs["clean"].parent))


def test_overwritten_bytes_are_decoding_errors(inputs: dict[str, Path]) -> None:
    # ts-overwritten.info.txt: 36 "error while decoding MB", 1 "decode_slice_header
    # error" and 7 concealed frames without a slice error after the input dump; 43
    # "corrupt decoded frame".
    payload = check_stream(str(inputs["overwritten"]), duration_s=DURATION_S)

    assert payload["decoding_errors"] == 44
    assert payload["corrupted_frames"] == 43
    assert payload["corrupt_input_packets"] == 0
    assert payload["stalled"] is False
    assert_no_ffmpeg_left(str(inputs["clean"].parent))


def test_dropped_packets_are_corrupt_input_packets(inputs: dict[str, Path]) -> None:
    # ts-dropped.info.txt: each of the 23 cut packets breaks the continuity counter
    # once, so ffmpeg flags 23 input packets; 17 slices broke and 4 more frames
    # were concealed for slices that never arrived; 21 frames concealed in all.
    payload = check_stream(str(inputs["dropped"]), duration_s=DURATION_S)

    assert payload["corrupt_input_packets"] == 23
    assert payload["decoding_errors"] == 21
    assert payload["corrupted_frames"] == 21
    assert_no_ffmpeg_left(str(inputs["clean"].parent))


def test_undecodable_stream_is_a_result_not_a_failure(
    inputs: dict[str, Path],
) -> None:
    # h264-nopps.info.txt: all 100 slices name a PPS that never came: 100
    # "decode_slice_header error" (each with its "no frame!" and "Error while
    # decoding stream"); nothing decoded, so the sample is empty and stalled.
    payload = check_stream(str(inputs["nopps"]), duration_s=DURATION_S)

    assert payload["decoding_errors"] == 100
    assert payload["duration_sec"] == 0.0
    assert payload["stalled"] is True
    assert_no_ffmpeg_left(str(inputs["clean"].parent))


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(TargetNotFound):
        check_stream(str(tmp_path / "absent.ts"), duration_s=DURATION_S)
    assert_no_ffmpeg_left(str(tmp_path))


def record(directory: Path) -> None:
    """Write the logs of tests/data/ffmpeg-logs/ from freshly made inputs."""
    inputs = make_inputs(directory / "inputs")
    runs = {
        "ts-overwritten.info.txt": ("overwritten", LOGLEVEL),
        "ts-overwritten.warning-folded.txt": ("overwritten", "warning"),
        "ts-dropped.info.txt": ("dropped", LOGLEVEL),
        "h264-nopps.info.txt": ("nopps", LOGLEVEL),
        "h264-nopps.default-folded.txt": ("nopps", None),
    }
    for name, (source, loglevel) in runs.items():
        argv = ["ffmpeg", "-nostdin", "-hide_banner", "-nostats"]
        argv += ["-loglevel", loglevel] if loglevel else []
        argv += ["-threads", "1", "-t", str(DURATION_S)]
        argv += ["-i", f"{source}{inputs[source].suffix}", "-f", "null", "-"]
        done = subprocess.run(
            argv,
            check=False,
            cwd=inputs[source].parent,
            capture_output=True,
            timeout=60,
        )
        (directory / name).write_bytes(done.stderr)


if __name__ == "__main__":
    record(Path(sys.argv[1]))
