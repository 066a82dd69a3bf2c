"""The SQLite journal's file: creation, schema, migrations, error translation, row codec.

Everything here runs on the store's writer thread; nothing touches an event loop.

Layout (schema version 2)::

    schema_version(version, applied_at)           one row per applied migration
    transactions(transaction_id PK, state, created_at, updated_at, finished_at,
                 timeout_seconds, error, blocked_reason, recovery_attempts,
                 lease_owner, lease_expires, epoch,
                 resolution)                      an operator's resolution, as JSON (v2)
    steps(transaction_id, step_id, position, body)  body: the step as JSON
    transaction_agents(transaction_id, agent_id)    for the agent filter

Timestamps are integers, microseconds since the Unix epoch in UTC: exact, compact and
ordered, so the range and ordering queries run on plain integer indexes.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .._version import __version__
from ..errors import CorruptRecordError, SchemaVersionError, StoreError, StoreUnavailableError
from ..models import Resolution, Transaction, TransactionStep

__all__ = [
    "HEADER_COLUMNS",
    "SCHEMA_VERSION",
    "connect",
    "decode_transaction",
    "from_us",
    "full_header_of",
    "header_of",
    "to_us",
    "translate_error",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

# Each entry migrates the schema from version ``index`` to ``index + 1``. Append only:
# a released migration is never edited, so every file can be brought forward.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE schema_version (
            version INTEGER PRIMARY KEY NOT NULL,
            applied_at TEXT NOT NULL
        )""",
        # ``id`` grows with every insert, so the rows of the transactions in flight
        # (and their steps and agents) sit together at the end of each table: a
        # commit rewrites a few pages, not one random page per transaction.
        """CREATE TABLE transactions (
            id INTEGER PRIMARY KEY,
            transaction_id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER,
            finished_at INTEGER,
            timeout_seconds REAL,
            error TEXT,
            blocked_reason TEXT,
            recovery_attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_expires INTEGER,
            epoch INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX transactions_by_state ON transactions (state, created_at)",
        "CREATE INDEX transactions_by_created ON transactions (created_at)",
        """CREATE TABLE steps (
            tx INTEGER NOT NULL,
            position INTEGER NOT NULL,
            step_id TEXT NOT NULL,
            body TEXT NOT NULL,
            UNIQUE (tx, position)
        )""",
        """CREATE TABLE transaction_agents (
            tx INTEGER NOT NULL,
            agent_id TEXT NOT NULL,
            PRIMARY KEY (tx, agent_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX transaction_agents_by_agent ON transaction_agents (agent_id, tx)",
    ),
    # 2: how an operator resolved a transaction by hand (state 'resolved').
    ("ALTER TABLE transactions ADD COLUMN resolution TEXT",),
)

SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema version this release writes; files with a newer one are refused."""

HEADER_COLUMNS = (
    "state, updated_at, finished_at, error, blocked_reason, recovery_attempts, "
    "resolution, created_at, timeout_seconds"
)
"""The header columns: the first seven as ``header_of`` returns them (what a ``record``
rewrites), then the two that never change after the first write."""

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

# Primary SQLite result codes (the low byte of an extended code).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


# ---------------------------------------------------------------------- values


def to_us(value: datetime | None) -> int | None:
    """``value`` as integer microseconds since the Unix epoch (naive means UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _ONE_US


def from_us(value: int | None) -> datetime | None:
    """The aware UTC datetime of ``value`` microseconds since the Unix epoch."""
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def header_of(tx: Transaction) -> tuple[Any, ...]:
    """The mutable header columns of ``tx`` (``HEADER_COLUMNS`` order), snapshotted now.

    On the hot path (every ``record``), hence the plain attribute reads.
    """
    updated = tx.updated_at
    finished = tx.finished_at
    resolution = tx.resolution
    return (
        tx.state._value_,
        None if updated is None else to_us(updated),
        None if finished is None else to_us(finished),
        tx.error,
        tx.blocked_reason,
        tx.recovery_attempts,
        None if resolution is None else resolution.model_dump_json(),
    )


def full_header_of(tx: Transaction) -> tuple[Any, ...]:
    """Every header column of ``tx``, in ``HEADER_COLUMNS`` order."""
    return (*header_of(tx), to_us(tx.created_at), tx.timeout_seconds)


def decode_transaction(
    path: Path, header: Sequence[Any], steps: Sequence[tuple[Any, ...]]
) -> Transaction:
    """Rebuild a transaction from its header row (id first) and its step rows, each
    ending with the step id and the body (``(step_id, body)``, or a row of the steps
    table read with the transaction's row id first).

    Everything goes through Pydantic validation; anything that does not validate
    (invalid JSON, a wrong type, a step row holding another step) raises
    ``CorruptRecordError`` naming the transaction, so nothing runs on a tampered row.
    """
    transaction_id = header[0]
    try:
        parsed: list[TransactionStep] = []
        for row in steps:
            step_id = row[-2]
            step = TransactionStep.model_validate_json(row[-1])
            if step.step_id != step_id:
                raise ValueError(f"the row of step {step_id} holds step {step.step_id}")
            parsed.append(step)
        (_, state, updated, finished, error, blocked, attempts, resolved, created, timeout) = header
        return Transaction.model_validate(
            {
                "transaction_id": transaction_id,
                "steps": parsed,
                "state": state,
                "created_at": from_us(created),
                "timeout_seconds": timeout,
                "updated_at": from_us(updated),
                "finished_at": from_us(finished),
                "error": error,
                "recovery_attempts": attempts,
                "blocked_reason": blocked,
                "resolution": None
                if resolved is None
                else Resolution.model_validate_json(resolved),
            }
        )
    except (ValueError, TypeError, OverflowError) as exc:
        detail = str(exc).splitlines()
        summary = "; ".join(line.strip() for line in detail[:3]) if detail else repr(exc)
        if isinstance(exc, ValidationError):
            summary = f"{exc.error_count()} validation error(s): " + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:3]
            )
        raise CorruptRecordError(
            f"Transaction {transaction_id} in {path} is corrupt and was not loaded "
            f"(nothing was run): {summary}"
        ) from exc


# ---------------------------------------------------------------------- errors


def translate_error(exc: BaseException, path: Path, busy_timeout: float) -> StoreError:
    """The StoreError for a native sqlite3 (or OS) error, naming the file."""
    if isinstance(exc, StoreError):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary in (_BUSY, _LOCKED) or "locked" in text:
        return StoreUnavailableError(
            f"The journal {path} is locked by another connection and stayed locked past "
            f"the busy timeout ({busy_timeout:g}s); nothing was written. Retry, or raise "
            "busy_timeout."
        )
    if primary == _NOTADB:
        return StoreUnavailableError(
            f"{path} is not a SQLite database (or it is encrypted); refusing to use it "
            "as a journal. Nothing was modified."
        )
    if primary == _CORRUPT:
        return StoreUnavailableError(
            f"The journal {path} is corrupt ({text}); run PRAGMA integrity_check on it or "
            "restore a backup. Nothing was modified."
        )
    if primary == _READONLY:
        return StoreUnavailableError(
            f"The journal {path} is read-only ({text}); the file and its directory must be "
            "writable (SQLite creates -wal and -shm files next to it)."
        )
    if primary == _CANTOPEN:
        return StoreUnavailableError(
            f"Cannot open the journal {path} ({text}); check that the file and its "
            "directory exist and are writable."
        )
    if primary == _FULL:
        return StoreUnavailableError(f"The disk holding the journal {path} is full ({text}).")
    if primary == _IOERR:
        return StoreUnavailableError(f"I/O error on the journal {path}: {text}.")
    return StoreUnavailableError(f"The journal {path} failed: {type(exc).__name__}: {text}")


# ---------------------------------------------------------------------- opening


def _create_file(path: Path) -> None:
    """Create the database file with mode 0600 (whatever the umask) if it is missing.

    SQLite creates the -wal and -shm files with the mode of the database file, so
    they come out 0600 too; that is why the file is created here and never by SQLite.
    """
    if path.exists():
        if path.is_dir():
            raise StoreUnavailableError(f"The journal path {path} is a directory, not a file.")
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return
    except OSError as exc:
        raise StoreUnavailableError(
            f"Cannot create the journal {path}: {exc.strerror or exc} (is the location read-only?)."
        ) from exc
    try:
        if hasattr(os, "fchmod"):  # an exotic umask (say 0o277) must not leave it unwritable
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version (0 when empty), read without writing anything.

    Refuses a file from a newer release (``SchemaVersionError``) and a SQLite database
    that is not a journal, before a single byte of it is modified.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return 0
    if "schema_version" not in tables:
        raise StoreUnavailableError(
            f"{path} is a SQLite database but not an aumai-transactions journal (it holds "
            f"the tables {', '.join(sorted(tables))}); refusing to modify it."
        )
    version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    if not isinstance(version, int):
        raise StoreUnavailableError(
            f"The journal {path} has an unreadable schema version ({version!r}); "
            "nothing was modified."
        )
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"The journal {path} was written with schema version {version}, newer than "
            f"{SCHEMA_VERSION}, the newest this aumai-transactions ({__version__}) knows; "
            "upgrade aumai-transactions to use it. Nothing was modified."
        )
    return version


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema forward to ``SCHEMA_VERSION``, one migration at a time.

    Runs under ``BEGIN IMMEDIATE`` and re-reads the version inside it, so two
    processes opening a fresh file at once migrate it exactly once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _schema_version(conn, path)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (target, datetime.now(UTC).isoformat()),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _enter_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Put the file in WAL mode, waiting (up to the busy timeout) for a connection that
    is creating it at the same moment: SQLite answers "locked" to a journal-mode change
    at once, without its busy handler."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)  # on the store's own thread, never the event loop's
        delay = min(delay * 2, 0.1)


def connect(
    path: Path, *, synchronous: str, busy_timeout: float, create: bool = True
) -> sqlite3.Connection:
    """Open the journal at ``path`` (creating it if missing, unless ``create`` is false),
    in WAL mode, migrated.

    Raises a ``StoreError`` naming the file for every way this can fail: cannot
    create or open, not a database, corrupt, newer schema, locked past the busy
    timeout. The connection belongs to the calling thread.
    """
    if create:
        _create_file(path)
    elif not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "missing"
        raise StoreUnavailableError(
            f"The journal {path} is {what}; this store opens an existing journal only "
            "(create=False), so it created nothing."
        )
    conn: sqlite3.Connection | None = None
    try:
        # mode=rw: the file exists (made above with the right mode); SQLite must never
        # create it itself, and a file that vanished is an error, not a fresh journal.
        conn = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=rw",
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
            cached_statements=256,
        )
        # Read-only checks first: a refused file must be left exactly as it was.
        version = _schema_version(conn, path)
        mode = _enter_wal(conn, busy_timeout)
        if str(mode).lower() != "wal":
            raise StoreUnavailableError(
                f"The journal {path} cannot use write-ahead logging (journal_mode is "
                f"{mode!r}); SqliteStore needs a local filesystem with shared memory."
            )
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if version < SCHEMA_VERSION:
            _migrate(conn, path)
        else:
            # Refuse a read-only file now rather than at the first write.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        return conn
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error | OSError):
            raise translate_error(exc, path, busy_timeout) from exc
        raise
