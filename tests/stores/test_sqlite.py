"""SqliteStore: what only the SQLite backend has to prove.

The shared contract runs in test_conformance.py; this file covers the file itself
(WAL, 0600 modes, migrations, durability across close, crash and reopen), group
commit, several stores and processes on one file, poisoning after a failed batch,
tampered rows, and every kind of bad input (not a database, corrupt, not a journal,
newer schema, read-only location, locked past the busy timeout): each a clear error
naming the file, with the file left byte-for-byte as it was.

Staleness is made with negative lease lifetimes or by rewriting rows, never by sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aumai_transactions
from aumai_transactions import TransactionManager
from aumai_transactions.errors import (
    CorruptRecordError,
    LeaseLostError,
    SchemaVersionError,
    StoreUnavailableError,
)
from aumai_transactions.models import (
    Resolution,
    StepStatus,
    Transaction,
    TransactionState,
    TransactionStep,
    utcnow,
)
from aumai_transactions.stores import Lease, _sqlite_schema, open_store
from aumai_transactions.stores._headers import raw_header
from aumai_transactions.stores.sqlite import SqliteStore

from .test_conformance import EXPIRED, LIVE, copy, drive_a_parallel_group, dump, make_tx

PENDING = TransactionState.PENDING
ACTIVE = TransactionState.ACTIVE
COMMITTED = TransactionState.COMMITTED

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(db_path) as opened:
        yield opened


@pytest.fixture
def raw(db_path: Path) -> Iterator[Callable[[], sqlite3.Connection]]:
    """Plain sqlite3 connections on the journal, to inspect and tamper with it."""
    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db_path, isolation_level=None, timeout=5)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def make_journal(path: Path, count: int = 2) -> list[Transaction]:
    """A closed journal holding ``count`` saved transactions."""
    made = [make_tx() for _ in range(count)]
    async with SqliteStore(path) as store:
        for tx in made:
            await store.save(copy(tx))
    return made


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a separate process) with the repo importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


# --------------------------------------------------------------------- construction


def test_construction_does_no_io(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "journal.db"
    store = SqliteStore(path)
    assert not path.parent.exists()
    assert store.durable is True
    assert store.url == f"sqlite:///{path}"
    assert store.stats.commits == 0


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    home = SqliteStore.from_url("sqlite:///~/journal.db")
    assert home.path == tmp_path / "journal.db"
    absolute = SqliteStore.from_url(f"sqlite:///{tmp_path}/a.db")
    assert absolute.path == tmp_path / "a.db"
    assert SqliteStore.from_url("sqlite:////var/tmp/x.db").path == Path("/var/tmp/x.db")
    assert SqliteStore.from_url("sqlite:///relative/x.db").path == Path("relative/x.db")
    tuned = open_store("sqlite:///x.db?synchronous=normal&busy_timeout=2.5")
    assert isinstance(tuned, SqliteStore)
    assert "synchronous='NORMAL'" in repr(tuned)
    assert SqliteStore.from_url("sqlite:///x.db?busy_timeout=1", busy_timeout=3) is not None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("sqlite://host/x.db", "host part"),
        ("sqlite:///x.db?fsync=yes", "Unknown option 'fsync'"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite:///x.db?synchronous=SOMETIMES", "synchronous must be one of"),
        ("sqlite:///x.db?busy_timeout=-1", "non-negative"),
        ("sqlite:///:memory:", "needs a file path"),
    ],
)
def test_bad_urls_say_what_is_accepted(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url)


async def test_using_an_unopened_store_says_how_to_open_it(db_path: Path) -> None:
    store = SqliteStore(db_path)
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.load("x")
    assert not db_path.exists()


# --------------------------------------------------------------------- the file


async def test_wal_mode_and_schema_version(store: SqliteStore, raw: Any) -> None:
    conn = raw()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert rows == [(version,) for version in range(1, _sqlite_schema.SCHEMA_VERSION + 1)]
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {
        "transactions_by_state",
        "transactions_by_created",
        "transaction_agents_by_agent",
    } <= indexes
    plan = " ".join(
        str(row)
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM transactions WHERE state = 'active' "
            "ORDER BY created_at DESC"
        )
    )
    assert "transactions_by_state" in plan


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o077])
async def test_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "made" / "for" / "us" / "journal.db"
    previous = os.umask(umask)
    try:
        async with SqliteStore(path) as store:
            await store.save(make_tx())
            modes = {
                suffix: stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)
                for suffix in ("", "-wal", "-shm")
            }
    finally:
        os.umask(previous)
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_everything_survives_close_and_reopen(db_path: Path) -> None:
    async def ok(action: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"action": action}

    manager = TransactionManager({"a": ok, "b": ok}, store=SqliteStore(db_path))
    async with manager:
        tx = manager.begin()
        manager.add_step(tx, "x", "a", {"n": 1}, "b")
        await manager.commit(tx)
        lingering = make_tx(state=ACTIVE)
        lease = await manager.store.acquire(lingering, "me", LIVE, [PENDING])
        lingering.steps[0].status = StepStatus.COMPLETED
        await manager.store.record(lease, lingering, lingering.steps[0], durable=False)
        await manager.store.release(lease)  # neither is waited for: close must flush them
    assert not Path(f"{db_path}-wal").exists()  # a clean close checkpoints the log
    async with SqliteStore(db_path) as reopened:
        assert dump(await reopened.load(tx.transaction_id)) == dump(tx)
        kept = await reopened.load(lingering.transaction_id)
        assert kept is not None and kept.steps[0].status is StepStatus.COMPLETED
        again = await reopened.acquire(copy(lingering), "other", LIVE, [ACTIVE])  # released
        assert again.epoch == lease.epoch + 1


async def test_a_durable_record_survives_the_process_being_killed(db_path: Path) -> None:
    child = run_python(
        """
        import asyncio, os, signal, sys
        from aumai_transactions.models import StepStatus, TransactionState
        from aumai_transactions.stores.sqlite import SqliteStore
        from tests.stores.test_conformance import make_tx

        async def main():
            store = SqliteStore(sys.argv[1])
            await store.open()
            tx = make_tx(state=TransactionState.ACTIVE)
            lease = await store.acquire(tx, "doomed", 60, [TransactionState.PENDING])
            tx.steps[0].status = StepStatus.RUNNING
            await store.record(lease, tx, tx.steps[0])  # durable: on disk when it returns
            print(tx.transaction_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint

        asyncio.run(main())
        """,
        str(db_path),
    )
    assert child.returncode == -9, child.stderr
    transaction_id = child.stdout.strip()
    assert Path(f"{db_path}-wal").exists()
    async with SqliteStore(db_path) as store:
        tx = await store.load(transaction_id)
        assert tx is not None and tx.state is ACTIVE
        assert tx.steps[0].status is StepStatus.RUNNING


async def test_an_empty_file_becomes_a_journal(db_path: Path) -> None:
    db_path.touch(mode=0o600)
    async with SqliteStore(db_path) as store:
        await store.save(make_tx())
        assert await store.count_by_state() == {PENDING: 1}


async def test_forward_migrations_run_once_and_keep_the_data(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, raw: Any
) -> None:
    made = await make_journal(db_path)
    upgrade = ("CREATE INDEX transactions_by_error ON transactions (error)",)
    current = _sqlite_schema.SCHEMA_VERSION
    monkeypatch.setattr(_sqlite_schema, "_MIGRATIONS", (*_sqlite_schema._MIGRATIONS, upgrade))
    monkeypatch.setattr(_sqlite_schema, "SCHEMA_VERSION", current + 1)
    one, two = SqliteStore(db_path), SqliteStore(db_path)
    async with anyio.create_task_group() as group:  # two openers race to migrate
        group.start_soon(one.open)
        group.start_soon(two.open)
    try:
        assert dump(await two.load(made[0].transaction_id)) == dump(made[0])
    finally:
        await one.close()
        await two.close()
    conn = raw()
    assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
        (version,) for version in range(1, current + 2)
    ]
    assert conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'transactions_by_error'"
    ).fetchone()


async def test_a_version_1_journal_gains_the_resolution_column_and_keeps_its_data(
    db_path: Path, raw: Any
) -> None:
    # A file as release 0.2 wrote it (schema version 1), holding one transaction.
    conn = raw()
    for statement in _sqlite_schema._MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, '2025-01-01T00:00:00+00:00')")
    tx = make_tx(steps=1, state=TransactionState.COMPENSATION_FAILED)
    tx.error = "refund failed"
    step = tx.steps[0]
    conn.execute(
        "INSERT INTO transactions (id, transaction_id, state, created_at, timeout_seconds, "
        "error, recovery_attempts, epoch) VALUES (1, ?, 'compensation_failed', ?, 120.0, ?, 0, 3)",
        (tx.transaction_id, _sqlite_schema.to_us(tx.created_at), tx.error),
    )
    conn.execute("INSERT INTO steps VALUES (1, 0, ?, ?)", (step.step_id, step.model_dump_json()))
    conn.execute("INSERT INTO transaction_agents VALUES (1, ?)", (step.agent_id,))
    conn.close()
    async with SqliteStore(db_path) as store:
        assert dump(await store.load(tx.transaction_id)) == dump(tx)
        claimed = await store.claim(tx.transaction_id, "operator", LIVE, [tx.state])
        assert claimed is not None and claimed[1].epoch == 4
        resolved, lease = claimed
        resolved.resolution = Resolution(
            note="done by hand", by="ops", at=utcnow(), previous_state=tx.state
        )
        resolved.state = TransactionState.RESOLVED
        await store.record(lease, resolved)
    async with SqliteStore(db_path) as again:
        assert dump(await again.load(tx.transaction_id)) == dump(resolved)
    conn = raw()
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone() == (
        _sqlite_schema.SCHEMA_VERSION,
    )


# --------------------------------------------------------------------- bad input


async def test_a_newer_schema_version_is_refused_and_left_untouched(
    db_path: Path, raw: Any
) -> None:
    made = await make_journal(db_path)
    conn = raw()
    conn.execute("INSERT INTO schema_version VALUES (99, 'the future')")
    conn.close()
    before = digest(db_path)
    with pytest.raises(SchemaVersionError, match="schema version 99") as caught:
        await SqliteStore(db_path).open()
    assert str(db_path) in str(caught.value)
    assert digest(db_path) == before
    conn = raw()
    conn.execute("DELETE FROM schema_version WHERE version = 99")
    conn.close()
    async with SqliteStore(db_path) as store:
        assert dump(await store.load(made[1].transaction_id)) == dump(made[1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a database, just some notes\n" * 200, "not a SQLite database"),
        (bytes(range(256)) * 64, "not a SQLite database"),
    ],
)
async def test_a_file_that_is_not_sqlite_is_refused_untouched(
    db_path: Path, content: bytes, message: str
) -> None:
    db_path.write_bytes(content)
    with pytest.raises(StoreUnavailableError, match=message) as caught:
        await SqliteStore(db_path).open()
    assert str(db_path) in str(caught.value)
    assert db_path.read_bytes() == content
    assert not Path(f"{db_path}-wal").exists()


async def test_a_corrupt_journal_is_refused_untouched(db_path: Path) -> None:
    await make_journal(db_path)
    data = bytearray(db_path.read_bytes())
    data[100:4096] = b"\xde\xad\xbe\xef" * 999  # the schema page, past the file header
    db_path.write_bytes(bytes(data))
    before = digest(db_path)
    with pytest.raises(StoreUnavailableError, match="corrupt") as caught:
        await SqliteStore(db_path).open()
    assert str(db_path) in str(caught.value)
    assert digest(db_path) == before


async def test_a_database_that_is_not_a_journal_is_refused_untouched(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.commit()
    conn.close()
    before = digest(db_path)
    with pytest.raises(StoreUnavailableError, match="not an aumai-transactions journal"):
        await SqliteStore(db_path).open()
    assert digest(db_path) == before


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="is a directory"):
        await SqliteStore(tmp_path).open()


async def test_create_false_opens_an_existing_journal_only(tmp_path: Path) -> None:
    missing = tmp_path / "nodir" / "journal.db"
    store = SqliteStore(missing, create=False)
    with pytest.raises(StoreUnavailableError, match=r"nodir/journal\.db is missing"):
        await store.open()
    assert not missing.parent.exists()  # no file, no directory
    async with SqliteStore(missing) as writer:
        tx = Transaction()
        await writer.save(tx)
    async with SqliteStore(missing, create=False) as reader:
        assert (await reader.load(tx.transaction_id)) is not None


async def test_create_false_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="a directory, not a file"):
        await SqliteStore(tmp_path, create=False).open()


async def test_a_lock_held_past_the_busy_timeout_is_a_clear_error(db_path: Path, raw: Any) -> None:
    made = await make_journal(db_path)
    holder = raw()
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    with pytest.raises(StoreUnavailableError, match="busy timeout") as caught:
        await SqliteStore(db_path, busy_timeout=0.2).open()
    assert str(db_path) in str(caught.value)
    holder.execute("ROLLBACK")
    async with SqliteStore(db_path, busy_timeout=0.2) as store:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailableError, match="locked by another connection"):
            await store.save(make_tx())
        holder.execute("ROLLBACK")
        assert dump(await store.load(made[0].transaction_id)) == dump(made[0])
        assert await store.count_by_state() == {PENDING: 2}
        await store.save(make_tx())  # and it carries on once the lock is gone
        assert await store.count_by_state() == {PENDING: 3}


def _open_in_child_as_unprivileged(path: Path) -> str:
    """Open a store at ``path`` in a forked child without write access; its outcome.

    As root (which ignores permission bits) the child drops to ``nobody`` after the
    fork, so the interpreter and every module it needs are already loaded.
    """

    async def attempt(where: Path) -> str:
        try:
            async with SqliteStore(where, busy_timeout=0.2):
                return "opened"
        except Exception as exc:  # the message is the evidence
            return f"{type(exc).__name__}: {exc}"

    with tempfile.TemporaryDirectory() as scratch:  # load every module the child needs
        asyncio.run(attempt(Path(scratch) / "warm-up.db"))
    for thread in threading.enumerate():  # fork with no writer thread still winding down
        if thread.name.startswith("aumai-sqlite-writer"):
            thread.join(10)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(reader)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            outcome = asyncio.run(attempt(path))
        except BaseException as exc:
            outcome = f"child failed: {exc!r}"
        os.write(writer, outcome.encode())
        os._exit(0)
    os.close(writer)
    chunks = []
    while chunk := os.read(reader, 65536):
        chunks.append(chunk)
    os.close(reader)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory outside pytest's private tree, reachable by an unprivileged child."""
    path = Path(tempfile.mkdtemp(prefix="aumai-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.rglob("*"):
            child.chmod(0o700 if child.is_dir() else 0o600)
        shutil.rmtree(path)


def test_a_read_only_location_is_a_clear_error(shared_dir: Path) -> None:
    locked_dir = shared_dir / "locked"
    locked_dir.mkdir()
    asyncio.run(make_journal(locked_dir / "existing.db"))
    existing = locked_dir / "existing.db"
    existing.chmod(0o644)  # readable, not writable, in a directory it cannot write
    locked_dir.chmod(0o555)
    before = digest(existing)

    missing = locked_dir / "new.db"
    outcome = _open_in_child_as_unprivileged(missing)
    assert outcome.startswith("StoreUnavailableError: Cannot create the journal"), outcome
    assert str(missing) in outcome and "read-only" in outcome
    assert not missing.exists()

    outcome = _open_in_child_as_unprivileged(existing)
    assert outcome.startswith("StoreUnavailableError:"), outcome
    assert str(existing) in outcome and "writable" in outcome
    assert digest(existing) == before


# --------------------------------------------------------------------- group commit


Writers = list[tuple[Transaction, Lease, TransactionStep]]


async def first_steps_of_64_transactions(store: SqliteStore) -> Writers:
    writers = []
    for _ in range(64):
        tx = make_tx(state=ACTIVE)
        writers.append((tx, await store.acquire(tx, "me", LIVE, [PENDING]), tx.steps[0]))
    return writers


async def a_group_of_64_steps_appended_to_one_transaction(store: SqliteStore) -> Writers:
    tx = make_tx(steps=1, state=ACTIVE)
    lease = await store.acquire(tx, "me", LIVE, [PENDING])
    group = [TransactionStep.new("agent", f"act-{index}", {}) for index in range(64)]
    tx.steps.extend(group)
    return [(tx, lease, step) for step in group]


@pytest.mark.parametrize(
    "writers_of",
    [first_steps_of_64_transactions, a_group_of_64_steps_appended_to_one_transaction],
)
async def test_concurrent_durable_writes_share_commits(
    store: SqliteStore, writers_of: Callable[[SqliteStore], Awaitable[Writers]]
) -> None:
    writers = await writers_of(store)
    before = store.stats
    seen_at_return: list[int] = []

    async def write(tx: Transaction, lease: Lease, step: TransactionStep) -> None:
        step.status = StepStatus.RUNNING
        await store.record(lease, tx, step)
        seen_at_return.append(store.stats.commits)

    async with anyio.create_task_group() as group:
        for writer in writers:
            group.start_soon(write, *writer)
    after = store.stats
    assert after.records - before.records == 64
    assert after.commits - before.commits <= 2
    # Each durable writer resumed only after a commit that came after its call.
    assert min(seen_at_return) > before.commits
    for tx, _, step in writers:
        loaded = await store.load(tx.transaction_id)
        assert loaded is not None
        assert next(s for s in loaded.steps if s.step_id == step.step_id).status is (
            StepStatus.RUNNING
        )


async def test_a_group_mixing_durable_and_lazy_records_shares_commits(
    store: SqliteStore,
) -> None:
    before = store.stats
    tx = await drive_a_parallel_group(store, 50)
    after = store.stats
    assert after.records - before.records == 101
    assert after.commits - before.commits <= 3  # intents, completions + the end
    assert dump(await store.load(tx.transaction_id)) == dump(tx)


async def test_many_transactions_in_flight_need_few_commits(db_path: Path) -> None:
    async def noop(action: str, data: dict[str, Any]) -> None:
        return None

    store = SqliteStore(db_path)
    manager = TransactionManager(dict.fromkeys(("a", "b", "c"), noop), store=store)
    async with manager:

        async def one() -> None:
            tx = manager.begin()
            for action in ("a", "b", "c"):
                manager.add_step(tx, "agent", action, {}, "c")
            assert (await manager.commit(tx)).state is COMMITTED

        async with anyio.create_task_group() as group:
            for _ in range(128):
                group.start_soon(one)
        stats = store.stats
        assert await store.count_by_state() == {COMMITTED: 128}
    steps = 128 * 3
    assert stats.commits / steps < 0.25, stats  # one commit per step would be 1.0


async def test_one_transaction_in_flight_costs_at_most_one_commit_per_step_plus_its_end(
    db_path: Path,
) -> None:
    async def noop(action: str, data: dict[str, Any]) -> None:
        return None

    # The acquire's SQLite transaction stays open ``group_commit_delay`` for the first
    # intent to join it. With the default 5 ms, an event loop held up longer than that
    # between the two (a loaded machine) commits the acquire on its own: one commit
    # more. A delay no scheduler stall reaches keeps the count about the protocol.
    async with SqliteStore(db_path, group_commit_delay=30) as store:
        manager = TransactionManager(dict.fromkeys(("a", "b", "c"), noop), store=store)
        before = store.stats.commits
        for _ in range(5):
            tx = manager.begin()
            for action in ("a", "b", "c"):
                manager.add_step(tx, "agent", action)
            await manager.commit(tx)
        # Three step intents and the committed record; acquire and completions ride along.
        assert store.stats.commits - before <= 5 * 4


async def test_an_acquire_carrying_a_running_step_is_committed_when_it_returns(
    db_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    # With a delay no test reaches, an acquire that is not durable stays uncommitted:
    # another connection then sees neither the transaction nor its running step.
    async with SqliteStore(db_path, group_commit_delay=30) as store:
        assert store.acquire_carries_intent
        pending = make_tx(state=ACTIVE)
        await store.acquire(pending, "me", LIVE, [PENDING])
        carrying = make_tx(state=ACTIVE)
        carrying.steps[0].status = StepStatus.RUNNING
        commits = store.stats.commits
        await store.acquire(carrying, "me", LIVE, [PENDING])
        assert store.stats.commits == commits + 1  # the pending one rode along
        rows = (
            raw()
            .execute(
                "SELECT t.transaction_id, s.body FROM transactions t JOIN steps s ON s.tx = t.id "
                "WHERE s.position = 0"
            )
            .fetchall()
        )
    seen = {tid: json.loads(body)["status"] for tid, body in rows}
    assert seen == {pending.transaction_id: "pending", carrying.transaction_id: "running"}


async def test_a_cancelled_durable_write_is_still_applied_in_order(store: SqliteStore) -> None:
    tx = make_tx(state=ACTIVE)
    lease = await store.acquire(tx, "me", LIVE, [PENDING])
    tx.steps[0].status = StepStatus.RUNNING
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.record(lease, tx, tx.steps[0])
    assert scope.cancelled_caught
    tx.steps[0].status = StepStatus.COMPLETED
    tx.steps[1].status = StepStatus.RUNNING
    await store.record(lease, tx, tx.steps[1])
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None
    assert [s.status for s in loaded.steps[:2]] == [StepStatus.RUNNING, StepStatus.RUNNING]


async def test_a_cancelled_acquire_still_queued_takes_no_lease(db_path: Path, raw: Any) -> None:
    async with SqliteStore(db_path, busy_timeout=30) as store:
        busy, late = make_tx(state=ACTIVE), make_tx(state=ACTIVE)
        lease = await store.acquire(busy, "me", LIVE, [PENDING])
        await store.renew("me", LIVE)  # durable: the writer is idle now
        holder = raw()
        holder.execute("BEGIN IMMEDIATE")  # the writer's next batch waits on this lock
        taken = store.stats.batches
        async with anyio.create_task_group() as group:
            group.start_soon(store.record, lease, busy)
            while store.stats.batches == taken:  # the record's batch is in the writer
                await anyio.lowlevel.checkpoint()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await store.acquire(late, "me", LIVE, [PENDING])  # queued, then cancelled
            assert scope.cancelled_caught
            holder.execute("ROLLBACK")
        assert await store.load(late.transaction_id) is None
        again = await store.acquire(copy(late), "me", LIVE, [PENDING])
        assert again.epoch == 1


async def test_a_write_lost_in_a_failed_batch_poisons_its_lease(db_path: Path, raw: Any) -> None:
    async with SqliteStore(db_path, busy_timeout=0.2) as store:
        tx = make_tx(state=ACTIVE)
        lease = await store.acquire(tx, "me", LIVE, [PENDING])
        bystander = make_tx(state=ACTIVE)
        bystander_lease = await store.acquire(bystander, "me", LIVE, [PENDING])
        await store.renew("me", LIVE)  # durable: everything so far is committed
        holder = raw()
        holder.execute("BEGIN IMMEDIATE")
        tx.steps[0].status = StepStatus.COMPLETED
        await store.record(lease, tx, tx.steps[0], durable=False)  # queued, not awaited
        tx.steps[1].status = StepStatus.RUNNING
        with pytest.raises(StoreUnavailableError, match="busy timeout"):
            await store.record(lease, tx, tx.steps[1])
        holder.execute("ROLLBACK")
        with pytest.raises(StoreUnavailableError, match="was lost"):
            await store.record(lease, tx, tx.steps[1])
        bystander.error = "unaffected"
        await store.record(bystander_lease, bystander)
        loaded = await store.load(tx.transaction_id)
        assert loaded is not None and loaded.steps[0].status is StepStatus.PENDING
        kept = await store.load(bystander.transaction_id)
        assert kept is not None and kept.error == "unaffected"


async def test_a_header_whose_durable_write_failed_is_sent_again(db_path: Path, raw: Any) -> None:
    # A record whose header is the one last committed under its lease sends none; a
    # header whose write failed was never committed, so the next record carries it.
    async with SqliteStore(db_path, busy_timeout=0.2) as store:
        tx = make_tx(state=ACTIVE)
        lease = await store.acquire(tx, "me", LIVE, [PENDING])
        await store.renew("me", LIVE)  # durable: everything so far is committed
        holder = raw()
        holder.execute("BEGIN IMMEDIATE")
        tx.error = "changed"
        with pytest.raises(StoreUnavailableError, match="busy timeout"):
            await store.record(lease, tx)
        holder.execute("ROLLBACK")
        tx.steps[0].status = StepStatus.RUNNING
        await store.record(lease, tx, tx.steps[0])
        loaded = await store.load(tx.transaction_id)
        assert loaded is not None and loaded.error == "changed"
        assert loaded.steps[0].status is StepStatus.RUNNING


async def test_a_header_committed_by_a_durable_record_is_not_sent_again(
    store: SqliteStore,
) -> None:
    # The writer confirms the header of a durable record once it is committed: the next
    # record with the same header only checks the lease.
    tx = make_tx(state=ACTIVE)
    lease = await store.acquire(tx, "me", LIVE, [PENDING])
    tx.error = "changed"
    await store.record(lease, tx)
    assert store._headers.unchanged(tx.transaction_id, lease.epoch, raw_header(tx)) == "active"


async def test_records_between_header_changes_keep_the_newest_header(store: SqliteStore) -> None:
    tx = make_tx(state=ACTIVE)
    lease = await store.acquire(tx, "me", LIVE, [PENDING])
    tx.steps[0].status = StepStatus.RUNNING
    await store.record(lease, tx, tx.steps[0])  # the acquire's header: none sent
    tx.error = "lazily"
    tx.steps[0].status = StepStatus.COMPLETED
    await store.record(lease, tx, tx.steps[0], durable=False)
    tx.steps[1].status = StepStatus.RUNNING
    await store.record(lease, tx, tx.steps[1])  # same header as the lazy write
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None and loaded.error == "lazily"
    tx.state = COMMITTED
    await store.record(lease, tx)
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None and loaded.state is COMMITTED and loaded.error == "lazily"


async def test_a_record_is_fenced_after_its_row_id_went_to_another_transaction(
    db_path: Path, raw: Any
) -> None:
    # The writer reads and releases a leased transaction by the row id it remembers;
    # once the row is deleted and its id given to another transaction (leased under the
    # same epoch), the record must still be refused, and neither it nor the release may
    # touch the other transaction.
    async with SqliteStore(db_path) as mine, SqliteStore(db_path) as other:
        tx = make_tx(state=ACTIVE)
        lease = await mine.acquire(tx, "me", EXPIRED, [PENDING])
        tx.steps[0].status = StepStatus.RUNNING
        await mine.record(lease, tx, tx.steps[0])  # read by row id from now on
        row_id = "SELECT id FROM transactions WHERE transaction_id=?"
        (freed,) = raw().execute(row_id, (tx.transaction_id,)).fetchone()
        assert await other.delete(tx.transaction_id)
        newcomer = make_tx(state=ACTIVE)
        theirs = await other.acquire(newcomer, "them", LIVE, [PENDING])
        assert theirs.epoch == lease.epoch
        await other.renew("them", LIVE)  # durable
        assert raw().execute(row_id, (newcomer.transaction_id,)).fetchone() == (freed,)
        tx.error = "stale"
        with pytest.raises(LeaseLostError):
            await mine.record(lease, tx, tx.steps[0])
        await mine.release(lease)
        await mine.renew("me", LIVE)  # durable: the release is committed with it
        kept = await other.load(newcomer.transaction_id)
        assert kept is not None and kept.error is None
        assert [s.status for s in kept.steps] == [s.status for s in newcomer.steps]
        held = (await other.leases([newcomer.transaction_id]))[newcomer.transaction_id]
        assert held.owner == "them" and held.live


async def test_appended_steps_lost_in_a_failed_batch_poison_their_lease(
    db_path: Path, raw: Any
) -> None:
    # A parallel group's first record inserts its steps; if that batch is lost, a
    # sibling's next record must not take the rows for written (a ValueError, or worse).
    async with SqliteStore(db_path, busy_timeout=0.2) as store:
        tx = make_tx(steps=1, state=ACTIVE)
        lease = await store.acquire(tx, "me", LIVE, [PENDING])
        await store.renew("me", LIVE)  # durable: everything so far is committed
        group = [TransactionStep.new("agent", f"act-{index}", {}) for index in range(2)]
        tx.steps.extend(group)
        holder = raw()
        holder.execute("BEGIN IMMEDIATE")
        group[0].status = StepStatus.RUNNING
        with pytest.raises(StoreUnavailableError, match="busy timeout"):
            await store.record(lease, tx, group[0])
        holder.execute("ROLLBACK")
        group[1].status = StepStatus.RUNNING
        with pytest.raises(StoreUnavailableError, match="was lost"):
            await store.record(lease, tx, group[1])
        loaded = await store.load(tx.transaction_id)
        assert loaded is not None and len(loaded.steps) == 1


async def test_after_close_writes_are_refused_and_reopening_works(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    tx = make_tx(state=ACTIVE)
    lease = await store.acquire(tx, "me", LIVE, [PENDING])
    await store.close()
    with pytest.raises(StoreUnavailableError, match="not open"):
        await store.record(lease, tx)
    await store.open()
    await store.record(lease, tx)  # the lease is still good: nobody took it
    await store.close()


def test_a_store_belongs_to_the_loop_that_opened_it(db_path: Path) -> None:
    store = SqliteStore(db_path)
    tx = make_tx()

    leases: list[Lease] = []

    async def open_and_save() -> None:
        await store.open()
        await store.save(copy(tx))
        leases.append(await store.acquire(copy(tx), "me", LIVE, [PENDING]))

        # Another thread's loop, while this one runs: refused too.
        def from_a_thread() -> None:
            with pytest.raises(RuntimeError, match="opened in another event loop"):
                asyncio.run(store.record(leases[0], copy(tx)))

        await asyncio.to_thread(from_a_thread)

    async def use_elsewhere() -> None:
        with pytest.raises(RuntimeError, match="opened in another event loop"):
            await store.load(tx.transaction_id)
        with pytest.raises(RuntimeError, match="opened in another event loop"):
            await store.record(leases[0], copy(tx))
        await store.close()  # closing from another loop still flushes and stops

    asyncio.run(open_and_save())
    asyncio.run(use_elsewhere())

    async def reopen() -> Transaction | None:
        async with SqliteStore(db_path) as again:
            return await again.load(tx.transaction_id)

    assert dump(asyncio.run(reopen())) == dump(tx)


async def test_record_without_a_step_writes_only_the_header(store: SqliteStore) -> None:
    tx = make_tx(state=ACTIVE)
    lease = await store.acquire(tx, "me", LIVE, [PENDING])
    tx.steps[0].status = StepStatus.COMPLETED  # changed but not recorded
    tx.error = "header only"
    await store.record(lease, tx)
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None
    assert loaded.error == "header only"
    assert loaded.steps[0].status is StepStatus.PENDING


async def test_a_step_that_is_not_part_of_the_transaction_is_refused(store: SqliteStore) -> None:
    tx = make_tx(state=ACTIVE)
    lease = await store.acquire(tx, "me", LIVE, [PENDING])
    stranger = make_tx().steps[0]
    with pytest.raises(ValueError, match="not a step of transaction"):
        await store.record(lease, tx, stranger)


async def test_duplicate_step_ids_and_non_json_data_are_refused(store: SqliteStore) -> None:
    tx = make_tx()
    tx.steps[1].step_id = tx.steps[0].step_id
    with pytest.raises(ValueError, match="same step_id"):
        await store.save(tx)
    odd = make_tx()
    odd.steps[0].data = {"when": object()}
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        await store.save(odd)
    assert await store.count_by_state() == {}


# --------------------------------------------------------------------- many users


async def test_two_stores_on_one_file_see_each_others_writes(db_path: Path) -> None:
    async with SqliteStore(db_path) as one, SqliteStore(db_path) as two:
        first, second = make_tx(state=ACTIVE), make_tx(state=ACTIVE)
        lease_one = await one.acquire(first, "one", LIVE, [PENDING])
        lease_two = await two.acquire(second, "two", LIVE, [PENDING])

        async def drive(store: SqliteStore, tx: Transaction, lease: Any) -> None:
            for step in tx.steps:
                step.status = StepStatus.RUNNING
                await store.record(lease, tx, step)
                step.status = StepStatus.COMPLETED
                await store.record(lease, tx, step, durable=False)
            tx.state = COMMITTED
            await store.record(lease, tx)

        async with anyio.create_task_group() as group:
            group.start_soon(drive, one, first, lease_one)
            group.start_soon(drive, two, second, lease_two)
        assert dump(await one.load(second.transaction_id)) == dump(second)
        assert dump(await two.load(first.transaction_id)) == dump(first)
        await one.release(lease_one)
        # A release is not waited for: other stores see it once a commit carries it.
        await one.renew("one", LIVE)
        taken = await two.acquire(copy(first), "two", LIVE, [COMMITTED])
        with pytest.raises(LeaseLostError):
            await one.record(lease_one, first)
        assert taken.epoch > lease_one.epoch


_WORKER = """
import asyncio, sys
from aumai_transactions import TransactionManager
from aumai_transactions.stores.sqlite import SqliteStore

async def noop(action, data):
    return {"by": sys.argv[2]}

async def main():
    manager = TransactionManager({"a": noop, "b": noop}, store=SqliteStore(sys.argv[1]))
    async with manager:
        async def one():
            tx = manager.begin()
            manager.add_step(tx, sys.argv[2], "a", {}, "b")
            manager.add_step(tx, sys.argv[2], "a", {}, "b")
            assert (await manager.commit(tx)).state.value == "committed"
        for _ in range(int(sys.argv[3])):
            await asyncio.gather(*(one() for _ in range(10)))

asyncio.run(main())
"""


async def test_several_processes_commit_into_one_file(db_path: Path, raw: Any) -> None:
    await make_journal(db_path, count=0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(db_path), f"worker-{n}", "20"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    async with SqliteStore(db_path) as store:
        assert await store.count_by_state() == {COMMITTED: 600}
        for n in range(3):
            assert len(await store.list(agent_id=f"worker-{n}")) == 200
    assert raw().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


_CLAIMER = """
import asyncio, json, sys
from aumai_transactions.stores.sqlite import SqliteStore

async def main():
    got = []
    async with SqliteStore(sys.argv[1]) as store:
        while batch := await store.claim_expired(sys.argv[2], 60, 3):
            got += [tx.transaction_id for tx, _ in batch]
    print(json.dumps(got))

asyncio.run(main())
"""


async def test_claims_from_several_processes_never_overlap(db_path: Path) -> None:
    async with SqliteStore(db_path) as store:
        ids = set()
        for _ in range(150):
            tx = make_tx(steps=1, state=ACTIVE)
            await store.acquire(tx, "dead", EXPIRED, [PENDING])
            ids.add(tx.transaction_id)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(db_path), f"claimer-{n}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    claimed: list[str] = []
    for claimer in claimers:
        out, err = claimer.communicate(timeout=120)
        assert claimer.returncode == 0, err
        claimed += json.loads(out)
    assert len(claimed) == len(set(claimed))
    assert set(claimed) == ids


# --------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("body", "{not json", "Invalid JSON"),
        ("body", '{"agent_id": "a", "action": "x", "status": "exploded"}', "status"),
        ("body", "[1, 2, 3]", "validation error"),
        ("step_id", "someone-else", "holds step"),
    ],
)
async def test_a_tampered_step_row_is_rejected_on_load(
    store: SqliteStore, raw: Any, column: str, value: str, message: str
) -> None:
    tx = make_tx()
    await store.save(copy(tx))
    raw().execute(f"UPDATE steps SET {column} = ? WHERE position = 1", (value,))
    with pytest.raises(CorruptRecordError, match=message) as caught:
        await store.load(tx.transaction_id)
    assert tx.transaction_id in str(caught.value) and str(store.path) in str(caught.value)
    with pytest.raises(CorruptRecordError):
        await store.list()


async def test_a_tampered_header_is_rejected(store: SqliteStore, raw: Any) -> None:
    tx = make_tx()
    await store.save(copy(tx))
    raw().execute("UPDATE transactions SET state = 'teleported'")
    with pytest.raises(CorruptRecordError, match=tx.transaction_id):
        await store.load(tx.transaction_id)
    with pytest.raises(CorruptRecordError, match="teleported"):
        await store.count_by_state()
    raw().execute("UPDATE transactions SET state = 'pending', created_at = 'yesterday'")
    with pytest.raises(CorruptRecordError, match=tx.transaction_id):
        await store.load(tx.transaction_id)


async def test_recovery_never_runs_a_tampered_transaction(
    store: SqliteStore, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = make_tx(state=ACTIVE), make_tx(state=ACTIVE)
    for tx in (bad, good):
        tx.steps[0].status = StepStatus.COMPLETED
        await store.acquire(tx, "dead", EXPIRED, [PENDING])
    await store.renew("nobody", LIVE)  # a durable write: the acquires are committed
    conn = raw()
    (rid,) = conn.execute(
        "SELECT id FROM transactions WHERE transaction_id = ?", (bad.transaction_id,)
    ).fetchone()
    conn.execute("UPDATE steps SET body = '{\"pickle\": true' WHERE tx = ?", (rid,))
    before = conn.execute("SELECT * FROM transactions WHERE id = ?", (rid,)).fetchone()
    ran: list[tuple[str, dict[str, Any]]] = []

    async def handler(action: str, data: dict[str, Any]) -> None:
        ran.append((action, data))

    actions = [f"{kind}{n}" for kind in ("act", "undo") for n in range(3)]
    manager = TransactionManager(dict.fromkeys(actions, handler), store=store)
    with caplog.at_level(logging.ERROR, logger="aumai_transactions"):
        results = await manager.recover()
    assert [r.transaction_id for r in results] == [good.transaction_id]
    assert [action for action, _ in ran] == ["undo0"]
    assert conn.execute("SELECT * FROM transactions WHERE id = ?", (rid,)).fetchone() == before
    assert bad.transaction_id in caplog.text


async def test_a_record_of_a_step_whose_row_holds_another_step_is_refused_alone(
    store: SqliteStore, raw: Any
) -> None:
    """The step row at a record's position holds another step (rewritten behind the
    store's back): that record is refused, naming the step; the record sent with it,
    of another transaction, is written."""
    tampered, other = make_tx(state=ACTIVE), make_tx(state=ACTIVE)
    leases = [await store.acquire(tx, "me", LIVE, [PENDING]) for tx in (tampered, other)]
    raw().execute(
        "UPDATE steps SET step_id = 'someone-else' WHERE position = 1 AND tx = "
        "(SELECT id FROM transactions WHERE transaction_id = ?)",
        (tampered.transaction_id,),
    )
    for tx in (tampered, other):
        tx.steps[1].status = StepStatus.RUNNING
    outcomes = await asyncio.gather(
        store.record(leases[0], tampered, tampered.steps[1]),
        store.record(leases[1], other, other.steps[1]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], ValueError), outcomes
    assert f"step {tampered.steps[1].step_id} at position 1 is not a stored step" in str(
        outcomes[0]
    )
    assert outcomes[1] is None
    loaded = await store.load(other.transaction_id)
    assert loaded is not None and loaded.steps[1].status is StepStatus.RUNNING


async def test_an_appended_step_whose_position_another_step_holds_is_refused(
    store: SqliteStore, raw: Any
) -> None:
    """A step appended since the acquire finds its position taken by another step (one
    written behind the store's back): its record is refused, and neither the step nor
    its agent is written."""
    tx = make_tx(steps=1, state=ACTIVE)
    lease = await store.acquire(tx, "me", LIVE, [PENDING])
    late = TransactionStep.new("agent-late", "late", {})
    tx.steps.append(late)
    raw().execute(
        "INSERT INTO steps (tx, position, step_id, body) SELECT id, 1, 'intruder', '{}' "
        "FROM transactions WHERE transaction_id = ?",
        (tx.transaction_id,),
    )
    late.status = StepStatus.RUNNING
    with pytest.raises(ValueError, match=f"step {late.step_id} at position 1 is not a stored"):
        await store.record(lease, tx, late)
    assert await store.list(agent_id="agent-late") == []
    (body,) = raw().execute("SELECT body FROM steps WHERE step_id = 'intruder'").fetchone()
    assert body == "{}"


def test_no_pickle_anywhere() -> None:
    package = Path(aumai_transactions.__file__).parent
    for source in package.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        assert "import pickle" not in text and "pickle." not in text, source
        assert "marshal" not in text and "shelve" not in text, source


async def test_rows_hold_plain_json(store: SqliteStore, raw: Any) -> None:
    async def ok(action: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"receipt": [1, 2.5, "ü"]}

    manager = TransactionManager({"a": ok}, store=store)
    tx = manager.begin()
    manager.add_step(tx, "x", "a", {"amount": 12.5, "tags": ["a", "b"]})
    await manager.commit(tx)
    for (body,) in raw().execute("SELECT body FROM steps"):
        decoded = json.loads(body)
        assert decoded["data"] == {"amount": 12.5, "tags": ["a", "b"]}
        assert decoded["result"] == {"receipt": [1, 2.5, "ü"]}
    types = raw().execute("SELECT DISTINCT typeof(body) FROM steps").fetchall()
    assert types == [("text",)]


def test_steps_are_written_without_none_fields_only_when_that_round_trips() -> None:
    from pydantic import BaseModel

    from aumai_transactions.models import TransactionStep
    from aumai_transactions.stores._codec import _none_means_default

    class Safe(BaseModel):
        note: str | None = None
        count: int = 3
        # The shape of the step's newer fields (interrupted, recorded_only, group, live).
        flag: bool = False
        group: str | None = None

    class Unsafe(BaseModel):
        limit: int | None = 5  # None here means "no limit", not "the default"

    assert _none_means_default(Safe)
    assert not _none_means_default(Unsafe)
    assert _none_means_default(TransactionStep)


async def test_a_store_opens_while_another_connection_writes_to_the_same_file(
    tmp_path: Path,
) -> None:
    # Entering WAL mode answers "locked" at once, without SQLite's busy handler, while
    # another connection writes: opening must wait for it like any other write does.
    from aumai_transactions import TransactionManager
    from aumai_transactions.stores.sqlite import SqliteStore

    async def noop(action: str, data: dict[str, Any]) -> None:
        return None

    manager = TransactionManager({"a": noop}, store=f"sqlite:///{tmp_path / 'j.db'}")
    await manager.open()
    done = anyio.Event()

    async def write() -> None:
        while not done.is_set():
            tx = manager.begin()
            for _ in range(3):
                manager.add_step(tx, "x", "a")
            await manager.commit(tx)

    async def open_many() -> None:
        try:
            for _ in range(30):
                store = SqliteStore(tmp_path / "j.db")
                await store.open()
                await store.close()
        finally:
            done.set()

    try:
        async with anyio.create_task_group() as tasks:
            for _ in range(6):
                tasks.start_soon(write)
            tasks.start_soon(open_many)
    finally:
        await manager.close()
