"""Run every workload module (benchmarks/w*.py), or only those named.

``python -m benchmarks W1 W3`` runs the modules covering W1 or W3. How long each
module took, and the whole run, goes to stderr (the JSON lines go to stdout).

Each module exposes ``WORKLOADS`` (the ids it covers) and ``main()``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

from ._common import selected


def run() -> None:
    wanted = selected()
    here = Path(__file__).parent
    started = time.perf_counter()
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda i: i.name):
        if not info.name.startswith("w"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        ids = set(getattr(module, "WORKLOADS", ()))
        if wanted and not (ids & wanted):
            continue
        began = time.perf_counter()
        module.main()
        print(f"{info.name}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    print(f"all: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run()
