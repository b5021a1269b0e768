"""The ffmpeg runner: options per version, bounded runs, no survivors, error mapping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from camtester import logs
from camtester.errors import (
    MeasurementInternal,
    SetupError,
    TargetNotFound,
    TargetRefused,
    TargetTimeout,
    TargetUnauthorized,
    TargetUnresolvable,
    TargetUnsupported,
)
from camtester.probes import ffmpeg
from camtester.probes.ffmpeg import FfmpegRun, classify_failure, run_ffmpeg
from camtester.settings import Settings

FFMPEG = "ffmpeg"


def ffmpeg_children() -> set[int]:
    """Pids of ffmpeg processes (running or zombie) whose parent is this process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(
            line.split(":\t", 1) for line in status.splitlines() if ":\t" in line
        )
        if fields.get("Name") == "ffmpeg" and fields.get("PPid") == str(os.getpid()):
            found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_ffmpeg_left() -> Iterator[None]:
    """After each test, no ffmpeg this process started may be left, not even a
    zombie."""
    before = ffmpeg_children()
    yield
    assert ffmpeg_children() - before == set()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lavfi_forever() -> list[str]:
    """An ffmpeg that runs until stopped: a live-paced endless test source."""
    argv = ffmpeg.base_args(Settings(), loglevel="level+info")
    return [*argv, "-re", "-f", "lavfi", "-i", "testsrc=r=5:s=64x64", "-f", "null", "-"]


def fake_ffmpeg(tmp_path: Path, version_line: str) -> str:
    """An executable that answers -version like an ffmpeg of another version."""
    script = tmp_path / "ffmpeg"
    script.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    script.chmod(0o755)
    return str(script)


# -- version and options ------------------------------------------------------


def test_parse_version() -> None:
    assert ffmpeg.parse_version("ffmpeg version 5.1.9-0+deb12u1 Copyright") == (5, 1)
    assert ffmpeg.parse_version("ffmpeg version n6.1.1 Copyright") == (6, 1)
    assert ffmpeg.parse_version("ffmpeg version 4.4.2-0ubuntu0.22.04.1") == (4, 4)
    assert ffmpeg.parse_version("ffmpeg version N-112233-gdeadbeef") == (99, 0)


def test_installed_version_is_read() -> None:
    version = ffmpeg.ffmpeg_version(FFMPEG)

    first = subprocess.run(
        [FFMPEG, "-version"], check=True, capture_output=True, text=True
    )
    assert first.stdout.startswith(f"ffmpeg version {version[0]}.{version[1]}")


def test_rtsp_options_on_ffmpeg_5(tmp_path: Path) -> None:
    settings = Settings(ffmpeg_path=fake_ffmpeg(tmp_path, "ffmpeg version 5.1.2"))

    args = ffmpeg.input_args(
        "rtsp://cam:554/live", transport="udp", connect_timeout_s=2.5, settings=settings
    )

    assert args == [
        "-protocol_whitelist",
        "rtsp,rtp,udp,tcp",
        "-timeout",
        "2500000",
        "-rtsp_transport",
        "udp",
        "-i",
        "rtsp://cam:554/live",
    ]


def test_rtsp_options_on_ffmpeg_4(tmp_path: Path) -> None:
    # On 4.x -timeout meant "listen"; the socket timeout was -stimeout.
    settings = Settings(ffmpeg_path=fake_ffmpeg(tmp_path, "ffmpeg version 4.4.2"))

    args = ffmpeg.input_args("rtsp://cam/live", connect_timeout_s=5, settings=settings)

    assert args[2:4] == ["-stimeout", "5000000"]
    assert "-timeout" not in args
    assert args[4:6] == ["-rtsp_transport", "tcp"]


def test_options_per_scheme() -> None:
    settings = Settings()

    def options(uri: str) -> list[str]:
        return ffmpeg.input_args(uri, connect_timeout_s=5, settings=settings)[:-2]

    assert options("http://cam/video.mjpg") == [
        "-protocol_whitelist",
        "http,https,tcp,tls,crypto",
        "-timeout",
        "5000000",
        "-rw_timeout",
        "5000000",
    ]
    # rtmp's -timeout would make ffmpeg listen instead of connect.
    assert options("rtmp://cam/live") == [
        "-protocol_whitelist",
        "rtmp,tcp",
        "-rw_timeout",
        "5000000",
    ]
    assert options("srt://cam:9000")[:2] == ["-protocol_whitelist", "srt"]
    assert options("udp://239.0.0.1:1234")[2:] == ["-timeout", "5000000"]


def test_local_file_may_open_files_only(tmp_path: Path) -> None:
    path = tmp_path / "a:b.mp4"

    args = ffmpeg.input_args(str(path), settings=Settings())

    assert args == ["-protocol_whitelist", "file", "-i", f"file:{path}"]


def test_unknown_scheme_is_unsupported() -> None:
    with pytest.raises(TargetUnsupported):
        ffmpeg.input_args("concat:/etc/passwd|/etc/hosts", settings=Settings())


def test_credentials_reach_ffmpeg_encoded() -> None:
    args = ffmpeg.input_args("rtsp://viewer:p@ss:w0rd@127.0.0.1/secure")

    assert args[-1] == "rtsp://viewer:p%40ss%3Aw0rd@127.0.0.1/secure"


def test_bad_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        ffmpeg.input_args("rtsp://cam/live", transport="http")


# -- running --------------------------------------------------------------------


def test_a_run_that_ends_by_itself() -> None:
    argv = ffmpeg.base_args(Settings(), loglevel="level+info")
    argv += ["-f", "lavfi", "-i", "testsrc=d=0.2", "-f", "null", "-"]

    run = run_ffmpeg(argv, wall_timeout_s=30)

    assert run.ok and run.returncode == 0
    assert not (run.timed_out or run.killed or run.stopped)


def test_wall_timeout_kills_ffmpeg() -> None:
    started = time.monotonic()

    run = run_ffmpeg(lavfi_forever(), wall_timeout_s=1.0)

    assert run.timed_out and run.killed and not run.ok
    assert run.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_wall_timeout_with_grace_stops_ffmpeg_cleanly() -> None:
    # 2 s: ffmpeg must have set up its signal handlers before the SIGINT comes.
    run = run_ffmpeg(lavfi_forever(), wall_timeout_s=2.0, interrupt_grace_s=5)

    # ffmpeg exits with 255 after SIGINT, having finished its outputs.
    assert run.timed_out and not run.killed
    assert run.returncode == 255


def test_stop_when_a_line_matches() -> None:
    argv = ffmpeg.base_args(Settings(), loglevel="level+info")
    argv += ["-re", "-f", "lavfi", "-i", "sine=r=8000,ashowinfo", "-f", "null", "-"]

    run = run_ffmpeg(
        argv,
        wall_timeout_s=30,
        interrupt_grace_s=5,
        stop_when=lambda line: "n:10 " in line,
    )

    assert run.stopped and not run.timed_out and not run.ok
    assert run.elapsed_s < 15


def test_stall_timeout_needs_standing_progress() -> None:
    # A live-paced source moves on all the time: no stall.
    argv = ffmpeg.base_args(Settings(), loglevel="level+info", stats=True)
    argv += ["-re", "-f", "lavfi", "-i", "testsrc=r=5:s=64x64:d=2", "-f", "null", "-"]

    run = run_ffmpeg(argv, wall_timeout_s=30, stall_timeout_s=1.0)

    assert run.ok and not run.stopped
    # Progress lines stay out of the tail.
    assert "time=" not in run.stderr_tail


def test_stderr_flood_keeps_a_bounded_tail_and_feeds_the_sink() -> None:
    lines: list[str] = []
    argv = ffmpeg.base_args(Settings(), loglevel="level+debug")
    argv += ["-f", "lavfi", "-i", "sine=d=30,ashowinfo", "-f", "null", "-"]

    run = run_ffmpeg(argv, wall_timeout_s=60, stderr_sink=lines.append)

    assert run.ok
    assert len(lines) > 10 * ffmpeg.TAIL_LINES
    tail = run.stderr_tail.splitlines()
    assert len(tail) <= ffmpeg.TAIL_LINES
    assert tail == lines[-len(tail) :]


def test_a_failing_sink_does_not_block_ffmpeg() -> None:
    def sink(line: str) -> None:
        raise RuntimeError("broken parser")

    argv = ffmpeg.base_args(Settings(), loglevel="level+debug")
    argv += ["-f", "lavfi", "-i", "sine=d=2,ashowinfo", "-f", "null", "-"]

    assert run_ffmpeg(argv, wall_timeout_s=60, stderr_sink=sink).ok


def test_the_reader_thread_runs_in_the_tasks_context() -> None:
    # ffmpeg's lines are logged from the reader thread; they must carry the task.
    seen: set[tuple[str, str] | None] = set()
    argv = ffmpeg.base_args(Settings(), loglevel="level+info")
    argv += ["-f", "lavfi", "-i", "testsrc=d=0.2", "-f", "null", "-"]

    with logs.task_context("task-17", "probe"):
        run_ffmpeg(
            argv, wall_timeout_s=30, stderr_sink=lambda _: seen.add(logs.current_task())
        )

    assert seen == {("task-17", "probe")}


def test_pipes_carry_outputs() -> None:
    with ffmpeg.PipeCollector() as pipe:
        argv = ffmpeg.base_args(Settings())
        argv += ["-f", "lavfi", "-i", "testsrc=d=1:r=10", "-f", "framecrc", pipe.url]
        run = run_ffmpeg(argv, wall_timeout_s=30, pass_fds=[pipe.fd])
        text = pipe.data().decode()

    assert run.ok
    assert len([line for line in text.splitlines() if line.startswith("0,")]) == 10


def test_missing_binary_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError):
        run_ffmpeg([str(tmp_path / "no-ffmpeg"), "-version"], wall_timeout_s=5)
    with pytest.raises(SetupError):
        ffmpeg.ffmpeg_version(str(tmp_path / "no-ffmpeg"))


def test_ffmpeg_dies_with_its_worker() -> None:
    """SIGKILL the process that runs ffmpeg, as a Celery hard time limit does."""
    code = textwrap.dedent(
        """
        import os, sys, threading, time
        from camtester.probes import ffmpeg
        from camtester.settings import Settings

        def report():
            time.sleep(1.0)
            for entry in os.listdir("/proc"):
                try:
                    status = open(f"/proc/{entry}/status").read()
                except OSError:
                    continue
                if "Name:\\tffmpeg" in status and f"PPid:\\t{os.getpid()}" in status:
                    print(entry, flush=True)

        threading.Thread(target=report, daemon=True).start()
        argv = ffmpeg.base_args(Settings())
        argv += ["-re", "-f", "lavfi", "-i", "testsrc=r=5", "-f", "null", "-"]
        ffmpeg.run_ffmpeg(argv, wall_timeout_s=60)
        """
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        pid = int(worker.stdout.readline())
        assert Path(f"/proc/{pid}").exists()
    finally:
        worker.kill()
        worker.wait()

    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "Name:\tffmpeg" in status and "State:\tZ" not in status


# -- error mapping ----------------------------------------------------------------


def _run(tail: str, *, elapsed_s: float = 0.1, timed_out: bool = False) -> FfmpegRun:
    return FfmpegRun(1, tail, elapsed_s, timed_out, False)


@pytest.mark.parametrize(
    ("tail", "error"),
    [
        ("[error] rtsp://h/x: Server returned 401 Unauthorized", TargetUnauthorized),
        ("method DESCRIBE failed: 404 Not Found", TargetNotFound),
        ("[tcp @ 0x1] Connection to tcp://h:554 failed: Connection refused", TargetRefused),
        ("[tcp @ 0x1] Failed to resolve hostname cam.invalid: Name or service not known", TargetUnresolvable),
        ("[error] rtsp://h/x: Connection timed out", TargetTimeout),
        ("[error] http://h/x: Protocol not found", TargetUnsupported),
        ("[error] h/x: Invalid data found when processing input", TargetUnsupported),
        ("[error] something nobody expected", MeasurementInternal),
    ],
)  # fmt: skip
def test_stderr_maps_to_an_error(tail: str, error: type[Exception]) -> None:
    assert type(classify_failure(_run(tail), "rtsp://h/x")) is error


def test_option_errors_are_the_workers_fault() -> None:
    run = _run("Unrecognized option 'stimeout'.\nError splitting the argument list")

    assert isinstance(classify_failure(run, "rtsp://h/x"), SetupError)


def test_a_silent_server_that_makes_ffmpeg_say_invalid_data_is_a_timeout() -> None:
    run = _run("[error] rtsp://h/x: Invalid data found", elapsed_s=5.2)

    error = classify_failure(run, "rtsp://h/x", connect_timeout_s=5)

    assert isinstance(error, TargetTimeout)


def test_wall_timeout_without_message_is_a_timeout() -> None:
    assert isinstance(
        classify_failure(_run("", timed_out=True), "rtsp://h/x"), TargetTimeout
    )


def test_messages_never_carry_the_password() -> None:
    uri = "rtsp://viewer:p@ss:w0rd@h/secure"
    tail = (
        "[error] rtsp://viewer:p%40ss%3Aw0rd@h/secure: weird failure p@ss:w0rd\n"
        "[error] auth with p%40ss%3Aw0rd rejected"
    )

    message = str(classify_failure(_run(tail), uri))

    assert "p@ss:w0rd" not in message and "p%40ss%3Aw0rd" not in message
    assert "weird failure" in message


def test_messages_quote_ffmpegs_last_line() -> None:
    tail = "[tcp @ 0x1] [error] Connection to tcp://h:1 failed: Connection refused"

    message = str(classify_failure(_run(tail), "rtsp://h:1/x"))

    assert message.endswith(
        "ffmpeg: Connection to tcp://h:1 failed: Connection refused"
    )


def test_raise_for_failure_passes_a_good_run() -> None:
    ffmpeg.raise_for_failure(FfmpegRun(0, "", 1.0, False, False), "rtsp://h/x")
    with pytest.raises(TargetRefused):
        ffmpeg.raise_for_failure(_run("Connection refused"), "rtsp://h/x")


def test_real_refused_connection() -> None:
    uri = f"rtsp://127.0.0.1:{closed_port()}/live"
    argv = [*ffmpeg.base_args(Settings()), *ffmpeg.input_args(uri), "-f", "null", "-"]

    run = run_ffmpeg(argv, wall_timeout_s=20)

    assert isinstance(classify_failure(run, uri), TargetRefused)


def test_a_real_option_error_is_a_setup_error() -> None:
    argv = [*ffmpeg.base_args(Settings()), "-no_such_option", "1", "-f", "null", "-"]

    run = run_ffmpeg(argv, wall_timeout_s=20)

    assert isinstance(classify_failure(run, "rtsp://h/x"), SetupError)
