"""W1 and W2 through the blocking facade (``aumai_transactions.sync``).

The same 2,000 three-step transactions as W1 (and W2: the third step fails, two
compensations), inline sync handlers, in-memory store, called without ``await`` from
the main thread. Baseline in the same run: the async path (``await manager.commit``
in one event loop), timed in interleaved rounds with the facade; medians of 5 rounds
after a warm-up. Figure: µs per step (W1) or per transaction (W2), and the ratio of
the facade to the async path.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable

from aumai_transactions import TransactionManager
from aumai_transactions import sync as blocking

from ._common import REPEATS, emit
from .w1_engine import STEPS, _engine, _sync_handlers

WORKLOADS = ("W1", "W2")


def _facade(n: int, manager: blocking.TransactionManager) -> None:
    begin, add_step, commit = manager.begin, manager.add_step, manager.commit
    for _ in range(n):
        tx = begin()
        for action, comp in STEPS:
            add_step(tx, "agent", action, {"user_id": "u-001"}, comp)
        commit(tx)


def measure(n: int, fail: bool) -> dict[str, float]:
    """Median seconds for n transactions through the async path and the blocking
    facade, as wall time and as this process's CPU time (both threads')."""
    handlers = _sync_handlers(fail)

    def timed(run: Callable[[], object]) -> tuple[float, float]:
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        return time.perf_counter() - wall, time.process_time() - cpu

    def async_path() -> None:
        asyncio.run(_engine(n, TransactionManager(handlers, sync_handlers="inline")))

    def facade() -> None:
        _facade(n, blocking.TransactionManager(handlers, sync_handlers="inline"))

    rounds = [(timed(async_path), timed(facade)) for _ in range(REPEATS + 1)][1:]  # warm-up
    return {
        "async": statistics.median(r[0][0] for r in rounds),
        "facade": statistics.median(r[1][0] for r in rounds),
        "async_cpu": statistics.median(r[0][1] for r in rounds),
        "facade_cpu": statistics.median(r[1][1] for r in rounds),
    }


def _report(workload: str, n: int, fail: bool, per: int, unit: str) -> None:
    times = measure(n, fail)
    facade_v, async_v = times["facade"] / per * 1e6, times["async"] / per * 1e6
    facade_cpu, async_cpu = times["facade_cpu"] / per * 1e6, times["async_cpu"] / per * 1e6
    what = "3rd step fails, 2 compensations" if fail else "no failure"
    emit(
        workload,
        "memory",
        facade_v,
        unit,
        n,
        f"blocking facade, sync handlers inline, {what}; baseline the async path "
        f"{async_v:.3f}; ratio {facade_v / async_v:.2f}x",
        handlers="sync-facade",
        baseline=round(async_v, 3),
        ratio=round(facade_v / async_v, 2),
        cpu=round(facade_cpu, 3),
        cpu_baseline=round(async_cpu, 3),
        cpu_ratio=round(facade_cpu / async_cpu, 2),
    )


def main() -> None:
    n = 2000
    _report("W1", n, False, 3 * n, "us/step")
    _report("W2", n, True, n, "us/transaction")


if __name__ == "__main__":
    main()
