"""Count the transport and decoder warnings in ffmpeg's stderr; pure, no I/O.

The counts are what `check_stream` reports, read from the text of ffmpeg 5.1
(libavformat 59, libavcodec 59):

- `rtp_missed_packets`: the sum of N over "RTP: missed N packets" (rtpdec.c, printed
  when a sequence-number gap is found; only an RTP transport over UDP can show one).
- `decoding_errors`: pieces of stream a decoder could not decode (see "Decoding
  errors" below).
- `corrupted_frames`: "corrupt decoded frame in stream N" (fftools/ffmpeg.c, for
  each picture the decoder handed out flagged as damaged or concealed).
- `max_delay_reaches`: "max delay reached. need to consume packet" (rtsp.c, the RTP
  reordering queue gave up waiting for a missing packet).
- `corrupt_input_packets`: "corrupt input packet in stream N" (fftools/ffmpeg.c, for
  each packet the demuxer flagged as damaged, e.g. an MPEG-TS continuity gap).

Both forms of ffmpeg's output are read: with or without the `[level]` prefix that
`-loglevel level+...` adds, and with or without the folding of repeated lines into
"Last message repeated N times", which `-loglevel repeat+...` turns off.

Decoding errors. The set comes from ffmpeg 5.1 decoding H.264 with bytes overwritten,
TS packets dropped and parameter sets removed, from files and over RTSP (the logs are
in tests/data/ffmpeg-logs/). One fault prints a chain of lines; counting them all
would count it two to five times, so each damaged piece counts once:

- A slice that broke off mid-way ends in "error while decoding MB x y" and one that
  was dropped whole in "decode_slice_header error"; a NAL unit dropped before any of
  its slices was read prints "Invalid NAL unit size" or "Invalid NAL unit N,
  skipping". Each counts. Their cause lines before them ("Reference 5 >= 4", "cabac
  decode of qscale diff failed", "non-existing PPS 0 referenced", "deblocking filter
  parameters out of range", ...) do not.
- A whole frame lost in transit leaves no slice to fail; the frames that refer to it
  report it: "Missing reference picture, default is N" (a slice decoded against a
  stand-in picture; the "reference picture missing during reorder" before it is its
  cause), "mmco: unref short failure" and "co located POCs unavailable". Each
  counts, as a slice error of the frame that printed it.
- "concealing N DC, N AC, N MV errors in X frame" (info level) ends a frame that had
  to be repaired. After slice errors of the same decoder it only restates them; with
  none it is the sole report of slices that never reached the decoder (a NAL unit a
  camera or restreamer dropped: loss over TCP looks like this), and then it counts.
- "no frame!" ends an H.264 packet none of whose slices could start a picture: it
  counts only if no slice error of that decoder came before it. ffmpeg.c then prints
  "Error while decoding stream #i:j" for the packet the decoder returned an error
  for; right after "no frame!" that is the same fault, otherwise it counts, as the
  one report of any codec (HEVC, MJPEG, AAC) that prints no slice lines.
- Decoder lines printed before ffmpeg's "Input #0, ..." dump come from the stream
  probe, which decodes the first packets with a decoder of its own and then hands
  the same packets to the real decoder; they are left out once the dump is seen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

RTP_MISSED = "rtp_missed_packets"
DECODING_ERROR = "decoding_errors"
CORRUPT_FRAME = "corrupted_frames"
MAX_DELAY = "max_delay_reaches"
CORRUPT_INPUT = "corrupt_input_packets"

# Decoder lines, which count as decoding errors by the rules in the module docstring.
SLICE_ERROR = "slice_error"
CONCEALED = "concealed"
NO_FRAME = "no_frame"
PACKET_ERROR = "packet_error"
_DECODER_LINES = (SLICE_ERROR, CONCEALED, NO_FRAME, PACKET_ERROR)

_RTP_MISSED = re.compile(r"RTP: missed (\d+) packets")

_PATTERNS = (
    (
        SLICE_ERROR,
        re.compile(
            r"error while decoding MB \d+ \d+|decode_slice_header error"
            r"|Invalid NAL unit size|Invalid NAL unit \d+, skipping"
            r"|Missing reference picture|mmco: unref short failure"
            r"|co located POCs unavailable"
        ),
    ),
    (CONCEALED, re.compile(r"concealing \d+ DC, \d+ AC, \d+ MV errors")),
    (NO_FRAME, re.compile(r"\bno frame!")),
    (PACKET_ERROR, re.compile(r"Error while decoding stream #\d+:\d+")),
    (CORRUPT_FRAME, re.compile(r"corrupt decoded frame in stream \d+")),
    (MAX_DELAY, re.compile(r"max delay reached\. need to consume packet")),
    (CORRUPT_INPUT, re.compile(r"corrupt input packet in stream \d+")),
)

# The component prefix of a decoder's line, "[h264 @ 0x55d0c1e2f3a0] ", which tells
# the stream probe's decoder and the real one (or frame threads) apart.
_CONTEXT = re.compile(r"^\[(\w+ @ 0x[0-9a-fA-F]+)\]")

# "Last message repeated N times" has no component or level prefix (log.c prints it
# with a bare fprintf). On a terminal it is rewritten in place with "\r" as the count
# grows, so consecutive ones restate a running total instead of adding to it.
_REPEATED = re.compile(r"^\s*Last message repeated (\d+) times?\s*$")

# ffmpeg dumps "Input #0, <format>, from '<uri>':" once the stream probe is done.
_INPUT_DUMP = re.compile(r"(?:^|\] )Input #\d+, .*, from '")


@dataclass(frozen=True)
class LogCounts:
    """The figures counted in one ffmpeg run's stderr."""

    rtp_missed_packets: int = 0
    decoding_errors: int = 0
    corrupted_frames: int = 0
    max_delay_reaches: int = 0
    corrupt_input_packets: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def classify(line: str) -> tuple[str | None, int]:
    """The kind of one stderr line and its weight (RTP packets missed, else 1)."""
    match = _RTP_MISSED.search(line)
    if match:
        return RTP_MISSED, int(match.group(1))

    for kind, pattern in _PATTERNS:
        if pattern.search(line):
            return kind, 1
    return None, 0


@dataclass
class _Stage:
    """Counts of one stage of the run: the stream probe, or the real decoding."""

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(LogCounts.__dataclass_fields__, 0)
    )
    #: Decoder contexts with slice errors counted since their last frame ended.
    damaged: set[str] = field(default_factory=set)


class LogCounter:
    """Counts stderr lines fed one at a time, as an ffmpeg run prints them."""

    def __init__(self) -> None:
        self._probe = _Stage()
        self._main = _Stage()
        self._dumped_input = False
        # The last line, for "Last message repeated": kind, weight, stage.
        self._last: tuple[str | None, int, _Stage] = (None, 0, self._main)
        self._repeats_added = 0

    def feed(self, text: str) -> None:
        """Count `text`: one line, or several separated by line breaks."""
        for line in text.splitlines():
            self._feed_line(line)

    def counts(self) -> LogCounts:
        """The figures so far.

        Decoder errors printed before the input dump are left out once the dump has
        been seen; a log with no dump (level warning or quieter) keeps them.
        """
        counts = dict(self._main.counts)
        if not self._dumped_input:
            for key, value in self._probe.counts.items():
                counts[key] += value
        return LogCounts(**counts)

    def _feed_line(self, line: str) -> None:
        # ffmpeg never prints an empty message, so a blank line repeats nothing and
        # is not a line that "Last message repeated" could refer to.
        if not line.strip():
            return

        repeated = _REPEATED.match(line)
        if repeated:
            self._add_repeats(int(repeated.group(1)))
            return

        kind, weight = classify(line)
        in_probe = kind in _DECODER_LINES and not self._dumped_input
        stage = self._probe if in_probe else self._main
        after_no_frame = self._last[0] == NO_FRAME
        self._count(stage, kind, weight, _context(line), after_no_frame)
        self._last, self._repeats_added = (kind, weight, stage), 0

        if kind is None and not self._dumped_input and _INPUT_DUMP.search(line):
            self._dumped_input = True

    def _count(
        self,
        stage: _Stage,
        kind: str | None,
        weight: int,
        context: str,
        after_no_frame: bool,
    ) -> None:
        """Count one line by the rules of the module docstring."""
        if kind is None:
            return
        if kind not in _DECODER_LINES:
            stage.counts[kind] += weight
            return

        if kind == SLICE_ERROR:
            counts = True
            stage.damaged.add(context)
        elif kind in (CONCEALED, NO_FRAME):
            # The frame (or packet) ends here; its slice errors, if any, counted.
            counts = context not in stage.damaged
            stage.damaged.discard(context)
        else:
            counts = not after_no_frame
        stage.counts[DECODING_ERROR] += int(counts)

    def _add_repeats(self, total: int) -> None:
        # A repeat adds to the kind of the line it repeats, and only to that kind.
        # Every repeat of a decoder line is a fault of its own: the first of them
        # already closed the frame or followed the "no frame!".
        kind, weight, stage = self._last
        if kind is None or total <= self._repeats_added:
            return

        new = total - self._repeats_added
        self._repeats_added = total
        target = DECODING_ERROR if kind in _DECODER_LINES else kind
        stage.counts[target] += new * weight


def _context(line: str) -> str:
    """The decoder context that printed `line`, or "" for ffmpeg's own lines."""
    match = _CONTEXT.match(line)
    return match.group(1) if match else ""


def count_log(text: str | Iterable[str]) -> LogCounts:
    """Count the warnings in ffmpeg's stderr, given as one text or as lines."""
    counter = LogCounter()
    if isinstance(text, str):
        counter.feed(text)
    else:
        for chunk in text:
            counter.feed(chunk)
    return counter.counts()
