"""How the runner notices that ffmpeg ended: a pidfd, or Popen's polling without one."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest

from camtester.probes import ffmpeg

FFMPEG = "ffmpeg"


def lavfi_run(seconds: float) -> list[str]:
    """ffmpeg reading a generated picture in real time for `seconds`, to nowhere."""
    source = f"nullsrc=s=16x16:r=25:d={seconds:g}"
    argv = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-re"]
    return [*argv, "-f", "lavfi", "-i", source, "-f", "null", "-"]


@pytest.fixture
def running() -> Iterator[subprocess.Popen[bytes]]:
    """An ffmpeg that runs for 3 s; killed and reaped after the test."""
    proc = subprocess.Popen(lavfi_run(3), stdin=subprocess.DEVNULL)
    yield proc
    if proc.returncode is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("with_pidfd", [True, False])
def test_a_running_ffmpeg_has_not_exited(
    running: subprocess.Popen[bytes], with_pidfd: bool
) -> None:
    with ffmpeg._exit_fd(running) as pidfd:
        if not with_pidfd:
            pidfd = None
        assert not ffmpeg._exited_within(running, pidfd, 0.2)
    assert running.returncode is None


@pytest.mark.parametrize("with_pidfd", [True, False])
def test_an_ended_ffmpeg_is_seen_and_reaped(
    running: subprocess.Popen[bytes], with_pidfd: bool
) -> None:
    with ffmpeg._exit_fd(running) as pidfd:
        if not with_pidfd:
            pidfd = None
        running.send_signal(signal.SIGKILL)
        # Generous: the kernel delivers SIGKILL at once; 3 s is ffmpeg's own end.
        assert ffmpeg._exited_within(running, pidfd, 10)

    # Reaped by the call: the status is there without another wait.
    assert running.returncode == -9


def test_this_kernel_gives_a_pidfd(running: subprocess.Popen[bytes]) -> None:
    """The fast path is the one taken here (Linux 5.3 and later)."""
    with ffmpeg._exit_fd(running) as pidfd:
        assert pidfd is not None


def test_run_ffmpeg_returns_the_exit_status_of_a_short_run() -> None:
    run = ffmpeg.run_ffmpeg(lavfi_run(0.2), wall_timeout_s=30)

    assert run.returncode == 0
    assert run.ok
    assert not run.timed_out and not run.killed and not run.stopped
