"""The smoothed z-score peak detector (pure functions)."""

from __future__ import annotations

import pytest

from camtester.errors import InvalidInput
from camtester.probes import zscore


def _wavy(n: int) -> list[float]:
    """A steady series with a small regular wiggle (std 0.1 around 1.0)."""
    return [1.0 + (0.1 if i % 2 else -0.1) for i in range(n)]


def test_flat_wiggle_has_no_peak() -> None:
    assert zscore.peak_count(_wavy(200)) == 0


def test_a_three_point_spike_is_one_peak() -> None:
    values = _wavy(100)
    values[50:53] = [9.0, 9.5, 9.0]

    # With influence 0 the spike does not enter the window: all three points
    # are flagged, and the run counts once.
    points = zscore.scan(values, influence=0.0)
    assert [p.index for p in points if p.signal == 1] == [50, 51, 52]
    assert zscore.count_peaks(points) == 1

    # With the default influence the first point raises the window's std.
    assert zscore.peak_count(values) == 1


def test_two_separate_spikes_are_two_peaks() -> None:
    values = _wavy(150)
    values[40] = 5.0
    values[100] = 5.0

    assert zscore.peak_count(values) == 2


def test_dips_are_flagged_but_not_peaks() -> None:
    values = _wavy(100)
    values[60] = -5.0

    points = zscore.scan(values)

    assert [p.index for p in points if p.signal] == [60]
    assert zscore.count_peaks(points, 1) == 0
    assert zscore.count_peaks(points, -1) == 1


def test_the_lag_points_are_never_flagged() -> None:
    values = [100.0] + _wavy(50)

    points = zscore.scan(values, lag=20)

    assert all(p.signal == 0 and p.mean is None for p in points[:20])


def test_only_a_point_beyond_threshold_stds_is_flagged() -> None:
    # The window has mean 1.0 and std 0.1: 1.95 lies 9.5 std away.
    values = _wavy(60)
    values[40] = 1.95

    assert zscore.peak_count(values, threshold=10.0) == 0
    assert zscore.peak_count(values, threshold=5.0) == 1


def test_influence_zero_keeps_the_window_clean() -> None:
    # A long plateau: with influence 0 the window never learns the new level,
    # so the whole plateau is one long run; with influence 1 it adapts at once.
    values = _wavy(40) + [6.0] * 30

    flagged_clean = [p for p in zscore.scan(values, influence=0.0) if p.signal == 1]
    flagged_full = [p for p in zscore.scan(values, influence=1.0) if p.signal == 1]

    assert len(flagged_clean) == 30
    assert 1 <= len(flagged_full) < 30


def test_min_std_stops_a_flat_series_flagging_a_wiggle() -> None:
    # TOUT of a black picture is exactly 0; one stray pixel is not a glitch.
    values = [0.0] * 40 + [1.7e-5] + [0.0] * 10

    assert zscore.peak_count(values) == 1
    assert zscore.peak_count(values, min_std=1e-4) == 0


def test_bad_parameters_name_the_parameter() -> None:
    with pytest.raises(InvalidInput, match="lag"):
        zscore.scan([1.0, 2.0], lag=1)
    with pytest.raises(InvalidInput, match="threshold"):
        zscore.scan([1.0, 2.0], threshold=0)
    with pytest.raises(InvalidInput, match="influence"):
        zscore.scan([1.0, 2.0], influence=1.5)


def test_parse_series_reads_whitespace_and_commas() -> None:
    assert zscore.parse_series("1 2.5,3\n-4e-3\t5") == [1.0, 2.5, 3.0, -0.004, 5.0]


def test_parse_series_names_the_bad_value() -> None:
    with pytest.raises(InvalidInput, match=r"value 3 is not a number: 'x'"):
        zscore.parse_series("1 2 x 4")


def test_calibration_report_marks_the_flagged_points() -> None:
    values = _wavy(30)
    values[25] = 8.0

    report = zscore.calibration_report(values, lag=20, threshold=10, influence=0.5)
    lines = report.splitlines()

    assert lines[0] == "lag=20 threshold=10 influence=0.5"
    flagged = [line for line in lines if line.rstrip().endswith("peak 1")]
    assert len(flagged) == 1 and flagged[0].split()[0] == "25"
    assert lines[-1].startswith("30 points, 1 flagged: 1 peaks, 0 dips")
    # The lag points show no window statistics.
    assert lines[2].split()[2:4] == ["-", "-"]
