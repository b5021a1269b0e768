"""The smoothed z-score peak detector, for the TOUT series of a probe.

For each point after the first `lag`, the detector compares the point with the
mean and standard deviation of the `lag` points before it. A point more than
`threshold` deviations away is flagged (+1 above, -1 below) and enters the
moving window only with weight `influence`, so that one spike does not raise
the bar for the next. A run of consecutive points flagged above the mean is one
peak: a glitch lasting three frames is one temporal outlier, not three.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from camtester.errors import InvalidInput

DEFAULT_LAG = 20
DEFAULT_THRESHOLD = 10.0
DEFAULT_INFLUENCE = 0.5


@dataclass(frozen=True)
class Point:
    """One point as the detector saw it; mean and std are None during the lag."""

    index: int
    value: float
    mean: float | None
    std: float | None
    signal: int


def scan(
    values: Sequence[float],
    *,
    lag: int = DEFAULT_LAG,
    threshold: float = DEFAULT_THRESHOLD,
    influence: float = DEFAULT_INFLUENCE,
    min_std: float = 0.0,
) -> list[Point]:
    """Run the detector over `values`.

    `min_std` is a floor under the window's deviation: a series that is flat for
    `lag` points (a black or frozen picture has TOUT exactly 0) would otherwise
    flag its next tiny wiggle as infinitely many deviations away.
    """
    _check_params(lag, threshold, influence)
    points = [Point(i, v, None, None, 0) for i, v in enumerate(values[:lag])]
    filtered = list(values[:lag])
    for i in range(lag, len(values)):
        window = filtered[i - lag : i]
        mean = statistics.fmean(window)
        std = statistics.pstdev(window, mean)
        deviation = values[i] - mean

        signal = 0
        if abs(deviation) > threshold * max(std, min_std):
            signal = 1 if deviation > 0 else -1
            filtered.append(influence * values[i] + (1 - influence) * filtered[i - 1])
        else:
            filtered.append(values[i])
        points.append(Point(i, values[i], mean, std, signal))
    return points


def _check_params(lag: int, threshold: float, influence: float) -> None:
    if lag < 2:
        raise InvalidInput("lag must be an integer >= 2")
    if threshold <= 0:
        raise InvalidInput("threshold must be a number > 0")
    if not 0 <= influence <= 1:
        raise InvalidInput("influence must be a number from 0 to 1")


def count_peaks(points: Sequence[Point], direction: int = 1) -> int:
    """Runs of consecutive points flagged in `direction` (+1 peaks, -1 dips)."""
    runs = 0
    previous = 0
    for point in points:
        if point.signal == direction and previous != direction:
            runs += 1
        previous = point.signal
    return runs


def peak_count(
    values: Sequence[float],
    *,
    lag: int = DEFAULT_LAG,
    threshold: float = DEFAULT_THRESHOLD,
    influence: float = DEFAULT_INFLUENCE,
    min_std: float = 0.0,
) -> int:
    """The number of peaks (runs flagged above the mean) in `values`."""
    points = scan(
        values, lag=lag, threshold=threshold, influence=influence, min_std=min_std
    )
    return count_peaks(points, 1)


def parse_series(text: str) -> list[float]:
    """Numbers separated by whitespace or commas; InvalidInput names a bad one."""
    values = []
    for number, token in enumerate(t for t in re.split(r"[\s,;]+", text) if t):
        try:
            values.append(float(token))
        except ValueError as exc:
            raise InvalidInput(
                f"value {number + 1} is not a number: {token!r}"
            ) from exc
    return values


def calibration_report(
    values: Sequence[float],
    lag: int = DEFAULT_LAG,
    threshold: float = DEFAULT_THRESHOLD,
    influence: float = DEFAULT_INFLUENCE,
) -> str:
    """A table of every point with its window mean, std and flag, and a summary.

    For `camtester zscore-calibrate`: feed it a TOUT series and try parameters
    until the flagged points are the ones a person calls glitches.
    """
    points = scan(values, lag=lag, threshold=threshold, influence=influence)
    lines = [f"lag={lag} threshold={threshold:g} influence={influence:g}"]
    lines.append(f"{'index':>6} {'value':>14} {'mean':>14} {'std':>14}  flag")
    peak = 0
    previous = 0
    for point in points:
        flag = {1: "+", -1: "-"}.get(point.signal, "")
        if point.signal == 1 and previous != 1:
            peak += 1
            flag += f"  peak {peak}"
        previous = point.signal
        lines.append(
            f"{point.index:>6} {point.value:>14.6g} {_cell(point.mean)} "
            f"{_cell(point.std)}  {flag}".rstrip()
        )

    dips = count_peaks(points, -1)
    flagged = sum(1 for p in points if p.signal)
    lines.append(
        f"{len(points)} points, {flagged} flagged: {peak} peaks, {dips} dips"
        + (f" (the first {lag} points only fill the window)" if points else "")
    )
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return f"{'-':>14}" if value is None else f"{value:>14.6g}"
