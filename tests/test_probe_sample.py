"""From per-frame records to the probe payload (pure, with records shaped like ffmpeg's).

The records are what the metadata filters print for a stream whose faults are
known by construction; the field cases of the probe's issue are here.
"""

from __future__ import annotations

from camtester.probes.description import StderrWatch
from camtester.probes.frames import (
    FrameRecord,
    PacketLog,
    parse_framecrc,
    parse_metadata_print,
    split_jpegs,
)
from camtester.probes.sample import Detectors, summarize

FPS = 25
DETECTORS = Detectors(
    freeze_min_s=0.5, zscore_lag=20, zscore_threshold=10.0, zscore_influence=0.5
)
BLACK = ("lavfi.black_start", "lavfi.black_end")
FREEZE = ("lavfi.freezedetect.freeze_start", "lavfi.freezedetect.freeze_end")
SILENCE = ("lavfi.silence_start", "lavfi.silence_end")


def video_frames(seconds: float, origin: float = 0.0) -> list[FrameRecord]:
    """Frames at 25 fps from `origin`, each with a steady small TOUT."""
    count = round(seconds * FPS)
    return [
        FrameRecord(origin + n / FPS, {"lavfi.signalstats.TOUT": "3e-05"})
        for n in range(count)
    ]


def audio_frames(seconds: float, origin: float = 0.0) -> list[FrameRecord]:
    """AAC frames: 1024 samples at 48 kHz."""
    count = int(seconds * 48000 / 1024)
    return [
        FrameRecord(
            origin + n * 1024 / 48000,
            {"lavfi.astats.Overall.Number_of_samples": "1024"},
        )
        for n in range(count)
    ]


def tag(frames: list[FrameRecord], at: float, key: str, value: float) -> None:
    """Put `key=value` on the first frame at or after `at` seconds."""
    frame = next(f for f in frames if f.pts_time >= at - 1e-9)
    frame.tags[key] = f"{value:g}"


def packets(video: bool = True, audio: bool = True) -> PacketLog:
    header = []
    if video:
        header += ["#tb 0: 1/90000", "#media_type 0: video", "#codec_id 0: h264"]
        header += ["#dimensions 0: 640x360"]
    if audio:
        index = 1 if video else 0
        header += [f"#tb {index}: 1/48000", f"#media_type {index}: audio"]
        header += [f"#codec_id {index}: aac", f"#sample_rate {index}: 48000"]
    return parse_framecrc("\n".join(header))


def summary(
    video: list[FrameRecord],
    audio: list[FrameRecord],
    *,
    requested_s: float = 10.0,
    log: PacketLog | None = None,
    cut_short: bool = False,
) -> dict[str, object]:
    return summarize(
        video,
        audio,
        log if log is not None else packets(bool(video), bool(audio)),
        StderrWatch(),
        requested_s=requested_s,
        detectors=DETECTORS,
        cut_short=cut_short,
    )


def test_freeze_to_the_end_is_closed_at_the_end() -> None:
    # Field case: frozen from 4 s to the end of a 10 s sample; freezedetect
    # reports the start (on the frame 0.5 s later) and never an end.
    video = video_frames(10)
    tag(video, 4.5, FREEZE[0], 4.0)

    payload = summary(video, audio_frames(10))

    assert payload["freeze_intervals"] == [[4.0, 10.0]]
    assert payload["freeze_frames"] == 150
    assert payload["sample_duration_sec"] == 10.0


def test_black_for_the_whole_sample() -> None:
    # Field case: black from the first frame, never ending: [0, 10], not
    # blackdetect's log line that closes at the last frame (9.96 s).
    video = video_frames(10)
    tag(video, 0.0, BLACK[0], 0.0)

    payload = summary(video, audio_frames(10))

    assert payload["black_intervals"] == [[0.0, 10.0]]
    assert payload["black_frames"] == 250


def test_black_tail() -> None:
    video = video_frames(10)
    tag(video, 6.0, BLACK[0], 6.0)

    payload = summary(video, audio_frames(10))

    assert payload["black_intervals"] == [[6.0, 10.0]]
    assert payload["black_frames"] == 100


def test_intervals_are_relative_to_the_first_frame() -> None:
    # An RTSP sample whose timestamps start at 1.52 s.
    video = video_frames(10, origin=1.52)
    tag(video, 4.52, BLACK[0], 4.52)
    tag(video, 7.52, BLACK[1], 7.52)

    payload = summary(video, audio_frames(10, origin=1.52))

    assert payload["black_intervals"] == [[3.0, 6.0]]
    assert payload["black_frames"] == 75


def test_black_is_not_also_a_freeze() -> None:
    # A black stretch without noise is also a still picture to freezedetect.
    video = video_frames(10)
    tag(video, 3.0, BLACK[0], 3.0)
    tag(video, 6.0, BLACK[1], 6.0)
    tag(video, 3.5, FREEZE[0], 3.0)
    tag(video, 6.04, FREEZE[1], 6.04)

    payload = summary(video, audio_frames(10))

    assert payload["black_intervals"] == [[3.0, 6.0]]
    assert payload["freeze_intervals"] == []
    assert payload["freeze_frames"] == 0


def test_freeze_split_at_a_keyframe_is_one_freeze() -> None:
    video = video_frames(10)
    tag(video, 2.5, FREEZE[0], 2.0)
    tag(video, 4.0, FREEZE[1], 4.0)
    tag(video, 4.5, FREEZE[0], 4.0)
    tag(video, 7.0, FREEZE[1], 7.0)

    payload = summary(video, audio_frames(10))

    assert payload["freeze_intervals"] == [[2.0, 7.0]]
    assert payload["freeze_frames"] == 125


def test_silence_counts_audio_frames() -> None:
    audio = audio_frames(10)
    tag(audio, 4.5, SILENCE[0], 4.0)
    tag(audio, 8.0, SILENCE[1], 8.0)

    payload = summary(video_frames(10), audio)

    assert payload["silence_intervals"] == [[4.0, 8.0]]
    # Frames starting in [4.0, 8.0): n * 1024 / 48000 for n = 188..374.
    assert payload["silence_frames"] == 187


def test_no_audio_stream_is_not_silence() -> None:
    payload = summary(video_frames(5), [], requested_s=5)

    assert payload["has_audio"] is False
    assert payload["audio_codec"] is None
    assert payload["audio_frames"] == 0
    assert payload["silence_frames"] == 0
    assert payload["silence_intervals"] == []


def test_no_video_stream() -> None:
    payload = summary([], audio_frames(5), requested_s=5)

    assert payload["has_video"] is False
    assert payload["video_frames"] == 0
    assert payload["width"] is None
    assert payload["fps_measured"] is None
    assert payload["black_intervals"] == []


def test_short_sample_is_stalled_and_analysed_as_what_it_is() -> None:
    # 3 s arrived of 10 s asked for; black from 2 s was still on when it stopped.
    video = video_frames(3)
    tag(video, 2.0, BLACK[0], 2.0)

    payload = summary(video, audio_frames(3), requested_s=10)

    assert payload["stalled"] is True
    assert payload["sample_duration_sec"] == 3.0
    assert payload["requested_duration_sec"] == 10
    assert payload["black_intervals"] == [[2.0, 3.0]]
    assert payload["video_frames"] == 75


def test_full_sample_is_not_stalled_unless_cut_short() -> None:
    assert summary(video_frames(10), audio_frames(10))["stalled"] is False
    assert summary(video_frames(10), [], cut_short=True)["stalled"] is True


def test_stream_facts_from_packets_and_frames() -> None:
    lines = [
        "#tb 0: 1/90000",
        "#media_type 0: video",
        "#codec_id 0: h264",
        "#dimensions 0: 640x360",
        # A first packet without pts, as RTSP gives it; flags absent = key.
        "0,      -7200, -9223372036854775808,     3600,     8000, 0x26d17ed0",
        "0,      -3600,       7200,     3600,     4000, 0xe734b7bf, F=0x0",
        "0,      82800,      90000,     3600,     8000, 0x1f4fc037",
        "0,     172800,     180000,     3600,     5000, 0x1f4fc037, F=0x1",
    ]
    log = parse_framecrc("\n".join(lines))
    watch = StderrWatch()
    for line in [
        "[info] Input #0, rtsp, from 'rtsp://127.0.0.1:8554/clean':",
        "[info]   Stream #0:0: Video: h264 (High), yuv420p, 640x360, 25 fps, 25 tbr",
        "[info] Output #0, tee, to 'x':",
        "[info]   Stream #0:0: Video: mjpeg, yuvj420p, 320x180, 12.5 fps",
    ]:
        watch(line)

    payload = summarize(
        video_frames(2),
        [],
        log,
        watch,
        requested_s=2,
        detectors=DETECTORS,
        cut_short=False,
    )

    assert payload["video_codec"] == "h264"
    assert (payload["width"], payload["height"]) == (640, 360)
    assert payload["fps_declared"] == 25.0
    assert payload["fps_measured"] == 25.0
    assert payload["keyframe_interval_sec"] == 1.0
    # 25000 bytes in 2 s.
    assert payload["bit_rate_kbps"] == 100.0


def test_metadata_print_parser() -> None:
    text = (
        "frame:0    pts:0       pts_time:0\n"
        "lavfi.signalstats.TOUT=5.2e-05\n"
        "frame:1    pts:512     pts_time:0.04\n"
        "lavfi.signalstats.TOUT=nan\n"
        "lavfi.black_start=0.04\n"
        "frame:2    pts:NOPTS   pts_time:NOPTS\n"
        "lavfi.signalstats.TOUT=1\n"
    )

    frames = parse_metadata_print(text)

    assert [f.pts_time for f in frames] == [0.0, 0.04]
    assert frames[0].number("lavfi.signalstats.TOUT") == 5.2e-05
    assert frames[1].number("lavfi.signalstats.TOUT") is None
    assert frames[1].number("lavfi.black_start") == 0.04


def test_split_jpegs() -> None:
    first = b"\xff\xd8\xff\xe0abc\xff\x00def\xff\xd9"
    second = b"\xff\xd8\xff\xdbxyz\xff\xd9"

    assert split_jpegs(first + second) == [first, second]
    assert split_jpegs(b"") == []


def test_error_lines_are_counted_without_the_probes_own() -> None:
    watch = StderrWatch()
    for line in [
        "[h264 @ 0x1] [error] error while decoding MB 3 4",
        "    Last message repeated 2 times",
        "[h264 @ 0x1] [warning] something",
        "    Last message repeated 5 times",
        "[tee @ 0x2] [error] Slave muxer #1 failed: Invalid argument",
        "[error] Error writing trailer of /dev/fd/8: Immediate exit requested",
        "[error] rtsp://127.0.0.1/x: Connection timed out",
    ]:
        watch(line)

    assert watch.error_lines == 4
