"""Run every benchmark module of bench/, or the ones named: `python -m bench [NAME]`.

A benchmark is a module `bench/<name>.py` with a `main()`; modules whose names
start with "_" are shared code. Each `main()` runs with its defaults: its options
are for running the module alone, `python -m bench.<name> --help`.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def benchmark_names() -> list[str]:
    """Every module of this package that is not shared code, sorted."""
    return sorted(
        path.stem for path in HERE.glob("*.py") if not path.stem.startswith("_")
    )


def run_one(module: ModuleType) -> int:
    """Call the module's main() with no options; its exit status, 0 if None."""
    # A main() that parses sys.argv itself must not see this runner's arguments.
    saved, sys.argv = sys.argv, [module.__name__]
    try:
        takes_argv = bool(inspect.signature(module.main).parameters)
        status = module.main([]) if takes_argv else module.main()
    except SystemExit as stop:
        status = stop.code
    finally:
        sys.argv = saved
    return status if isinstance(status, int) else 0


def main(names: list[str]) -> int:
    failed = []
    for name in names or benchmark_names():
        module = importlib.import_module(f"bench.{name}")
        if not callable(getattr(module, "main", None)):
            continue
        print(f"== bench.{name}", flush=True)
        started = time.monotonic()
        status = run_one(module)
        print(f"== bench.{name}: exit {status} in {time.monotonic() - started:.0f} s")
        if status:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
