"""The writer thread behind SqliteStore: one connection, one queue, group commit.

The event loop appends operations to a deque and wakes this thread at most once per
loop iteration (``call_soon``), so by the time the thread runs, every task that was
ready has queued its write. The thread drains the whole deque into one SQLite
transaction (``BEGIN IMMEDIATE``: it reads and then writes), commits once, and hands
every result back to the loop in a single ``call_soon_threadsafe``. One fsync, one
hand-off each way, however many transactions wrote.

Three kinds of operations:

* *durable* (a durable ``record``, ``save``, ``renew``, ``claim_expired``, ``claim``,
  ``release_all``, ``delete``, ``purge``): resolved only after the COMMIT that contains
  them;
* *execution-only* (``acquire`` and reads): resolved as soon as they ran. An acquire
  needs no fsync of its own: nothing happens under the lease before the driver's
  next, durable, write, which commits in the same or a later transaction. The SQLite
  transaction then stays open (at most ``hold`` seconds) for that write to join it.
  An acquire that carries a step's intent (a step running) is durable instead;
* *lazy* (a non-durable ``record``, ``release``): not waited for and not even a
  wake-up; they ride with the next commit, or are flushed after ``hold`` seconds.

If a commit fails, every waiting writer gets the error and every lease whose write was
lost in it (a lazy write, an acquire already handed out, a record inserting steps
appended since the acquire) is *poisoned*: the next write under that lease raises
instead of silently skipping the lost record.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreUnavailableError
from ._base import Lease
from ._headers import confirm
from ._sqlite_ops import Journal
from ._sqlite_requests import RECORD, Op, Record
from ._sqlite_schema import connect, translate_error

__all__ = ["Op", "Writer", "WriterStats"]

logger = logging.getLogger("aumai_transactions.stores.sqlite")

# Operation kinds (a ``Record`` is ``RECORD``, 0).
ACQUIRE, SAVE, RELEASE, RENEW, CLAIM, DELETE, PURGE, LOAD, LIST, COUNT, STOP = range(1, 12)
CLAIM_ONE, RELEASE_ALL, LEASES, LEASE_SUMMARY = range(12, 16)
_WRITES = frozenset(
    {RECORD, ACQUIRE, SAVE, RELEASE, RENEW, CLAIM, DELETE, PURGE, CLAIM_ONE, RELEASE_ALL}
)
# Operations on one transaction (``args[0]`` is its id, a record's is ``tid``); the
# others touch many.
_SINGLE = frozenset({ACQUIRE, RELEASE, SAVE, DELETE, LOAD, CLAIM_ONE})
_POISON_LIMIT = 10_000


class WriterStats:
    """Counters of the writer thread (read from any thread; written by the writer only)."""

    __slots__ = ("batches", "commits", "operations", "records")

    def __init__(self) -> None:
        self.commits = 0
        self.batches = 0
        self.operations = 0
        self.records = 0


class Writer:
    """Owns the connection and the thread; see the module docstring for the protocol."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        busy_timeout: float,
        hold: float,
        loop: asyncio.AbstractEventLoop,
        create: bool = True,
    ) -> None:
        self.path = path
        self.loop = loop
        # The thread the loop runs in (the writer is made in it, by ``open``); see ``here``.
        self._loop_thread = threading.get_ident()
        self.stats = WriterStats()
        self.closing = False
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._hold = hold
        self._create = create
        self._ops: deque[Op] = deque()
        self._wake = threading.Event()
        self._kick_soon = False
        self._kick_later = False
        self._lazy_since = 0.0  # when the pending late kick was armed (time.monotonic)
        self._poisoned: dict[tuple[str, int], str] = {}
        self._journal = Journal(path)
        self._thread = threading.Thread(
            target=self._main, name=f"aumai-sqlite-writer:{path.name}", daemon=True
        )
        self._started: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ loop side

    def start(self, started: asyncio.Future[None]) -> None:
        """Start the thread; ``started`` resolves once the journal is open (or failed)."""
        self._started = started
        self._thread.start()

    def join(self) -> None:
        """Wait for the thread to end (after ``stop``); blocking, so call it in a thread."""
        self._thread.join()

    def here(self) -> bool:
        """True when called from a task of ``loop``, cheaply (a store call checks it).

        ``asyncio.get_running_loop()`` makes a system call on CPython 3.11 (it compares
        the process id, for forks), several per transaction; this compares the thread:
        a running loop is the only one running in its thread. False may be wrong only
        when the loop moved to another thread; callers then ask asyncio itself.
        """
        return threading.get_ident() == self._loop_thread and self.loop.is_running()

    def submit(self, op: Op) -> None:
        """Queue ``op`` and wake the thread once the loop has run what is ready now."""
        if self.closing:
            raise StoreUnavailableError(f"The journal {self.path} is closed.")
        self._ops.append(op)
        if not self._kick_soon:
            self._kick_soon = True
            self.loop.call_soon(self._kick)

    def submit_lazy(self, op: Op) -> None:
        """Queue ``op`` to ride with the next commit (flushed within ``hold`` anyway)."""
        if self.closing:
            raise StoreUnavailableError(f"The journal {self.path} is closed.")
        self._ops.append(op)
        if not self._kick_later:
            self._kick_later = True
            self._lazy_since = time.monotonic()
            self.loop.call_later(self._hold, self._kick_late)

    def stop(self, future: asyncio.Future[Any] | None) -> None:
        """Queue the final flush; nothing can be submitted after it."""
        if not self.closing:
            self.closing = True
            self._ops.append(Op(STOP, (), future))
            self._wake.set()

    def _kick(self) -> None:
        self._kick_soon = False
        self._wake.set()

    def _kick_late(self) -> None:
        self._kick_later = False
        self._wake.set()

    def _resolve(self, ops: list[Op]) -> None:
        for op in ops:
            future = op.future
            if future is None:
                continue
            if op.error is None and isinstance(op, Record):
                confirm(op.sent)  # its header is committed (before its waiter resumes)
            if future.done():  # the waiter was cancelled
                if op.kind == ACQUIRE and isinstance(op.result, Lease) and not self.closing:
                    # Taken after all, but nobody will drive it: let it go at once.
                    self.submit_lazy(Op(RELEASE, (op.result.transaction_id, op.result.epoch)))
                continue
            if op.error is None:
                future.set_result(op.result)
            else:
                future.set_exception(op.error)

    # ------------------------------------------------------------ thread side

    def _deliver(self, ops: list[Op]) -> None:
        if ops:
            try:
                self.loop.call_soon_threadsafe(self._resolve, ops)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _main(self) -> None:
        started = self._started
        assert started is not None
        try:
            conn = connect(
                self.path,
                synchronous=self._synchronous,
                busy_timeout=self._busy_timeout,
                create=self._create,
            )
        except BaseException as exc:
            self.closing = True
            failure = Op(STOP, (), started)
            failure.error = exc
            self._deliver([failure])
            return
        self._deliver([Op(STOP, (), started)])
        stop: Op | None = None
        try:
            stop = self._serve(conn)
        except BaseException as exc:  # a bug: fail every waiter rather than hang them
            logger.exception("the SQLite writer thread of %s crashed", self.path)
            self.closing = True
            self._fail(list(self._ops), exc, [])
        finally:
            conn.close()  # before close() returns: the last connection removes the -wal
        if stop is not None:
            self._deliver([stop])

    def _take(self, deadline: float | None) -> list[Op]:
        ops, wake = self._ops, self._wake
        while True:
            wake.clear()
            count = len(ops)
            if count:
                return [ops.popleft() for _ in range(count)]
            if deadline is None:
                wake.wait()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not wake.wait(remaining):
                    return []

    def _serve(self, conn: sqlite3.Connection) -> Op:
        """Process batches until the STOP operation; return it (resolved by the caller)."""
        stats = self.stats
        in_txn = False  # a write transaction is open
        deadline: float | None = None
        awaiting: list[Op] = []  # resolved by the next COMMIT
        at_risk: list[Op] = []  # handed out or never awaited: their leases are poisoned if lost
        while True:
            ops = self._take(deadline)
            if not ops:
                if in_txn:
                    self._commit(conn, awaiting, at_risk)
                    in_txn, deadline, awaiting, at_risk = False, None, [], []
                continue
            stats.batches += 1
            stats.operations += len(ops)
            writes = reads = need_commit = False
            stop: Op | None = None
            ready: list[Op] = []  # execution-only: resolved as soon as they ran
            for op in ops:
                kind = op.kind
                if kind == STOP:
                    stop = op
                    need_commit = True
                elif kind in _WRITES:
                    writes = True
                    if op.future is None:
                        at_risk.append(op)
                    elif kind == ACQUIRE and not op.args[-1]:  # not carrying an intent
                        ready.append(op)
                        at_risk.append(op)
                    else:
                        awaiting.append(op)
                        need_commit = True
                        if isinstance(op, Record) and op.appended:
                            # It inserts steps appended since the acquire; the later
                            # records of those steps update the rows it inserts.
                            at_risk.append(op)
                else:
                    reads = True
                    ready.append(op)
            try:
                if not in_txn:
                    if writes:
                        conn.execute("BEGIN IMMEDIATE")
                        in_txn = True
                        deadline = time.monotonic() + self._hold
                    elif reads:
                        conn.execute("BEGIN")  # one snapshot for the whole batch
                self._execute(conn, ops)
                if not in_txn and conn.in_transaction:
                    conn.execute("COMMIT")  # end the read-only snapshot
            except BaseException as exc:
                self._rollback(conn)
                self._fail(awaiting + ready, exc, at_risk)
                in_txn, deadline, awaiting, at_risk = False, None, [], []
                if stop is not None:
                    return stop
                continue
            if not ready and not need_commit and in_txn:
                # Only writes nobody waits for. Taken because the late kick fired, they
                # waited ``hold`` already; taken early (the thread was awake), they wait
                # out the rest of it for a durable write to share their commit.
                due = self._lazy_since + self._hold if self._kick_later else 0.0
                if deadline is None or due < deadline:
                    deadline = due
            if not in_txn:  # read-only (or empty) batch
                self._deliver(ready)
            elif need_commit or (deadline is not None and time.monotonic() >= deadline):
                # Hand out what needs no fsync first: those tasks run while we commit.
                self._deliver(ready)
                self._commit(conn, awaiting, at_risk)
                in_txn, deadline, awaiting, at_risk = False, None, [], []
            else:
                self._deliver(ready)  # the transaction stays open for the writes to come
            if stop is not None:
                return stop

    def _commit(self, conn: sqlite3.Connection, awaiting: list[Op], at_risk: list[Op]) -> None:
        try:
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn)
            self._fail(awaiting, exc, at_risk)
            return
        self.stats.commits += 1
        self._deliver(awaiting)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.exception("ROLLBACK failed")

    def _fail(self, waiting: list[Op], exc: BaseException, lost: Iterable[Op]) -> None:
        """Give every waiter the error, and poison the leases whose writes were lost."""
        error = translate_error(exc, self.path, self._busy_timeout)
        message = str(error)
        for op in lost:
            lease_key: tuple[str, int] | None = None
            if isinstance(op, Record):
                lease_key = (op.tid, op.epoch)
            elif op.kind == ACQUIRE and isinstance(op.result, Lease):
                lease_key = (op.result.transaction_id, op.result.epoch)
            if lease_key is not None:
                self._poison(lease_key, message)
        for op in waiting:
            op.error = type(error)(message)
            op.error.__cause__ = exc
        self._deliver(waiting)

    def _poison(self, key: tuple[str, int], cause: str) -> None:
        poisoned = self._poisoned
        if len(poisoned) >= _POISON_LIMIT:
            for stale in list(poisoned)[: _POISON_LIMIT // 2]:
                del poisoned[stale]
        poisoned[key] = cause

    # ------------------------------------------------------------ operations

    def _execute(self, conn: sqlite3.Connection, ops: list[Op]) -> None:
        """Run ``ops`` in their order, applying acquires, records and releases in batches.

        Operations on different transactions commute, so a batch gathers them until
        one touches a transaction already in it (or touches everything, like a claim
        or a listing); then the batch is applied first, keeping each transaction's
        operations in order.
        """
        journal, poisoned = self._journal, self._poisoned
        acquires: dict[str, Op] = {}
        records: list[Record] = []
        recorded: set[str] = set()
        releases: dict[str, Op] = {}

        def flush() -> None:
            if acquires:
                journal.acquire_many(conn, list(acquires.values()))
                acquires.clear()
            if records:
                self.stats.records += len(records)
                journal.record_many(conn, records, poisoned)
                records.clear()
                recorded.clear()
            if releases:
                journal.release_many(conn, list(releases.values()), poisoned)
                releases.clear()

        for op in ops:
            if isinstance(op, Record):
                tid = op.tid
                if tid in acquires or tid in releases:
                    flush()
                records.append(op)
                recorded.add(tid)
                continue
            kind = op.kind
            if kind == STOP:
                continue
            if kind in _SINGLE:
                tid = op.args[0]
                busy = tid in acquires or tid in recorded or tid in releases
                if kind == ACQUIRE or kind == RELEASE:
                    if busy:
                        flush()
                    (acquires if kind == ACQUIRE else releases)[tid] = op
                    continue
                if busy:
                    flush()
            else:
                flush()
            try:
                op.result = self._run(conn, op)
            except StoreError as exc:  # refused before anything was written
                op.error = exc
        flush()

    def _run(self, conn: sqlite3.Connection, op: Op) -> Any:
        journal, kind, args = self._journal, op.kind, op.args
        if kind == SAVE:
            return journal.save(conn, *args)
        if kind == LOAD:
            return journal.load(conn, *args)
        if kind == DELETE:
            return journal.delete(conn, *args)
        if kind == RENEW:
            return journal.renew(conn, *args)
        if kind == CLAIM:
            return journal.claim(conn, *args)
        if kind == PURGE:
            return journal.purge(conn, *args)
        if kind == LIST:
            return journal.list(conn, *args)
        if kind == COUNT:
            return journal.count(conn)
        if kind == CLAIM_ONE:
            return journal.claim_one(conn, *args)
        if kind == RELEASE_ALL:
            return journal.release_all(conn, *args)
        if kind == LEASES:
            return journal.leases(conn, *args)
        if kind == LEASE_SUMMARY:
            return journal.lease_summary(conn, *args)
        raise AssertionError(f"unknown operation kind {kind}")
