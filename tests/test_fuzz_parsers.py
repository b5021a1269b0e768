"""Property tests: the parsers of ffmpeg's output, the URI helpers and the task
validation never raise on any input (or raise only InvalidInput, where that is
their contract), and what they return can be stored as strict JSON.

Inputs are both arbitrary text and lines assembled from fragments of real
ffmpeg 5.1 output, so that the generator reaches the parsers' inner branches.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from camtester.errors import InvalidInput, MeasurementError, SetupError
from camtester.probes import checklog, description, frames
from camtester.probes.ffmpeg import FfmpegRun, classify_failure, parse_version
from camtester.settings import Settings
from camtester.spec import validate_task
from camtester.uris import (
    mask_uri,
    strip_credentials,
    validate_stream_uri,
    with_encoded_credentials,
)

# Derandomized, so that a run fails or passes the same way every time; the
# @example cases are inputs that broke a parser once.
PROPERTIES = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

FRAGMENTS = [
    "[h264 @ 0x55d0c1e2f3a0]",
    "[hevc @ 0x5600aa]",
    "[rtsp @ 0x1]",
    "[error]",
    "[warning]",
    "[info]",
    "[fatal]",
    "error while decoding MB 12 7",
    "decode_slice_header error",
    "Invalid NAL unit size",
    "Invalid NAL unit 7, skipping",
    "Missing reference picture, default is 0",
    "concealing 12 DC, 12 AC, 12 MV errors in I frame",
    "no frame!",
    "Error while decoding stream #0:0: Invalid data found",
    "corrupt decoded frame in stream 0",
    "corrupt input packet in stream 1",
    "max delay reached. need to consume packet",
    "RTP: missed 5 packets",
    "RTP: missed 99999999999999999999 packets",
    "Last message repeated 3 times",
    "Last message repeated 99999999999999999999 times",
    "Input #0, rtsp, from 'rtsp://u:p@127.0.0.1/live':",
    "Stream #0:0: Video: h264 (High), yuv420p, 640x360, 25 fps, 25 tbr",
    "Stream #0:1: Audio: aac, 48000 Hz, mono, 64 kb/s",
    "Stream #0:0[0x100]: Video: hevc, 1.5k fps, 90k tbr, 1e400 fps",
    "Connection refused",
    "401 Unauthorized",
    "404 Not Found",
    "Protocol 'file' not on whitelist",
    "Unrecognized option 'stimeout'",
    "Immediate exit requested",
    "frame:3 pts:7200 pts_time:0.08",
    "frame:x pts:nan pts_time:inf",
    "lavfi.blackdetect.pblack=100",
    "lavfi.signalstats.YDIF=0.5",
    "#media_type 0: video",
    "#codec_id 0: h264",
    "#dimensions 0: 640x360",
    "#dimensions 1: x",
    "#tb 0: 1/90000",
    "#tb 0: 1/0",
    "#sample_rate 1: 48000",
    "0,          0,          0,     3600,     4711, 0xdeadbeef",
    "0, -9223372036854775808, 0, 3600, 4711, 0x1, F=0x3",
    "1, 0, 0, 1024, 12, 0x2, F=zz",
    "ffmpeg version 5.1.6-0+deb12u1",
    "ffmpeg version n6.1",
    "ffmpeg version N-1234-gdeadbeef",
]


def ffmpeg_line() -> st.SearchStrategy[str]:
    """A line of fragments of real output, numbers and noise."""
    piece = st.one_of(
        st.sampled_from(FRAGMENTS),
        st.integers().map(str),
        st.floats().map(str),
        st.text(max_size=12),
    )
    return st.lists(piece, max_size=6).map(" ".join)


LINES = st.one_of(ffmpeg_line(), st.text())
TEXTS = st.lists(LINES, max_size=40).map("\n".join)


def strict_json(value: Any) -> None:
    """Raise unless `value` is JSON without NaN or infinities (what the store keeps)."""
    json.dumps(value, allow_nan=False, default=vars)


@PROPERTIES
@given(st.lists(LINES, max_size=60))
def test_the_check_log_counter_never_raises(lines: list[str]) -> None:
    counter = checklog.LogCounter()
    for line in lines:
        counter.feed(line)
        checklog.classify(line)

    counts = counter.counts().as_dict()
    assert all(isinstance(v, int) and v >= 0 for v in counts.values())
    strict_json(counts)
    assert checklog.count_log("\n".join(lines)).as_dict() == counts


@PROPERTIES
@given(st.lists(LINES, max_size=60))
def test_the_probe_log_watch_never_raises(lines: list[str]) -> None:
    watch = description.StderrWatch()
    for line in lines:
        watch(line)

    assert watch.error_lines >= 0
    for kind in ("Video", "Audio"):
        stream = watch.first(kind)
        if stream is not None:
            strict_json(stream)


@PROPERTIES
@given(LINES)
def test_a_stream_line_parses_to_finite_figures(line: str) -> None:
    stream = description.parse_stream_line(line)

    if stream is not None:
        for figure in (stream.fps, stream.bit_rate_kbps):
            assert figure is None or math.isfinite(figure)


@PROPERTIES
@given(TEXTS)
def test_the_metadata_parser_never_raises(text: str) -> None:
    records = frames.parse_metadata_print(text)

    for record in records:
        assert math.isfinite(record.pts_time)
        for key in record.tags:
            value = record.number(key)
            assert value is None or math.isfinite(value)


@PROPERTIES
@given(TEXTS)
@example("0, 0, 0, 3600, 4711, 0x1, F=0x3 [h264 @ 0x55d0c1e2f3a0]")
@example("1, 0, 0, 1024, 12, 0x2, F=")
def test_the_framecrc_parser_never_raises(text: str) -> None:
    log = frames.parse_framecrc(text)

    for header in log.streams.values():
        strict_json(header)
    assert all(packet.size is not None for packet in log.packets)


@PROPERTIES
@given(st.binary(max_size=2000))
def test_splitting_jpegs_never_raises_and_loses_nothing(data: bytes) -> None:
    images = frames.split_jpegs(data)

    assert b"".join(images) == data or len(b"".join(images)) <= len(data)


@PROPERTIES
@given(LINES)
def test_the_version_line_parser_never_raises(line: str) -> None:
    major, minor = parse_version(line)

    assert isinstance(major, int) and isinstance(minor, int)


@PROPERTIES
@given(TEXTS, st.integers(-20, 300) | st.none(), st.booleans())
def test_any_failed_run_is_classified(
    tail: str, returncode: int | None, timed_out: bool
) -> None:
    run = FfmpegRun(returncode, tail, 1.0, timed_out, False)
    uri = "rtsp://viewer:Zq7xWv@127.0.0.1:8554/live"

    error = classify_failure(run, uri)

    assert isinstance(error, MeasurementError | SetupError)
    assert "Zq7xWv" not in str(error)


# -- URIs and tasks ------------------------------------------------------------

PASSWORDS = st.text(
    alphabet=st.characters(codec="ascii", categories=["L", "N", "P", "S"]),
    min_size=6,
    max_size=20,
).filter(lambda p: "/" not in p and "#" not in p and "?" not in p)


@PROPERTIES
@given(st.text(max_size=40), PASSWORDS, st.text(max_size=40))
def test_a_password_never_survives_masking(
    before: str, password: str, after: str
) -> None:
    marked = f"Q{password}Q"
    uri = f"rtsp://viewer:{marked}@127.0.0.1:554/live"

    masked = mask_uri(f"{before} {uri} {after}")

    assert marked not in masked
    assert "rtsp://***@127.0.0.1:554/live" in masked


@PROPERTIES
@given(st.text(max_size=300))
def test_uri_helpers_never_raise(text: str) -> None:
    mask_uri(text)
    try:
        uri = validate_stream_uri(text, Settings().allowed_schemes, "uri")
    except InvalidInput:
        return
    encoded = with_encoded_credentials(uri)
    bare, user, _ = strip_credentials(uri)
    assert "@" not in bare.partition("//")[2].partition("/")[0] or user is None
    assert with_encoded_credentials(encoded) == encoded


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(
        ["ping", "probe", "check", "complex", "local", "127.0.0.1", "rtsp://h/x"]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "geo_location",
                    "payload",
                    "payloads",
                    "host",
                    "uri",
                    "count",
                    "interval",
                    "timeout",
                    "duration",
                    "transport",
                    "thresholds",
                    "expected",
                    "codec",
                    "fps",
                    "black_min_s",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@PROPERTIES
@given(JSON)
def test_task_validation_answers_anything_with_a_task_or_a_400(raw: Any) -> None:
    try:
        task = validate_task(raw, Settings())
    except InvalidInput as exc:
        assert str(exc).startswith("task")
        return
    strict_json(task)
    assert task["type"] in ("ping", "probe", "check", "complex")
