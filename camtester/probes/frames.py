"""Parsers for what a probe's ffmpeg writes into its pipes (not its log).

- the `metadata`/`ametadata` filters in `mode=print` write one record per frame:
  a `frame:N pts:P pts_time:T` line followed by `key=value` lines;
- the `framecrc` muxer writes a `#key N: value` header per stream and then one
  line per packet: stream, dts, pts, duration, size, checksum[, F=flags][, S=...].
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_FRAME_LINE = re.compile(r"frame:\s*(\d+)\s+pts:\s*(\S+)\s+pts_time:\s*(\S+)")
_HEADER_LINE = re.compile(r"#(\w+) (\d+): (.*)")

_PKT_FLAG_KEY = 0x1
#: AV_NOPTS_VALUE, as framecrc prints a missing timestamp.
_NOPTS = -(2**63)


@dataclass
class FrameRecord:
    """One decoded frame as the metadata filter saw it."""

    pts_time: float
    tags: dict[str, str] = field(default_factory=dict)

    def number(self, key: str) -> float | None:
        """The tag `key` as a float, or None when absent or not a finite number."""
        value = self.tags.get(key)
        if value is None:
            return None
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None


def parse_metadata_print(text: str) -> list[FrameRecord]:
    """The frames of a `metadata=mode=print` output, in order, those without pts
    dropped."""
    frames: list[FrameRecord] = []
    current: FrameRecord | None = None
    for line in text.splitlines():
        match = _FRAME_LINE.match(line)
        if match:
            current = _new_frame(match.group(3))
            if current is not None:
                frames.append(current)
            continue

        key, sep, value = line.partition("=")
        if current is not None and sep:
            current.tags[key.strip()] = value.strip()
    return frames


def _new_frame(pts_time: str) -> FrameRecord | None:
    try:
        value = float(pts_time)
    except ValueError:
        return None
    return FrameRecord(value) if math.isfinite(value) else None


@dataclass
class StreamHeader:
    """What framecrc says about one stream before its packets."""

    index: int
    media_type: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    time_base: float | None = None


@dataclass
class Packet:
    stream: int
    #: Decoding time in the stream's time base: set on every packet ffmpeg copies,
    #: where pts is missing on the first packet of an RTSP stream.
    dts: int | None
    size: int
    key: bool


@dataclass
class PacketLog:
    """The framecrc output: stream headers and every packet read."""

    streams: dict[int, StreamHeader] = field(default_factory=dict)
    packets: list[Packet] = field(default_factory=list)

    def stream_of_type(self, media_type: str) -> StreamHeader | None:
        for header in self.streams.values():
            if header.media_type == media_type:
                return header
        return None


def parse_framecrc(text: str) -> PacketLog:
    """Parse a framecrc output into stream headers and packets."""
    log = PacketLog()
    for line in text.splitlines():
        if line.startswith("#"):
            _header_line(log, line)
        elif line.strip():
            packet = _packet_line(line)
            if packet is not None:
                log.packets.append(packet)
    return log


def _header_line(log: PacketLog, line: str) -> None:
    match = _HEADER_LINE.match(line)
    if not match:
        return
    key, index, value = match.group(1), int(match.group(2)), match.group(3).strip()
    header = log.streams.setdefault(index, StreamHeader(index))
    if key == "media_type":
        header.media_type = value
    elif key == "codec_id":
        header.codec = value
    elif key == "dimensions":
        width, _, height = value.partition("x")
        header.width, header.height = _int(width), _int(height)
    elif key == "sample_rate":
        header.sample_rate = _int(value)
    elif key == "tb":
        num, _, den = value.partition("/")
        if _int(num) and _int(den):
            header.time_base = int(num) / int(den)


def _packet_line(line: str) -> Packet | None:
    fields = [part.strip() for part in line.split(",")]
    if len(fields) < 6 or _int(fields[0]) is None or _int(fields[4]) is None:
        return None

    # framecrc prints F=flags only when they differ from "key frame only".
    flags = _PKT_FLAG_KEY
    for extra in fields[6:]:
        if extra.startswith("F="):
            # A pipe cut at its byte cap can end a line inside "F=0x..".
            try:
                flags = int(extra.removeprefix("F="), 16)
            except ValueError:
                return None
    dts = _int(fields[1])
    if dts == _NOPTS:
        dts = None
    return Packet(int(fields[0]), dts, int(fields[4]), bool(flags & 1))


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def split_jpegs(data: bytes) -> list[bytes]:
    """Split the concatenated JPEGs of an image2pipe output."""
    # NOTE: inside a JPEG's entropy-coded data 0xFF is always stuffed with 0x00,
    # and ffmpeg's mjpeg encoder writes no thumbnails, so EOI+SOI only occurs
    # between two images.
    images: list[bytes] = []
    start = 0
    while start < len(data):
        end = data.find(b"\xff\xd9\xff\xd8", start)
        if end < 0:
            images.append(data[start:])
            break
        images.append(data[start : end + 2])
        start = end + 2
    return [image for image in images if image.startswith(b"\xff\xd8")]
