"""W7: the agent shape, 1,000 open transactions at once.

Each transaction is an open one (``async with manager.transaction() as tx``): two
sequential ``tx.run`` steps, then a ``tx.parallel()`` group of four steps; every
handler is an ``async def`` awaiting ``anyio.sleep(0.01)``, so the ideal wall time is
30 ms. Figure: wall time ÷ 30 ms, on the in-memory store and on SQLite (a fresh file
per run, ``synchronous=FULL``). Baseline in the same run: the same shape in bare
asyncio, ``asyncio.gather`` of 1,000 coroutines each awaiting the same handler twice
and then gathering four more. Target (issue 9): within 2x the baseline in memory.

The three variants are timed in interleaved rounds (baseline, memory, SQLite, then
again), so that the noise of a shared machine falls on all of them alike; medians of
``REPEATS`` rounds after a warm-up round.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio

from aumai_transactions import TransactionManager, TransactionState
from aumai_transactions.stores.sqlite import SqliteStore

from ._common import REPEATS, emit

WORKLOADS = ("W7",)

N = 1_000
IDEAL = 0.03
SEQUENTIAL = ("search", "hold_flight")
PARALLEL = ("book_hotel", "rent_car", "buy_tickets", "insure")


async def step(action: str, data: dict[str, Any]) -> dict[str, str]:
    await anyio.sleep(0.01)
    return {"done": action}


HANDLERS: dict[str, Any] = dict.fromkeys((*SEQUENTIAL, *PARALLEL, "undo"), step)


async def bare_agent() -> None:
    for action in SEQUENTIAL:
        await step(action, {})
    await asyncio.gather(*(step(action, {}) for action in PARALLEL))


async def agent(manager: TransactionManager) -> TransactionState:
    async with manager.transaction() as tx:
        found = await tx.run("agent", SEQUENTIAL[0], {"query": "LHR-JFK"}, "undo")
        await tx.run("agent", SEQUENTIAL[1], {"chosen": found["done"]}, "undo")
        async with tx.parallel() as group:
            for action in PARALLEL:
                group.run("agent", action, {"trip": 1}, "undo")
    assert tx.result is not None
    return tx.result.state


async def baseline() -> float:
    start = time.perf_counter()
    await asyncio.gather(*(bare_agent() for _ in range(N)))
    return time.perf_counter() - start


async def engine(manager: TransactionManager) -> float:
    async with manager:  # opens the store (outside the timing), renews leases
        start = time.perf_counter()
        states = await asyncio.gather(*(agent(manager) for _ in range(N)))
        elapsed = time.perf_counter() - start
    assert all(state is TransactionState.COMMITTED for state in states)
    return elapsed


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="aumai-w7-"))
    runs = 0

    def fresh_sqlite() -> TransactionManager:
        nonlocal runs
        runs += 1
        store = SqliteStore(scratch / f"run-{runs}.db", synchronous="FULL")
        return TransactionManager(HANDLERS, store=store, retain_finished=False)

    variants: dict[str, Callable[[], Coroutine[Any, Any, float]]] = {
        "baseline": baseline,
        "memory": lambda: engine(TransactionManager(HANDLERS, retain_finished=False)),
        "sqlite": lambda: engine(fresh_sqlite()),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for round_ in range(REPEATS + 1):  # round 0 warms up
            for name, run in variants.items():
                gc.collect()
                elapsed = asyncio.run(run())
                if round_:
                    times[name].append(elapsed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = statistics.median(times["baseline"])
    for store in ("memory", "sqlite"):
        wall = statistics.median(times[store])
        target = " (target 2x)" if store == "memory" else ""
        emit(
            "W7",
            store,
            wall / IDEAL,
            "x ideal 30ms",
            N,
            f"{N} open transactions of 2 steps + a group of 4, each awaiting "
            f"anyio.sleep(0.01): {wall * 1e3:.0f} ms vs bare asyncio gather-within-gather "
            f"{base * 1e3:.0f} ms ({base / IDEAL:.2f}x ideal); ratio to baseline "
            f"{wall / base:.2f}{target}",
            baseline=round(base / IDEAL, 3),
            ratio=round(wall / base, 3),
        )


if __name__ == "__main__":
    main()
