"""SqliteStore: the embedded durable journal (stdlib sqlite3, WAL, group commit).

One file holds every transaction. All SQL runs on one writer thread per store, so the
event loop never blocks on disk; writes from every transaction running in the loop
are batched into one SQLite transaction and one fsync (*group commit*), and each
durable writer resumes only once its batch is on disk. See ``_sqlite_writer`` for the
hand-off protocol and ``_sqlite_schema`` for the file layout.

Guarantees:

* ``synchronous=FULL`` (the default): a durable record survives a crash of the
  process and of the machine. ``NORMAL`` keeps it across process crashes only.
* Every write under a lease is fenced by its epoch in the same SQL statement; a
  stale write changes nothing and raises ``LeaseLostError``.
* Step data and results are stored as JSON and validated on load; a tampered row
  raises ``CorruptRecordError`` naming the transaction, and nothing runs.
* Many processes may share the file (a CLI next to a worker): writers queue on
  SQLite's busy timeout, and ``claim_expired`` is atomic across them.
* The file and its -wal/-shm companions are created with mode 0600.

A lease release (like a step completion, ``record(..., durable=False)``) is not
waited for: it rides with the next commit, or is committed on its own
``group_commit_delay`` later. This store sees it at once; other processes see it once
it is committed. Reads run on the writer thread too, so they see every write this
store has accepted, and a long listing delays the writes queued behind it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import StoreUnavailableError
from ..models import (
    IN_FLIGHT_STATES,
    TERMINAL_STATES,
    LeaseInfo,
    LeaseSummary,
    StepStatus,
    Transaction,
    TransactionState,
    TransactionStep,
)
from ._base import Lease, ListPosition, RecordThroughNowait
from ._codec import step_json
from ._headers import SentHeaders, raw_header
from ._positions import StepPositions
from ._sqlite_requests import Op, Record
from ._sqlite_schema import SYNCHRONOUS_MODES, full_header_of, header_of, to_us
from ._sqlite_writer import (
    ACQUIRE,
    CLAIM,
    CLAIM_ONE,
    COUNT,
    DELETE,
    LEASE_SUMMARY,
    LEASES,
    LIST,
    LOAD,
    PURGE,
    RELEASE,
    RELEASE_ALL,
    RENEW,
    SAVE,
    Writer,
)

__all__ = ["SqliteStore", "SqliteStoreStats"]

_URL_OPTIONS = {"synchronous": str, "busy_timeout": float, "group_commit_delay": float}


@dataclass(frozen=True, slots=True)
class SqliteStoreStats:
    """What the writer thread has done since the store was opened.

    ``commits`` counts SQLite COMMITs, i.e. fsyncs of the write-ahead log under
    ``synchronous=FULL``; ``records`` the ``record`` calls they carried; ``batches``
    the hand-offs from the event loop; ``operations`` every request of any kind.
    """

    commits: int
    batches: int
    operations: int
    records: int


def _full_rows(tx: Transaction) -> tuple[tuple[Any, ...], list[tuple[int, str, str]], list[str]]:
    """Header, step rows and agents of ``tx``, serialized on the caller's side."""
    if not isinstance(tx, Transaction):
        raise TypeError(f"Expected a Transaction, not {type(tx).__name__}.")
    tid = tx.transaction_id
    steps = [
        (position, step.step_id, step_json(step, tid)) for position, step in enumerate(tx.steps)
    ]
    if len({row[1] for row in steps}) != len(steps):
        raise ValueError(f"Transaction {tid} has two steps with the same step_id.")
    return full_header_of(tx), steps, tx.agents


_RUNNING = StepStatus.RUNNING


class SqliteStore(RecordThroughNowait):
    """A durable journal in one SQLite file, shared safely by many processes.

    ``path`` may start with ``~``; missing parent directories are created (0700).
    ``synchronous`` is SQLite's setting (``FULL`` by default; ``NORMAL`` trades the
    machine-crash guarantee for speed). ``busy_timeout`` bounds how long a write waits
    for another process holding the file. ``group_commit_delay`` bounds how long a
    write nobody waits for (a step completion, a lease release) may be held back to
    share a commit, and how long an open batch waits for a durable write to join it.
    ``create=False`` opens an existing journal only: a missing file is a
    ``StoreUnavailableError`` on open, and no file or directory is created (what a
    command that only reads wants).
    """

    acquire_carries_intent = True  # see Store.acquire

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 10.0,
        group_commit_delay: float = 0.005,
        create: bool = True,
    ) -> None:
        if isinstance(path, str) and (not path or path == ":memory:" or path.startswith("file:")):
            raise ValueError(
                f"SqliteStore needs a file path, not {path!r}; use MemoryStore "
                "(memory://) for a journal that lives in memory."
            )
        mode = str(synchronous).upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}."
            )
        for name, value in (
            ("busy_timeout", busy_timeout),
            ("group_commit_delay", group_commit_delay),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, not {value!r}.")
        self._path = Path(os.path.expanduser(os.fspath(path)))
        self._synchronous = mode
        self._busy_timeout = float(busy_timeout)
        self._delay = float(group_commit_delay)
        self._create = bool(create)
        self._writer: Writer | None = None
        self._open_lock: asyncio.Lock | None = None
        # Position of each step (by id) of the transactions this store leased out, so
        # a record finds its step row without scanning the transaction's steps, and
        # knows a step appended after the acquire when it sees one.
        self._positions = StepPositions()
        # The header each leased transaction's last durable record (or its acquire)
        # sent, and whether it is committed.
        self._headers = SentHeaders()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqliteStore:
        """Build a store from ``sqlite:///relative.db``, ``sqlite:////abs.db`` or
        ``sqlite:///~/journal.db``, with options as query parameters
        (``?synchronous=NORMAL&busy_timeout=5``) or keyword arguments (which win).
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqlite":
            raise ValueError(f"Not a sqlite:// URL: {url!r}.")
        if parts.netloc:
            raise ValueError(
                f"Store URL {url!r} has a host part ({parts.netloc!r}); write "
                "sqlite:///relative/path.db or sqlite:////absolute/path.db."
            )
        path = unquote(parts.path)
        path = path[1:] if path.startswith("/") else path
        if not path:
            raise ValueError(f"Store URL {url!r} names no file; e.g. sqlite:///journal.db.")
        merged: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            convert = _URL_OPTIONS.get(key)
            if convert is None:
                raise ValueError(
                    f"Unknown option {key!r} in {url!r}; accepted: {', '.join(_URL_OPTIONS)}."
                )
            try:
                merged[key] = convert(value)
            except ValueError:
                raise ValueError(f"Option {key}={value!r} in {url!r} is not valid.") from None
        merged.update(options)
        return cls(path, **merged)

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """``sqlite:///`` followed by the absolute path of the file."""
        return f"sqlite:///{self._path.absolute()}"

    @property
    def path(self) -> Path:
        """The database file (``~`` expanded)."""
        return self._path

    @property
    def durable(self) -> bool:
        return True

    @property
    def stats(self) -> SqliteStoreStats:
        """Counters of the current writer thread (all zero when not open)."""
        writer = self._writer
        if writer is None:
            return SqliteStoreStats(0, 0, 0, 0)
        s = writer.stats
        return SqliteStoreStats(s.commits, s.batches, s.operations, s.records)

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r}, synchronous={self._synchronous!r})"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create or open the file, check and migrate its schema, start the writer."""
        if self._writer is not None:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._writer is not None:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("SqliteStore runs on an asyncio event loop.") from None
            writer = Writer(
                self._path,
                synchronous=self._synchronous,
                busy_timeout=self._busy_timeout,
                hold=self._delay,
                loop=loop,
                create=self._create,
            )
            started: asyncio.Future[None] = loop.create_future()
            writer.start(started)
            try:
                await started
            except BaseException:
                writer.stop(None)  # cancelled while opening: do not leak the thread
                raise
            self._writer = writer

    async def close(self) -> None:
        """Flush every queued write, then stop the writer and close the file."""
        writer = self._writer
        if writer is None:
            return
        self._writer = None
        if asyncio.get_running_loop() is not writer.loop or writer.loop.is_closed():
            # Closed from another event loop (say, a test's teardown): the writer still
            # flushes everything queued; wait for its thread rather than its loop.
            writer.stop(None)
            await asyncio.to_thread(writer.join)
            return
        done: asyncio.Future[None] = writer.loop.create_future()
        writer.stop(done)
        # Shielded: the queued writes of other tasks are flushed even if we are cancelled.
        await asyncio.shield(done)

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    def _require(self) -> Writer:
        writer = self._writer
        if writer is None:
            raise StoreUnavailableError(
                f"The journal {self._path} is not open; use 'async with store:' or "
                "'await store.open()' first."
            )
        if not writer.here() and asyncio.get_running_loop() is not writer.loop:
            raise RuntimeError(
                f"SqliteStore({str(self._path)!r}) was opened in another event loop; "
                "use a store in the loop that opened it (or close it and open it again)."
            )
        return writer

    async def _call(self, kind: int, *args: Any) -> Any:
        writer = self._require()
        future: asyncio.Future[Any] = writer.loop.create_future()
        writer.submit(Op(kind, args, future))
        return await future

    # ------------------------------------------------------------------ writes

    async def save(
        self, tx: Transaction, *, expected: Iterable[TransactionState] | None = None
    ) -> None:
        header, steps, agents = _full_rows(tx)
        states = (
            None if expected is None else frozenset(TransactionState(s).value for s in expected)
        )
        await self._call(SAVE, tx.transaction_id, header, steps, agents, states)

    async def acquire(
        self,
        tx: Transaction,
        owner: str,
        ttl: float,
        expected: Iterable[TransactionState],
    ) -> Lease:
        header, steps, agents = _full_rows(tx)
        states = frozenset(TransactionState(state).value for state in expected)
        tid = tx.transaction_id
        raw = raw_header(tx)  # what the acquire writes, before the await
        # Durable when it carries a step's intent (``acquire_carries_intent``).
        carries = any(step.status is _RUNNING for step in tx.steps)
        lease: Lease = await self._call(
            ACQUIRE, tid, owner, float(ttl), states, header, steps, agents, carries
        )
        epoch = lease.epoch
        self._positions.written(tid, epoch, (step_id for _, step_id, _ in steps))
        # What the acquire wrote, in the shape of a record's header.
        self._headers.committed(tid, epoch, raw, header[0])
        return lease

    def record_nowait(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
        previous: TransactionStep | None = None,
    ) -> asyncio.Future[None] | None:
        writer = self._writer
        if writer is None or not writer.here():
            writer = self._require()
        tid = lease.transaction_id
        if tx.transaction_id != tid:
            raise ValueError(
                f"record: the lease is for transaction {tid}, not {tx.transaction_id}."
            )
        epoch = lease.epoch
        carried: int | None = None  # the known position of ``previous``
        if previous is not None:
            carried = self._positions.position(tid, epoch, previous.step_id)
            if carried is None:  # appended since the acquire: a record of its own first
                self.record_nowait(lease, tx, previous, durable=False)
        # A header known to be committed under this lease, and the last one sent (by
        # the acquire or a durable record; the records of the steps in between change
        # none of it), is not sent again: the writer then only checks the epoch. It is
        # compared as the fields themselves, converted for SQL only when it changed.
        headers = self._headers
        raw = raw_header(tx)
        state = headers.unchanged(tid, epoch, raw)
        if state is not None:
            op = Record(tid, epoch, state, None)
        else:
            header = header_of(tx)
            op = Record(tid, epoch, header[0], header)
            op.sent = headers.sending(tid, epoch, raw, header[0], durable)
        if carried is not None:
            assert previous is not None
            op.previous = done = Record(tid, epoch, op.state, None)
            done.body = step_json(previous, tid)
            done.position = carried
            done.step_id = previous.step_id
        if step is not None:
            self._record_step(op, tx, step)
        if not durable:
            writer.submit_lazy(op)
            return None
        future: asyncio.Future[None] = writer.loop.create_future()
        op.future = future
        writer.submit(op)
        return future

    def _record_step(self, op: Record, tx: Transaction, step: TransactionStep) -> None:
        """What ``op`` writes of ``step``: an update of its known row or (a step appended
        since the acquire) the rows to insert."""
        tid, epoch = op.tid, op.epoch
        step_id = step.step_id
        position = self._positions.position(tid, epoch, step_id)
        if position is not None:
            op.body = step_json(step, tid)
            op.position = position
            op.step_id = step_id
        else:
            op.appended = tuple(
                (index, s.step_id, step_json(s, tid), s.agent_id)
                for index, s in self._positions.unwritten(tx, step, epoch)
            )

    async def renew(self, owner: str, ttl: float) -> int:
        renewed: int = await self._call(RENEW, owner, float(ttl))
        return renewed

    async def release(self, lease: Lease) -> None:
        self._require().submit_lazy(Op(RELEASE, (lease.transaction_id, lease.epoch)))
        self._positions.forget(lease.transaction_id, lease.epoch)
        self._headers.forget(lease.transaction_id, lease.epoch)

    async def claim_expired(
        self, owner: str, ttl: float, limit: int
    ) -> Sequence[tuple[Transaction, Lease]]:
        if limit <= 0:
            return []
        claimed: list[tuple[Transaction, Lease]] = await self._call(
            CLAIM, owner, float(ttl), int(limit)
        )
        positions = self._positions
        for tx, lease in claimed:
            positions.written(tx.transaction_id, lease.epoch, (s.step_id for s in tx.steps))
        return claimed

    async def claim(
        self,
        transaction_id: str,
        owner: str,
        ttl: float,
        expected: Iterable[TransactionState],
    ) -> tuple[Transaction, Lease] | None:
        states = frozenset(TransactionState(state).value for state in expected)
        claimed: tuple[Transaction, Lease] | None = await self._call(
            CLAIM_ONE, transaction_id, owner, float(ttl), states
        )
        if claimed is not None:
            tx, lease = claimed
            self._positions.written(transaction_id, lease.epoch, (s.step_id for s in tx.steps))
        return claimed

    async def release_all(self, owner: str) -> int:
        released: int = await self._call(RELEASE_ALL, owner)
        return released

    async def delete(self, transaction_id: str) -> bool:
        deleted: bool = await self._call(DELETE, transaction_id)
        return deleted

    async def purge(self, *, states: Iterable[TransactionState], older_than: datetime) -> int:
        wanted = frozenset(TransactionState(s) for s in states) & TERMINAL_STATES
        values = tuple(sorted(state.value for state in wanted - IN_FLIGHT_STATES))
        purged: int = await self._call(PURGE, values, to_us(older_than))
        return purged

    # ------------------------------------------------------------------ reads

    async def load(self, transaction_id: str) -> Transaction | None:
        tx: Transaction | None = await self._call(LOAD, transaction_id)
        return tx

    async def list(
        self,
        *,
        state: TransactionState | None = None,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        action: str | None = None,
        before: ListPosition | None = None,
    ) -> list[Transaction]:
        found: list[Transaction] = await self._call(
            LIST,
            None if state is None else TransactionState(state).value,
            agent_id,
            to_us(since),
            to_us(until),
            limit,
            action,
            None if before is None else (to_us(before.created_at), before.transaction_id),
        )
        return found

    async def count_by_state(self) -> dict[TransactionState, int]:
        counts: dict[TransactionState, int] = await self._call(COUNT)
        return counts

    async def leases(self, transaction_ids: Iterable[str]) -> dict[str, LeaseInfo]:
        wanted = list(dict.fromkeys(transaction_ids))
        if not wanted:
            return {}
        found: dict[str, LeaseInfo] = await self._call(LEASES, wanted)
        return found

    async def lease_summary(self, *, exclude_owner: str | None = None) -> LeaseSummary:
        summary: LeaseSummary = await self._call(LEASE_SUMMARY, exclude_owner)
        return summary
