"""W1, W2 and W6: the engine's own cost per step on the in-memory store.

W1: 2,000 three-step transactions with no-op handlers, none failing, once with sync
handlers run inline and once with async handlers; µs per step, whole lifecycle
(begin, three add_step, commit). W2: the third step raises, so two compensations run;
µs per transaction. W6: W1 (async) at 100 to 100,000 transactions: µs per step must
stay flat. Baseline, same run: a plain loop awaiting the same handlers inside
try/except with a reverse list of compensations. Also in the same run, two
floors (``_floors``): the least a write-ahead engine does in plain Python with no
library (``floor``: a record per step with a random id, its intent before the handler,
its completion after, their timestamps; the records a failing transaction needs), and
that plus what this design and its public API add for any engine (``design_floor``:
the package's pydantic models, and with async handlers the anyio cancel scopes of the
timeout and of the shielded compensation with its own task). They show how much of
the engine's cost no engine keeping the write-ahead rule, or this API, could avoid.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from aumai_transactions import TransactionManager

from . import _floors
from ._common import REPEATS, emit
from ._floors import DATA, STEPS, Boom

WORKLOADS = ("W1", "W2", "W6")


def _sync_handlers(fail: bool) -> dict[str, Callable[..., Any]]:
    def ok(action: str, data: dict[str, Any]) -> None:
        return None

    def bad(action: str, data: dict[str, Any]) -> None:
        raise Boom(action)

    handlers: dict[str, Callable[..., Any]] = {}
    for i, (action, comp) in enumerate(STEPS):
        handlers[action] = bad if fail and i == 2 else ok
        handlers[comp] = ok
    return handlers


def _async_handlers(fail: bool) -> dict[str, Callable[..., Any]]:
    async def ok(action: str, data: dict[str, Any]) -> None:
        return None

    async def bad(action: str, data: dict[str, Any]) -> None:
        raise Boom(action)

    handlers: dict[str, Callable[..., Any]] = {}
    for i, (action, comp) in enumerate(STEPS):
        handlers[action] = bad if fail and i == 2 else ok
        handlers[comp] = ok
    return handlers


async def _baseline(n: int, handlers: dict[str, Callable[..., Any]], is_async: bool) -> None:
    for _ in range(n):
        undo: list[str] = []
        try:
            for action, comp in STEPS:
                if is_async:
                    await handlers[action](action, DATA)
                else:
                    handlers[action](action, DATA)
                undo.append(comp)
        except Exception:
            for comp in reversed(undo):
                if is_async:
                    await handlers[comp](comp, DATA)
                else:
                    handlers[comp](comp, DATA)


async def _engine(n: int, manager: TransactionManager) -> None:
    begin, add_step, commit = manager.begin, manager.add_step, manager.commit
    for _ in range(n):
        tx = begin()
        for action, comp in STEPS:
            add_step(tx, "agent", action, {"user_id": "u-001"}, comp)
        await commit(tx)


def measure_both(n: int, is_async: bool, fail: bool, with_floor: bool = True) -> dict[str, float]:
    """Seconds for n transactions through the engine and through the baseline, timed in
    interleaved rounds in one event loop (medians of 5 after a warm-up round), as wall
    time and as this process's CPU time (which a loaded machine disturbs far less).
    ``with_floor=False`` skips the floor (its figures are then 0)."""
    handlers = _async_handlers(fail) if is_async else _sync_handlers(fail)

    async def timed(make: Callable[[], Any]) -> tuple[float, float]:
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        await make()
        return time.perf_counter() - wall, time.process_time() - cpu

    def engine_run() -> Any:
        return _engine(n, TransactionManager(handlers, sync_handlers="inline"))

    def baseline_run() -> Any:
        return _baseline(n, handlers, is_async)

    def floor_run() -> Any:
        return _floors.floor(n, handlers, is_async)

    def design_run() -> Any:
        return _floors.design_floor(n, handlers, is_async)

    async def rounds() -> dict[str, float]:
        engine: list[tuple[float, float]] = []
        baseline: list[tuple[float, float]] = []
        floor: list[tuple[float, float]] = []
        design: list[tuple[float, float]] = []
        for _ in range(REPEATS + 1):  # the first round is the warm-up
            engine.append(await timed(engine_run))
            baseline.append(await timed(baseline_run))
            floor.append(await timed(floor_run) if with_floor else (0.0, 0.0))
            design.append(await timed(design_run) if with_floor else (0.0, 0.0))
        engine, baseline, floor, design = engine[1:], baseline[1:], floor[1:], design[1:]
        return {
            "engine": statistics.median(t[0] for t in engine),
            "baseline": statistics.median(t[0] for t in baseline),
            "floor": statistics.median(t[0] for t in floor),
            "design_floor": statistics.median(t[0] for t in design),
            "engine_cpu": statistics.median(t[1] for t in engine),
            "baseline_cpu": statistics.median(t[1] for t in baseline),
            "floor_cpu": statistics.median(t[1] for t in floor),
            "design_floor_cpu": statistics.median(t[1] for t in design),
        }

    return asyncio.run(rounds())


def measure(n: int, is_async: bool, fail: bool) -> tuple[float, float]:
    """Wall seconds for n transactions through the engine and through the baseline."""
    both = measure_both(n, is_async, fail, with_floor=False)
    return both["engine"], both["baseline"]


def _cpu_fields(both: dict[str, float], per: int) -> dict[str, float]:
    engine, baseline = both["engine_cpu"] / per * 1e6, both["baseline_cpu"] / per * 1e6
    floor = both["floor_cpu"] / per * 1e6
    design = both["design_floor_cpu"] / per * 1e6
    return {
        "cpu": round(engine, 3),
        "cpu_baseline": round(baseline, 3),
        "cpu_ratio": round(engine / baseline, 2),
        "cpu_floor": round(floor, 3),
        "cpu_floor_ratio": round(floor / baseline, 2),
        "cpu_over_floor": round(engine / floor, 2),
        "cpu_design_floor": round(design, 3),
        "cpu_design_floor_ratio": round(design / baseline, 2),
        "cpu_over_design_floor": round(engine / design, 2),
    }


def main() -> None:
    n = 2000
    for is_async in (False, True):
        kind = "async" if is_async else "sync-inline"
        both = measure_both(n, is_async, fail=False)
        engine, baseline = both["engine"], both["baseline"]
        per_step, base_step = engine / (3 * n) * 1e6, baseline / (3 * n) * 1e6
        emit(
            "W1",
            "memory",
            per_step,
            "us/step",
            n,
            f"{kind} handlers; baseline plain loop {base_step:.3f} us/step; "
            f"ratio {per_step / base_step:.1f}x",
            handlers=kind,
            baseline=round(base_step, 3),
            ratio=round(per_step / base_step, 2),
            floor=round(both["floor"] / (3 * n) * 1e6, 3),
            design_floor=round(both["design_floor"] / (3 * n) * 1e6, 3),
            **_cpu_fields(both, 3 * n),
        )
    for is_async in (False, True):
        kind = "async" if is_async else "sync-inline"
        both = measure_both(n, is_async, fail=True)
        engine, baseline = both["engine"], both["baseline"]
        per_tx, base_tx = engine / n * 1e6, baseline / n * 1e6
        emit(
            "W2",
            "memory",
            per_tx,
            "us/transaction",
            n,
            f"{kind} handlers, 3rd step fails, 2 compensations; baseline {base_tx:.3f} us/tx; "
            f"ratio {per_tx / base_tx:.1f}x",
            handlers=kind,
            baseline=round(base_tx, 3),
            ratio=round(per_tx / base_tx, 2),
            floor=round(both["floor"] / n * 1e6, 3),
            design_floor=round(both["design_floor"] / n * 1e6, 3),
            **_cpu_fields(both, n),
        )
    for size in (100, 1_000, 10_000, 100_000):
        engine, baseline = measure(size, True, fail=False)
        per_step = engine / (3 * size) * 1e6
        emit(
            "W6",
            "memory",
            per_step,
            "us/step",
            size,
            f"async handlers at {size} transactions; "
            f"baseline {baseline / (3 * size) * 1e6:.3f} us/step",
            baseline=round(baseline / (3 * size) * 1e6, 3),
        )


if __name__ == "__main__":
    main()
