"""What the SQLite floors of W3 and W5 share: a group-committing writer thread over plain
sqlite3, and the per-workload batch functions it applies.

A floor is the least any engine keeping the design's journal rules must do on this
machine: an intent durable before its handler runs, a completion folded into the next
durable write, every state change recorded before the next action, each write fenced
by the lease's epoch. It uses the engine's file settings (WAL, ``synchronous=FULL``) and
serializes what it writes with pydantic-core's ``to_json`` and reads with its
``from_json`` (the fastest JSON the dependencies offer: about four times
``json.dumps`` on a step's fields here), but no project code.

``GroupWriter`` is the one writer a durable engine on SQLite needs: the event loop puts
each write on a ``queue.SimpleQueue`` with an asyncio future; the thread takes whatever
is queued, applies it in one SQLite transaction (``BEGIN IMMEDIATE``, one
``executemany`` per statement, one COMMIT: one fsync for the batch) and wakes every
waiter of the batch with a single ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic_core import from_json, to_json

__all__ = [
    "BEGIN",
    "CLAIM",
    "FINAL",
    "LEASE",
    "RECORD",
    "STEP",
    "W3_SCHEMA",
    "dumps",
    "GroupWriter",
    "Write",
    "apply_w3",
    "apply_w3_design",
    "apply_w5",
    "claim_expired",
    "loads",
    "now_us",
    "step_fields",
    "thread_clock",
]

# Kinds of write. W3: a new transaction's lease with step 1's intent, a step's intent
# with the previous step's completion, the final state with the last completion.
# W5: a claim of expired transactions, and a record (step rows, maybe the header).
BEGIN, STEP, FINAL, CLAIM, RECORD = range(5)
# W3's design floor, on the engine's own tables: a new transaction's lease with every
# step's row (the first with its intent), then RECORDs as W5 writes them.
LEASE = 5

W3_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS transactions (
        id INTEGER PRIMARY KEY,
        transaction_id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        finished_at INTEGER,
        lease_owner TEXT,
        lease_expires INTEGER,
        epoch INTEGER NOT NULL
    )""",
    # What recovery looks for: the transactions in flight, oldest first.
    "CREATE INDEX IF NOT EXISTS in_flight ON transactions (created_at) "
    "WHERE state IN ('active', 'compensating')",
    # Append only: one row per durable write, found by its transaction's row id.
    """CREATE TABLE IF NOT EXISTS journal (
        tx INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (tx, seq)
    ) WITHOUT ROWID""",
)


def dumps(value: Any) -> str:
    """``value`` as JSON text."""
    return to_json(value).decode()


loads = from_json


def now_us() -> int:
    """Wall-clock time in microseconds since the Unix epoch (what leases compare)."""
    return time.time_ns() // 1000


def thread_clock(prefix: str) -> Callable[[], float]:
    """The CPU time of the one thread whose name starts with ``prefix`` (0.0 where
    there is no such single thread or its clock cannot be read)."""
    found = [t for t in threading.enumerate() if t.name.startswith(prefix)]
    if len(found) != 1 or found[0].ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return lambda: 0.0
    clock = time.pthread_getcpuclockid(found[0].ident)
    return lambda: time.clock_gettime(clock)


class Write:
    """One write handed to the writer: its kind, its values, the future its caller
    awaits, and what the writer hands back (a row id, the claimed transactions)."""

    __slots__ = ("args", "future", "kind", "result")

    def __init__(self, kind: int, args: Any, future: asyncio.Future[Any]) -> None:
        self.kind = kind
        self.args = args
        self.future = future
        self.result: Any = None


def _wake(batch: list[Write], error: BaseException | None) -> None:
    """On the event loop: resolve every future of a committed (or failed) batch."""
    for write in batch:
        future = write.future
        if not future.done():
            if error is None:
                future.set_result(write.result)
            else:
                future.set_exception(error)


class GroupWriter:
    """One thread, one connection (WAL, ``synchronous=FULL``), group commit.

    ``apply(conn, batch)`` runs inside the batch's SQLite transaction and sets each
    write's ``result``; an exception rolls the batch back and fails its waiters.
    """

    def __init__(
        self,
        path: Path,
        apply: Callable[[sqlite3.Connection, list[Write]], None],
        schema: Sequence[str] = (),
    ) -> None:
        self._path = path
        self._apply = apply
        self._schema = schema
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="floor-sqlite-writer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self.commits = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread and wait until its connection is open."""
        self._loop = loop
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def submit(self, kind: int, args: Any) -> asyncio.Future[Any]:
        """Queue a write; the future is resolved once the COMMIT holding it is done."""
        assert self._loop is not None
        future = self._loop.create_future()
        self._queue.put(Write(kind, args, future))
        return future

    def cpu_clock(self) -> Callable[[], float]:
        """The CPU time of the writer thread (0.0 where it cannot be read)."""
        return thread_clock(self._thread.name)

    def close(self) -> None:
        """Stop the thread once what is queued is written, and wait for it."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            for statement in self._schema:
                conn.execute(statement)
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            raise
        self._ready.set()
        get, get_nowait, empty = self._queue.get, self._queue.get_nowait, queue.Empty
        loop, apply = self._loop, self._apply
        assert loop is not None
        stop = False
        while not stop:
            first = get()
            if first is None:
                break
            batch = [first]
            while True:
                try:
                    write = get_nowait()
                except empty:
                    break
                if write is None:
                    stop = True
                    break
                batch.append(write)
            error: BaseException | None = None
            conn.execute("BEGIN IMMEDIATE")
            try:
                apply(conn, batch)
                conn.execute("COMMIT")
                self.commits += 1
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                conn.execute("ROLLBACK")
                error = exc
            loop.call_soon_threadsafe(_wake, batch, error)
        conn.close()


def _fenced(rowcount: int, expected: int, what: str) -> None:
    """Every write of a batch is fenced by its lease's epoch; in these runs no lease is
    ever taken over, so a write the fence refused is a broken benchmark."""
    if rowcount != expected:
        raise RuntimeError(f"{what}: {rowcount} of {expected} rows passed the epoch fence")


# ---------------------------------------------------------------------- W3

_INSERT_TX = (
    "INSERT INTO transactions (id, transaction_id, state, created_at, lease_owner, "
    "lease_expires, epoch) VALUES (?, ?, 'active', ?, ?, ?, ?)"
)
_APPEND = (
    "INSERT INTO journal (tx, seq, body) SELECT ?, ?, ? "
    "WHERE EXISTS (SELECT 1 FROM transactions WHERE id=? AND epoch=?)"
)
_FINISH = (
    "UPDATE transactions SET state=?, finished_at=?, lease_owner=NULL, lease_expires=NULL "
    "WHERE id=? AND epoch=?"
)


def step_fields(bits: Callable[[int], int], action: str, undo: str) -> dict[str, Any]:
    """A pending step's fields, as ROW has them, with a random id."""
    return {
        "step_id": f"{bits(128):032x}",
        "agent_id": "agent",
        "action": action,
        "data": {"user_id": "u-001"},
        "compensating_action": undo,
        "status": "pending",
        "attempts": 0,
        "compensation_attempts": 0,
        "result": None,
        "error": None,
        "compensation_error": None,
        "started_at": None,
        "finished_at": None,
        "compensated_at": None,
        "retry": None,
        "recovery": None,
    }


def apply_w3(conn: sqlite3.Connection, batch: list[Write]) -> None:
    """A batch of W3 writes. ``BEGIN``: (transaction id, created, owner, expires, body);
    the row id it gets (after the largest stored, read once a batch under the write
    lock) is its result. ``STEP``: (row id, epoch, seq, body). ``FINAL``: (row id,
    epoch, seq, body, state, finished). Each appends its journal row under the epoch
    fence; ``FINAL`` also ends the transaction and gives up its lease, fenced too."""
    inserts: list[tuple[Any, ...]] = []
    appends: list[tuple[Any, ...]] = []
    finals: list[tuple[Any, ...]] = []
    top: int | None = None
    for write in batch:
        kind, args = write.kind, write.args
        if kind == BEGIN:
            if top is None:
                top = conn.execute("SELECT MAX(id) FROM transactions").fetchone()[0] or 0
            top += 1
            tid, created, owner, expires, body = args
            inserts.append((top, tid, created, owner, expires, 1))
            appends.append((top, 0, body, top, 1))
            write.result = top
        else:
            rid, epoch, seq, body = args[:4]
            appends.append((rid, seq, body, rid, epoch))
            if kind == FINAL:
                finals.append((args[4], args[5], rid, epoch))
    if inserts:
        conn.executemany(_INSERT_TX, inserts)
    _fenced(conn.executemany(_APPEND, appends).rowcount, len(appends), "journal rows")
    if finals:
        _fenced(conn.executemany(_FINISH, finals).rowcount, len(finals), "final states")


# ---------------------------------------------------------------------- W5

_EXPIRED = (
    "SELECT id, epoch FROM transactions WHERE state IN ('active', 'compensating') "
    "AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires <= ?) "
    "ORDER BY created_at, id LIMIT ?"
)
_TAKE = (
    "UPDATE transactions SET epoch=epoch+1, lease_owner=?, lease_expires=?, "
    "recovery_attempts=recovery_attempts+1 WHERE id=? AND epoch=?"
)
_SET_STATE = "UPDATE transactions SET state=?, updated_at=? WHERE id=? AND epoch=?"
_END = (
    "UPDATE transactions SET state=?, updated_at=?, finished_at=?, error=?, "
    "lease_owner=NULL, lease_expires=NULL WHERE id=? AND epoch=?"
)
_SET_STEP = (
    "UPDATE steps SET body=? WHERE tx=? AND position=? "
    "AND EXISTS (SELECT 1 FROM transactions WHERE id=? AND epoch=?)"
)


def apply_w5(conn: sqlite3.Connection, batch: list[Write]) -> None:
    """A batch of W5 writes on the engine's own tables (``stores/_sqlite_schema.py``).

    ``CLAIM``: (owner, expires, limit): take the lease (epoch bump, fenced by the epoch
    read) of up to ``limit`` in-flight transactions whose lease expired, oldest first,
    as the engine's claim does; its result is, per transaction, (row id, new epoch,
    its steps decoded from their JSON, a step's index being its position). ``RECORD``:
    (row id, epoch, header, step rows): the step rows ((position, body), ...) and,
    unless None, the header (state, updated) or, ending it, (state, updated, finished,
    error), which also gives up the lease; all fenced by the epoch.
    """
    states: list[tuple[Any, ...]] = []
    ends: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    for write in batch:
        if write.kind == CLAIM:
            write.result = _claim(conn, *write.args)
            continue
        rid, epoch, header, rows = write.args
        if header is not None:
            (states if len(header) == 2 else ends).append((*header, rid, epoch))
        for position, body in rows:
            steps.append((body, rid, position, rid, epoch))
    if states:
        _fenced(conn.executemany(_SET_STATE, states).rowcount, len(states), "state changes")
    if ends:
        _fenced(conn.executemany(_END, ends).rowcount, len(ends), "final states")
    if steps:
        _fenced(conn.executemany(_SET_STEP, steps).rowcount, len(steps), "step rows")


_LEASE_TX = (
    "INSERT INTO transactions (transaction_id, state, created_at, updated_at, "
    "timeout_seconds, lease_owner, lease_expires, epoch) VALUES (?, 'active', ?, ?, ?, ?, ?, 1)"
)
_STEP_ROW = "INSERT INTO steps (tx, position, step_id, body) VALUES (?, ?, ?, ?)"
_AGENT_ROW = "INSERT INTO transaction_agents (tx, agent_id) VALUES (?, ?)"


def apply_w3_design(conn: sqlite3.Connection, batch: list[Write]) -> None:
    """A batch of the W3 design floor's writes on the engine's own tables
    (``stores/_sqlite_schema.py``). ``LEASE``: (transaction id, created, timeout,
    owner, expires, step rows ((position, step id, body), ...), agent): the
    transaction's row under a first lease (epoch 1), a row per step and the agent's
    row; its result is the row id. ``RECORD``: as ``apply_w5`` writes it."""
    records: list[Write] = []
    for write in batch:
        if write.kind != LEASE:
            records.append(write)
            continue
        tid, created, timeout, owner, expires, rows, agent = write.args
        rid = conn.execute(_LEASE_TX, (tid, created, created, timeout, owner, expires)).lastrowid
        conn.executemany(_STEP_ROW, ((rid, *row) for row in rows))
        conn.execute(_AGENT_ROW, (rid, agent))
        write.result = rid
    if records:
        apply_w5(conn, records)


def claim_expired(
    conn: sqlite3.Connection, owner: str, expires: int, limit: int, query: str = _EXPIRED
) -> list[tuple[tuple[Any, ...], list[str]]]:
    """Take the lease (epoch bump, fenced by the epoch read) of up to ``limit``
    in-flight transactions whose lease expired, oldest first, as the engine's claim
    does: each one's row as ``query`` reads it (row id and epoch first) with its step
    rows' bodies, in position order."""
    found = conn.execute(query, (now_us(), limit)).fetchall()
    if not found:
        return []
    _fenced(
        conn.executemany(_TAKE, ((owner, expires, row[0], row[1]) for row in found)).rowcount,
        len(found),
        "claims",
    )
    marks = ", ".join("?" * len(found))
    bodies: dict[int, list[str]] = {row[0]: [] for row in found}
    for rid, position, body in conn.execute(
        f"SELECT tx, position, body FROM steps WHERE tx IN ({marks}) ORDER BY tx, position",
        [row[0] for row in found],
    ):
        steps = bodies[rid]
        if position != len(steps):
            raise RuntimeError(f"transaction row {rid} has no step at position {len(steps)}")
        steps.append(body)
    return [(row, bodies[row[0]]) for row in found]


def _claim(
    conn: sqlite3.Connection, owner: str, expires: int, limit: int
) -> list[tuple[int, int, list[dict[str, Any]]]]:
    return [
        (row[0], row[1] + 1, [loads(body) for body in bodies])
        for row, bodies in claim_expired(conn, owner, expires, limit)
    ]
