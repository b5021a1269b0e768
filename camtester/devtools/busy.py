"""A thread that computes without pause: the load a worker's own Python puts on
everything else in its process, for tests and benchmarks of the ICMP engine."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def busy_thread() -> Iterator[None]:
    """Another thread of this process holds the interpreter lock whenever it can."""
    stop = threading.Event()

    def compute() -> None:
        while not stop.is_set():
            sum(range(1000))

    busy = threading.Thread(target=compute, name="busy", daemon=True)
    busy.start()
    try:
        yield
    finally:
        stop.set()
        busy.join()
