"""A camera simulator: an RTSP server on GStreamer's gst-rtsp-server.

Run it with Debian's interpreter, which has python3-gi (the venv has not):

    /usr/bin/python3 camtester/devtools/rtsp_server.py --port 8554 \
        --mount clean=var/test-media/v1/clean.mp4 --pattern live \
        --auth clean=viewer:secret

Each client of a file mount gets its own pipeline that plays the file from its
start, so sample time 0 is file time 0 (npt 0 is the first frame, whatever the
container's first timestamp); the RTCP BYE follows the last packet by a
second. Video goes out as H.264, audio as AAC (RFC 3640) when the file has
it, over RTP/UDP and RTP/TCP interleaved. A pattern mount is a live, endless
test picture and tone. Once listening it prints `READY <address> <port>` on
stdout. This file imports only the standard
library and gi, because it runs outside the venv and outside the package.
"""

from __future__ import annotations

import argparse
import ctypes
import signal
import sys
import time
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstPbutils", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstPbutils, GstRtsp, GstRtspServer

# NOTE: before any class below derives from a GStreamer type: registering the
# subclass needs GstMessage and friends, which exist only after Gst.init.
Gst.init(None)

ANONYMOUS_ROLE = "anonymous"
#: Seconds between a file mount's last RTP packet and its RTCP BYE.
BYE_DELAY_S = 1.0

# Demuxers by the container caps the discoverer reports.
DEMUXERS = {
    "video/quicktime": "qtdemux",
    "video/mpegts": "tsdemux",
    "video/x-matroska": "matroskademux",
    "video/webm": "matroskademux",
}

# h264parse, not the payloader, repeats SPS/PPS in front of every IDR frame:
# when rtph264pay does it, ffmpeg takes the parameter sets for a frame of their
# own and reports "corrupt decoded frame" at each keyframe of a live stream.
VIDEO_PAY = "h264parse config-interval=-1 ! rtph264pay name=pay{n} pt={pt}"
AUDIO_PAY = "rtpmp4gpay name=pay{n} pt={pt}"

PATTERN = (
    "videotestsrc is-live=true pattern=smpte horizontal-speed=4"
    " ! video/x-raw,width=640,height=360,framerate=25/1 ! videoconvert"
    " ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25"
    " bitrate=800 ! video/x-h264,profile=constrained-baseline"
    " ! " + VIDEO_PAY.format(n=0, pt=96) + " audiotestsrc is-live=true"
    " wave=sine freq=440 volume=0.25 ! audio/x-raw,rate=48000,channels=1"
    " ! audioconvert ! avenc_aac ! aacparse ! " + AUDIO_PAY.format(n=1, pt=97)
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554, help="0 picks a free one")
    parser.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="serve FILE at rtsp://address:port/NAME (repeatable)",
    )
    parser.add_argument(
        "--pattern",
        action="append",
        default=[],
        metavar="NAME",
        help="serve a live endless test picture and tone at /NAME",
    )
    parser.add_argument(
        "--auth",
        action="append",
        default=[],
        metavar="NAME=USER:PASSWORD",
        help="mount NAME requires basic auth with these credentials",
    )
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def mount_path(name: str) -> str:
    """The mount point of NAME: "/" + NAME, which may itself hold "/", "+", "="."""
    return "/" + name.lstrip("/")


class FileMedia(GstRtspServer.RTSPMedia):
    """A media that always knows its start (0) and its stop (the file's length).

    The default position query answers -1 while an AAC stream from an MP4 with
    an edit list (ffmpeg writes one for the encoder's priming samples) is
    prerolled, and tsdemux knows no duration; the SDP would then say
    `a=range:npt=now-` and clients take the file for a live stream of unknown
    length. Positions count from `origin_ns`, the stream time at which the
    file starts (see StartGuard). The vfuncs get a bare gint64 pointer,
    written through ctypes.
    """

    duration_ns = -1
    #: Stream time of the file's first frame, set by StartGuard per media.
    origin_ns: int | None = None

    def do_query_position(self, position: int) -> bool:
        ok = bool(GstRtspServer.RTSPMedia.do_query_position(self, position))
        value = ctypes.c_int64.from_address(position)
        if not ok or value.value < 0:
            value.value = 0
        else:
            value.value = max(0, value.value - (self.origin_ns or 0))
        return True

    def do_query_stop(self, stop: int) -> bool:
        ok = bool(GstRtspServer.RTSPMedia.do_query_stop(self, stop))
        value = ctypes.c_int64.from_address(stop)
        if (not ok or value.value < 0) and self.duration_ns > 0:
            value.value = self.duration_ns
            return True
        return ok


class StartGuard:
    """Makes a file media start where its first frame is, at npt 0.

    tsdemux starts its segment, in stream time, at the first video frame (0.78 s
    into our TS clips, after ffmpeg's mux delay) and hands out the audio frames
    that come before it too. Those frames have no running time; gst-rtsp-server
    then dates the video's RTP-Info 0.78 s before its first packet, and the PLAY
    reply says `Range: npt=0.78-`. ffmpeg bases each stream's timestamps on
    both, so every frame after the first arrived 0.78 s (or 1.56 s) late in
    sample time. A probe on each payloader's input therefore drops the buffers
    before the segment's start (a decoder would clip them anyway) and records
    the segment's stream time as the media's origin, which the position query
    subtracts. MP4 segments start at stream time 0: for them only qtdemux's
    AAC priming frame, also outside the segment, is dropped.
    """

    def __init__(self, media: FileMedia) -> None:
        self.media = media
        self.segment_start = -1

    @classmethod
    def attach(cls, media: FileMedia, payloader: Gst.Element) -> None:
        kinds = Gst.PadProbeType.BUFFER | Gst.PadProbeType.EVENT_DOWNSTREAM
        payloader.get_static_pad("sink").add_probe(kinds, cls(media).probe)

    def probe(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if info.type & Gst.PadProbeType.EVENT_DOWNSTREAM:
            event = info.get_event()
            if event.type == Gst.EventType.SEGMENT:
                self.on_segment(event.parse_segment())
            return Gst.PadProbeReturn.OK

        pts = info.get_buffer().pts
        if pts != Gst.CLOCK_TIME_NONE and pts < self.segment_start:
            return Gst.PadProbeReturn.DROP
        # The first frame inside the segment: nothing more to do on this pad.
        return Gst.PadProbeReturn.REMOVE

    def on_segment(self, segment: Gst.Segment) -> None:
        self.segment_start = segment.start
        # Each stream's first segment starts at the file's start; a later one
        # (after a seek) must not move the origin.
        if self.media.origin_ns is None:
            self.media.origin_ns = segment.time


def hold_end_of_stream(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    """Hold a payloader's EOS for BYE_DELAY_S before rtpbin answers it with a BYE.

    rtpbin sends the RTCP BYE as soon as a stream's EOS reaches it, so over UDP
    the BYE left together with the last RTP packets. ffmpeg reads a stream's
    RTCP socket before its RTP socket and stops at the BYE: the last frame it
    got was cut short ("error while decoding MB" in the last P frame), and a
    client lagging behind under load lost whole seconds of the end.
    """
    if info.get_event().type == Gst.EventType.EOS:
        time.sleep(BYE_DELAY_S)
    return Gst.PadProbeReturn.OK


def configure_file_media(
    _factory: GstRtspServer.RTSPMediaFactory, media: FileMedia
) -> None:
    """Probe every payloader of a new file media (a `media-configure` handler)."""
    element = media.get_element()
    n = 0
    while (payloader := element.get_by_name(f"pay{n}")) is not None:
        StartGuard.attach(media, payloader)
        pad = payloader.get_static_pad("src")
        pad.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, hold_end_of_stream)
        n += 1


def media_type(duration_ns: int) -> type[FileMedia]:
    """A FileMedia subclass (a GType of its own) that knows this duration."""
    name = f"CamtesterFileMedia{duration_ns}"
    existing = _MEDIA_TYPES.get(name)
    if existing is None:
        existing = type(name, (FileMedia,), {"duration_ns": duration_ns})
        _MEDIA_TYPES[name] = existing
    return existing


_MEDIA_TYPES: dict[str, type[FileMedia]] = {}


def discover(path: Path) -> tuple[str, bool, bool, int]:
    """The demuxer for `path`, whether it has video and audio, its length in ns."""
    discoverer = GstPbutils.Discoverer.new(10 * Gst.SECOND)
    info = discoverer.discover_uri(path.resolve().as_uri())
    has_video = bool(info.get_video_streams())
    has_audio = bool(info.get_audio_streams())
    container = info.get_stream_info()
    caps = container.get_caps() if container is not None else None
    name = caps.get_structure(0).get_name() if caps is not None else ""
    if name not in DEMUXERS:
        raise SystemExit(f"{path}: unsupported container {name!r}")
    return DEMUXERS[name], has_video, has_audio, info.get_duration()


def file_factory(path: Path) -> GstRtspServer.RTSPMediaFactory:
    """A factory whose every client gets `path` from its start, H.264 first."""
    demuxer, has_video, has_audio, duration_ns = discover(path)
    location = str(path.resolve()).replace('"', '\\"')
    parts = [f'filesrc location="{location}" ! {demuxer} name=d']
    n = 0
    # Linking "d." through a caps filter picks the demuxer pad with those caps.
    if has_video:
        pay = VIDEO_PAY.format(n=n, pt=96 + n)
        parts.append(f"d. ! video/x-h264 ! queue ! {pay}")
        n += 1
    if has_audio:
        pay = AUDIO_PAY.format(n=n, pt=96 + n)
        parts.append(f"d. ! audio/mpeg ! queue ! aacparse ! {pay}")

    factory = make_factory("( " + " ".join(parts) + " )", shared=False)
    factory.set_media_gtype(media_type(duration_ns).__gtype__)
    factory.connect("media-configure", configure_file_media)
    return factory


def make_factory(launch: str, *, shared: bool) -> GstRtspServer.RTSPMediaFactory:
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(shared)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP)
    return factory


def allow(
    factory: GstRtspServer.RTSPMediaFactory, every_role: list[str], role: str | None
) -> None:
    """Let `role` (or, for an open mount, every role) play the factory's media.

    Every role may *access* every factory: gst-rtsp-server answers a missing
    access right with 404 but a missing construct right with 401 and a
    challenge, and clients such as ffmpeg only send credentials after one.
    """
    permissions = GstRtspServer.RTSPPermissions()
    for each in every_role:
        permissions.add_role(each)
        permissions.add_permission_for_role(
            each, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True
        )
        permissions.add_permission_for_role(
            each,
            GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT,
            role is None or each == role,
        )
    factory.set_permissions(permissions)


def build_auth(
    credentials: dict[str, tuple[str, str]],
) -> tuple[GstRtspServer.RTSPAuth, dict[str, str]]:
    """Basic auth with one role per distinct credential pair; mount -> role."""
    auth = GstRtspServer.RTSPAuth()
    anonymous = GstRtspServer.RTSPToken()
    anonymous.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, ANONYMOUS_ROLE)
    auth.set_default_token(anonymous)

    roles: dict[tuple[str, str], str] = {}
    for pair in credentials.values():
        if pair in roles:
            continue
        roles[pair] = f"user{len(roles)}"
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, roles[pair])
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(*pair), token)
    return auth, {mount: roles[pair] for mount, pair in credentials.items()}


def build_server(args: argparse.Namespace) -> GstRtspServer.RTSPServer:
    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()

    factories: dict[str, GstRtspServer.RTSPMediaFactory] = {}
    for item in args.mount:
        # A mount name may end in base64 padding "=", so split at the last "=".
        name, _, file = item.rpartition("=")
        if not name or not file:
            raise SystemExit(f"bad --mount: {item!r}")
        factories[mount_path(name)] = file_factory(Path(file))
    for name in args.pattern:
        factories[mount_path(name)] = make_factory(PATTERN, shared=False)

    credentials = dict(split_auth(item, list(factories)) for item in args.auth)
    auth, mount_roles = build_auth(credentials)
    every_role = [ANONYMOUS_ROLE, *sorted(set(mount_roles.values()))]
    server.set_auth(auth)

    for path, factory in factories.items():
        allow(factory, every_role, mount_roles.get(path))
        mounts.add_factory(path, factory)
    return server


def split_auth(item: str, paths: list[str]) -> tuple[str, tuple[str, str]]:
    """Split NAME=USER:PASSWORD, where NAME and PASSWORD may both hold "=".

    NAME is the longest mount name that `item` starts with, followed by "=".
    """
    names = sorted((p[1:] for p in paths), key=len, reverse=True)
    for name in names:
        if item.startswith(name + "="):
            user, _, password = item[len(name) + 1 :].partition(":")
            if not user or not password:
                break
            return mount_path(name), (user, password)
    raise SystemExit(f"bad --auth (NAME=USER:PASSWORD, NAME a mount): {item!r}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    server = build_server(args)
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"cannot listen on {args.address}:{args.port}", file=sys.stderr)
        return 1

    if args.verbose:
        server.connect(
            "client-connected", lambda _s, c: print("client", c, file=sys.stderr)
        )
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY {args.address} {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
