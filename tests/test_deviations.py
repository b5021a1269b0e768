"""Deviation records from payload figures: pure logic, so the payloads are literal."""

from __future__ import annotations

from typing import Any

import pytest

from camtester.analysis.deviations import (
    failure_deviations,
    find_deviations,
    validate_expected_profile,
)
from camtester.analysis.thresholds import DEFAULT_THRESHOLDS, merge_thresholds
from camtester.errors import InvalidInput

T = DEFAULT_THRESHOLDS


def clean_ping(**changes: Any) -> dict[str, Any]:
    payload = {
        "packets_sent": 100,
        "packets_received": 100,
        "packet_loss": 0.0,
        "min_rtt_ms": 0.5,
        "avg_rtt_ms": 1.2,
        "max_rtt_ms": 3.0,
        "std_dev_rtt_ms": 0.4,
        "address": "127.0.0.1",
    }
    payload.update(changes)
    return payload


def clean_probe(**changes: Any) -> dict[str, Any]:
    payload = {
        "sample_duration_sec": 10.0,
        "requested_duration_sec": 10.0,
        "stalled": False,
        "recording_errors": 0,
        "video_frames": 250,
        "black_frames": 0,
        "freeze_frames": 0,
        "temporal_outliers_peaks": 0,
        "audio_frames": 469,
        "silence_frames": 0,
        "black_intervals": [],
        "freeze_intervals": [],
        "silence_intervals": [],
        "video_codec": "h264",
        "audio_codec": "aac",
        "width": 640,
        "height": 360,
        "fps_declared": 25.0,
        "fps_measured": 25.0,
        "bit_rate_kbps": 800,
        "keyframe_interval_sec": 1.0,
        "has_audio": True,
        "has_video": True,
    }
    payload.update(changes)
    return payload


def clean_check(**changes: Any) -> dict[str, Any]:
    payload = {
        "duration_sec": 5.0,
        "requested_duration_sec": 5.0,
        "stalled": False,
        "rtp_missed_packets": 0,
        "corrupted_frames": 0,
        "decoding_errors": 0,
        "max_delay_reaches": 0,
        "corrupt_input_packets": 0,
        "transport": "udp",
    }
    payload.update(changes)
    return payload


def kinds(records: list[dict[str, Any]]) -> list[str]:
    return [record["kind"] for record in records]


# -- clean and failed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_type", "payload"),
    [("ping", clean_ping()), ("probe", clean_probe()), ("check", clean_check())],
)
def test_a_clean_camera_yields_no_records(task_type: str, payload: dict) -> None:
    assert find_deviations(task_type, payload, thresholds=T) == []


@pytest.mark.parametrize("task_type", ["ping", "probe", "check"])
def test_a_failed_run_has_no_payload_and_no_crash(task_type: str) -> None:
    assert find_deviations(task_type, None, thresholds=T) == []
    assert find_deviations(task_type, {}, thresholds=T) == []
    assert find_deviations(task_type, {"stalled": None}, thresholds=T) == []


def test_failure_records() -> None:
    assert failure_deviations("ping", "unresolvable") == [
        {
            "kind": "unreachable",
            "severity": "critical",
            "value": "unresolvable",
            "threshold": None,
        }
    ]
    assert failure_deviations("check", "refused") == [
        {
            "kind": "stream_unavailable",
            "severity": "critical",
            "value": "refused",
            "threshold": None,
        }
    ]
    assert kinds(failure_deviations("probe", "timeout")) == ["stream_unavailable"]
    assert failure_deviations("complex", "timeout") == []


def test_an_unknown_task_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="complex"):
        find_deviations("complex", clean_check(), thresholds=T)


# -- ping ---------------------------------------------------------------------------


def test_nothing_came_back_is_unreachable_only() -> None:
    payload = clean_ping(
        packets_received=0,
        packet_loss=1.0,
        avg_rtt_ms=0.0,
        std_dev_rtt_ms=0.0,
    )

    assert find_deviations("ping", payload, thresholds=T) == [
        {"kind": "unreachable", "severity": "critical", "value": 1.0, "threshold": None}
    ]


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (0.02, []),
        (0.03, [("warning", 0.02)]),
        (0.2, [("warning", 0.02)]),
        (0.21, [("critical", 0.2)]),
    ],
)
def test_packet_loss_grades(loss: float, expected: list[tuple[str, float]]) -> None:
    payload = clean_ping(packet_loss=loss, packets_received=round(100 * (1 - loss)))

    records = find_deviations("ping", payload, thresholds=T)

    assert [(r["severity"], r["threshold"]) for r in records] == expected
    assert all(r["kind"] == "packet_loss" and r["value"] == loss for r in records)


def test_latency_and_jitter() -> None:
    payload = clean_ping(avg_rtt_ms=180.0, std_dev_rtt_ms=120.5)

    assert find_deviations("ping", payload, thresholds=T) == [
        {
            "kind": "high_latency",
            "severity": "warning",
            "value": 180.0,
            "threshold": 100.0,
        },
        {"kind": "jitter", "severity": "critical", "value": 120.5, "threshold": 100.0},
    ]


def test_task_thresholds_change_the_verdict() -> None:
    payload = clean_ping(avg_rtt_ms=1.2)
    thresholds = merge_thresholds({"latency_warning_ms": 1.0})

    records = find_deviations("ping", payload, thresholds=thresholds)

    assert records == [
        {"kind": "high_latency", "severity": "warning", "value": 1.2, "threshold": 1.0}
    ]


# -- probe --------------------------------------------------------------------------


def test_black_warning_keeps_only_long_intervals() -> None:
    payload = clean_probe(black_intervals=[[1.0, 1.5], [3.0, 6.0]])

    assert find_deviations("probe", payload, thresholds=T) == [
        {
            "kind": "black",
            "severity": "warning",
            "value": 3.0,
            "threshold": 2.0,
            "intervals": [[3.0, 6.0]],
        }
    ]


def test_black_critical_by_total_length() -> None:
    payload = clean_probe(black_intervals=[[0.0, 2.5], [6.0, 9.0]])

    assert find_deviations("probe", payload, thresholds=T) == [
        {
            "kind": "black",
            "severity": "critical",
            "value": 5.5,
            "threshold": 5.0,
            "intervals": [[0.0, 2.5], [6.0, 9.0]],
        }
    ]


def test_a_sample_black_from_start_to_end_is_critical_even_when_short() -> None:
    # 3 s sample, black from the first frame to the last one (2.96 s).
    payload = clean_probe(
        sample_duration_sec=3.0,
        requested_duration_sec=3.0,
        black_intervals=[[0.0, 2.96]],
    )

    records = find_deviations("probe", payload, thresholds=T)

    assert [(r["kind"], r["severity"], r["value"]) for r in records] == [
        ("black", "critical", 2.96)
    ]


def test_freeze_and_silence() -> None:
    payload = clean_probe(
        freeze_intervals=[[2.0, 7.0]], silence_intervals=[[4.0, 8.0], [9.0, 9.5]]
    )

    assert find_deviations("probe", payload, thresholds=T) == [
        {
            "kind": "freeze",
            "severity": "critical",
            "value": 5.0,
            "threshold": 5.0,
            "intervals": [[2.0, 7.0]],
        },
        {
            "kind": "silence",
            "severity": "warning",
            "value": 4.0,
            "threshold": 2.0,
            "intervals": [[4.0, 8.0]],
        },
    ]


def test_a_stream_without_audio_is_not_silent() -> None:
    payload = clean_probe(
        has_audio=False,
        audio_frames=0,
        audio_codec=None,
        silence_intervals=[[0.0, 10.0]],
    )

    assert find_deviations("probe", payload, thresholds=T) == []


def test_no_video_is_critical_and_skips_picture_checks() -> None:
    payload = clean_probe(
        has_video=False,
        video_frames=0,
        video_codec=None,
        width=None,
        height=None,
        fps_declared=None,
        fps_measured=None,
        black_intervals=[[0.0, 10.0]],
    )

    assert find_deviations("probe", payload, thresholds=T) == [
        {"kind": "no_video", "severity": "critical", "value": 0, "threshold": None}
    ]


def test_temporal_outliers() -> None:
    assert (
        find_deviations("probe", clean_probe(temporal_outliers_peaks=3), thresholds=T)
        == []
    )
    assert find_deviations(
        "probe", clean_probe(temporal_outliers_peaks=4), thresholds=T
    ) == [
        {
            "kind": "temporal_outlier",
            "severity": "warning",
            "value": 4,
            "threshold": 3.0,
        }
    ]


@pytest.mark.parametrize(
    ("measured", "expected"),
    [
        (24.0, []),
        (19.9, [("warning", 20.0)]),
        (12.4, [("critical", 12.5)]),
    ],
)
def test_low_fps_against_the_declared_rate(
    measured: float, expected: list[tuple[str, float]]
) -> None:
    records = find_deviations("probe", clean_probe(fps_measured=measured), thresholds=T)

    assert [(r["severity"], r["threshold"]) for r in records] == expected
    assert all(r["kind"] == "low_fps" and r["value"] == measured for r in records)


def test_low_fps_against_a_fixed_minimum() -> None:
    thresholds = merge_thresholds({"min_fps": 15})
    payload = clean_probe(fps_declared=None, fps_measured=10.0)

    assert find_deviations("probe", payload, thresholds=thresholds) == [
        {"kind": "low_fps", "severity": "warning", "value": 10.0, "threshold": 15.0}
    ]
    assert find_deviations("probe", payload, thresholds=T) == []


def test_profile_mismatch_lists_each_differing_fact() -> None:
    expected = {"codec": "H.265", "width": 640, "height": 480, "fps": 25}

    records = find_deviations(
        "probe", clean_probe(), thresholds=T, expected_profile=expected
    )

    assert records == [
        {
            "kind": "profile_mismatch",
            "severity": "warning",
            "value": {"codec": "h264", "height": 360},
            "threshold": {"codec": "H.265", "height": 480},
        }
    ]


def test_profile_match_with_aliases_and_fps_tolerance() -> None:
    expected = {"codec": "AVC", "width": 640, "height": 360, "fps": 24.5}

    assert (
        find_deviations("probe", clean_probe(), thresholds=T, expected_profile=expected)
        == []
    )


def test_profile_facts_not_found_are_no_mismatch() -> None:
    payload = clean_probe(width=None, fps_declared=None, fps_measured=None)
    expected = {"width": 1920, "fps": 30}

    assert (
        find_deviations("probe", payload, thresholds=T, expected_profile=expected) == []
    )


def test_expected_profile_validation() -> None:
    assert validate_expected_profile({"codec": "h264", "fps": 25}) == {
        "codec": "h264",
        "fps": 25,
    }
    with pytest.raises(InvalidInput, match=r"^expected_profile\.depth is not"):
        validate_expected_profile({"depth": 8})
    with pytest.raises(InvalidInput, match=r"^expected_profile\.width must be"):
        validate_expected_profile({"width": "wide"})
    with pytest.raises(InvalidInput, match=r"^expected_profile\.height must be"):
        validate_expected_profile({"height": 0})
    with pytest.raises(InvalidInput, match=r"^payload\.expected must be an object"):
        validate_expected_profile([640, 360], field="payload.expected")


def test_an_interval_of_exactly_the_minimum_counts_despite_float_error() -> None:
    # 2.014 - 0.014 == 1.9999999999999998 in binary floating point.
    payload = clean_probe(silence_intervals=[[0.014, 2.014]])

    records = find_deviations("probe", payload, thresholds=T)

    assert [(r["kind"], r["intervals"]) for r in records] == [
        ("silence", [[0.014, 2.014]])
    ]


def test_malformed_intervals_are_skipped() -> None:
    payload = clean_probe(
        black_intervals=[[0.0], "x", [1.0, "2"], None, [3.0, 6.0, 7.0], [4.0, 6.5]]
    )

    records = find_deviations("probe", payload, thresholds=T)

    assert [(r["kind"], r["intervals"]) for r in records] == [("black", [[4.0, 6.5]])]


# -- check ----------------------------------------------------------------------


def test_rtp_loss_decode_errors_and_corrupt_frames() -> None:
    payload = clean_check(rtp_missed_packets=37, decoding_errors=51, corrupted_frames=9)

    assert find_deviations("check", payload, thresholds=T) == [
        {"kind": "rtp_loss", "severity": "warning", "value": 37, "threshold": 0.0},
        {
            "kind": "decode_errors",
            "severity": "critical",
            "value": 51,
            "threshold": 50.0,
        },
        {
            "kind": "corrupt_frames",
            "severity": "warning",
            "value": 9,
            "threshold": 0.0,
        },
    ]


def test_rtp_loss_unseen_over_tcp_is_no_record() -> None:
    payload = clean_check(rtp_missed_packets=None, transport="tcp")

    assert find_deviations("check", payload, thresholds=T) == []


# -- stalled (probe and check) ------------------------------------------------------


def test_stalled_flag_is_critical() -> None:
    payload = clean_check(duration_sec=2.88, stalled=True)

    assert find_deviations("check", payload, thresholds=T) == [
        {"kind": "stalled", "severity": "critical", "value": 2.88, "threshold": 5.0}
    ]


@pytest.mark.parametrize(("received", "stalled"), [(4.0, False), (3.9, True)])
def test_short_sample_beyond_the_tolerance_is_stalled(
    received: float, stalled: bool
) -> None:
    payload = clean_probe(sample_duration_sec=received)

    records = find_deviations("probe", payload, thresholds=T, requested_duration_s=5.0)

    assert kinds(records) == (["stalled"] if stalled else [])


def test_requested_duration_from_the_payload_when_not_given() -> None:
    payload = clean_check(duration_sec=3.0, requested_duration_sec=5.0)

    records = find_deviations("check", payload, thresholds=T)

    assert records == [
        {"kind": "stalled", "severity": "critical", "value": 3.0, "threshold": 5.0}
    ]
