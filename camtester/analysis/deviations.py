"""Turn a measurement's payload figures into deviation records; pure logic, no I/O.

A record is `{"kind", "severity", "value", "threshold"}` plus `"intervals"` for the
kinds that happen over time (black, freeze, silence). `threshold` is the threshold the
value crossed, or None for kinds that have none (no_video, unreachable). The task
layer adds task id, target, region and time.

A figure missing from the payload (a failed or partial run) yields no record: only
what was measured can deviate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from camtester.errors import InvalidInput

WARNING = "warning"
CRITICAL = "critical"

# blackdetect and freezedetect end an interval at the last frame's time, and
# freezedetect starts one at the first frame that repeats, so an interval that covers
# the whole sample is up to a few frames shorter than it.
_WHOLE_SAMPLE_SLACK_S = 0.5

_FLOAT_SLACK_S = 1e-6

# Names a codec goes by in an expected profile and in ffprobe's codec_name.
_CODEC_ALIASES = {
    "avc": "h264",
    "h.264": "h264",
    "h265": "hevc",
    "h.265": "hevc",
    "mjpg": "mjpeg",
    "jpeg": "mjpeg",
}

PROFILE_FIELDS = ("codec", "width", "height", "fps")

Payload = Mapping[str, Any]
Record = dict[str, Any]


def find_deviations(
    task_type: str,
    payload: Payload | None,
    *,
    thresholds: Mapping[str, float],
    requested_duration_s: float | None = None,
    expected_profile: Mapping[str, Any] | None = None,
) -> list[Record]:
    """The deviation records of one successful ping, probe or check result."""
    if not payload:
        return []

    if task_type == "ping":
        return _ping_deviations(payload, thresholds)
    if task_type == "probe":
        records = _probe_deviations(payload, thresholds)
        if expected_profile:
            records += _profile_mismatch(payload, expected_profile, thresholds)
        return records + _stalled(payload, thresholds, requested_duration_s)
    if task_type == "check":
        records = _check_deviations(payload, thresholds)
        return records + _stalled(payload, thresholds, requested_duration_s)
    raise ValueError(f"no deviations are defined for task type {task_type!r}")


def failure_deviations(task_type: str, error_code: str) -> list[Record]:
    """The record of a measurement that could not be made at all (`ok: false`)."""
    if task_type == "ping":
        return [_record("unreachable", CRITICAL, error_code, None)]
    if task_type in ("probe", "check"):
        return [_record("stream_unavailable", CRITICAL, error_code, None)]
    return []


def _record(
    kind: str,
    severity: str,
    value: Any,
    threshold: Any,
    intervals: list[list[float]] | None = None,
) -> Record:
    record: Record = {
        "kind": kind,
        "severity": severity,
        "value": value,
        "threshold": threshold,
    }
    if intervals is not None:
        record["intervals"] = intervals
    return record


def _number(payload: Payload, key: str) -> float | None:
    """`payload[key]` if it is a finite number; None when missing or not measured."""
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return None
    return value


def _graded(
    kind: str, value: float | None, warning: float, critical: float
) -> list[Record]:
    """One record when `value` is above the warning or the critical threshold."""
    if value is None:
        return []
    if value > critical:
        return [_record(kind, CRITICAL, value, critical)]
    if value > warning:
        return [_record(kind, WARNING, value, warning)]
    return []


def _ping_deviations(payload: Payload, t: Mapping[str, float]) -> list[Record]:
    sent = _number(payload, "packets_sent")
    received = _number(payload, "packets_received")

    # Nothing came back: the loss, latency and jitter of nothing mean nothing.
    if sent and received == 0:
        return [_record("unreachable", CRITICAL, payload.get("packet_loss", 1.0), None)]

    records = _graded(
        "packet_loss",
        _number(payload, "packet_loss"),
        t["packet_loss_warning"],
        t["packet_loss_critical"],
    )
    records += _graded(
        "high_latency",
        _number(payload, "avg_rtt_ms"),
        t["latency_warning_ms"],
        t["latency_critical_ms"],
    )
    records += _graded(
        "jitter",
        _number(payload, "std_dev_rtt_ms"),
        t["jitter_warning_ms"],
        t["jitter_critical_ms"],
    )
    return records


def _probe_deviations(payload: Payload, t: Mapping[str, float]) -> list[Record]:
    frames = _number(payload, "video_frames")
    if payload.get("has_video") is False or frames == 0:
        # Without pictures, black, freeze and frame rate have nothing to judge.
        value = frames if frames is not None else 0
        return [_record("no_video", CRITICAL, value, None)] + _silence(payload, t)

    sample_s = _number(payload, "sample_duration_sec")
    records = _timed(
        "black",
        payload.get("black_intervals"),
        t["black_min_s"],
        t["black_critical_s"],
        sample_s,
    )
    records += _timed(
        "freeze",
        payload.get("freeze_intervals"),
        t["freeze_min_s"],
        t["freeze_critical_s"],
        sample_s,
    )
    records += _silence(payload, t)

    peaks = _number(payload, "temporal_outliers_peaks")
    if peaks is not None and peaks > t["temporal_outlier_peaks"]:
        records.append(
            _record("temporal_outlier", WARNING, peaks, t["temporal_outlier_peaks"])
        )
    return records + _low_fps(payload, t)


def _long_intervals(raw: Any, min_s: float) -> list[list[float]]:
    """The well-formed `[start, end]` pairs of `raw` that last at least `min_s`."""
    if not isinstance(raw, list | tuple):
        return []
    kept = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2:
            continue
        start, end = item
        if not all(isinstance(x, int | float) and math.isfinite(x) for x in item):
            continue
        # Interval ends are frame times in float seconds: 2.014 - 0.014 comes out
        # a hair under 2.0, which is still a 2 s interval.
        if end - start >= min_s - _FLOAT_SLACK_S:
            kept.append([start, end])
    return kept


def _timed(
    kind: str,
    raw_intervals: Any,
    min_s: float,
    critical_s: float,
    sample_s: float | None,
) -> list[Record]:
    """A record for intervals of at least `min_s`, critical by total length."""
    intervals = _long_intervals(raw_intervals, min_s)
    if not intervals:
        return []

    total = round(sum(end - start for start, end in intervals), 3)
    whole_sample = (
        sample_s is not None
        and sample_s > 0
        and total >= sample_s - _WHOLE_SAMPLE_SLACK_S
    )
    if total >= critical_s or whole_sample:
        return [_record(kind, CRITICAL, total, critical_s, intervals)]
    return [_record(kind, WARNING, total, min_s, intervals)]


def _silence(payload: Payload, t: Mapping[str, float]) -> list[Record]:
    # A camera without a microphone is not silent: there is nothing to hear.
    if payload.get("has_audio") is not True or not _number(payload, "audio_frames"):
        return []

    intervals = _long_intervals(payload.get("silence_intervals"), t["silence_min_s"])
    if not intervals:
        return []
    total = round(sum(end - start for start, end in intervals), 3)
    return [_record("silence", WARNING, total, t["silence_min_s"], intervals)]


def _low_fps(payload: Payload, t: Mapping[str, float]) -> list[Record]:
    measured = _number(payload, "fps_measured")
    if measured is None:
        return []

    declared = _number(payload, "fps_declared")
    if declared:
        critical = round(declared * t["low_fps_critical_ratio"], 3)
        warning = round(declared * t["low_fps_ratio"], 3)
        if measured < critical:
            return [_record("low_fps", CRITICAL, measured, critical)]
        if measured < warning:
            return [_record("low_fps", WARNING, measured, warning)]

    if measured < t["min_fps"]:
        return [_record("low_fps", WARNING, measured, t["min_fps"])]
    return []


def _check_deviations(payload: Payload, t: Mapping[str, float]) -> list[Record]:
    # rtp_missed_packets is None over TCP: RTP loss cannot be seen there at all.
    records = _graded(
        "rtp_loss",
        _number(payload, "rtp_missed_packets"),
        t["rtp_missed_packets_warning"],
        t["rtp_missed_packets_critical"],
    )
    records += _graded(
        "decode_errors",
        _number(payload, "decoding_errors"),
        t["decode_errors_warning"],
        t["decode_errors_critical"],
    )
    records += _graded(
        "corrupt_frames",
        _number(payload, "corrupted_frames"),
        t["corrupt_frames_warning"],
        t["corrupt_frames_critical"],
    )
    return records


def _stalled(
    payload: Payload, t: Mapping[str, float], requested_s: float | None
) -> list[Record]:
    """Critical when the stream stopped before the sample was complete."""
    received = _number(payload, "sample_duration_sec")
    if received is None:
        received = _number(payload, "duration_sec")
    if requested_s is None:
        requested_s = _number(payload, "requested_duration_sec")

    short = (
        received is not None
        and requested_s is not None
        and requested_s - received > t["stall_tolerance_s"]
    )
    if payload.get("stalled") is True or short:
        return [_record("stalled", CRITICAL, received, requested_s)]
    return []


def validate_expected_profile(
    profile: Any, field: str = "expected_profile"
) -> dict[str, Any]:
    """Check an expected stream profile from a task; raises InvalidInput naming it."""
    if not isinstance(profile, Mapping):
        raise InvalidInput(
            f"{field} must be an object with {', '.join(PROFILE_FIELDS)}"
        )

    checked: dict[str, Any] = {}
    for key, value in profile.items():
        if key not in PROFILE_FIELDS:
            raise InvalidInput(f"{field}.{key} is not a profile field")
        if key == "codec":
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{field}.codec must be a codec name")
        elif not _positive_number(value):
            raise InvalidInput(f"{field}.{key} must be a number > 0")
        checked[key] = value
    return checked


def _positive_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0


def _codec_name(name: str) -> str:
    lowered = name.strip().lower()
    return _CODEC_ALIASES.get(lowered, lowered)


def _profile_mismatch(
    payload: Payload, expected: Mapping[str, Any], t: Mapping[str, float]
) -> list[Record]:
    """One record listing every expected fact the stream does not match."""
    found: dict[str, Any] = {}
    wanted: dict[str, Any] = {}
    checks: dict[str, Callable[[Any, Any], bool]] = {
        "codec": lambda f, e: _codec_name(f) == _codec_name(e),
        "width": lambda f, e: f == e,
        "height": lambda f, e: f == e,
        "fps": lambda f, e: abs(f - e) <= t["profile_fps_tolerance"],
    }
    facts = {
        "codec": payload.get("video_codec"),
        "width": _number(payload, "width"),
        "height": _number(payload, "height"),
        "fps": _first_number(payload, "fps_declared", "fps_measured"),
    }

    for key, same in checks.items():
        expected_value, fact = expected.get(key), facts[key]
        # A fact the probe could not find is not a mismatch: no_video reports that.
        if expected_value is None or fact is None:
            continue
        if not same(fact, expected_value):
            found[key], wanted[key] = fact, expected_value

    if not found:
        return []
    return [_record("profile_mismatch", WARNING, found, wanted)]


def _first_number(payload: Payload, *keys: str) -> float | None:
    for key in keys:
        value = _number(payload, key)
        if value:
            return value
    return None
