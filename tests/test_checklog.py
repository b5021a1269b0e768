"""checklog on real ffmpeg 5.1 stderr recorded on this machine, and on edge cases.

The recorded logs and how each expected figure was counted by hand (grep) are
described in tests/data/ffmpeg-logs/README.md; the numbers below are those counts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from camtester.probes.checklog import LogCounter, LogCounts, classify, count_log

LOGS = Path(__file__).parent / "data" / "ffmpeg-logs"


def recorded(name: str) -> str:
    return (LOGS / name).read_text(encoding="utf-8")


def test_overwritten_ts_at_check_level() -> None:
    # After the "Input #0" line: 36 "error while decoding MB" + 1
    # "decode_slice_header error" (its "no frame!" and "Error while decoding stream"
    # are the same fault) + 7 of the 43 "concealing" lines that follow no slice
    # error. The 3 slice errors before the dump come from the stream probe.
    counts = count_log(recorded("ts-overwritten.info.txt"))

    assert counts == LogCounts(decoding_errors=44, corrupted_frames=43)


def test_overwritten_ts_folded_at_warning_level() -> None:
    # 36 "corrupt decoded frame" lines, 7 of them followed by "Last message
    # repeated 1 times": 43 frames, as unfolded. Level warning shows no
    # "concealing" and no "Input #0" line: 39 "error while decoding MB" + 1
    # "decode_slice_header error", the stream probe's 3 included.
    counts = count_log(recorded("ts-overwritten.warning-folded.txt"))

    assert counts == LogCounts(decoding_errors=40, corrupted_frames=43)


def test_dropped_ts_packets() -> None:
    # 23 TS packets cut: 23 "corrupt input packet in stream 0"; after the input
    # dump 17 "error while decoding MB" and 4 "concealing" lines with no slice
    # error before them (frames whose lost bytes took whole slices); 21 "corrupt
    # decoded frame". The demuxer's 60 "Packet corrupt (stream = 0, dts = ...)"
    # lines restate the same damage per parsed packet and do not count.
    counts = count_log(recorded("ts-dropped.info.txt"))

    assert counts == LogCounts(
        decoding_errors=21, corrupted_frames=21, corrupt_input_packets=23
    )


def test_h264_without_pps() -> None:
    # 100 slices: each prints "non-existing PPS 0 referenced", then
    # "decode_slice_header error", "no frame!" and ffmpeg's "Error while decoding
    # stream #0:0", one fault each; the stream probe's decoder printed the same
    # 100 slices (with "non-existing PPS" twice each) before the input dump.
    counts = count_log(recorded("h264-nopps.info.txt"))

    assert counts == LogCounts(decoding_errors=100)


def test_rtsp_corrupt_mount_shows_only_concealment() -> None:
    # The simulator's corrupt clip through GStreamer: its garbled NAL units never
    # reach the decoder, which prints no slice line, only 4 "concealing" lines.
    counts = count_log(recorded("rtsp-corrupt-mount.info.txt"))

    assert counts == LogCounts(decoding_errors=4, corrupted_frames=4)


def test_rtsp_over_udp_with_loss() -> None:
    # 39 "RTP: missed N packets" lines summing to 40 (the namespace's drop
    # counter read 40), each right after "max delay reached"; decoder: 10
    # "error while decoding MB", 1 "Missing reference picture", 2 "mmco: unref
    # short failure" and 1 bare "concealing".
    counts = count_log(recorded("rtsp-udp-loss5.info.txt"))

    assert counts == LogCounts(
        rtp_missed_packets=40,
        decoding_errors=14,
        corrupted_frames=11,
        max_delay_reaches=39,
    )


def test_rtsp_over_udp_with_loss_folded() -> None:
    # 38 "RTP: missed" lines summing to 39 (drop counter: 39); 12 "corrupt decoded
    # frame" lines, 2 of them followed by "Last message repeated 1 times".
    counts = count_log(recorded("rtsp-udp-loss5.warning-folded.txt"))

    assert counts == LogCounts(
        rtp_missed_packets=39,
        decoding_errors=16,
        corrupted_frames=14,
        max_delay_reaches=38,
    )


@pytest.mark.parametrize(
    "name",
    ["ts-overwritten.info.txt", "ts-dropped.info.txt", "rtsp-udp-loss5.info.txt"],
)
def test_the_level_prefix_changes_nothing(name: str) -> None:
    text = recorded(name)
    bare = re.sub(r"\[(?:info|warning|error|verbose|debug)\] ", "", text)
    assert bare != text

    assert count_log(bare) == count_log(text)


def test_folded_repeats_of_an_uncounted_line_add_nothing() -> None:
    # Default level: the probe's decoder prints "non-existing PPS" twice in a row
    # per slice, folded into "Last message repeated 1 times" (100 of them).
    text = recorded("h264-nopps.default-folded.txt")
    assert text.count("Last message repeated 1 times") == 100

    assert count_log(text) == LogCounts(decoding_errors=100)


def test_repeat_adds_to_the_kind_it_repeats_only() -> None:
    lines = [
        "[h264 @ 0x1] [error] error while decoding MB 3 4, bytestream 12",
        "[warning] rtsp://cam/live: corrupt decoded frame in stream 0",
        "    Last message repeated 4 times",
        "[rtsp @ 0x2] [warning] RTP: missed 3 packets",
        "    Last message repeated 2 times",
        "[rtsp @ 0x2] [warning] max delay reached. need to consume packet",
        "[warning] in.ts: corrupt input packet in stream 1",
        "    Last message repeated 1 times",
    ]

    counts = count_log(lines)

    # RTP: one line of 3 packets repeated twice is 3 lines of 3 packets.
    assert counts == LogCounts(
        rtp_missed_packets=9,
        decoding_errors=1,
        corrupted_frames=5,
        max_delay_reaches=1,
        corrupt_input_packets=2,
    )


def test_lines_without_level_prefix() -> None:
    text = (
        "[rtsp @ 0x55] RTP: missed 2 packets\n"
        "[h264 @ 0x56] decode_slice_header error\n"
        "[h264 @ 0x56] Invalid NAL unit size (81920 > 1320).\n"
        "[hevc @ 0x57] Invalid NAL unit 45, skipping.\n"
        "Error while decoding stream #0:0: Invalid data found when processing input\n"
    )

    assert count_log(text) == LogCounts(rtp_missed_packets=2, decoding_errors=4)


def test_repeat_before_any_line_and_after_an_uncounted_one() -> None:
    # A repeat refers to the line right before it, not to the last counted one.
    text = (
        "    Last message repeated 7 times\n"
        "[warning] x: corrupt decoded frame in stream 0\n"
        "[h264 @ 0x1] [error] non-existing PPS 0 referenced\n"
        "    Last message repeated 3 times\n"
    )

    assert count_log(text) == LogCounts(corrupted_frames=1)


def test_terminal_repeats_restate_a_running_total() -> None:
    # On a terminal log.c rewrites the repeat line with "\r" as the count grows,
    # then prints the final total once more with "\n".
    text = (
        "[null @ 0x1] corrupt decoded frame in stream 0\n"
        "    Last message repeated 1 times\r"
        "    Last message repeated 2 times\r"
        "    Last message repeated 3 times\r"
        "    Last message repeated 3 times\n"
        "[h264 @ 0x2] error while decoding MB 1 1, bytestream 5\n"
    )

    assert count_log(text) == LogCounts(corrupted_frames=4, decoding_errors=1)


def test_probe_stage_errors_count_only_without_an_input_dump() -> None:
    before = "[h264 @ 0xa] [error] error while decoding MB 5 0, bytestream 7201"
    dump = "[info] Input #0, rtsp, from 'rtsp://cam/live':"
    after = "[h264 @ 0xb] [error] error while decoding MB 5 0, bytestream 7201"

    assert count_log([before, dump, after]).decoding_errors == 1
    assert count_log([before, after]).decoding_errors == 2


def test_concealment_counts_only_when_no_slice_error_came_first() -> None:
    lines = [
        # Frame 1 of decoder A: a slice broke, then the frame was repaired.
        "[h264 @ 0xa] [error] Reference 5 >= 4",
        "[h264 @ 0xa] [error] error while decoding MB 28 17, bytestream 1127",
        "[h264 @ 0xa] [info] concealing 261 DC, 261 AC, 261 MV errors in P frame",
        # Frame 2 of A: repaired for slices that never arrived.
        "[h264 @ 0xa] [info] concealing 861 DC, 861 AC, 861 MV errors in P frame",
        # Decoder B's slice error does not cover decoder C's repair.
        "[h264 @ 0xb] [error] error while decoding MB 1 1, bytestream 3",
        "[h264 @ 0xc] [info] concealing 20 DC, 20 AC, 20 MV errors in I frame",
    ]

    assert count_log(lines).decoding_errors == 4


def test_repeated_concealment_is_one_fault_per_frame() -> None:
    text = (
        "[h264 @ 0xa] error while decoding MB 3 0, bytestream 9019\n"
        "[h264 @ 0xa] concealing 920 DC, 920 AC, 920 MV errors in P frame\n"
        "    Last message repeated 5 times\n"
    )

    # The slice error, then 5 more whole frames lost without a slice line.
    assert count_log(text).decoding_errors == 6


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # The packet's only slice dropped: one fault, whatever follows it.
        (
            [
                "[h264 @ 0xa] [error] decode_slice_header error",
                "[h264 @ 0xa] [error] no frame!",
                "[error] Error while decoding stream #0:0: Invalid data found",
            ],
            1,
        ),
        # No slice line: "no frame!" is the fault, ffmpeg's line restates it.
        (
            [
                "[h264 @ 0xa] [error] no frame!",
                "[error] Error while decoding stream #0:0: Invalid data found",
            ],
            1,
        ),
        # Another codec's rejected packet counts through ffmpeg's line alone.
        (
            [
                "[aac @ 0xd] [error] Prediction is not allowed in AAC-LC.",
                "[error] Error while decoding stream #0:1: Invalid data found",
                "[error] Error while decoding stream #0:1: Invalid data found",
            ],
            2,
        ),
    ],
)
def test_one_packet_one_fault(lines: list[str], expected: int) -> None:
    assert count_log(lines).decoding_errors == expected


def test_feeding_line_by_line_equals_counting_the_text() -> None:
    text = recorded("ts-dropped.info.txt")
    counter = LogCounter()
    for line in text.splitlines():
        counter.feed(line)

    assert counter.counts() == count_log(text)


def test_glued_stats_line_still_counts() -> None:
    # Without -nostats, ffmpeg's "frame=..." report ends in "\r" or not at all,
    # and the next message lands on the same line.
    line = (
        "[info] frame=    1 fps=0.0 q=-0.0 size=N/A time=00:00:00.04 bitrate=N/A "
        "speed=N/A    [h264 @ 0x5] [error] error while decoding MB 11 16, "
        "bytestream 2121"
    )

    assert classify(line) == ("slice_error", 1)
    assert count_log([line]).decoding_errors == 1


def test_as_dict_names_the_payload_fields() -> None:
    assert LogCounts(rtp_missed_packets=1).as_dict() == {
        "rtp_missed_packets": 1,
        "decoding_errors": 0,
        "corrupted_frames": 0,
        "max_delay_reaches": 0,
        "corrupt_input_packets": 0,
    }


ffmpeg_like = st.lists(
    st.one_of(
        st.text(),
        st.sampled_from(
            [
                "    Last message repeated 99999999999999999999 times",
                "RTP: missed 18446744073709551617 packets",
                "Last message repeated -1 times",
                "RTP: missed  packets",
                "Input #0, , from '",
                "\r\n\x00\x85\u2028",
            ]
        ),
        st.builds(
            "[{}] RTP: missed {} packets".format,
            st.sampled_from(["warning", "error", ""]),
            st.integers(min_value=0, max_value=10**6),
        ),
    )
)


@given(ffmpeg_like)
def test_never_raises_and_counts_are_non_negative(lines: list[str]) -> None:
    counts = count_log(lines)

    assert all(value >= 0 for value in counts.as_dict().values())
    assert count_log("\n".join(lines)) == count_log(lines)


@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    assert isinstance(count_log(text), LogCounts)
