"""Over RTSP a file mount keeps file time: its first frame is npt 0, frame i is i/25.

ffmpeg builds each stream's timestamps from the PLAY reply's `Range` start plus
RTP-Info's rtptime; a server that dates either one wrong shifts every frame
after the first, and fault intervals move with them. The checks here look at
timestamps only (RTP and decoded), never at arrival times, which depend on the
load of the machine.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from camtester.devtools.media import FPS
from camtester.devtools.simulator import CameraSimulator
from camtester.devtools.stall_proxy import RtspFramer

FRAME_S = 1 / FPS
#: The short clips: 4 s, black (noisy, as in media.py) from frame 25 to 74.
SHORT_S = 4
BLACK_FRAMES = (25, 74)


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=timeout
    )


def make_short_clip(target: Path) -> Path:
    """SHORT_S seconds of moving picture with a black stretch, and a tone.

    Written like media.py's clips (libx264 with B-frames, a keyframe a second,
    AAC); as .ts, ffmpeg's mpegts muxer starts the timestamps at 1.4 s and the
    audio a frame before the video, the layout that tsdemux got wrong.
    """
    first, last = BLACK_FRAMES
    enable = f"between(n,{first},{last})"
    video = (
        f"testsrc2=s=640x360:r={FPS}:d={SHORT_S},format=yuv420p,"
        f"drawbox=c=black:t=fill:enable='{enable}',noise=c0s=8:c0f=t:enable='{enable}'"
    )
    tone = f"aevalsrc='0.25*sin(2*PI*440*t)':s=48000:d={SHORT_S}"
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    argv += ["-f", "lavfi", "-i", video, "-f", "lavfi", "-i", tone]
    argv += ["-c:a", "aac", "-b:a", "64k"]
    argv += ["-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS)]
    argv += ["-sc_threshold", "0", "-threads", "2"]
    subprocess.run([*argv, str(target)], check=True, capture_output=True, timeout=120)
    return target


@pytest.fixture(scope="module")
def short_camera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CameraSimulator]:
    """The short clip as mounts `mp4` and `ts`."""
    folder = tmp_path_factory.mktemp("short")
    clips = {ext: make_short_clip(folder / f"short.{ext}") for ext in ("mp4", "ts")}
    with CameraSimulator(clips) as camera:
        yield camera


# -- what the server says: RTP level -----------------------------------------------


@dataclass
class Played:
    """What a PLAY from npt 0 answered and what came first on each channel."""

    range: str
    rtptimes: list[int]
    clock_rates: list[int]
    first_timestamps: dict[int, int] = field(default_factory=dict)

    def start_s(self, stream: int) -> float:
        """Media time of the stream's first packet, by the reply's RTP-Info."""
        delta = (self.first_timestamps[stream] - self.rtptimes[stream]) % 2**32
        return delta / self.clock_rates[stream]


class RawRtspClient:
    """The least RTSP client: DESCRIBE, SETUP (TCP interleaved or UDP), PLAY."""

    def __init__(self, camera: CameraSimulator, mount: str) -> None:
        self.url = camera.url(mount)
        self.sock = socket.create_connection((camera.address, camera.port), 10)
        self.framer = RtspFramer()
        #: Interleaved frames received and not looked at yet.
        self.frames: list[bytes] = []
        self.cseq = 0
        self.session = ""

    def request(self, method: str, url: str, headers: str = "") -> dict[str, str]:
        """Send a request; its response's headers (lower-case names) and body."""
        self.cseq += 1
        session = f"Session: {self.session}\r\n" if self.session else ""
        text = f"{method} {url} RTSP/1.0\r\nCSeq: {self.cseq}\r\n{session}{headers}"
        self.sock.sendall((text + "\r\n").encode())
        while True:
            for kind, unit in self.framer.feed(self.sock.recv(65536)):
                if kind == "media":
                    self.frames.append(unit)
                else:
                    return self.parse_reply(unit)

    def parse_reply(self, unit: bytes) -> dict[str, str]:
        head, _, body = unit.decode().partition("\r\n\r\n")
        assert " 200 " in head.splitlines()[0], head
        reply = {"body": body}
        for line in head.splitlines()[1:]:
            name, _, value = line.partition(":")
            reply[name.strip().lower()] = value.strip()
        self.session = reply.get("session", "").split(";")[0]
        return reply

    def describe(self) -> list[str]:
        """The SDP's media sections, one per stream."""
        sdp = self.request("DESCRIBE", self.url, "Accept: application/sdp\r\n")
        return sdp["body"].split("\nm=")[1:]

    def setup(self, section: str, transport: str) -> None:
        control = re.search(r"a=control:(\S+)", section)
        assert control is not None
        url = control[1] if "://" in control[1] else f"{self.url}/{control[1]}"
        self.request("SETUP", url, f"Transport: {transport}\r\n")

    def play(self) -> dict[str, str]:
        return self.request("PLAY", self.url, "Range: npt=0.000-\r\n")

    def play_from_start(self) -> Played:
        """Set every stream up over TCP, PLAY, wait for a packet of each."""
        sections = self.describe()
        for n, section in enumerate(sections):
            self.setup(section, f"RTP/AVP/TCP;unicast;interleaved={2 * n}-{2 * n + 1}")

        reply = self.play()
        rates = [int(re.findall(r"a=rtpmap:\d+ [^/]+/(\d+)", s)[0]) for s in sections]
        rtptimes = [int(t) for t in re.findall(r"rtptime=(\d+)", reply["rtp-info"])]
        played = Played(reply["range"], rtptimes, rates)
        while len(played.first_timestamps) < len(sections):
            self.note_first_packets(played)
            for kind, unit in self.framer.feed(self.sock.recv(65536)):
                self.frames += [unit] if kind == "media" else []
        return played

    def play_over_udp(self) -> list[tuple[socket.socket, socket.socket]]:
        """Set every stream up over UDP and PLAY; the (RTP, RTCP) sockets."""
        pairs = []
        for section in self.describe():
            pair = (udp_socket(self.sock), udp_socket(self.sock))
            ports = [sock.getsockname()[1] for sock in pair]
            self.setup(section, f"RTP/AVP;unicast;client_port={ports[0]}-{ports[1]}")
            pairs.append(pair)
        self.play()
        return pairs

    def note_first_packets(self, played: Played) -> None:
        """Take the RTP timestamp of each channel's first packet in `frames`."""
        for frame in self.frames:
            # Interleaved: "$", channel, length (2 bytes), then the RTP packet,
            # whose timestamp is its bytes 4..8. Odd channels carry RTCP.
            stream, rtcp = divmod(frame[1], 2)
            if not rtcp and stream not in played.first_timestamps:
                played.first_timestamps[stream] = int.from_bytes(frame[8:12], "big")
        self.frames.clear()

    def close(self) -> None:
        self.sock.close()


def udp_socket(near: socket.socket) -> socket.socket:
    """A non-blocking UDP socket on `near`'s address, with room for a clip."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((near.getsockname()[0], 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    """The datagrams queued on `sock` now."""
    datagrams = []
    with contextlib.suppress(BlockingIOError):
        while True:
            datagrams.append(sock.recv(65536))
    return datagrams


def is_bye(datagram: bytes) -> bool:
    """Whether a compound RTCP packet holds a BYE (packet type 203)."""
    offset = 0
    while offset + 4 <= len(datagram):
        if datagram[offset + 1] == 203:
            return True
        offset += 4 * (int.from_bytes(datagram[offset + 2 : offset + 4], "big") + 1)
    return False


def rtp_missed_at_bye(
    pairs: list[tuple[socket.socket, socket.socket]], limit_s: float = 30
) -> list[int]:
    """Per stream, the RTP packets a reader like ffmpeg's would lose at the BYE.

    ffmpeg's rtp protocol reads the RTCP socket before the RTP socket whenever
    both have data, and it ends the stream at the BYE: RTP packets still
    queued then, or arriving later, are never read. This reader wakes every
    0.1 s, as a busy client would, and reads in that order.
    """
    missed: dict[int, int] = {}
    deadline = time.monotonic() + limit_s
    while len(missed) < len(pairs) and time.monotonic() < deadline:
        time.sleep(0.1)
        for n, (rtp, rtcp) in enumerate(pairs):
            if n in missed:
                continue
            ended = any(is_bye(d) for d in drain(rtcp))
            queued = len(drain(rtp))
            if ended:
                missed[n] = queued

    # Packets after the BYE are lost too; give late ones time to show up.
    time.sleep(0.5)
    for n, (rtp, _rtcp) in enumerate(pairs):
        if n in missed:
            missed[n] += len(drain(rtp))
    return [missed.get(n, -1) for n in range(len(pairs))]


@pytest.mark.parametrize("mount", ["clean", "corrupt", "noaudio", "novideo"])
def test_play_starts_every_stream_at_npt_zero(
    camera: CameraSimulator, mount: str
) -> None:
    # The corrupt clip is a TS file: tsdemux counts its stream time from 0.78 s.
    client = RawRtspClient(camera, mount)
    try:
        played = client.play_from_start()
    finally:
        client.close()

    assert re.fullmatch(r"npt=0(\.0+)?-[\d.]+", played.range), played.range
    for stream in range(len(played.rtptimes)):
        # The first packet is the file's first frame (audio may start a frame
        # after the video).
        assert 0 <= played.start_s(stream) < 0.05, (stream, played)


@pytest.mark.parametrize("ext", ["mp4", "ts"])
def test_bye_comes_after_the_last_rtp_packet_over_udp(
    short_camera: CameraSimulator, ext: str
) -> None:
    client = RawRtspClient(short_camera, ext)
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        pairs = client.play_over_udp()
        missed = rtp_missed_at_bye(pairs)
    finally:
        client.close()
        for pair in pairs:
            for sock in pair:
                sock.close()

    # -1 would be a stream whose BYE never came.
    assert missed == [0] * len(pairs)


# -- what ffmpeg makes of it: decoded frames ------------------------------------------


def frame_times(url: str, transport: str, seconds: float | None = None) -> list[float]:
    """The pts (s) of each decoded video frame, read by ffmpeg over RTSP."""
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-nostats"]
    # An input option, so the demuxer stops there: as an output option, the
    # filter would also see the frames decoded past it before the cut.
    argv += ["-t", str(seconds)] if seconds else []
    argv += ["-rtsp_transport", transport, "-timeout", "5000000", "-i", url]
    argv += ["-map", "0:v", "-vf", "showinfo", "-f", "null", "-"]
    stderr = run(argv).stderr
    return [
        float(t)
        for t in re.findall(r"\bn: *\d+ pts: *-?\d+ pts_time:(-?[\d.]+)", stderr)
    ]


def assert_file_time(times: list[float], frames: int) -> None:
    """Frame i at i/25 s: ffmpeg 5.1 has no pts for the first frame over RTSP and
    aligns the stream to the first audio frame, so allow a frame of offset."""
    assert len(times) == pytest.approx(frames, abs=1), times[:3]
    assert times[1] == pytest.approx(FRAME_S, abs=FRAME_S)
    # pts spacing does not depend on the load, so it must be exact.
    for i, pts in enumerate(times[1:], start=1):
        assert pts - times[1] == pytest.approx((i - 1) * FRAME_S, abs=0.002), i


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("mount", ["clean", "corrupt"])
def test_frames_keep_file_time(
    camera: CameraSimulator, mount: str, transport: str
) -> None:
    # The corrupt clip's damage starts at 4.5 s: the first 3 s decode cleanly.
    times = frame_times(camera.url(mount), transport, seconds=3)

    assert_file_time(times, 3 * FPS)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("ext", ["mp4", "ts"])
def test_whole_short_clip_arrives_in_file_time(
    short_camera: CameraSimulator, ext: str, transport: str
) -> None:
    times = frame_times(short_camera.url(ext), transport)

    assert_file_time(times, SHORT_S * FPS)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("ext", ["mp4", "ts"])
def test_black_stretch_keeps_its_file_time(
    short_camera: CameraSimulator, ext: str, transport: str
) -> None:
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-nostats"]
    argv += ["-rtsp_transport", transport, "-i", short_camera.url(ext)]
    stderr = run([*argv, "-vf", "blackdetect=d=0.5", "-an", "-f", "null", "-"]).stderr

    starts = [float(t) for t in re.findall(r"black_start:([\d.]+)", stderr)]
    ends = [float(t) for t in re.findall(r"black_end:([\d.]+)", stderr)]
    first, last = BLACK_FRAMES
    assert starts == [pytest.approx(first * FRAME_S, abs=FRAME_S)]
    assert ends == [pytest.approx((last + 1) * FRAME_S, abs=FRAME_S)]


def test_live_pattern_decodes_without_errors_over_tcp(camera: CameraSimulator) -> None:
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-nostats"]
    argv += ["-rtsp_transport", "tcp", "-i", camera.url("live"), "-t", "3"]
    done = run([*argv, "-map", "0:v", "-vf", "showinfo", "-f", "null", "-"])

    assert done.returncode == 0
    assert len(re.findall(r"\bn: *\d+ pts:", done.stderr)) >= 2 * FPS
    lines = done.stderr.splitlines()
    assert [
        line for line in lines if re.search("corrupt|error", line, re.IGNORECASE)
    ] == []
