"""From a probe's per-frame records to its payload: intervals, counts, stream facts.

Pure functions: the probe collects what ffmpeg wrote and hands it over here.
All times in the payload are seconds from the sample's first frame.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from camtester.probes import intervals as iv
from camtester.probes.description import StderrWatch, StreamLine
from camtester.probes.frames import FrameRecord, PacketLog
from camtester.probes.zscore import peak_count

#: Frame rate assumed for a video stream too short to measure one.
FALLBACK_FPS = 25.0
#: Pieces of one audio fault closer than this are merged, seconds.
AUDIO_MERGE_GAP_S = 0.1
#: Pieces of one video fault at most this many frame durations apart are merged.
VIDEO_MERGE_GAP_FRAMES = 2
#: Floor under the z-score window's deviation for TOUT (a fraction of pixels):
#: a flat stretch (TOUT exactly 0) must not turn a one-pixel wiggle into a peak.
TOUT_MIN_STD = 1e-4

#: A frame starting this close before the sample's end starts at its end, seconds.
TRIM_TOLERANCE_S = 1e-3

TOUT = "lavfi.signalstats.TOUT"
SAMPLES = "lavfi.astats.Overall.Number_of_samples"


@dataclass(frozen=True)
class Detectors:
    """The detector settings the probe ran with, needed to read their events."""

    freeze_min_s: float
    zscore_lag: int
    zscore_threshold: float
    zscore_influence: float


@dataclass
class Timeline:
    """Where the sample starts and ends, and how long a video frame lasts."""

    origin: float
    end: float
    frame_s: float

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.origin)


def timeline(
    video: Sequence[FrameRecord], audio: Sequence[FrameRecord], sample_rate: int | None
) -> Timeline:
    """The sample's span: earliest frame of either stream to the end of the last one.

    Earliest, not first: the first frames of an RTSP stream whose first packet
    has no timestamp come out of the decoder slightly out of order.
    """
    frame_s = video_frame_duration(video)
    firsts, ends = [], []
    if video:
        firsts.append(min(frame.pts_time for frame in video))
        ends.append(max(frame.pts_time for frame in video) + frame_s)
    if audio:
        last = max(audio, key=lambda frame: frame.pts_time)
        samples = last.number(SAMPLES)
        firsts.append(min(frame.pts_time for frame in audio))
        ends.append(
            last.pts_time + (samples / sample_rate if samples and sample_rate else 0)
        )
    if not firsts:
        return Timeline(0.0, 0.0, frame_s)
    return Timeline(min(firsts), max(ends), frame_s)


def trim_to_sample(
    video: Sequence[FrameRecord], audio: Sequence[FrameRecord], requested_s: float
) -> tuple[list[FrameRecord], list[FrameRecord]]:
    """The frames that start within `requested_s` of the earliest one.

    ffmpeg's `-t` counts from the input's start time, which for an RTSP stream
    without audio is the first packet's decoding time, a reorder delay before its
    first picture: a frame or two more get through than the sample holds.
    """
    starts = [frame.pts_time for frame in (*video, *audio)]
    if not starts:
        return list(video), list(audio)
    # ffmpeg prints six significant digits: the frame at 4.0 s may say 3.99999.
    limit = min(starts) + requested_s - TRIM_TOLERANCE_S
    return (
        [frame for frame in video if frame.pts_time < limit],
        [frame for frame in audio if frame.pts_time < limit],
    )


def video_frame_duration(video: Sequence[FrameRecord]) -> float:
    """The typical distance between frames (the median, robust to a dropped one)."""
    times = sorted(frame.pts_time for frame in video)
    steps = [b - a for a, b in itertools.pairwise(times)]
    steps = [step for step in steps if step > 0]
    return statistics.median(steps) if steps else 1 / FALLBACK_FPS


def events(
    frames: Sequence[FrameRecord], start_key: str, end_key: str
) -> list[tuple[float, str]]:
    """The ("start"/"end", time) events a detector left in frame tags, in order.

    The tag values are the times of the edges, not of the frame carrying them:
    freezedetect only knows a freeze began after it has lasted its minimum.
    """
    found: list[tuple[float, str]] = []
    for frame in frames:
        end = frame.number(end_key)
        if end is not None:
            found.append((end, "end"))
        start = frame.number(start_key)
        if start is not None:
            found.append((start, "start"))
    return found


def black_intervals(video: Sequence[FrameRecord], line: Timeline) -> list[iv.Interval]:
    """Black stretches; one still open at the end closes at the sample's end."""
    found = iv.pair_events(
        events(video, "lavfi.black_start", "lavfi.black_end"),
        sample_start=line.origin,
        sample_end=line.end,
    )
    merged = iv.merge_adjacent(found, max_gap_s=VIDEO_MERGE_GAP_FRAMES * line.frame_s)
    return iv.clip(merged, line.origin, line.end)


def freeze_intervals(
    video: Sequence[FrameRecord],
    line: Timeline,
    black: Sequence[iv.Interval],
    min_s: float,
) -> list[iv.Interval]:
    """Frozen stretches that are not black: a black picture is also a still one."""
    found = iv.pair_events(
        events(
            video, "lavfi.freezedetect.freeze_start", "lavfi.freezedetect.freeze_end"
        ),
        sample_start=line.origin,
        sample_end=line.end,
    )

    # freezedetect ends a freeze at a keyframe that re-encodes the same picture
    # and starts a new one right there: one freeze, two pieces.
    merged = iv.merge_adjacent(found, max_gap_s=VIDEO_MERGE_GAP_FRAMES * line.frame_s)
    not_black = iv.subtract(merged, black)
    return iv.clip(iv.drop_shorter(not_black, min_s), line.origin, line.end)


def silence_intervals(
    audio: Sequence[FrameRecord], line: Timeline
) -> list[iv.Interval]:
    found = iv.pair_events(
        events(audio, "lavfi.silence_start", "lavfi.silence_end"),
        sample_start=line.origin,
        sample_end=line.end,
    )
    merged = iv.merge_adjacent(found, max_gap_s=AUDIO_MERGE_GAP_S)
    return iv.clip(merged, line.origin, line.end)


def tout_series(
    video: Sequence[FrameRecord], excluded: Sequence[iv.Interval]
) -> list[float]:
    """TOUT of every frame outside black and frozen stretches.

    Those stretches are faults of their own; their flat TOUT would also make the
    first live frame after them look like an outlier.
    """
    series = []
    for frame in video:
        value = frame.number(TOUT)
        if value is not None and not iv.count_inside([frame.pts_time], excluded):
            series.append(value)
    return series


def stream_facts(
    packets: PacketLog,
    watch: StderrWatch,
    line: Timeline,
    video_times: Sequence[float],
) -> dict[str, Any]:
    """Codecs, size, frame rates, bit rate and keyframe interval as found.

    All of it comes from the probe's one connection: asking ffprobe would open a
    second session to the camera (some allow only one or two at a time) and
    could meet a different stream. The framecrc header and packet lines give
    codecs, size, keyframes and bytes; the decoded frames give the measured
    rate; only the declared rate needs ffmpeg's own input description.
    """
    video = packets.stream_of_type("video")
    audio = packets.stream_of_type("audio")
    described_video = watch.first("Video")
    described_audio = watch.first("Audio")
    return {
        "video_codec": video.codec if video else _codec(described_video),
        "audio_codec": audio.codec if audio else _codec(described_audio),
        "width": video.width if video else None,
        "height": video.height if video else None,
        "fps_declared": described_video.fps if described_video else None,
        "fps_measured": _measured_fps(video_times),
        "bit_rate_kbps": _bit_rate_kbps(packets, line.duration),
        "keyframe_interval_sec": keyframe_interval(packets),
        "has_video": video is not None or described_video is not None,
        "has_audio": audio is not None or described_audio is not None,
    }


def _codec(described: StreamLine | None) -> str | None:
    return described.codec if described is not None else None


def _measured_fps(times: Sequence[float]) -> float | None:
    """Frames per second between the earliest and the latest frame."""
    if len(times) < 2 or max(times) <= min(times):
        return None
    return round((len(times) - 1) / (max(times) - min(times)), 3)


def _bit_rate_kbps(packets: PacketLog, duration_s: float) -> float | None:
    if duration_s <= 0 or not packets.packets:
        return None
    total = sum(packet.size for packet in packets.packets)
    return round(total * 8 / duration_s / 1000, 1)


def keyframe_interval(packets: PacketLog) -> float | None:
    """Mean seconds between video keyframes; None with fewer than two."""
    video = packets.stream_of_type("video")
    if video is None or not video.time_base:
        return None
    keys = sorted(
        p.dts
        for p in packets.packets
        if p.stream == video.index and p.key and p.dts is not None
    )
    if len(keys) < 2:
        return None
    return round((keys[-1] - keys[0]) / (len(keys) - 1) * video.time_base, 3)


def summarize(
    video: Sequence[FrameRecord],
    audio: Sequence[FrameRecord],
    packets: PacketLog,
    watch: StderrWatch,
    *,
    requested_s: float,
    detectors: Detectors,
    cut_short: bool,
) -> dict[str, Any]:
    """The probe payload (see DESIGN.md) from everything one ffmpeg run wrote.

    `cut_short` says that ffmpeg had to be stopped before it ended by itself.
    """
    video, audio = trim_to_sample(video, audio, requested_s)
    audio_header = packets.stream_of_type("audio")
    line = timeline(video, audio, audio_header.sample_rate if audio_header else None)
    line.end = min(line.end, line.origin + requested_s)
    black = black_intervals(video, line)
    freeze = freeze_intervals(video, line, black, detectors.freeze_min_s)
    silence = silence_intervals(audio, line)
    video_times = [frame.pts_time for frame in video]
    tout = tout_series(video, [*black, *freeze])

    # A sample shorter than asked for by more than a frame or so: the camera
    # stopped sending (or a file ended). Everything above already ends at the
    # real end, so nothing is extrapolated over the missing part.
    tolerance = max(0.5, 2 * line.frame_s)
    stalled = cut_short or line.duration < requested_s - tolerance

    payload: dict[str, Any] = {
        "requested_duration_sec": requested_s,
        "sample_duration_sec": round(line.duration, 3),
        "stalled": stalled,
        "recording_errors": watch.error_lines,
        "video_frames": len(video),
        "black_frames": iv.count_inside(video_times, black),
        "freeze_frames": iv.count_inside(video_times, freeze),
        "temporal_outliers_peaks": peak_count(
            tout,
            lag=detectors.zscore_lag,
            threshold=detectors.zscore_threshold,
            influence=detectors.zscore_influence,
            min_std=TOUT_MIN_STD,
        ),
        "tout_mean": round(statistics.fmean(tout), 6) if tout else None,
        "audio_frames": len(audio),
        "silence_frames": iv.count_inside([f.pts_time for f in audio], silence),
        "black_intervals": iv.relative(black, line.origin),
        "freeze_intervals": iv.relative(freeze, line.origin),
        "silence_intervals": iv.relative(silence, line.origin),
    }
    payload.update(stream_facts(packets, watch, line, video_times))
    return payload
