"""W3 on SQLite: durable steps per second with 1, 16 and 256 transactions in flight.

Three async no-op steps per transaction through ``TransactionManager(store=SqliteStore)``
on a fresh file per run, ``synchronous=FULL`` (every commit fsyncs the write-ahead log).
Figures: steps per second, commits (fsyncs) per step as counted by the store, and the
CPU time per step of the event loop's thread and of the store's writer thread (the
two share one GIL, so where neither waits on the disk the wall time follows their sum).

Baselines in the same run, same file settings (WAL, synchronous=FULL) and a step-sized
JSON row:

* raw sqlite3, one INSERT + COMMIT per step: the fsync limit;
* raw sqlite3, 256 steps per COMMIT: the group-commit limit;
* asyncio + a writer thread committing once per step (``run_in_executor`` on a
  one-thread executor, one step in flight): what a naive async journal gets.

Also in the same rounds, at each level, the *floor* (``_floor``): the least any engine
keeping the design's journal rules must do for the same transactions, in plain Python
and sqlite3 with no project code (``_sqlite_floor``). The same lanes on one event loop,
three async no-op steps a transaction, and its four durable writes in a row, each
awaited (an asyncio future) before the next step runs:

1. the transaction's row (state ``active``, lease owner, expiry, epoch 1: the lease)
   with step 1's intent;
2. step 2's intent carrying step 1's completion;
3. step 3's intent carrying step 2's completion;
4. step 3's completion with the final state (``committed``), the lease given up.

Each appends one journal row, a JSON text (``_sqlite_floor.dumps``) made at that
moment from the step's current fields (ROW's, times as integer microseconds) and the
completion's id, status, result and finish time; the first inserts the transaction's row, the last
updates it; every append and update is fenced by the lease's epoch (``WHERE EXISTS``
on the row id and epoch). Fewer cannot keep the rules: an intent must be durable
before its handler runs, each completion needs a durable write and can only ride on
the next one, and the end must be recorded. One writer thread group-commits whatever
is queued (``executemany``, one COMMIT, WAL, ``synchronous=FULL``) and wakes the
batch's waiters with one ``call_soon_threadsafe``. Nothing else: no agent filter, no
per-step rows rewritten in place, no models, no deadline. The floor's line fields say
how fast any engine could go here and how far this one is from it.

And, at each level, the *design floor* (``_design_floor``): the same four durable
writes plus what the design and the public API ask of any engine on top, as W1's
design floor adds them (``_floors``), on the engine's own tables
(``stores/_sqlite_schema.py``), written by the same group-committing thread: the
transaction as the package's models (built the cheapest way); the plan durable with
the lease, as ``resume`` recovery needs it (the transaction's row, a row per step, the
first with its intent, and the agent's row, which ``list(agent_id=...)`` reads); each
later write rewriting the rows of the steps it changes, in full, as the models' JSON
(pydantic's serializer of ``TransactionStep``), fenced by the epoch; the final state in
the transaction's row with the lease given up; the forward pass under the timeout's
anyio cancel scope; a ``TransactionResult`` model a transaction. The engine reads its
journal back (tested).

Targets (issue 3): 256 in flight >= 30,000 steps/s and >= 3x the one-commit-per-step
baseline; 1 in flight >= the writer-thread baseline.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._common import REPEATS, emit
from ._sqlite_floor import (
    BEGIN,
    FINAL,
    LEASE,
    RECORD,
    STEP,
    W3_SCHEMA,
    GroupWriter,
    apply_w3,
    apply_w3_design,
    dumps,
    now_us,
    step_fields,
    thread_clock,
)

WORKLOADS = ("W3",)

LEVELS = (1, 16, 256)
TX_PER_RUN = {1: 200, 16: 600, 256: 2048}  # about a second per timed run
STEPS = (("reserve", "release"), ("charge", "refund"), ("ship", "cancel"))
RAW_STEPS = 1000
RAW_BATCH = 256
LEASE_US = 60_000_000  # the floor's lease: a minute
# The floor at 1 in flight waits on four fsyncs a transaction and little else: half as
# many transactions give as steady a median, in half the time.
FLOOR_TX_PER_RUN = {**TX_PER_RUN, 1: 100}

# What one step row weighs in the journal (the JSON of a running step).
ROW = json.dumps(
    {
        "step_id": "0f8e4a52-7d1b-4c0e-9a43-3c2f6a1d9e77",
        "agent_id": "agent",
        "action": "charge",
        "data": {"user_id": "u-001"},
        "compensating_action": "refund",
        "status": "running",
        "attempts": 1,
        "compensation_attempts": 0,
        "result": None,
        "error": None,
        "compensation_error": None,
        "started_at": "2026-01-01T00:00:00.000000Z",
        "finished_at": None,
        "compensated_at": None,
        "retry": None,
        "recovery": None,
    }
)


class _Scratch:
    """A temporary directory handing out fresh database paths."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aumai-w3-"))
        self.count = 0

    def fresh(self) -> Path:
        self.count += 1
        return self.root / f"run-{self.count}.db"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------- the engine


async def _engine_run(
    path: Path, transactions: int, inflight: int
) -> tuple[float, int, float, float]:
    """Seconds for ``transactions`` commits with ``inflight`` at a time; commits; and the
    CPU seconds of the event loop's thread and of the store's writer thread."""
    from aumai_transactions import TransactionManager
    from aumai_transactions.stores.sqlite import SqliteStore

    async def noop(action: str, data: dict[str, Any]) -> None:
        return None

    handlers = {name: noop for pair in STEPS for name in pair}
    store = SqliteStore(path, synchronous="FULL")
    manager = TransactionManager(handlers, store=store)
    async with manager:
        todo = iter(range(transactions))

        async def lane() -> None:
            begin, add_step, commit = manager.begin, manager.add_step, manager.commit
            for _ in todo:
                tx = begin()
                for action, undo in STEPS:
                    add_step(tx, "agent", action, {"user_id": "u-001"}, undo)
                result = await commit(tx)
                if result.state.value != "committed":
                    raise RuntimeError(f"unexpected outcome {result.state.value}")
                manager.forget(tx.transaction_id)

        writer_cpu = thread_clock("aumai-sqlite-writer")
        before = store.stats.commits
        loop_start, writer_start = time.thread_time(), writer_cpu()
        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(inflight)))
        elapsed = time.perf_counter() - start
        loop_used, writer_used = time.thread_time() - loop_start, writer_cpu() - writer_start
        commits = store.stats.commits - before
    return elapsed, commits, loop_used, writer_used


def engine_once(scratch: _Scratch, inflight: int) -> tuple[float, float, float, float]:
    """One run at ``inflight``: steps per second, commits per step, and the CPU time per
    step (µs) of the event loop's thread and of the writer thread."""
    transactions = TX_PER_RUN[inflight]
    elapsed, commits, loop_used, writer_used = asyncio.run(
        _engine_run(scratch.fresh(), transactions, inflight)
    )
    steps = transactions * len(STEPS)
    return steps / elapsed, commits / steps, loop_used / steps * 1e6, writer_used / steps * 1e6


# ---------------------------------------------------------------------- the floor


async def _lanes(
    writer: GroupWriter, lane: Callable[[], Awaitable[None]], inflight: int
) -> tuple[float, int, float, float]:
    """Run ``inflight`` lanes over a started ``writer`` (closed at the end): seconds,
    commits, and the CPU seconds of the event loop's thread and of the writer thread."""
    writer_cpu = writer.cpu_clock()
    try:
        loop_start, writer_start = time.thread_time(), writer_cpu()
        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(inflight)))
        elapsed = time.perf_counter() - start
        loop_used, writer_used = time.thread_time() - loop_start, writer_cpu() - writer_start
    finally:
        writer.close()
    return elapsed, writer.commits, loop_used, writer_used


async def _floor(path: Path, transactions: int, inflight: int) -> tuple[float, int, float, float]:
    """What ``_engine_run`` measures, for the least a write-ahead engine writes (see the
    module docstring): seconds, commits, and the CPU seconds of the event loop's thread
    and of the writer thread."""

    async def noop(action: str, data: dict[str, Any]) -> None:
        return None

    writer = GroupWriter(path, apply_w3, W3_SCHEMA)
    writer.start(asyncio.get_running_loop())
    submit = writer.submit
    bits = random.Random(3).getrandbits
    todo = iter(range(transactions))

    async def lane() -> None:
        for _ in todo:
            tid = f"{bits(128):032x}"
            created = now_us()
            steps = [step_fields(bits, action, undo) for action, undo in STEPS]
            rid, done = 0, None
            for seq, step in enumerate(steps):
                step["status"] = "running"
                step["attempts"] = 1
                step["started_at"] = now_us()
                if seq == 0:  # the lease and the first intent
                    args = (tid, created, "floor", created + LEASE_US, dumps({"step": step}))
                    rid = await submit(BEGIN, args)
                else:  # the intent, with the previous step's completion
                    await submit(STEP, (rid, 1, seq, dumps({"step": step, "completed": done})))
                await noop(step["action"], step["data"])
                step["status"] = "completed"
                step["finished_at"] = now_us()
                done = {k: step[k] for k in ("step_id", "status", "result", "finished_at")}
            body = dumps({"completed": done})
            await submit(FINAL, (rid, 1, len(steps), body, "committed", now_us()))

    return await _lanes(writer, lane, inflight)


def floor_once(
    scratch: _Scratch, inflight: int, design: bool = False
) -> tuple[float, float, float, float]:
    """``engine_once`` for the floor (the design floor, with ``design``)."""
    transactions = FLOOR_TX_PER_RUN[inflight]
    run = _design_floor if design else _floor
    elapsed, commits, loop_used, writer_used = asyncio.run(
        run(scratch.fresh(), transactions, inflight)
    )
    steps = transactions * len(STEPS)
    return steps / elapsed, commits / steps, loop_used / steps * 1e6, writer_used / steps * 1e6


async def _design_floor(
    path: Path, transactions: int, inflight: int
) -> tuple[float, int, float, float]:
    """``_floor`` plus what the design and the public API ask of any engine on top (see
    the module docstring), on the engine's own tables: seconds, commits, and the CPU
    seconds of the event loop's thread and of the writer thread."""
    import anyio

    from aumai_transactions import StepStatus, TransactionState, TransactionStep
    from aumai_transactions.stores.sqlite import SqliteStore

    from ._floors import active_models, result_model, start

    async def handler(action: str, data: dict[str, Any]) -> Any:
        return None

    async with SqliteStore(path):  # the engine's tables, nothing in them
        pass
    writer = GroupWriter(path, apply_w3_design)
    writer.start(asyncio.get_running_loop())
    submit = writer.submit
    to_json = functools.partial(TransactionStep.__pydantic_serializer__.to_json, exclude_none=True)
    completed = StepStatus.COMPLETED
    bits = random.Random(3).getrandbits
    todo = iter(range(transactions))

    async def lane() -> None:
        loop_time = asyncio.get_running_loop().time
        for _ in todo:
            tx = active_models(f"{bits(128):032x}", bits)
            fields = tx.__dict__
            steps = tx.steps
            rid, done = 0, (0, "")
            with anyio.CancelScope(deadline=loop_time() + 60.0):  # the timeout
                for position, step in enumerate(steps):
                    values = start(step)
                    if position == 0:  # the lease, every step's row, the first intent
                        every = [(i, s.step_id, to_json(s).decode()) for i, s in enumerate(steps)]
                        created = now_us()
                        args = (tx.transaction_id, created, 60.0, "floor", created + LEASE_US)
                        rid = await submit(LEASE, (*args, every, "agent"))
                    else:  # the intent, with the previous step's completion
                        rows = [(position, to_json(step).decode()), done]
                        await submit(RECORD, (rid, 1, None, rows))
                    values["result"] = await handler(values["action"], values["data"])
                    values["status"] = completed
                    values["finished_at"] = datetime.now(UTC)
                    done = (position, to_json(step).decode())
            fields["state"] = TransactionState.COMMITTED
            fields["updated_at"] = fields["finished_at"] = datetime.now(UTC)
            now = now_us()
            await submit(RECORD, (rid, 1, ("committed", now, now, None), [done]))
            result_model(tx, [s.step_id for s in steps], None)

    return await _lanes(writer, lane, inflight)


# ---------------------------------------------------------------------- baselines


def _raw_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS steps (id INTEGER PRIMARY KEY, body TEXT)")
    return conn


def raw_commit_per_step(scratch: _Scratch) -> float:
    """Steps per second committing each step on its own (the fsync limit)."""
    conn = _raw_connection(scratch.fresh())
    start = time.perf_counter()
    for _ in range(RAW_STEPS):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO steps (body) VALUES (?)", (ROW,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return RAW_STEPS / elapsed


def raw_batched(scratch: _Scratch) -> float:
    """Steps per second with RAW_BATCH steps per commit (the group-commit limit)."""
    batches = RAW_STEPS * 20 // RAW_BATCH
    conn = _raw_connection(scratch.fresh())
    start = time.perf_counter()
    for _ in range(batches):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO steps (body) VALUES (?)", [(ROW,)] * RAW_BATCH)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return batches * RAW_BATCH / elapsed


def thread_commit_per_step(scratch: _Scratch) -> float:
    """Steps per second awaiting a one-thread executor that commits each step."""

    async def timed(path: Path) -> float:
        executor = ThreadPoolExecutor(max_workers=1)
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(executor, _raw_connection, path)

        def write() -> None:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO steps (body) VALUES (?)", (ROW,))
            conn.execute("COMMIT")

        start = time.perf_counter()
        for _ in range(RAW_STEPS):
            await loop.run_in_executor(executor, write)
        elapsed = time.perf_counter() - start
        await loop.run_in_executor(executor, conn.close)
        executor.shutdown()
        return elapsed

    return RAW_STEPS / asyncio.run(timed(scratch.fresh()))


# ---------------------------------------------------------------------- main


def _medians(runs: list[tuple[float, float, float, float]]) -> tuple[float, ...]:
    """The median of each figure of a floor's runs (rate, commits, loop and writer CPU)."""
    return tuple(statistics.median(run[i] for run in runs) for i in range(4))


def _floor_fields(
    name: str,
    runs: list[tuple[float, float, float, float]],
    rate: float,
    per_commit: float,
    threaded: float,
) -> dict[str, float]:
    """A floor's fields of the engine's line: its medians, its ratios to the two
    baselines, and the engine's to it (``vs_<name>``)."""
    low, commits, loop_us, writer_us = _medians(runs)
    return {
        name: round(low),
        f"{name}_commits_per_step": round(commits, 4),
        f"{name}_loop_cpu_us_per_step": round(loop_us, 1),
        f"{name}_writer_cpu_us_per_step": round(writer_us, 1),
        f"{name}_vs_raw_commit_per_step": round(low / per_commit, 2),
        f"{name}_vs_thread_commit_per_step": round(low / threaded, 2),
        f"vs_{name}": round(rate / low, 2),
    }


def main() -> None:
    """Every measurement once per round, baselines interleaved with the engine runs
    and each level's floor right after the engine at that level (so a noisy machine
    weighs on all alike); medians of REPEATS rounds after a warm-up round."""
    scratch = _Scratch()
    baselines: dict[str, Callable[[_Scratch], float]] = {
        "raw_commit_per_step": raw_commit_per_step,
        "raw_batched": raw_batched,
        "thread_commit_per_step": thread_commit_per_step,
    }
    keys: list[str | int] = [*baselines, *LEVELS]
    rates: dict[str | int, list[float]] = {key: [] for key in keys}
    commits: dict[int, list[float]] = {level: [] for level in LEVELS}
    loop_cpu: dict[int, list[float]] = {level: [] for level in LEVELS}
    writer_cpu: dict[int, list[float]] = {level: [] for level in LEVELS}
    # The floor's rate, commits per step, loop and writer CPU per step, by level.
    floor: dict[int, list[tuple[float, float, float, float]]] = {level: [] for level in LEVELS}
    design: dict[int, list[tuple[float, float, float, float]]] = {level: [] for level in LEVELS}
    try:
        for round_number in range(REPEATS + 1):
            for name, measure in baselines.items():
                rate = measure(scratch)
                if round_number:
                    rates[name].append(rate)
            for inflight in LEVELS:
                gc.collect()
                rate, per_step, loop_us, writer_us = engine_once(scratch, inflight)
                if round_number:
                    rates[inflight].append(rate)
                    commits[inflight].append(per_step)
                    loop_cpu[inflight].append(loop_us)
                    writer_cpu[inflight].append(writer_us)
                gc.collect()
                measured = floor_once(scratch, inflight)
                if round_number:
                    floor[inflight].append(measured)
                gc.collect()
                measured = floor_once(scratch, inflight, design=True)
                if round_number:
                    design[inflight].append(measured)
    finally:
        scratch.close()
    median = {key: statistics.median(values) for key, values in rates.items()}
    per_commit = median["raw_commit_per_step"]
    threaded = median["thread_commit_per_step"]
    same_run = {name: round(median[name]) for name in baselines}
    emit("W3", "sqlite3-raw", per_commit, "steps/s", RAW_STEPS, "one INSERT+COMMIT per step")
    emit(
        "W3",
        "sqlite3-raw",
        median["raw_batched"],
        "steps/s",
        RAW_STEPS * 20,
        f"{RAW_BATCH} steps per COMMIT",
    )
    emit(
        "W3",
        "sqlite3-thread",
        threaded,
        "steps/s",
        RAW_STEPS,
        "asyncio + writer thread (run_in_executor), one COMMIT per step, 1 in flight",
    )
    for inflight in LEVELS:
        rate = median[inflight]
        per_step = statistics.median(commits[inflight])
        loop_us = statistics.median(loop_cpu[inflight])
        writer_us = statistics.median(writer_cpu[inflight])
        floor_rate, _, floor_loop, floor_writer = _medians(floor[inflight])
        design_rate, _, design_loop, design_writer = _medians(design[inflight])
        emit(
            "W3",
            "sqlite",
            rate,
            "steps/s",
            TX_PER_RUN[inflight] * len(STEPS),
            f"{inflight} in flight, synchronous=FULL; {per_step:.3f} commits/step; "
            f"{rate / per_commit:.2f}x raw one-commit-per-step, "
            f"{rate / threaded:.2f}x writer-thread baseline; CPU per step: event loop "
            f"{loop_us:.1f} µs, writer thread {writer_us:.1f} µs; floor of a write-ahead "
            f"engine {floor_rate:,.0f} steps/s ({floor_rate / per_commit:.2f}x raw; CPU per "
            f"step {floor_loop:.1f} + {floor_writer:.1f} µs), engine {rate / floor_rate:.2f}x it; "
            f"design floor (the engine's tables, the package's models and scope) "
            f"{design_rate:,.0f} steps/s ({design_rate / per_commit:.2f}x raw, "
            f"{design_rate / threaded:.2f}x writer-thread; CPU per step {design_loop:.1f} + "
            f"{design_writer:.1f} µs), engine {rate / design_rate:.2f}x it",
            inflight=inflight,
            commits_per_step=round(per_step, 4),
            loop_cpu_us_per_step=round(loop_us, 1),
            writer_cpu_us_per_step=round(writer_us, 1),
            vs_raw_commit_per_step=round(rate / per_commit, 2),
            vs_thread_commit_per_step=round(rate / threaded, 2),
            **_floor_fields("floor", floor[inflight], rate, per_commit, threaded),
            **_floor_fields("design_floor", design[inflight], rate, per_commit, threaded),
            **same_run,
        )


if __name__ == "__main__":
    main()
