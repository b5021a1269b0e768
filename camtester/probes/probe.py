"""The probe: picture and sound faults of a live stream, from one ffmpeg process.

ffmpeg reads `duration` seconds of the stream once and analyses it as it
arrives; nothing is recorded and nothing is decoded twice. What the analysis
finds comes back through pipes, never through ffmpeg's log:

    -i URI -+- video -> split
            |     +- 320 px -> freezedetect -> blackdetect -> signalstats (TOUT)
            |     |         -> metadata print -> pipe 1
            |     +- a frame every duration/10 s -> 320 px -> mjpeg -> pipe 4
            +- audio -> silencedetect -> astats -> ametadata print -> pipe 2
            +- packets (stream copy) -> framecrc -> pipe 3

The detectors set frame tags (black_start, freeze_end, ...) whatever the log
level, so reading the tags instead of the log keeps the analysis independent
of it. The URI is only ever the argument of `-i`; the filter graphs are built
from camtester's own numbers and file descriptors alone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from camtester.errors import InvalidInput, MeasurementError, MeasurementInternal
from camtester.probes.description import StderrWatch
from camtester.probes.ffmpeg import (
    FfmpegRun,
    PipeCollector,
    base_args,
    classify_failure,
    ffmpeg_version,
    input_args,
    input_timed_out,
    is_local_file,
    run_ffmpeg,
)
from camtester.probes.frames import parse_framecrc, parse_metadata_print, split_jpegs
from camtester.probes.sample import Detectors, summarize
from camtester.probes.zscore import DEFAULT_INFLUENCE, DEFAULT_LAG, DEFAULT_THRESHOLD
from camtester.settings import Settings, get_settings
from camtester.uris import mask_uri

logger = logging.getLogger(__name__)

#: Width of the picture the detectors see, and of the snapshot. A 320 px copy
#: gives the full picture's answers for a fraction of the work: signalstats
#: costs about 10 ns a pixel, several times the decoding of 720p at full size.
ANALYSIS_WIDTH = 320
#: blackdetect: a pixel is black below 10% of the luma range; a picture is
#: black when 98% of its pixels are.
BLACK_PIXEL_THRESHOLD = 0.10
BLACK_PICTURE_RATIO = 0.98
#: freezedetect: frames closer than -60 dB (mean absolute difference) for at
#: least FREEZE_MIN_S are a freeze.
FREEZE_NOISE_DB = -60
FREEZE_MIN_S = 0.5
#: silencedetect: audio under -60 dBFS for at least SILENCE_MIN_S is silence.
SILENCE_NOISE_DB = -60
SILENCE_MIN_S = 0.5
#: Snapshot candidates over the sample; the one nearest its middle is kept.
SNAPSHOT_CANDIDATES = 10
#: mjpeg quality scale (2 best .. 31 worst).
SNAPSHOT_QUALITY = 5
#: Seconds a stream probe may run beyond duration + connect timeout.
WALL_SLACK_S = 1.5
#: Seconds ffmpeg gets after a second SIGINT to finish its outputs before SIGKILL.
INTERRUPT_GRACE_S = 1.5

DETECTORS = Detectors(
    freeze_min_s=FREEZE_MIN_S,
    zscore_lag=DEFAULT_LAG,
    zscore_threshold=DEFAULT_THRESHOLD,
    zscore_influence=DEFAULT_INFLUENCE,
)


@dataclass
class ProbeOutcome:
    """The payload of a probe and a small JPEG of the picture at mid-sample."""

    payload: dict[str, Any]
    snapshot_jpeg: bytes | None


@dataclass
class ProbePipes:
    """The pipes one probe's ffmpeg writes into."""

    video: PipeCollector = field(default_factory=PipeCollector)
    audio: PipeCollector = field(default_factory=PipeCollector)
    packets: PipeCollector = field(default_factory=PipeCollector)
    snapshots: PipeCollector = field(default_factory=PipeCollector)

    def all(self) -> list[PipeCollector]:
        return [self.video, self.audio, self.packets, self.snapshots]


def probe_stream(
    uri: str,
    *,
    duration_s: float,
    transport: str = "tcp",
    connect_timeout_s: float | None = None,
    settings: Settings | None = None,
    analysis_width: int = ANALYSIS_WIDTH,
) -> ProbeOutcome:
    """Probe `duration_s` seconds of `uri` (a stream URI or, from the CLI, a file).

    Raises a MeasurementError subclass when the stream cannot be read at all;
    a stream that stops early gives a payload with `stalled: true`.
    `analysis_width` (px) is there to compare answers with the full picture.
    """
    settings = settings or get_settings()
    timeout_s = (
        settings.connect_timeout_s if connect_timeout_s is None else connect_timeout_s
    )
    if not duration_s > 0:
        raise InvalidInput("duration must be a number > 0")

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        pipes = ProbePipes()
        for pipe in pipes.all():
            stack.enter_context(pipe)
        watch = StderrWatch()
        argv = probe_command(
            uri,
            duration_s=duration_s,
            transport=transport,
            connect_timeout_s=timeout_s,
            settings=settings,
            pipes=pipes,
            analysis_width=analysis_width,
        )
        run = run_ffmpeg(
            argv,
            wall_timeout_s=_wall_timeout(uri, duration_s, timeout_s),
            stderr_sink=watch,
            pass_fds=[pipe.fd for pipe in pipes.all()],
            interrupt_grace_s=INTERRUPT_GRACE_S,
            stop_when=input_timed_out,
            stall_timeout_s=timeout_s,
        )
        outputs = {
            "video": pipes.video.data(),
            "audio": pipes.audio.data(),
            "packets": pipes.packets.data(),
            "snapshots": pipes.snapshots.data(),
        }

    outcome = _outcome(uri, run, watch, outputs, duration_s, timeout_s)
    logger.info(
        "Probed %s: %.1fs of %.1fs, %d video and %d audio frames, in %.1fs",
        mask_uri(uri),
        outcome.payload["sample_duration_sec"],
        duration_s,
        outcome.payload["video_frames"],
        outcome.payload["audio_frames"],
        time.monotonic() - started,
    )
    return outcome


def _wall_timeout(uri: str, duration_s: float, timeout_s: float) -> float:
    """How long the whole ffmpeg run may take."""
    if is_local_file(uri):
        # A file is read as fast as the CPU allows; no network waits.
        return 2 * duration_s + 30
    return duration_s + timeout_s + WALL_SLACK_S


def probe_command(
    uri: str,
    *,
    duration_s: float,
    transport: str,
    connect_timeout_s: float,
    settings: Settings,
    pipes: ProbePipes,
    analysis_width: int = ANALYSIS_WIDTH,
) -> list[str]:
    """The ffmpeg command line of one probe."""
    version = ffmpeg_version(settings.ffmpeg_path)
    step_s = duration_s / SNAPSHOT_CANDIDATES

    # One decoding thread per stream: a worker runs several probes at once.
    # -y: the outputs are our own pipes, which "exist" as /dev/fd paths.
    argv = [*base_args(settings, loglevel="level+info", stats=True), "-y"]
    argv += ["-filter_threads", "1", "-threads", "1", "-t", f"{duration_s:.3f}"]
    argv += input_args(
        uri, transport=transport, connect_timeout_s=connect_timeout_s, settings=settings
    )

    # Optional maps: a stream without audio (or video) is a finding, not an error.
    maps = ["-map", "0:v:0?", "-map", "0:a:0?"]
    argv += [
        *maps,
        "-filter:v",
        video_filters(pipes.video.path, step_s, analysis_width),
    ]
    argv += ["-filter:a", audio_filters(pipes.audio.path)]
    argv += _passthrough_frames(version)
    argv += ["-c:v", "mjpeg", "-q:v", str(SNAPSHOT_QUALITY), "-c:a", "pcm_s16le"]
    # -flush_packets: what was written must survive a stop (see ffmpeg._stop).
    flush = ["-flush_packets", "1"]
    argv += ["-threads", "1", *flush, "-f", "tee", _tee_outputs(pipes.snapshots.path)]

    # Packets as read, for keyframes and bit rate: no decoding, only a checksum.
    argv += [*maps, "-c", "copy", *flush, "-f", "framecrc", pipes.packets.path]
    return argv


def video_filters(metadata_path: str, snapshot_step_s: float, width: int) -> str:
    """The video graph: detectors on a small copy, tags to a pipe, snapshot frames.

    The detectors see a `width` copy made by point sampling: every pixel they
    see is a pixel of the full picture, unaveraged, so noise, black pixels and
    frame differences measure as on the full picture (an averaging scaler would
    smooth noise away and halve the TOUT of a noisy camera). The analysis
    branch ends in a nullsink; the one output carries only the snapshots,
    which are scaled smoothly, and only the few that are picked.
    """
    scale = f"scale=w='min({width},iw)':h=-2"
    # NOTE: without stat=tout signalstats leaves TOUT at 0 on every frame.
    analysis = [
        f"[analysis]{scale}:flags=neighbor",
        f"freezedetect=n={FREEZE_NOISE_DB}dB:d={FREEZE_MIN_S}",
        f"blackdetect=d=0:pix_th={BLACK_PIXEL_THRESHOLD}:pic_th={BLACK_PICTURE_RATIO}",
        "signalstats=stat=tout",
        f"metadata=mode=print:file={metadata_path}",
        "nullsink",
    ]
    # The first frame, then the first one at least a step after the last pick.
    pick = (
        f"select='isnan(prev_selected_t)+gte(t-prev_selected_t,{snapshot_step_s:.3f})'"
    )
    snapshots = [f"[snapshots]{pick}", f"{scale}:flags=area"]
    return ";".join(
        ["split[analysis][snapshots]", ",".join(analysis), ",".join(snapshots)]
    )


def audio_filters(metadata_path: str) -> str:
    """The audio chain: silence edges and a per-frame sample count, tags to a pipe."""
    # astats with reset=1 tags every frame, so that each audio frame is printed
    # (the metadata filter prints only frames that carry a tag).
    chain = [
        f"silencedetect=n={SILENCE_NOISE_DB}dB:d={SILENCE_MIN_S}",
        (
            "astats=metadata=1:reset=1:measure_perchannel=none"
            ":measure_overall=Number_of_samples"
        ),
        f"ametadata=mode=print:file={metadata_path}",
    ]
    return ",".join(chain)


def _passthrough_frames(version: tuple[int, int]) -> list[str]:
    """Encode only the frames select kept; do not duplicate them to a fixed rate."""
    if version >= (5, 1):
        return ["-fps_mode:v", "passthrough"]
    return ["-vsync", "passthrough"]


def _tee_outputs(snapshot_path: str) -> str:
    """Snapshots to their pipe, audio to nowhere; a slave without streams is skipped.

    The tee lets one output carry whichever of video and audio the stream has:
    a plain image2pipe output without a video stream would be an error, and
    which streams exist is only known once ffmpeg has connected.
    """
    return (
        f"[select=v:f=image2pipe:onfail=ignore]{snapshot_path}"
        "|[select=a:f=null:onfail=ignore]-"
    )


def _outcome(
    uri: str,
    run: FfmpegRun,
    watch: StderrWatch,
    outputs: dict[str, bytes],
    duration_s: float,
    timeout_s: float,
) -> ProbeOutcome:
    """The probe's answer from what ffmpeg wrote, or the error why it could not."""
    video = parse_metadata_print(outputs["video"].decode("utf-8", "replace"))
    audio = parse_metadata_print(outputs["audio"].decode("utf-8", "replace"))
    if not video and not audio:
        raise _nothing_read(run, uri, timeout_s)

    payload = summarize(
        video,
        audio,
        parse_framecrc(outputs["packets"].decode("utf-8", "replace")),
        watch,
        requested_s=duration_s,
        detectors=DETECTORS,
        cut_short=run.timed_out or run.stopped,
    )
    snapshot = pick_snapshot(
        outputs["snapshots"], payload["sample_duration_sec"], duration_s
    )
    return ProbeOutcome(payload, snapshot)


def _nothing_read(run: FfmpegRun, uri: str, timeout_s: float) -> Exception:
    """Why a run that decoded no frame at all failed."""
    error = classify_failure(run, uri, connect_timeout_s=timeout_s)
    if run.ok and isinstance(error, MeasurementError):
        return MeasurementInternal(
            f"ffmpeg read {mask_uri(uri)} but decoded no audio or video frame"
        )
    return error


def pick_snapshot(data: bytes, sample_s: float, requested_s: float) -> bytes | None:
    """The snapshot candidate nearest the middle of what was actually received."""
    images = split_jpegs(data)
    if not images:
        return None
    step_s = requested_s / SNAPSHOT_CANDIDATES
    index = round(sample_s / 2 / step_s) if step_s > 0 else 0
    return images[min(index, len(images) - 1)]
