"""check_stream over real RTSP from the camera simulator (helper and tests)."""

from __future__ import annotations

import os
from pathlib import Path


def ffmpeg_processes(marker: str | None = None) -> list[int]:
    """Live ffmpeg processes started by this test process, or naming `marker`.

    A descendant is found through its parent chain; one that lost its parent (an
    orphan, re-parented to init) is found by `marker`, a string of its command line
    unique to the test, such as the simulator's port or a temporary path.
    """
    me = os.getpid()
    parents: dict[int, int] = {}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # The name in stat sits in parentheses and may hold spaces.
        fields = stat.rpartition(")")[2].split()
        if fields[0] == "Z":
            continue
        parents[int(entry.name)] = int(fields[1])
        name = os.path.basename(argv[0].decode(errors="replace"))
        if name == "ffmpeg":
            found.append((int(entry.name), b" ".join(argv).decode(errors="replace")))

    def descends(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            seen.add(pid)
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return [
        pid
        for pid, cmdline in found
        if descends(pid) or (marker is not None and marker in cmdline)
    ]


def assert_no_ffmpeg_left(marker: str | None = None) -> None:
    assert ffmpeg_processes(marker) == []
