"""What a probe takes from ffmpeg's log: the input description and error lines.

The probe runs ffmpeg at `-loglevel level+info`, so each line carries its level
("[error] ...") and the input description ("Input #0 ...", "Stream #0:0: Video:
h264 ..., 640x360, 25 fps, ...") is always printed. Only the stream facts that
no pipe carries come from here: the declared frame rate and bit rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LEVEL = re.compile(r"\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ")
# Errors of the probe's own making, not the stream's: a tee slave with no stream to
# write (the audio of a stream without audio) fails on purpose, and stopping a
# stalled ffmpeg interrupts the writes to its pipes.
_OWN_OUTPUTS = re.compile(
    r"^\[(tee|null|image2pipe|framecrc) @ |Immediate exit requested|/dev/fd/\d"
)
_REPEATED = re.compile(r"Last message repeated (\d+) times")
_STREAM = re.compile(r"Stream #0:\d+\S*: (Video|Audio): (\w+)")
_RATE = re.compile(r"([\d.]+)(k?) (fps|tbr)\b")
_BITRATE = re.compile(r"(\d+) kb/s")

ERROR_LEVELS = ("panic", "fatal", "error")


@dataclass
class StreamLine:
    """One "Stream #0:N" line of the input description."""

    kind: str
    codec: str
    fps: float | None
    bit_rate_kbps: float | None


@dataclass
class StderrWatch:
    """A `stderr_sink` for run_ffmpeg: collects the input description, counts errors."""

    streams: list[StreamLine] = field(default_factory=list)
    error_lines: int = 0
    _section: str = ""
    _last_level: str = ""

    def __call__(self, line: str) -> None:
        self._count_errors(line)
        body = _LEVEL.sub("", line, count=1).strip()
        if body.startswith("Input #0"):
            self._section = "input"
        elif body.startswith(("Output #", "Stream mapping", "Input #")):
            self._section = ""
        elif self._section == "input":
            stream = parse_stream_line(body)
            if stream is not None:
                self.streams.append(stream)

    def _count_errors(self, line: str) -> None:
        repeated = _REPEATED.search(line)
        if repeated:
            # ffmpeg folds identical messages into "Last message repeated N times".
            if self._last_level in ERROR_LEVELS:
                self.error_lines += int(repeated.group(1))
            return

        level = _LEVEL.search(line)
        self._last_level = level.group(1) if level else ""
        if _OWN_OUTPUTS.search(line):
            self._last_level = "own"
        if self._last_level in ERROR_LEVELS:
            self.error_lines += 1

    def first(self, kind: str) -> StreamLine | None:
        """The first input stream of `kind` ("Video" or "Audio")."""
        return next((s for s in self.streams if s.kind == kind), None)


def parse_stream_line(body: str) -> StreamLine | None:
    """Parse "Stream #0:0: Video: h264 (High), yuv420p, 640x360, 25 fps, ..."."""
    match = _STREAM.search(body)
    if not match:
        return None
    kind, codec = match.group(1), match.group(2)
    rates = {unit: _scaled(value, k) for value, k, unit in _RATE.findall(body)}

    # "fps" is the stream's average frame rate; "tbr" ffmpeg's guess from the
    # timestamps, used only when the stream declares no rate.
    fps = rates.get("fps", rates.get("tbr")) if kind == "Video" else None
    bitrate = _BITRATE.search(body)
    return StreamLine(kind, codec, fps, float(bitrate.group(1)) if bitrate else None)


def _scaled(value: str, k: str) -> float:
    try:
        number = float(value)
    except ValueError:
        return 0.0
    return number * 1000 if k else number
