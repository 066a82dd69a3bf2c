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

Targets (issue 3): 256 in flight >= 30,000 steps/s and >= 3x the one-commit-per-step
baseline; 1 in flight >= the writer-thread baseline.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._common import REPEATS, emit

WORKLOADS = ("W3",)

LEVELS = (1, 16, 256)
TX_PER_RUN = {1: 200, 16: 600, 256: 2048}  # about a second per timed run
STEPS = (("reserve", "release"), ("charge", "refund"), ("ship", "cancel"))
RAW_STEPS = 1000
RAW_BATCH = 256

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


def _writer_clock() -> Callable[[], float]:
    """The CPU time of the store's writer thread (0.0 where it cannot be read)."""
    found = [t for t in threading.enumerate() if t.name.startswith("aumai-sqlite-writer")]
    if len(found) != 1 or found[0].ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return lambda: 0.0
    clock = time.pthread_getcpuclockid(found[0].ident)
    return lambda: time.clock_gettime(clock)


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

        writer_cpu = _writer_clock()
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


def main() -> None:
    """Every measurement once per round, baselines interleaved with the engine runs
    (so a noisy machine weighs on both alike); medians of REPEATS rounds after a
    warm-up round."""
    scratch = _Scratch()
    baselines: dict[str, Callable[[_Scratch], float]] = {
        "raw_commit_per_step": raw_commit_per_step,
        "raw_batched": raw_batched,
        "thread_commit_per_step": thread_commit_per_step,
    }
    rates: dict[str | int, list[float]] = {key: [] for key in (*baselines, *LEVELS)}
    commits: dict[int, list[float]] = {level: [] for level in LEVELS}
    loop_cpu: dict[int, list[float]] = {level: [] for level in LEVELS}
    writer_cpu: dict[int, list[float]] = {level: [] for level in LEVELS}
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
        emit(
            "W3",
            "sqlite",
            rate,
            "steps/s",
            TX_PER_RUN[inflight] * len(STEPS),
            f"{inflight} in flight, synchronous=FULL; {per_step:.3f} commits/step; "
            f"{rate / per_commit:.2f}x raw one-commit-per-step, "
            f"{rate / threaded:.2f}x writer-thread baseline; CPU per step: event loop "
            f"{loop_us:.1f} µs, writer thread {writer_us:.1f} µs",
            inflight=inflight,
            commits_per_step=round(per_step, 4),
            loop_cpu_us_per_step=round(loop_us, 1),
            writer_cpu_us_per_step=round(writer_us, 1),
            vs_raw_commit_per_step=round(rate / per_commit, 2),
            vs_thread_commit_per_step=round(rate / threaded, 2),
            **same_run,
        )


if __name__ == "__main__":
    main()
