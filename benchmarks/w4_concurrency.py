"""W4: 10,000 transactions started at once in one event loop.

Each has three async steps awaiting ``anyio.sleep(0.01)``, so the ideal wall time is
30 ms. Figure: wall time ÷ 30 ms, and peak RSS per in-flight transaction; baseline in
the same run: ``asyncio.gather`` of the same bare coroutines; and, as the floor the
design sets, the same bare coroutines each inside an anyio cancel scope with a deadline
(the transaction's timeout); and as the floor this design and its API set, those scoped
coroutines each holding its transaction as the package's pydantic models (built the
cheapest way before the gather, as the engine's are by ``begin`` and ``add_step``).
Each variant runs in a fresh child process so that peak
RSS belongs to it alone.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

from ._common import REPEATS, emit

WORKLOADS = ("W4",)

N = 10_000
IDEAL = 0.03

_CHILD = r"""
import asyncio, json, sys, time
import anyio
from aumai_transactions import TransactionManager

N = int(sys.argv[2])

async def step(action, data):
    await anyio.sleep(0.01)

async def bare():
    for _ in range(3):
        await step("a", {})

async def scoped():
    # The bare coroutine inside the one thing the design requires per transaction:
    # its timeout as an anyio cancel scope with a deadline.
    with anyio.CancelScope(deadline=anyio.current_time() + 60):
        await bare()

async def holding(tx):
    # The scoped coroutine, with the transaction it drives alive while it runs.
    with anyio.CancelScope(deadline=anyio.current_time() + 60):
        for step in tx.steps:
            await step_(step)

async def step_(step):
    await anyio.sleep(0.01)

async def main(kind):
    if kind == "idle":
        return 0.0
    if kind == "design":
        import random
        from benchmarks._floors import pending_models
        bits = random.Random(1).getrandbits
        txs = [pending_models(f"{bits(128):032x}", bits) for _ in range(N)]
        start = time.perf_counter()
        await asyncio.gather(*(holding(tx) for tx in txs))
        return time.perf_counter() - start
    if kind in ("baseline", "scoped"):
        start = time.perf_counter()
        await asyncio.gather(*((bare if kind == "baseline" else scoped)() for _ in range(N)))
        return time.perf_counter() - start
    manager = TransactionManager({"a": step, "b": step, "c": step, "undo": step})
    txs = []
    for _ in range(N):
        tx = manager.begin()
        for action in ("a", "b", "c"):
            manager.add_step(tx, "agent", action, {"n": 1}, "undo")
        txs.append(tx)
    start = time.perf_counter()
    results = await asyncio.gather(*(manager.commit(tx) for tx in txs))
    elapsed = time.perf_counter() - start
    assert all(r.state.value == "committed" for r in results)
    return elapsed

elapsed = asyncio.run(main(sys.argv[1]))
# VmHWM, not ru_maxrss: the latter survives exec, so it would report the parent's peak.
with open("/proc/self/status") as status:
    hwm = next(line for line in status if line.startswith("VmHWM:"))
rss = int(hwm.split()[1]) * 1024
print(json.dumps({"elapsed": elapsed, "rss": rss}))
"""


def _child(kind: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(N)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def main() -> None:
    idle = _child("idle")["rss"]
    engine_runs = [_child("engine") for _ in range(REPEATS)]
    base_runs = [_child("baseline") for _ in range(REPEATS)]
    scoped_runs = [_child("scoped") for _ in range(REPEATS)]
    design_runs = [_child("design") for _ in range(REPEATS)]
    engine = statistics.median(r["elapsed"] for r in engine_runs)
    base = statistics.median(r["elapsed"] for r in base_runs)
    scoped = statistics.median(r["elapsed"] for r in scoped_runs)
    design = statistics.median(r["elapsed"] for r in design_runs)
    engine_rss = statistics.median(r["rss"] for r in engine_runs) - idle
    base_rss = statistics.median(r["rss"] for r in base_runs) - idle
    scoped_rss = statistics.median(r["rss"] for r in scoped_runs) - idle
    design_rss = statistics.median(r["rss"] for r in design_runs) - idle
    emit(
        "W4",
        "memory",
        engine / IDEAL,
        "x ideal 30ms",
        N,
        f"engine {engine * 1e3:.0f} ms vs asyncio.gather baseline {base * 1e3:.0f} ms "
        f"({base / IDEAL:.2f}x ideal); ratio to baseline {engine / base:.2f}; "
        f"peak RSS {engine_rss / N / 1024:.1f} KiB per in-flight transaction "
        f"(baseline {base_rss / N / 1024:.2f} KiB); the bare coroutines each in an anyio "
        f"cancel scope with a deadline (the floor the design's timeout sets): "
        f"{scoped * 1e3:.0f} ms, {scoped / base:.2f}x the baseline, "
        f"{scoped_rss / N / 1024:.2f} KiB; and each holding its transaction as the "
        f"package's models (the floor of this API): {design * 1e3:.0f} ms, "
        f"{design / base:.2f}x, {design_rss / N / 1024:.2f} KiB",
        baseline=round(base / IDEAL, 3),
        ratio=round(engine / base, 3),
        rss_kib_per_tx=round(engine_rss / N / 1024, 2),
        scoped_ratio=round(scoped / base, 3),
        scoped_rss_kib_per_tx=round(scoped_rss / N / 1024, 2),
        design_ratio=round(design / base, 3),
        design_rss_kib_per_tx=round(design_rss / N / 1024, 2),
    )


if __name__ == "__main__":
    main()
