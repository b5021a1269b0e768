"""The check measurement: decode a stream sample and count transport and decoder faults.

ffmpeg decodes `duration_s` seconds of the stream to nothing (`-f null`) on one thread
and prints every warning unfolded (`-loglevel repeat+level+info`); `checklog` counts
them as they come. `-progress` on a pipe tells how much stream was really decoded, so
that a stream that stops half-way is reported as `stalled` with what did arrive.

A stream that goes silent with its connection open is stopped at the first socket
timeout ffmpeg reports, or when the decoded time stands still for the connect
timeout plus STALL_MARGIN_S, and in any case after duration + connect timeout +
WALL_MARGIN_S (+ INTERRUPT_GRACE_S for ffmpeg to finish).
"""

from __future__ import annotations

import logging
from typing import Any

from camtester.errors import MeasurementInternal, TargetTimeout
from camtester.probes.checklog import LogCounter, LogCounts
from camtester.probes.ffmpeg import (
    FfmpegRun,
    PipeCollector,
    base_args,
    classify_failure,
    input_args,
    input_timed_out,
    is_local_file,
    run_ffmpeg,
)
from camtester.settings import Settings, get_settings
from camtester.uris import mask_uri, scheme_of

logger = logging.getLogger(__name__)

#: Log level of the decode run. `repeat` turns off the folding of repeated lines;
#: `info` (not `warning`) adds the "Input #0" dump that checklog needs to tell the
#: stream probe's decoder errors, which are printed twice, from the real decoder's.
LOGLEVEL = "repeat+level+info"

#: Seconds a run may take beyond the sample and the connect timeout before camtester
#: stops it: RTSP set-up, stream probing and ffmpeg's own teardown.
WALL_MARGIN_S = 3.0

#: Seconds ffmpeg gets after SIGINT to write its last progress report.
INTERRUPT_GRACE_S = 2.0

#: Seconds beyond the connect timeout that the decoded stream time may stand still
#: before camtester stops ffmpeg; ffmpeg's own socket timeout normally comes first.
STALL_MARGIN_S = 1.0

#: How much shorter than requested a sample may be and still count as complete:
#: `-t` ends on a frame boundary, so a full sample may miss up to a frame or two.
STALL_SLACK_S = 0.5


def check_stream(
    uri: str,
    *,
    duration_s: float,
    transport: str = "tcp",
    connect_timeout_s: float | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Decode `duration_s` seconds of `uri` and count what went wrong on the way.

    Raises a MeasurementError when the stream cannot be read at all (refused, not
    found, unauthorized, unresolvable, silent), SetupError when ffmpeg cannot run.
    """
    settings = settings or get_settings()
    timeout_s = (
        settings.connect_timeout_s if connect_timeout_s is None else connect_timeout_s
    )
    args = input_args(
        uri, transport=transport, connect_timeout_s=timeout_s, settings=settings
    )

    counter = LogCounter()
    run, received_s = _decode(args, duration_s, timeout_s, settings, counter)

    counts = counter.counts()
    _raise_if_nothing_received(run, uri, received_s, counts, timeout_s)
    payload = _payload(uri, transport, duration_s, received_s, run, counts)
    logger.info(
        "Checked %s: %.1fs of %.1fs, %d decoding errors, %d corrupt frames",
        mask_uri(uri),
        received_s,
        duration_s,
        counts.decoding_errors,
        counts.corrupted_frames,
    )
    return payload


def _decode(
    args: list[str],
    duration_s: float,
    timeout_s: float,
    settings: Settings,
    counter: LogCounter,
) -> tuple[FfmpegRun, float]:
    """Run the decoder, feeding stderr to `counter`; the run and seconds decoded."""
    with PipeCollector(max_bytes=4 * 1024 * 1024) as progress:
        argv = [
            *base_args(settings, loglevel=LOGLEVEL, stats=True),
            *("-threads", "1", "-t", f"{duration_s:g}"),
            *args,
            *("-progress", progress.url, "-f", "null", "-"),
        ]
        run = run_ffmpeg(
            argv,
            wall_timeout_s=duration_s + timeout_s + WALL_MARGIN_S,
            stderr_sink=counter.feed,
            pass_fds=[progress.fd],
            interrupt_grace_s=INTERRUPT_GRACE_S,
            # A camera that goes silent with its connection open: ffmpeg 5.1 would
            # wait out its socket timeout once per frame its decoder holds.
            stop_when=input_timed_out,
            stall_timeout_s=timeout_s + STALL_MARGIN_S,
        )
        text = progress.data().decode("utf-8", "replace")
    return run, received_duration(text)


def received_duration(progress: str) -> float:
    """Seconds of stream decoded, from ffmpeg's `-progress` key=value reports."""
    latest = 0
    for line in progress.splitlines():
        key, _, value = line.partition("=")
        # out_time_us is "N/A" until the first frame is out.
        if key == "out_time_us" and value.strip().lstrip("-").isdigit():
            latest = max(latest, int(value))
    return latest / 1_000_000


def _raise_if_nothing_received(
    run: FfmpegRun, uri: str, received_s: float, counts: LogCounts, timeout_s: float
) -> None:
    """A run that decoded nothing and reported no fault could not read the stream."""
    if received_s > 0 or counts.decoding_errors or counts.corrupt_input_packets:
        return

    error = classify_failure(run, uri, connect_timeout_s=timeout_s)
    if run.ok and isinstance(error, MeasurementInternal):
        # ffmpeg ended cleanly yet produced no frame: the stream sent no media.
        raise TargetTimeout(f"the stream sent no media ({mask_uri(uri)})")
    raise error


def _payload(
    uri: str,
    transport: str,
    requested_s: float,
    received_s: float,
    run: FfmpegRun,
    counts: LogCounts,
) -> dict[str, Any]:
    rtp_visible = scheme_of(uri) in ("rtsp", "rtsps") and transport == "udp"
    return {
        "duration_sec": round(received_s, 3),
        "requested_duration_sec": requested_s,
        "stalled": run.timed_out
        or run.stopped
        or received_s < requested_s - STALL_SLACK_S,
        # "RTP: missed N packets" exists only where RTP travels over UDP; over TCP
        # nothing is lost in transit, so 0 would claim a measurement never made.
        "rtp_missed_packets": counts.rtp_missed_packets if rtp_visible else None,
        "corrupted_frames": counts.corrupted_frames,
        "decoding_errors": counts.decoding_errors,
        "max_delay_reaches": counts.max_delay_reaches,
        "corrupt_input_packets": counts.corrupt_input_packets,
        "transport": transport_of(uri, transport),
    }


def transport_of(uri: str, transport: str) -> str:
    """The transport the stream's media really travelled over."""
    if is_local_file(uri):
        return "file"
    scheme = scheme_of(uri)
    if scheme in ("rtsp", "rtsps"):
        return transport
    return "udp" if scheme in ("udp", "srt") else "tcp"
