"""The fault clips hold exactly their listed faults; the simulator serves them."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from camtester.devtools.media import BIKES_TRUTH, FAULTS, FPS
from camtester.devtools.silent_server import SilentServer
from camtester.devtools.simulator import CameraSimulator
from camtester.devtools.stall_proxy import RtspFramer, StallProxy, rewrite_headers
from tests.fixtures.media import SECURE_PASSWORD, SECURE_USER

FRAME_S = 1 / FPS
DETECTORS = "blackdetect=d=0.5,freezedetect"


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=timeout
    )


def detect(
    source: str, *, seconds: float | None = None
) -> dict[str, list[list[float]]]:
    """Black, freeze and silence intervals that ffmpeg's detectors report."""
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-nostats"]
    if source.startswith("rtsp://"):
        argv += ["-rtsp_transport", "tcp", "-timeout", "5000000"]
    argv += ["-i", source, *(["-t", str(seconds)] if seconds else [])]
    argv += ["-vf", DETECTORS, "-af", "silencedetect", "-f", "null", "-"]
    stderr = run(argv).stderr
    end = seconds or 10.0
    return {
        "black": pairs(stderr, r"black_start:([\d.]+)", r"black_end:([\d.]+)", end),
        "freeze": pairs(
            stderr, r"freeze_start: ([\d.]+)", r"freeze_end: ([\d.]+)", end
        ),
        "silence": pairs(
            stderr, r"silence_start: ([\d.]+)", r"silence_end: ([\d.]+)", end
        ),
    }


def pairs(text: str, start: str, end: str, eof: float) -> list[list[float]]:
    """[start, end] pairs of a detector; an open interval ends at `eof`."""
    starts = [float(x) for x in re.findall(start, text)]
    ends = [float(x) for x in re.findall(end, text)]
    return [[s, ends[i] if i < len(ends) else eof] for i, s in enumerate(starts)]


def assert_intervals(found: list[list[float]], truth: list[list[float]]) -> None:
    # blackdetect ends a black tail at the last frame's time, one frame early.
    assert len(found) == len(truth), (found, truth)
    for (start, end), (true_start, true_end) in zip(found, truth, strict=True):
        assert start == pytest.approx(true_start, abs=0.01)
        assert end == pytest.approx(true_end, abs=FRAME_S + 0.01)


def ffprobe(source: str, *extra: str) -> dict[str, Any]:
    argv = ["ffprobe", "-v", "error", *extra, "-show_streams", "-show_format"]
    done = run([*argv, "-of", "json", source])
    assert done.returncode == 0, done.stderr
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def describe_status(camera: CameraSimulator, path: str, auth: str | None = None) -> int:
    """The status code of a raw RTSP DESCRIBE (ffmpeg hides 401 vs 403 detail)."""
    request = f"DESCRIBE rtsp://{camera.address}:{camera.port}/{path} RTSP/1.0\r\n"
    request += "CSeq: 1\r\nAccept: application/sdp\r\n"
    if auth:
        request += f"Authorization: Basic {auth}\r\n"
    with socket.create_connection((camera.address, camera.port), timeout=10) as sock:
        sock.sendall((request + "\r\n").encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def codecs(info: dict[str, Any]) -> dict[str, str]:
    return {s["codec_type"]: s["codec_name"] for s in info["streams"]}


# -- the clips themselves -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_clip_has_exactly_its_faults(fault_clips: dict[str, Path], name: str) -> None:
    found = detect(str(fault_clips[name]))

    truth = FAULTS[name]
    for kind in ("black", "freeze", "silence"):
        assert_intervals(found[kind], truth[kind])


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_clip_streams_match_truth(fault_clips: dict[str, Path], name: str) -> None:
    info = ffprobe(str(fault_clips[name]))
    truth = FAULTS[name]

    assert codecs(info) == {
        kind: truth[f"{kind}_codec"] for kind in ("video", "audio") if truth[kind]
    }
    assert float(info["format"]["duration"]) == pytest.approx(10.0, abs=0.05)
    for stream in info["streams"]:
        if stream["codec_type"] == "video":
            assert (stream["width"], stream["height"]) == (640, 360)
            assert stream["avg_frame_rate"] == "25/1"
            assert int(stream.get("nb_frames", truth["video_frames"])) == 250
        else:
            assert int(stream["sample_rate"]) == truth["sample_rate"]


def test_corrupt_clip_damages_known_frames(fault_clips: dict[str, Path]) -> None:
    argv = ["ffmpeg", "-nostdin", "-nostats", "-i", str(fault_clips["corrupt"])]
    stderr = run([*argv, "-f", "null", "-"]).stderr

    assert (
        len(re.findall(r"concealing \d+ DC", stderr))
        == FAULTS["corrupt"]["damaged_frames"]
    )


def test_clean_clip_decodes_without_errors(fault_clips: dict[str, Path]) -> None:
    argv = ["ffmpeg", "-nostdin", "-nostats", "-v", "error"]
    argv += ["-i", str(fault_clips["clean"]), "-f", "null", "-"]

    assert run(argv).stderr == ""


def frame_stats(path: Path, key: str) -> list[float]:
    """One signalstats figure per frame of `path`."""
    graph = f"movie={path},signalstats=stat=tout"
    argv = ["ffprobe", "-v", "error", "-f", "lavfi", graph]
    argv += ["-show_entries", f"frame_tags=lavfi.signalstats.{key}", "-of", "csv=p=0"]
    out = run(argv).stdout
    return [float(line) for line in out.split()]


def test_scenecut_has_one_ydif_peak_at_5s(fault_clips: dict[str, Path]) -> None:
    ydif = frame_stats(fault_clips["scenecut"], "YDIF")
    typical = sorted(ydif)[len(ydif) // 2]

    peaks = [n for n, value in enumerate(ydif) if value > 20 * typical]
    assert peaks == [int(FAULTS["scenecut"]["scene_changes"][0] * FPS)]


def test_clean_clip_has_no_ydif_peak(fault_clips: dict[str, Path]) -> None:
    ydif = frame_stats(fault_clips["clean"], "YDIF")[1:]
    typical = sorted(ydif)[len(ydif) // 2]

    assert max(ydif) < 3 * typical


def test_noisy_clip_has_many_temporal_outliers(fault_clips: dict[str, Path]) -> None:
    noisy = frame_stats(fault_clips["noisy"], "TOUT")
    clean = frame_stats(fault_clips["clean"], "TOUT")

    assert sum(noisy) / len(noisy) > 10 * sum(clean) / len(clean)


def test_bikes_clip_is_real_video_without_audio(bikes_clip: Path) -> None:
    info = ffprobe(str(bikes_clip))

    assert codecs(info) == {"video": "h264"}
    video = info["streams"][0]
    assert (video["width"], video["height"]) == (640, 272)
    assert int(video["nb_frames"]) == BIKES_TRUTH["video_frames"]


# -- the simulator --------------------------------------------------------------


@pytest.mark.parametrize(
    ("mount", "expected"),
    [
        ("clean", {"video": "h264", "audio": "aac"}),
        ("noaudio", {"video": "h264"}),
        ("novideo", {"audio": "aac"}),
        ("corrupt", {"video": "h264", "audio": "aac"}),
        ("bikes", {"video": "h264"}),
    ],
)
def test_file_mount_serves_its_streams_and_length(
    camera: CameraSimulator, mount: str, expected: dict[str, str]
) -> None:
    info = ffprobe(camera.url(mount), "-rtsp_transport", "tcp")

    assert codecs(info) == expected
    assert float(info["format"]["duration"]) == pytest.approx(10.0, abs=0.05)


def test_pattern_mount_is_live(camera: CameraSimulator) -> None:
    info = ffprobe(camera.url("live"), "-rtsp_transport", "tcp")

    assert codecs(info) == {"video": "h264", "audio": "aac"}
    assert "duration" not in info["format"]


def test_each_client_gets_the_file_from_its_start(camera: CameraSimulator) -> None:
    # Black starts at 3.0 s of the file; a 4 s sample must see it at 3.0 s.
    found = detect(camera.url("black"), seconds=4)

    assert_intervals(found["black"], [[3.0, 4.0]])


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_both_transports_deliver_frames(
    camera: CameraSimulator, transport: str
) -> None:
    argv = ["ffprobe", "-v", "error", "-rtsp_transport", transport]
    argv += ["-read_intervals", "%+2", "-count_frames", "-select_streams", "v"]
    argv += ["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"]
    done = run([*argv, camera.url("clean")])

    assert int(done.stdout.strip()) == pytest.approx(2 * FPS, abs=3)


def test_secure_mount_needs_credentials(camera: CameraSimulator) -> None:
    import base64

    good = base64.b64encode(f"{SECURE_USER}:{SECURE_PASSWORD}".encode()).decode()
    bad = base64.b64encode(f"{SECURE_USER}:wrong".encode()).decode()

    assert describe_status(camera, "secure") == 401
    assert describe_status(camera, "secure", bad) == 401
    assert describe_status(camera, "secure", good) == 200
    assert describe_status(camera, "clean") == 200


def test_ffmpeg_reaches_secure_mount_with_encoded_password(
    camera: CameraSimulator,
) -> None:
    url = camera.url("secure", SECURE_USER, SECURE_PASSWORD)
    info = ffprobe(url, "-rtsp_transport", "tcp")

    assert "p%40ss%3Aw0rd@" in url
    assert codecs(info) == {"video": "h264", "audio": "aac"}


def test_unknown_mount_is_not_found(camera: CameraSimulator) -> None:
    assert describe_status(camera, "no-such-camera") == 404


def test_base64_mount_names_work(fault_clips: dict[str, Path]) -> None:
    names = ["aGVsbG8=", "cnRzcDovL2NhbS8/eD0x+/Zz=="]
    with CameraSimulator({n: fault_clips["noaudio"] for n in names}) as camera:
        for name in names:
            info = ffprobe(camera.url(name), "-rtsp_transport", "tcp")
            assert codecs(info) == {"video": "h264"}


def test_stop_shuts_the_server_down_cleanly(fault_clips: dict[str, Path]) -> None:
    camera = CameraSimulator({"clean": fault_clips["clean"]}).start()
    port = camera.port
    camera.stop()

    assert camera.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- misbehaving servers --------------------------------------------------------


def test_silent_server_accepts_and_never_answers() -> None:
    with SilentServer() as silent:
        with socket.create_connection((silent.address, silent.port), timeout=5) as sock:
            sock.sendall(b"OPTIONS rtsp://x/ RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            sock.settimeout(1)
            with pytest.raises(TimeoutError):
                sock.recv(1)

        assert silent.accepted == 1


def test_ffmpeg_gives_up_on_silent_server() -> None:
    with SilentServer() as silent:
        argv = ["ffprobe", "-v", "error", "-rtsp_transport", "tcp"]
        done = run([*argv, "-timeout", "1000000", silent.url("live")])

    assert done.returncode != 0
    assert silent.accepted >= 1


def test_framer_splits_interleaved_frames_and_responses() -> None:
    response = b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nContent-Length: 4\r\n\r\nbody"
    frame = b"$\x00\x00\x03abc"
    stream = response + frame + frame
    framer = RtspFramer()

    units = [
        unit
        for byte in range(len(stream))
        for unit in framer.feed(stream[byte : byte + 1])
    ]

    assert units == [("rtsp", response), ("media", frame), ("media", frame)]


def test_rewrite_touches_headers_only() -> None:
    message = b"RTSP/1.0 200 OK\r\nContent-Base: rtsp://h:1/x/\r\n\r\nrtsp://h:1/"

    assert rewrite_headers(message, b"h:1", b"p:2") == (
        b"RTSP/1.0 200 OK\r\nContent-Base: rtsp://p:2/x/\r\n\r\nrtsp://h:1/"
    )


def test_stall_proxy_keeps_clients_on_the_proxy(camera: CameraSimulator) -> None:
    with StallProxy(camera.address, camera.port) as proxy:
        request = f"DESCRIBE {proxy.url('clean')} RTSP/1.0\r\nCSeq: 1\r\n\r\n"
        with socket.create_connection((proxy.address, proxy.port), timeout=10) as sock:
            sock.sendall(request.encode())
            reply = sock.makefile("rb").read1(65536).decode()

    assert f"Content-Base: {proxy.url('clean')}/" in reply


def test_stall_proxy_streams_then_goes_silent(camera: CameraSimulator) -> None:
    with StallProxy(camera.address, camera.port, stall_after_s=2.0) as proxy:
        argv = [
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-timeout",
            "1000000",
        ]
        argv += ["-count_frames", "-select_streams", "v"]
        argv += ["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"]
        done = run([*argv, proxy.url("clean")])

    assert proxy.stalls == 1
    # 2 s of a 25 fps stream; RTSP start-up may bunch a few frames.
    assert int(done.stdout.strip()) == pytest.approx(2 * FPS, abs=8)


@pytest.mark.parametrize("mount", ["clean", "live", "bikes"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_clean_mounts_decode_without_warnings(
    camera: CameraSimulator, mount: str, transport: str
) -> None:
    argv = ["ffmpeg", "-nostdin", "-nostats", "-v", "warning"]
    argv += ["-rtsp_transport", transport, "-i", camera.url(mount)]
    done = run([*argv, "-t", "2", "-f", "null", "-"])

    assert done.returncode == 0
    assert done.stderr == ""
