"""W5 on SQLite: recovery of 10,000 transactions whose driver died.

Each run recovers a fresh copy of one journal (``synchronous=FULL``) holding 10,000
three-step transactions left ``active`` under an expired lease, as a crashed worker
leaves them: step 1 completed, step 2 running (in doubt), step 3 pending. They are
written once through the store API (``acquire`` with an already-expired lease, many at
once), the store closed, the file copied for each run. Then a new
manager times ``await manager.recover()``, which claims them in batches and
compensates steps 2 and 1 of each (async no-op handlers). Figure: transactions
recovered per second (target >= 5,000/s); with ``--diagnostics``, also with
retain_finished=False and with the collector paused (see main). No baseline (see
BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import REPEATS, diagnostics, emit

WORKLOADS = ("W5",)

TRANSACTIONS = 10_000
STEPS = (("reserve", "release"), ("charge", "refund"), ("ship", "cancel"))


async def _abandon(path: Path, count: int) -> None:
    """Leave ``count`` transactions in flight under expired leases, as a crash would."""
    from aumai_transactions import TransactionManager
    from aumai_transactions.models import StepStatus, TransactionState
    from aumai_transactions.stores.sqlite import SqliteStore

    builder = TransactionManager()
    async with SqliteStore(path) as store:

        async def one() -> None:
            tx = builder.begin(timeout_seconds=3600)
            for action, undo in STEPS:
                builder.add_step(tx, "agent", action, {"user_id": "u-001"}, undo)
            builder.forget(tx.transaction_id)
            tx.state = TransactionState.ACTIVE
            tx.steps[0].status = StepStatus.COMPLETED
            tx.steps[0].attempts = 1
            tx.steps[1].status = StepStatus.RUNNING
            tx.steps[1].attempts = 1
            await store.acquire(tx, "crashed-worker", -60.0, [TransactionState.PENDING])

        for start in range(0, count, 1000):
            await asyncio.gather(*(one() for _ in range(min(1000, count - start))))


async def _recover(path: Path, retain_finished: bool = True) -> tuple[float, int]:
    from aumai_transactions import TransactionManager
    from aumai_transactions.stores.sqlite import SqliteStore

    undone = 0

    async def undo(action: str, data: dict[str, Any]) -> None:
        nonlocal undone
        undone += 1

    async def forward(action: str, data: dict[str, Any]) -> None:
        raise AssertionError("recovery under 'compensate' never runs a forward step")

    handlers = {
        name: (forward if index == 0 else undo) for pair in STEPS for index, name in enumerate(pair)
    }
    store = SqliteStore(path)
    manager = TransactionManager(handlers, store=store, retain_finished=retain_finished)
    async with manager:
        start = time.perf_counter()
        results = await manager.recover()
        elapsed = time.perf_counter() - start
        left = await manager.store.list(state=None, limit=None)
    if len(results) != TRANSACTIONS or undone != 2 * TRANSACTIONS:
        raise RuntimeError(f"recovered {len(results)}, compensated {undone}")
    if any(tx.state.value != "rolled_back" for tx in left):
        raise RuntimeError("a transaction was left unrecovered")
    return elapsed, len(results)


def main() -> None:
    """The manager as built by default (it keeps every transaction it drove); with
    ``--diagnostics``, in interleaved runs, also as a service journaling to a durable
    store is advised to build it (``retain_finished=False``) and, as a diagnostic of
    the engine's own work, the default with the cyclic garbage collector paused for
    the recovery (what the collector's walks over the objects this process keeps
    cost)."""
    root = Path(tempfile.mkdtemp(prefix="aumai-w5-"))
    variants: tuple[str, ...] = ("default",)
    if diagnostics():
        variants += ("retain_finished=False", "collector off")
    try:
        # One journal of abandoned transactions, built once (its store closed, so the
        # file holds all of it) and copied afresh for every run.
        template = root / "abandoned.db"
        asyncio.run(_abandon(template, TRANSACTIONS))
        times: dict[str, list[float]] = {variant: [] for variant in variants}
        for run in range(REPEATS + 1):  # the first round is the warm-up
            for variant in variants:
                path = root / f"run-{run}-{variants.index(variant)}.db"
                shutil.copy(template, path)  # with its mode (0600)
                gc.collect()
                if variant == "collector off":
                    gc.disable()
                try:
                    elapsed, _ = asyncio.run(_recover(path, variant != "retain_finished=False"))
                finally:
                    gc.enable()
                if run:
                    times[variant].append(elapsed)
                path.unlink()
        for variant in variants:
            seconds = statistics.median(times[variant])
            emit(
                "W5",
                "sqlite",
                TRANSACTIONS / seconds,
                "tx/s",
                TRANSACTIONS,
                f"recover() of {TRANSACTIONS} expired active transactions (2 compensations "
                f"each), synchronous=FULL, {variant}; median {seconds:.2f}s",
                seconds=round(seconds, 3),
                variant=variant,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
