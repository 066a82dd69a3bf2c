"""W5 on SQLite: recovery of 10,000 transactions whose driver died.

Each run recovers a fresh copy of one journal (``synchronous=FULL``) holding 10,000
three-step transactions left ``active`` under an expired lease, as a crashed worker
leaves them: step 1 completed, step 2 running (in doubt), step 3 pending. They are
written once through the store API (``acquire`` with an already-expired lease, many at
once), the store closed, the file copied for each run. Then a new
manager times ``await manager.recover()``, which claims them in batches and
compensates steps 2 and 1 of each (async no-op handlers). Figure: transactions
recovered per second (target >= 5,000/s), and the CPU time per transaction of the
event loop's thread and of the store's writer thread; with ``--diagnostics``, also
with retain_finished=False and with the collector paused (see main). No baseline (see
BENCHMARKS.md).

In the same rounds, the *floor* (``_floor``): the least any recovery keeping the
design's journal rules must do on a fresh copy of the same journal, in plain Python
and sqlite3 on the engine's own tables (``stores/_sqlite_schema.py``), no project
code. A sliding window of 1,000 transactions as ``recover()`` drives (claimed again
once half are done), a worker coroutine per place in the window, and one writer
thread that group-commits whatever is queued (``_sqlite_floor``: WAL,
``synchronous=FULL``, one COMMIT a batch, one ``call_soon_threadsafe`` back). Per
transaction, each write awaited (an asyncio future) before what follows it:

1. the claim, with the window's others: the epoch bumped (fenced by the epoch read),
   the lease's owner and expiry, a recovery attempt counted, and its step rows read
   and each decoded (``_sqlite_floor.loads``);
2. the move to ``compensating`` with step 2's intent (in doubt: marked interrupted,
   status ``compensating``, a compensation attempt), before its compensation runs;
3. step 2's completion (``compensated``, its time) with step 1's intent;
4. step 1's completion with the final state ``rolled_back`` (its times and error),
   the lease given up.

Each step row written is the JSON (``_sqlite_floor.dumps``) of the step as decoded, changed; every
update is fenced by the lease's epoch. Fewer cannot keep the rules: the lease must be
durable before anything is done under it, each intent before its compensation, each
completion in a write of its own or the next one, and the end must be recorded; the
state change rides with the first intent, which is written before the first action.
(The engine makes the state change and each completion a record of its own, lazy:
each rides with the next durable one, so it too waits on three writes after the
claim.) The journal the floor leaves is one the engine reads back.

And the *design floor* (``_design_floor``): that floor plus what the design and the
public API ask of any engine on top, as W1's design floor adds them (``_floors``): each
claimed transaction validated into the package's models, in the writer thread, as the
engine's claim does (a row that does not validate must never run: pydantic's
``model_validate_json`` of each step row, ``model_validate`` of the transaction); each
step row written as the model's JSON (pydantic's serializer of ``TransactionStep``);
the compensation shielded from cancellation (``anyio.CancelScope(shield=True)``) under
its own time bound (``anyio.move_on_after``), as the design asks; a
``TransactionResult`` model per transaction, returned in a list as ``recover()`` does;
and every transaction kept by id, as the manager does by default. Models are changed
through their ``__dict__`` and built without validation (``_floors.model``): the
cheapest ways there are. Its journal, too, is one the engine reads back (tested).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._common import REPEATS, diagnostics, emit
from ._sqlite_floor import (
    CLAIM,
    RECORD,
    GroupWriter,
    Write,
    apply_w5,
    claim_expired,
    dumps,
    now_us,
    thread_clock,
)

WORKLOADS = ("W5",)

TRANSACTIONS = 10_000
# The collector's thresholds of the "collector tuned" diagnostic (Python's are 700, 10, 10).
TUNED_THRESHOLDS = (10_000, 10, 10)
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


async def _recover(path: Path, retain_finished: bool = True) -> tuple[float, int, float, float]:
    """Seconds for ``recover()``, how many it recovered, and the CPU seconds of the
    event loop's thread and of the store's writer thread meanwhile."""
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
        writer_cpu = thread_clock("aumai-sqlite-writer")
        loop_start, writer_start = time.thread_time(), writer_cpu()
        start = time.perf_counter()
        results = await manager.recover()
        elapsed = time.perf_counter() - start
        loop_used, writer_used = time.thread_time() - loop_start, writer_cpu() - writer_start
        left = await manager.store.list(state=None, limit=None)
    if len(results) != TRANSACTIONS or undone != 2 * TRANSACTIONS:
        raise RuntimeError(f"recovered {len(results)}, compensated {undone}")
    if any(tx.state.value != "rolled_back" for tx in left):
        raise RuntimeError("a transaction was left unrecovered")
    return elapsed, len(results), loop_used, writer_used


# ---------------------------------------------------------------------- the floor

IN_DOUBT = "interrupted: its driver stopped while this step ran; recovery compensates it"
ENDED = "the driver stopped mid-transaction; rolled back by recovery"
LEASE_US = 60_000_000  # the floor's lease: a minute
WINDOW = 1000  # transactions driven at once, as ``recover()``'s default limit
COMPENSATION_BOUND = 60.0  # seconds: the manager's default compensation_timeout


async def _drive_window(
    path: Path,
    apply: Callable[[sqlite3.Connection, list[Write]], None],
    drive: Callable[[Callable[..., Awaitable[Any]], Any], Awaitable[None]],
) -> tuple[float, int, float, float]:
    """A recovery as ``recover()`` drives one, for a floor: ``apply`` (in the writer
    thread) claims and writes, ``drive(submit, claimed)`` recovers one claimed
    transaction; seconds, transactions recovered, CPU seconds of the loop and writer."""
    writer = GroupWriter(path, apply)
    writer.start(asyncio.get_running_loop())
    submit = writer.submit
    recovered = taken = 0
    queued: deque[Any] = deque()
    room, more = asyncio.Event(), asyncio.Event()
    closed = False

    async def worker() -> None:
        nonlocal recovered, taken
        while True:
            while queued:
                await drive(submit, queued.popleft())
                recovered += 1
                taken -= 1
                if taken <= WINDOW // 2:
                    room.set()
            if closed:
                return
            await more.wait()

    writer_cpu = writer.cpu_clock()
    loop_start, writer_start = time.thread_time(), writer_cpu()
    start = time.perf_counter()
    workers: list[asyncio.Task[None]] = []
    try:
        while True:
            while taken > WINDOW // 2:
                room.clear()
                await room.wait()
            claimed = await submit(CLAIM, ("floor", now_us() + LEASE_US, WINDOW - taken))
            if not claimed:
                break
            queued.extend(claimed)
            taken += len(claimed)
            while len(workers) < min(WINDOW, taken):
                workers.append(asyncio.create_task(worker()))
            more.set()
            more.clear()
        closed = True
        more.set()
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - start
        loop_used, writer_used = time.thread_time() - loop_start, writer_cpu() - writer_start
    finally:
        writer.close()
    with closing(sqlite3.connect(path)) as conn:
        left = conn.execute("SELECT COUNT(*) FROM transactions WHERE state != 'rolled_back'")
        if left.fetchone()[0]:
            raise RuntimeError("the floor left a transaction unrecovered")
    return elapsed, recovered, loop_used, writer_used


async def _floor(path: Path) -> tuple[float, int, float, float]:
    """What ``_recover`` measures, for the least a recovery writes (see the module
    docstring): seconds, transactions recovered, CPU seconds of the loop and writer."""
    undone = 0

    async def undo(action: str, data: dict[str, Any]) -> None:
        nonlocal undone
        undone += 1

    async def drive(
        submit: Callable[..., Awaitable[Any]], claimed: tuple[int, int, list[dict[str, Any]]]
    ) -> None:
        rid, epoch, steps = claimed
        header: tuple[Any, ...] | None = ("compensating", now_us())
        done: list[tuple[int, str]] = []
        for position in range(len(steps) - 1, -1, -1):
            step = steps[position]
            status = step["status"]
            if status not in ("completed", "running"):
                continue
            if status == "running":  # in doubt: compensated like a completed one
                step["interrupted"] = True
                step["error"] = IN_DOUBT
            step["status"] = "compensating"
            step["compensation_attempts"] += 1
            # The intent (with the state change first time, the last completion after).
            await submit(RECORD, (rid, epoch, header, [(position, dumps(step)), *done]))
            header = None
            await undo(step["compensating_action"], step["data"])
            step["status"] = "compensated"
            step["compensated_at"] = datetime.now(UTC).isoformat()  # as the engine reads it
            done = [(position, dumps(step))]
        now = now_us()
        await submit(RECORD, (rid, epoch, ("rolled_back", now, now, ENDED), done))

    measured = await _drive_window(path, apply_w5, drive)
    if measured[1] != TRANSACTIONS or undone != 2 * TRANSACTIONS:
        raise RuntimeError(f"floor recovered {measured[1]}, compensated {undone}")
    return measured


# ---------------------------------------------------------------------- the design floor

_CLAIM_HEADERS = (
    "SELECT id, epoch, transaction_id, state, created_at, timeout_seconds, updated_at, "
    "finished_at, error, recovery_attempts FROM transactions "
    "WHERE state IN ('active', 'compensating') "
    "AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires <= ?) "
    "ORDER BY created_at, id LIMIT ?"
)


def _claim_models(conn: sqlite3.Connection, owner: str, expires: int, limit: int) -> list[Any]:
    """The floor's claim, each transaction validated into the package's models (as the
    design asks: a row that does not validate must not run): (row id, epoch, model)."""
    from aumai_transactions import Transaction, TransactionStep
    from aumai_transactions.stores._sqlite_schema import from_us

    claimed = []
    for row, bodies in claim_expired(conn, owner, expires, limit, _CLAIM_HEADERS):
        rid, epoch, tid, state, created, timeout, updated, finished, error, attempts = row
        steps = [TransactionStep.model_validate_json(body) for body in bodies]
        tx = Transaction.model_validate(
            {
                "transaction_id": tid,
                "steps": steps,
                "state": state,
                "created_at": from_us(created),
                "timeout_seconds": timeout,
                "updated_at": from_us(updated),
                "finished_at": from_us(finished),
                "error": error,
                "recovery_attempts": attempts + 1,
                "blocked_reason": None,
                "resolution": None,
            }
        )
        claimed.append((rid, epoch + 1, tx))
    return claimed


def _apply_design(conn: sqlite3.Connection, batch: list[Write]) -> None:
    rest = []
    for write in batch:
        if write.kind == CLAIM:
            write.result = _claim_models(conn, *write.args)
        else:
            rest.append(write)
    if rest:
        apply_w5(conn, rest)


async def _design_floor(path: Path) -> tuple[float, int, float, float]:
    """The floor plus what the design and the public API ask of any engine on top (see
    the module docstring): seconds, transactions recovered, CPU seconds of the loop and
    writer."""
    import anyio

    from aumai_transactions import (
        StepStatus,
        Transaction,
        TransactionResult,
        TransactionState,
        TransactionStep,
    )

    from ._floors import model

    to_json = functools.partial(TransactionStep.__pydantic_serializer__.to_json, exclude_none=True)
    running, completed = StepStatus.RUNNING, StepStatus.COMPLETED
    compensating, compensated = StepStatus.COMPENSATING, StepStatus.COMPENSATED
    registry: dict[str, Transaction] = {}  # what the manager keeps by default
    results: list[TransactionResult] = []  # what recover() returns
    undone = 0

    async def undo(action: str, data: dict[str, Any]) -> None:
        nonlocal undone
        undone += 1

    async def drive(submit: Callable[..., Awaitable[Any]], claimed: Any) -> None:
        rid, epoch, tx = claimed
        registry[tx.transaction_id] = tx
        started = datetime.now(UTC)
        undone_ids: list[str] = []
        with anyio.CancelScope(shield=True):  # compensation is finalization
            fields = tx.__dict__
            fields["state"] = TransactionState.COMPENSATING
            fields["updated_at"] = started
            header: tuple[Any, ...] | None = ("compensating", now_us())
            done: list[tuple[int, str]] = []
            with anyio.move_on_after(COMPENSATION_BOUND):  # under its own time bound
                steps = tx.steps
                for position in range(len(steps) - 1, -1, -1):
                    step = steps[position]
                    values = step.__dict__
                    status = values["status"]
                    if status is not completed and status is not running:
                        continue
                    if status is running:
                        values["interrupted"] = True
                        values["error"] = IN_DOUBT
                    values["status"] = compensating
                    values["compensation_attempts"] += 1
                    body = to_json(step).decode()
                    await submit(RECORD, (rid, epoch, header, [(position, body), *done]))
                    header = None
                    await undo(values["compensating_action"], values["data"])
                    values["status"] = compensated
                    values["compensated_at"] = datetime.now(UTC)
                    done = [(position, to_json(step).decode())]
                    undone_ids.append(values["step_id"])
            finished = datetime.now(UTC)
            fields["state"] = TransactionState.ROLLED_BACK
            fields["updated_at"] = fields["finished_at"] = finished
            fields["error"] = ENDED
            now = now_us()
            await submit(RECORD, (rid, epoch, ("rolled_back", now, now, ENDED), done))
        results.append(
            model(
                TransactionResult,
                {
                    "transaction_id": tx.transaction_id,
                    "state": TransactionState.ROLLED_BACK,
                    "completed_steps": undone_ids,
                    "failed_step": None,
                    "error": ENDED,
                    "compensation_errors": {},
                    "started_at": started,
                    "finished_at": finished,
                    "duration_seconds": (finished - started).total_seconds(),
                    "interrupted_steps": [],
                    "recorded_only_steps": [],
                },
            )
        )

    measured = await _drive_window(path, _apply_design, drive)
    if len(results) != TRANSACTIONS or undone != 2 * TRANSACTIONS:
        raise RuntimeError(f"design floor recovered {len(results)}, compensated {undone}")
    return measured


def _per_tx(measured: tuple[float, int, float, float]) -> tuple[float, float, float]:
    elapsed, count, loop_used, writer_used = measured
    return elapsed, loop_used / count * 1e6, writer_used / count * 1e6


def _medians(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    seconds, loop_us, writer_us = (statistics.median(run[i] for run in runs) for i in range(3))
    return seconds, loop_us, writer_us


def main() -> None:
    """The manager as built by default (it keeps every transaction it drove); with
    ``--diagnostics``, in interleaved runs, also as a service journaling to a durable
    store is advised to build it (``retain_finished=False``), with the collector tuned
    as docs/benchmarks.md suggests for a busy worker process (``gc.freeze()`` and a
    first-generation threshold of 10,000) and, as a diagnostic of the engine's own work,
    the default with the cyclic garbage collector paused for the recovery (what the
    collector's walks over the objects this process keeps cost)."""
    root = Path(tempfile.mkdtemp(prefix="aumai-w5-"))
    variants: tuple[str, ...] = ("default",)
    if diagnostics():
        variants += ("retain_finished=False", "collector tuned", "collector off")
    try:
        # One journal of abandoned transactions, built once (its store closed, so the
        # file holds all of it) and copied afresh for every run.
        template = root / "abandoned.db"
        asyncio.run(_abandon(template, TRANSACTIONS))
        # Per run: seconds, and the loop's and the writer's CPU µs per transaction.
        floors = {"floor": _floor, "design floor": _design_floor}
        times: dict[str, list[tuple[float, float, float]]] = {v: [] for v in (*variants, *floors)}
        for run in range(REPEATS + 1):  # the first round is the warm-up
            for variant in variants:
                path = root / f"run-{run}-{variants.index(variant)}.db"
                shutil.copy(template, path)  # with its mode (0600)
                gc.collect()
                thresholds = gc.get_threshold()
                if variant == "collector off":
                    gc.disable()
                elif variant == "collector tuned":
                    gc.freeze()  # what a worker process has imported stays out of its walks
                    gc.set_threshold(*TUNED_THRESHOLDS)
                try:
                    measured = asyncio.run(_recover(path, variant != "retain_finished=False"))
                finally:
                    gc.enable()
                    gc.set_threshold(*thresholds)
                    gc.unfreeze()
                if run:
                    times[variant].append(_per_tx(measured))
                path.unlink()
            if not run:
                continue  # plain Python and sqlite3: the engine's warm-up serves it too
            for name, floor in floors.items():
                path = root / f"run-{run}-{name.replace(' ', '-')}.db"
                shutil.copy(template, path)
                gc.collect()
                times[name].append(_per_tx(asyncio.run(floor(path))))
                path.unlink()
        floor_seconds, floor_loop, floor_writer = _medians(times["floor"])
        design_seconds, design_loop, design_writer = _medians(times["design floor"])
        for variant in variants:
            seconds, loop_us, writer_us = _medians(times[variant])
            emit(
                "W5",
                "sqlite",
                TRANSACTIONS / seconds,
                "tx/s",
                TRANSACTIONS,
                f"recover() of {TRANSACTIONS} expired active transactions (2 compensations "
                f"each), synchronous=FULL, {variant}; median {seconds:.2f}s; CPU per "
                f"transaction: event loop {loop_us:.0f} µs, writer thread {writer_us:.0f} µs; "
                f"floor of a write-ahead recovery {TRANSACTIONS / floor_seconds:,.0f} tx/s "
                f"(CPU {floor_loop:.0f} + {floor_writer:.0f} µs), engine "
                f"{floor_seconds / seconds:.2f}x it; design floor (with the package's "
                f"models and scopes) {TRANSACTIONS / design_seconds:,.0f} tx/s (CPU "
                f"{design_loop:.0f} + {design_writer:.0f} µs), engine "
                f"{design_seconds / seconds:.2f}x it",
                seconds=round(seconds, 3),
                variant=variant,
                loop_cpu_us_per_tx=round(loop_us, 1),
                writer_cpu_us_per_tx=round(writer_us, 1),
                floor=round(TRANSACTIONS / floor_seconds),
                floor_seconds=round(floor_seconds, 3),
                floor_loop_cpu_us_per_tx=round(floor_loop, 1),
                floor_writer_cpu_us_per_tx=round(floor_writer, 1),
                vs_floor=round(floor_seconds / seconds, 2),
                design_floor=round(TRANSACTIONS / design_seconds),
                design_floor_seconds=round(design_seconds, 3),
                design_floor_loop_cpu_us_per_tx=round(design_loop, 1),
                design_floor_writer_cpu_us_per_tx=round(design_writer, 1),
                vs_design_floor=round(design_seconds / seconds, 2),
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
