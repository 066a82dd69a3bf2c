"""What every workload shares: timing with warm-up and medians, and the JSON line out."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

REPEATS = 5


def emit(
    workload: str, store: str, value: float, unit: str, n: int, note: str = "", **extra: Any
) -> None:
    """Print one result as a JSON line (and flush, so partial runs still report)."""
    line = {
        "workload": workload,
        "store": store,
        "value": round(value, 3),
        "unit": unit,
        "n": n,
        "note": note,
    }
    line.update(extra)
    print(json.dumps(line), flush=True)


def median_seconds(run: Callable[[], Any], repeats: int = REPEATS) -> float:
    """Median wall time of ``run()`` over ``repeats`` runs, after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def median_seconds_async(run: Callable[[], Awaitable[Any]], repeats: int = REPEATS) -> float:
    """Median wall time of ``await run()`` over ``repeats`` runs, after one warm-up run."""
    await run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        await run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def selected(argv: list[str] | None = None) -> set[str]:
    """Workload ids named on the command line (none named: all)."""
    names = {a.upper() for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")}
    return names


def diagnostics(argv: list[str] | None = None) -> bool:
    """Whether ``--diagnostics`` was given: the variants some workloads time beside
    their figure, to show where its time goes, run only when asked for."""
    return "--diagnostics" in (sys.argv[1:] if argv is None else argv)
