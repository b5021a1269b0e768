"""Fault intervals from detector events: pairing, merging, subtracting, counting.

Pure functions on `[start, end]` pairs in seconds, end exclusive: a black
interval [3.0, 6.0] at 25 fps holds frames 75..149.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Interval = tuple[float, float]

# Timestamps printed by ffmpeg carry six significant digits; two times closer
# than this are the same instant.
EPSILON_S = 1e-6


def pair_events(
    events: Iterable[tuple[float, str]], *, sample_start: float, sample_end: float
) -> list[Interval]:
    """Turn ("start", t) / ("end", t) events, in order, into intervals.

    A fault still open when the sample ends is closed at `sample_end`; an end
    without a start (the fault began before the first frame) opens at
    `sample_start`. A repeated start while open is ignored.
    """
    intervals: list[Interval] = []
    opened: float | None = None
    for time, kind in events:
        if kind == "start":
            opened = time if opened is None else opened
        elif kind == "end":
            begin = sample_start if opened is None else opened
            if time > begin:
                intervals.append((begin, time))
            opened = None

    if opened is not None and sample_end > opened:
        intervals.append((opened, sample_end))
    return intervals


def merge_adjacent(
    intervals: Iterable[Interval], *, max_gap_s: float
) -> list[Interval]:
    """Merge intervals that overlap or lie at most `max_gap_s` apart."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start - merged[-1][1] <= max_gap_s + EPSILON_S:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def subtract(
    intervals: Iterable[Interval], removed: Sequence[Interval]
) -> list[Interval]:
    """The parts of `intervals` that lie outside every interval in `removed`."""
    result: list[Interval] = []
    for start, end in intervals:
        pieces = [(start, end)]
        for cut_start, cut_end in removed:
            pieces = [
                part for piece in pieces for part in _cut(piece, cut_start, cut_end)
            ]
        result.extend(pieces)
    return sorted(result)


def _cut(piece: Interval, cut_start: float, cut_end: float) -> list[Interval]:
    start, end = piece
    if cut_end <= start or cut_start >= end:
        return [piece]
    parts = []
    if cut_start > start:
        parts.append((start, cut_start))
    if cut_end < end:
        parts.append((cut_end, end))
    return parts


def drop_shorter(intervals: Iterable[Interval], min_length_s: float) -> list[Interval]:
    """Intervals at least `min_length_s` long (remnants of a subtraction go)."""
    return [(s, e) for s, e in intervals if e - s >= min_length_s - EPSILON_S]


def clip(intervals: Iterable[Interval], start: float, end: float) -> list[Interval]:
    """Intervals cut to [start, end]; those outside it vanish."""
    clipped = [(max(s, start), min(e, end)) for s, e in intervals]
    return [(s, e) for s, e in clipped if e > s]


def relative(intervals: Iterable[Interval], origin: float) -> list[list[float]]:
    """Intervals as `[start, end]` lists in seconds from `origin`, to the millisecond."""
    return [[round(s - origin, 3), round(e - origin, 3)] for s, e in intervals]


def count_inside(times: Iterable[float], intervals: Sequence[Interval]) -> int:
    """How many of `times` fall in an interval, start inclusive, end exclusive."""
    count = 0
    for time in times:
        for start, end in intervals:
            if start - EPSILON_S <= time < end - EPSILON_S:
                count += 1
                break
    return count
