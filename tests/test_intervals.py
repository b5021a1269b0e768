"""Interval arithmetic of the probe (pure functions, no ffmpeg)."""

from __future__ import annotations

from camtester.probes import intervals as iv


def test_pairs_start_and_end_events() -> None:
    events = [(3.0, "start"), (6.0, "end"), (7.0, "start"), (8.5, "end")]

    found = iv.pair_events(events, sample_start=0.0, sample_end=10.0)

    assert found == [(3.0, 6.0), (7.0, 8.5)]


def test_fault_open_at_the_end_is_closed_at_the_end() -> None:
    # freezedetect reports only the start of a freeze that lasts to the end.
    found = iv.pair_events([(4.0, "start")], sample_start=0.0, sample_end=10.0)

    assert found == [(4.0, 10.0)]


def test_end_without_start_opens_at_the_sample_start() -> None:
    found = iv.pair_events([(2.0, "end")], sample_start=0.5, sample_end=10.0)

    assert found == [(0.5, 2.0)]


def test_repeated_start_keeps_the_first() -> None:
    events = [(1.0, "start"), (1.5, "start"), (2.0, "end")]

    assert iv.pair_events(events, sample_start=0, sample_end=5) == [(1.0, 2.0)]


def test_adjacent_pieces_are_merged() -> None:
    # One freeze split in two at a keyframe that re-encodes the same picture.
    pieces = [(4.0, 6.0), (2.0, 4.0), (8.0, 9.0)]

    merged = iv.merge_adjacent(pieces, max_gap_s=0.08)

    assert merged == [(2.0, 6.0), (8.0, 9.0)]


def test_pieces_a_frame_apart_are_merged_but_not_further() -> None:
    pieces = [(1.0, 2.0), (2.04, 3.0), (3.2, 4.0)]

    assert iv.merge_adjacent(pieces, max_gap_s=0.08) == [(1.0, 3.0), (3.2, 4.0)]


def test_subtract_removes_the_black_part_of_a_freeze() -> None:
    freeze = [(3.0, 6.04), (8.0, 9.0)]
    black = [(3.0, 6.0)]

    assert iv.subtract(freeze, black) == [(6.0, 6.04), (8.0, 9.0)]


def test_subtract_splits_an_interval_around_a_hole() -> None:
    assert iv.subtract([(0.0, 10.0)], [(4.0, 5.0)]) == [(0.0, 4.0), (5.0, 10.0)]


def test_drop_shorter_removes_remnants() -> None:
    assert iv.drop_shorter([(6.0, 6.04), (8.0, 9.0)], 0.5) == [(8.0, 9.0)]


def test_clip_cuts_to_the_sample() -> None:
    assert iv.clip([(-1.0, 2.0), (9.0, 12.0), (20.0, 21.0)], 0.0, 10.0) == [
        (0.0, 2.0),
        (9.0, 10.0),
    ]


def test_relative_subtracts_the_origin_and_rounds_to_ms() -> None:
    assert iv.relative([(12.3456, 15.0)], 10.0) == [[2.346, 5.0]]


def test_count_inside_is_start_inclusive_end_exclusive() -> None:
    # 25 fps, black [3.0, 6.0] holds frames 75..149.
    times = [n / 25 for n in range(250)]

    assert iv.count_inside(times, [(3.0, 6.0)]) == 75
    assert iv.count_inside(times, [(0.0, 10.0)]) == 250
    assert iv.count_inside(times, [(6.0, 10.0)]) == 100
    assert iv.count_inside(times, []) == 0
