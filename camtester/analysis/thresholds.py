"""The thresholds that turn measured figures into deviation records.

Every threshold has a default here; a deployment overrides some of them
(`CAMTESTER_THRESHOLDS`) and a task may override them again (`payload.thresholds`).
Unless its meaning says otherwise, a figure deviates when it is *greater than* its
threshold, so a threshold of 0 flags any occurrence at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from camtester.errors import InvalidInput


@dataclass(frozen=True)
class Threshold:
    """One tunable threshold: its flat name, default, unit and what it means."""

    name: str
    default: float
    unit: str
    meaning: str
    #: Largest value that makes sense (1 for fractions); None for no upper bound.
    maximum: float | None = None


THRESHOLDS: tuple[Threshold, ...] = (
    # ping
    Threshold(
        "packet_loss_warning",
        0.02,
        "fraction 0..1",
        "ICMP loss above this is a packet_loss warning (0.02: more than 2 of 100).",
        maximum=1.0,
    ),
    Threshold(
        "packet_loss_critical",
        0.2,
        "fraction 0..1",
        "ICMP loss above this is a packet_loss critical. Total loss is reported as "
        "unreachable instead.",
        maximum=1.0,
    ),
    Threshold(
        "latency_warning_ms",
        100.0,
        "ms",
        "Average round trip above this is a high_latency warning.",
    ),
    Threshold(
        "latency_critical_ms",
        500.0,
        "ms",
        "Average round trip above this is a high_latency critical.",
    ),
    Threshold(
        "jitter_warning_ms",
        30.0,
        "ms",
        "Standard deviation of the round trip above this is a jitter warning.",
    ),
    Threshold(
        "jitter_critical_ms",
        100.0,
        "ms",
        "Standard deviation of the round trip above this is a jitter critical.",
    ),
    # probe
    Threshold(
        "black_min_s",
        2.0,
        "s",
        "A black interval at least this long is a black warning; shorter ones "
        "(a cut, a flash) are ignored.",
    ),
    Threshold(
        "black_critical_s",
        5.0,
        "s",
        "Black intervals totalling at least this long, or covering the whole sample, "
        "are a black critical.",
    ),
    Threshold(
        "freeze_min_s",
        2.0,
        "s",
        "A frozen picture at least this long is a freeze warning.",
    ),
    Threshold(
        "freeze_critical_s",
        5.0,
        "s",
        "Frozen intervals totalling at least this long, or covering the whole sample, "
        "are a freeze critical.",
    ),
    Threshold(
        "silence_min_s",
        2.0,
        "s",
        "Silence at least this long in a stream that has audio is a silence warning "
        "(never critical; a stream without audio is not silent).",
    ),
    Threshold(
        "temporal_outlier_peaks",
        3.0,
        "peaks per sample",
        "More sudden picture changes (z-score peaks) than this are a "
        "temporal_outlier warning.",
    ),
    Threshold(
        "low_fps_ratio",
        0.8,
        "fraction 0..1 of the declared rate",
        "A measured frame rate below this share of the declared one is a low_fps "
        "warning.",
        maximum=1.0,
    ),
    Threshold(
        "low_fps_critical_ratio",
        0.5,
        "fraction 0..1 of the declared rate",
        "A measured frame rate below this share of the declared one is a low_fps "
        "critical.",
        maximum=1.0,
    ),
    Threshold(
        "min_fps",
        0.0,
        "frames/s",
        "A measured frame rate below this is a low_fps warning whatever the stream "
        "declares; 0 turns the check off.",
    ),
    Threshold(
        "profile_fps_tolerance",
        1.0,
        "frames/s",
        "How far the frame rate may be from an expected profile's fps before it is "
        "a profile_mismatch.",
    ),
    # check
    Threshold(
        "rtp_missed_packets_warning",
        0.0,
        "packets per sample",
        "More RTP packets missed than this (RTSP over UDP only) is an rtp_loss "
        "warning.",
    ),
    Threshold(
        "rtp_missed_packets_critical",
        100.0,
        "packets per sample",
        "More RTP packets missed than this is an rtp_loss critical.",
    ),
    Threshold(
        "decode_errors_warning",
        0.0,
        "errors per sample",
        "More decoder errors than this is a decode_errors warning.",
    ),
    Threshold(
        "decode_errors_critical",
        50.0,
        "errors per sample",
        "More decoder errors than this is a decode_errors critical.",
    ),
    Threshold(
        "corrupt_frames_warning",
        0.0,
        "frames per sample",
        "More damaged (concealed) pictures than this is a corrupt_frames warning.",
    ),
    Threshold(
        "corrupt_frames_critical",
        25.0,
        "frames per sample",
        "More damaged pictures than this (25: a second of a 25 fps stream) is a "
        "corrupt_frames critical.",
    ),
    # probe and check
    Threshold(
        "stall_tolerance_s",
        1.0,
        "s",
        "A sample shorter than requested by more than this, or one the reader saw "
        "stop, is a stalled critical.",
    ),
)

DEFAULT_THRESHOLDS: dict[str, float] = {t.name: t.default for t in THRESHOLDS}

_BY_NAME: dict[str, Threshold] = {t.name: t for t in THRESHOLDS}


def merge_thresholds(*layers: Mapping[str, Any] | None) -> dict[str, float]:
    """The defaults overridden by each layer in turn (deployment, then task).

    Raises InvalidInput naming the first bad key, e.g. "thresholds.black_min_s must
    be a number >= 0".
    """
    merged = dict(DEFAULT_THRESHOLDS)
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise InvalidInput("thresholds must be an object of name: number")
        for key, value in layer.items():
            merged[key] = _validated(key, value)
    return merged


def _validated(key: Any, value: Any) -> float:
    threshold = _BY_NAME.get(key) if isinstance(key, str) else None
    if threshold is None:
        raise InvalidInput(f"thresholds.{key} is not a known threshold")

    # bool is an int subclass, but `true` is no number a user meant.
    number_like = isinstance(value, int | float) and not isinstance(value, bool)
    if not number_like or not math.isfinite(value) or value < 0:
        raise InvalidInput(f"thresholds.{key} must be a number >= 0")

    if threshold.maximum is not None and value > threshold.maximum:
        raise InvalidInput(
            f"thresholds.{key} must be a number from 0 to {threshold.maximum:g}"
        )
    return float(value)


def threshold_table() -> str:
    """The thresholds as a Markdown table, for the README."""
    rows = ["| name | default | unit | meaning |", "|---|---|---|---|"]
    for t in THRESHOLDS:
        rows.append(f"| `{t.name}` | {t.default:g} | {t.unit} | {t.meaning} |")
    return "\n".join(rows)
