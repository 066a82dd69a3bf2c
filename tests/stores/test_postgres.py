"""PostgresStore: what only the PostgreSQL backend has to prove.

The shared conformance suite (test_conformance.py) runs the Store contract over every
backend; this file covers the rest: construction without I/O, URL handling and
password masking, migrations under an advisory lock, schema versions, fencing by
epoch in SQL, SKIP LOCKED claims across stores, tampered rows, error translation,
group commit, and the engine driving and recovering through the real server.
Staleness is produced by rewriting ``lease_expires_at`` in the database, never by
sleeping.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest

from aumai_transactions import TransactionManager
from aumai_transactions.errors import (
    CorruptRecordError,
    LeaseConflictError,
    LeaseLostError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
)
from aumai_transactions.models import StepStatus, Transaction, TransactionState, TransactionStep
from aumai_transactions.stores import Lease, open_store
from aumai_transactions.stores.postgres import PostgresStore

from .conftest import postgres_url
from .test_conformance import drive_a_parallel_group

ACTIVE = TransactionState.ACTIVE
PENDING = TransactionState.PENDING


def new_schema() -> str:
    return f"aumai_test_{uuid.uuid4().hex[:12]}"


def make_tx(steps: int = 3, agent: str = "agent-a", **fields: Any) -> Transaction:
    """A pending transaction with ``steps`` steps, built like the manager builds them."""
    manager = TransactionManager()
    tx = manager.begin()
    for index in range(steps):
        manager.add_step(tx, agent, f"act{index}", {"n": index, "text": "é€"}, f"undo{index}")
    for key, value in fields.items():
        setattr(tx, key, value)
    return tx


@pytest.fixture
def pg_url() -> str:
    return postgres_url()


@pytest.fixture
def schema() -> str:
    return new_schema()


@pytest.fixture
async def pg(pg_url: str, schema: str) -> AsyncIterator[PostgresStore]:
    """An opened store on a fresh schema, dropped afterwards."""
    store = PostgresStore(pg_url, schema=schema, drop_schema_on_close=True)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Any]:
    """A plain autocommit connection, to inspect and tamper with rows."""
    conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


async def sql(db: Any, query: str, *params: Any) -> list[tuple[Any, ...]]:
    cur = await db.execute(query, params or None)
    return await cur.fetchall() if cur.description else []


async def expire(db: Any, schema: str, transaction_id: str | None = None) -> None:
    """Make leases look abandoned, by the database clock (no sleeping)."""
    where = "" if transaction_id is None else " WHERE transaction_id = %s"
    params = () if transaction_id is None else (transaction_id,)
    await sql(
        db,
        f"UPDATE {schema}.transactions SET lease_expires_at = now() - interval '1 second'" + where,
        *params,
    )


async def refuse(db: Any, schema: str, event: str, table: str) -> None:
    """Make every ``event`` (INSERT, UPDATE) on ``table`` fail with 'refused by the
    test', until the trigger ``refuse`` on it is dropped."""
    await sql(
        db,
        f"""CREATE OR REPLACE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$""",
    )
    await sql(
        db,
        f"CREATE TRIGGER refuse BEFORE {event} ON {schema}.{table} "
        f"FOR EACH ROW EXECUTE FUNCTION {schema}.refuse()",
    )


async def start(
    store: PostgresStore, tx: Transaction, owner: str = "w1", ttl: float = 30.0
) -> Lease:
    """Acquire ``tx`` the way the engine's commit does (pending -> active)."""
    tx.state = ACTIVE
    return await store.acquire(tx, owner, ttl, (PENDING,))


# ---------------------------------------------------------------------- no server needed


def test_constructor_does_no_io_and_masks_the_password() -> None:
    store = PostgresStore("postgresql://bob:s3cret@203.0.113.1:1/db", schema="x_1")
    assert store.url == "postgresql://bob:***@203.0.113.1:1/db"
    assert "s3cret" not in repr(store)
    assert store.durable is True
    kv = PostgresStore("host=203.0.113.1 user=bob password=s3cret dbname=db")
    assert "s3cret" not in kv.url and "***" in kv.url


@pytest.mark.parametrize(
    "name", ["", "Upper", "1abc", "a-b", "a b", 'x"; DROP TABLE t; --', "a" * 64, "é"]
)
def test_schema_must_be_a_plain_identifier(name: str) -> None:
    with pytest.raises(ValueError, match="schema must be a lower-case identifier"):
        PostgresStore("postgresql://localhost/db", schema=name)


def test_bad_options_are_refused_with_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="min_size"):
        PostgresStore("postgresql://localhost/db", min_size=0)
    with pytest.raises(ValueError, match="max_size"):
        PostgresStore("postgresql://localhost/db", min_size=4, max_size=2)
    with pytest.raises(ValueError, match="connect_timeout"):
        PostgresStore("postgresql://localhost/db", connect_timeout=0)
    with pytest.raises(ValueError, match="Invalid PostgreSQL connection string"):
        PostgresStore("host=localhost password=s3cret = broken")
    with pytest.raises(TypeError):
        PostgresStore(42)  # type: ignore[arg-type]


def test_from_url_takes_store_options_from_the_query() -> None:
    store = PostgresStore.from_url(
        "postgresql://u:pw@localhost:5432/db?schema=tenant_7&max_size=3&sslmode=disable"
    )
    assert store.schema == "tenant_7"
    assert store.url == "postgresql://u:***@localhost:5432/db?sslmode=disable"
    assert PostgresStore.from_url("postgresql://localhost/db?schema=a", schema="b").schema == "b"
    with pytest.raises(ValueError, match="max_size"):
        PostgresStore.from_url("postgresql://localhost/db?max_size=lots")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_dispatches_postgres_urls(scheme: str) -> None:
    store = open_store(f"{scheme}://localhost/db?schema=via_url")
    assert isinstance(store, PostgresStore)
    assert store.schema == "via_url"


def test_import_without_psycopg_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "try:\n"
        "    import aumai_transactions.stores.postgres\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert 'pip install -e ".[postgres]"' in out


async def test_unreachable_server_is_store_unavailable_with_the_password_masked() -> None:
    # Port 1 on localhost refuses at once: no waiting for a timeout.
    store = PostgresStore(
        "postgresql://bob:s3cret@127.0.0.1:1/db", schema="nowhere", connect_timeout=2
    )
    with pytest.raises(StoreUnavailableError) as info:
        await store.open()
    message = str(info.value)
    assert "s3cret" not in message
    assert "postgresql://bob:***@127.0.0.1:1/db" in message
    with pytest.raises(StoreError, match="is not open"):
        await store.load("x")


async def test_using_an_unopened_store_says_how_to_open_it() -> None:
    store = PostgresStore("postgresql://localhost/db")
    with pytest.raises(StoreError, match="async with store"):
        await store.record(None, make_tx())  # type: ignore[arg-type]
    await store.close()  # closing an unopened store is a no-op


def test_a_batch_never_touches_one_transaction_under_two_leases() -> None:
    from collections import deque

    from aumai_transactions.stores._postgres_writer import Op, take_batch

    def rec(tid: str, epoch: int = 1, owner: str = "a", kind: str = "record") -> Op:
        return Op(kind=kind, tid=tid, epoch=epoch, owner=owner)  # type: ignore[arg-type]

    queue = deque(
        [rec("t1"), rec("t2"), rec("t1"), rec("t1", kind="release"), rec("t1", kind="acquire")]
    )
    assert [op.kind for op in take_batch(queue)] == ["record", "record", "record", "release"]
    assert [op.kind for op in take_batch(queue)] == ["acquire"]
    queue.extend([rec("t1"), rec("t1", epoch=2), rec("t1", owner="b")])
    assert len(take_batch(queue)) == 1
    assert len(take_batch(queue)) == 1
    assert len(take_batch(queue)) == 1
    queue.extend(rec(f"t{i}") for i in range(10))
    assert len(take_batch(queue, limit=4)) == 4
    assert all(op.taken for op in take_batch(queue))


@pytest.mark.parametrize("value", ["abc-123", 'say "hi"', "back\\slash", "é€", "a\nb", "\x7f", ""])
def test_batch_documents_quote_every_string_as_json(value: str) -> None:
    import json

    from aumai_transactions.stores._postgres_writer import _dumps

    assert json.loads(_dumps(value)) == value


# ---------------------------------------------------------------------- schema

needs_server = pytest.mark.postgres


@needs_server
async def test_open_creates_the_schema_at_the_current_version(pg: PostgresStore, db: Any) -> None:
    rows = await sql(db, f"SELECT version FROM {pg.schema}.schema_migrations")
    assert rows == [(1,)]
    tables = await sql(
        db,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "ORDER BY table_name",
        pg.schema,
    )
    assert [t for (t,) in tables] == ["schema_migrations", "steps", "transactions"]


@needs_server
async def test_open_and_close_are_idempotent_and_concurrent_opens_share_one(
    pg_url: str, schema: str
) -> None:
    store = PostgresStore(pg_url, schema=schema, drop_schema_on_close=True)
    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(store.open)
    await store.open()
    assert await store.load("missing") is None
    await store.close()
    await store.close()


@needs_server
async def test_many_workers_migrating_at_once_are_serialized(
    pg_url: str, schema: str, db: Any
) -> None:
    stores = [PostgresStore(pg_url, schema=schema, min_size=1, max_size=1) for _ in range(8)]
    try:
        async with anyio.create_task_group() as group:
            for store in stores:
                group.start_soon(store.open)
        rows = await sql(db, f"SELECT version FROM {schema}.schema_migrations")
        assert rows == [(1,)]
    finally:
        for store in stores:
            await store.close()
        await sql(db, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@needs_server
async def test_a_newer_schema_version_is_refused_and_left_untouched(
    pg: PostgresStore, pg_url: str, db: Any
) -> None:
    tx = make_tx()
    await pg.save(tx)
    await sql(
        db,
        f"INSERT INTO {pg.schema}.schema_migrations (version, description) VALUES (99, 'future')",
    )
    other = PostgresStore(pg_url, schema=pg.schema)
    with pytest.raises(SchemaVersionError, match="version 99"):
        await other.open()
    assert (await pg.load(tx.transaction_id)) == tx
    assert await sql(db, f"SELECT count(*) FROM {pg.schema}.schema_migrations") == [(2,)]


@needs_server
async def test_errors_from_the_server_become_store_errors(pg: PostgresStore, db: Any) -> None:
    await sql(db, f"DROP TABLE {pg.schema}.steps CASCADE")
    with pytest.raises(StoreError, match="could not read it") as info:
        await pg.load("x")
    assert isinstance(info.value.__cause__, psycopg.Error)


@needs_server
async def test_a_lost_connection_fails_the_write_in_flight_and_the_next_one_reconnects(
    pg_url: str, schema: str, db: Any
) -> None:
    name = f"aumai-test-{uuid.uuid4().hex[:8]}"
    async with PostgresStore(
        pg_url, schema=schema, application_name=name, drop_schema_on_close=True
    ) as store:
        tx = make_tx()
        lease = await start(store, tx)
        await sql(
            db,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            name,
        )
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            await store.record(lease, tx)
        await store.record(lease, tx)  # the pool replaced the dead connection
        assert await store.load(tx.transaction_id) == tx


# ---------------------------------------------------------------------- save / load


@needs_server
async def test_save_and_load_round_trip_every_field(pg: PostgresStore) -> None:
    tx = make_tx(error="boom", blocked_reason="why", recovery_attempts=2, timeout_seconds=None)
    step = tx.steps[1]
    step.status = StepStatus.COMPLETED
    step.result = {"id": 7, "nested": [1, 2.5, None, True, "ü"]}
    step.attempts = 3
    step.started_at = step.finished_at = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    step.recovery = "resume"
    await pg.save(tx)
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and loaded is not tx
    assert loaded.model_dump(mode="json") == tx.model_dump(mode="json")
    assert loaded.created_at.tzinfo is not None
    assert await pg.load("no-such-id") is None


@needs_server
async def test_save_replaces_the_stored_copy_and_its_steps(pg: PostgresStore) -> None:
    tx = make_tx(steps=3)
    await pg.save(tx)
    tx.steps = tx.steps[:1]
    tx.error = "changed"
    await pg.save(tx)
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and len(loaded.steps) == 1 and loaded.error == "changed"


@needs_server
async def test_save_refuses_a_transaction_driven_under_a_live_lease(
    pg: PostgresStore, db: Any
) -> None:
    tx = make_tx()
    await start(pg, tx, owner="driver-1")
    with pytest.raises(LeaseConflictError, match="driver-1"):
        await pg.save(tx)
    await expire(db, pg.schema, tx.transaction_id)
    await pg.save(tx)  # an abandoned copy may be replaced


@needs_server
async def test_duplicate_step_ids_are_refused_before_writing(pg: PostgresStore) -> None:
    tx = make_tx(steps=2)
    tx.steps[1].step_id = tx.steps[0].step_id
    with pytest.raises(ValueError, match="same step_id"):
        await pg.save(tx)
    assert await pg.load(tx.transaction_id) is None


# ---------------------------------------------------------------------- leases


@needs_server
async def test_acquire_takes_the_lease_by_the_database_clock(pg: PostgresStore, db: Any) -> None:
    tx = make_tx()
    lease = await start(pg, tx, owner="w1", ttl=60)
    assert lease.epoch == 1 and lease.owner == "w1"
    [(expires, now)] = await sql(
        db,
        f"SELECT lease_expires_at, now() FROM {pg.schema}.transactions WHERE transaction_id=%s",
        tx.transaction_id,
    )
    assert expires == lease.expires_at
    assert timedelta(seconds=55) < expires - now <= timedelta(seconds=61)


@needs_server
async def test_acquire_conflicts_on_a_live_lease_or_an_unexpected_state(
    pg: PostgresStore, db: Any
) -> None:
    tx = make_tx()
    await start(pg, tx, owner="w1")
    with pytest.raises(LeaseConflictError, match="being driven by w1"):
        await pg.acquire(tx, "w2", 30, (ACTIVE,))
    await expire(db, pg.schema, tx.transaction_id)
    with pytest.raises(LeaseConflictError, match="stored in state 'active'; expected 'pending'"):
        await pg.acquire(tx, "w2", 30, (PENDING,))
    lease = await pg.acquire(tx, "w2", 30, (ACTIVE,))
    assert lease.epoch == 2


@needs_server
async def test_acquire_writes_the_whole_transaction(pg: PostgresStore) -> None:
    tx = make_tx(steps=3)
    await pg.save(tx)
    tx.steps.pop()
    tx.steps[0].data = {"changed": True}
    await start(pg, tx)
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None
    assert [s.step_id for s in loaded.steps] == [s.step_id for s in tx.steps]
    assert loaded.steps[0].data == {"changed": True}
    assert loaded.state is ACTIVE


@needs_server
async def test_release_keeps_the_epoch_growing(pg: PostgresStore) -> None:
    tx = make_tx()
    first = await start(pg, tx)
    await pg.release(first)
    second = await pg.acquire(tx, "w2", 30, (ACTIVE,))
    assert second.epoch == first.epoch + 1
    await pg.release(first)  # a stale release changes nothing
    with pytest.raises(LeaseConflictError):
        await pg.acquire(tx, "w3", 30, (ACTIVE,))


@needs_server
async def test_a_terminal_record_ends_the_lease(pg: PostgresStore) -> None:
    tx = make_tx()
    lease = await start(pg, tx, owner="driver")
    tx.state = TransactionState.COMMITTED
    await pg.record(lease, tx)
    before = pg.stats
    await pg.release(lease)  # nothing left to do: no round trip
    assert pg.stats == before
    rollback = await pg.acquire(tx, "rollbacker", 30, (TransactionState.COMMITTED,))
    assert rollback.epoch == lease.epoch + 1


@needs_server
async def test_fencing_checks_the_owner_as_well_as_the_epoch(pg: PostgresStore, db: Any) -> None:
    # An acquire commits without waiting for its WAL flush; if the server crashes
    # before the flush, another owner may be handed the same epoch. Simulate that.
    tx = make_tx()
    lease = await start(pg, tx, owner="lost-in-crash")
    await sql(
        db,
        f"UPDATE {pg.schema}.transactions SET lease_owner = 'successor' WHERE transaction_id = %s",
        tx.transaction_id,
    )
    with pytest.raises(LeaseLostError):
        await pg.record(lease, tx)


@needs_server
async def test_only_durable_writes_wait_for_the_wal_flush(pg: PostgresStore) -> None:
    tx = make_tx()
    before = pg.stats
    lease = await start(pg, tx)
    await pg.release(lease)
    await pg.renew("w1", 30)
    middle = pg.stats
    assert middle["batches"] == before["batches"] + 2  # acquire, release; renew is apart
    assert middle["durable_batches"] == before["durable_batches"]
    await pg.record(await pg.acquire(tx, "w2", 30, (ACTIVE,)), tx)
    assert pg.stats["durable_batches"] == middle["durable_batches"] + 1


@needs_server
async def test_an_acquire_carrying_a_running_step_waits_for_the_wal_flush(
    pg: PostgresStore,
) -> None:
    assert pg.acquire_carries_intent
    tx = make_tx()
    tx.steps[0].status = StepStatus.RUNNING  # its intent rides with the lease
    before = pg.stats
    await start(pg, tx)
    assert pg.stats["durable_batches"] == before["durable_batches"] + 1


@needs_server
async def test_record_writes_the_header_and_the_step(pg: PostgresStore) -> None:
    tx = make_tx()
    lease = await start(pg, tx)
    step = tx.steps[1]
    step.status = StepStatus.RUNNING
    step.attempts = 1
    tx.error = "header changed"
    await pg.record(lease, tx, step)
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None
    assert loaded.steps[1].status is StepStatus.RUNNING and loaded.steps[1].attempts == 1
    assert loaded.steps[0].status is StepStatus.PENDING
    assert loaded.error == "header changed"


@needs_server
async def test_a_stale_epoch_cannot_write(pg: PostgresStore, db: Any) -> None:
    tx = make_tx()
    old = await start(pg, tx, owner="paused")
    await expire(db, pg.schema, tx.transaction_id)
    new = await pg.acquire(tx.model_copy(deep=True), "successor", 30, (ACTIVE,))
    assert new.epoch == old.epoch + 1
    tx.state = TransactionState.COMMITTED
    tx.steps[0].status = StepStatus.COMPLETED
    with pytest.raises(LeaseLostError, match="stale"):
        await pg.record(old, tx, tx.steps[0])
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None
    assert loaded.state is ACTIVE and loaded.steps[0].status is StepStatus.PENDING


@needs_server
async def test_a_stale_non_durable_write_is_dropped_and_the_next_one_raises(
    pg: PostgresStore, db: Any
) -> None:
    tx = make_tx()
    old = await start(pg, tx, owner="paused")
    await expire(db, pg.schema, tx.transaction_id)
    await pg.acquire(tx.model_copy(deep=True), "successor", 30, (ACTIVE,))
    tx.steps[0].status = StepStatus.COMPLETED
    await pg.record(old, tx, tx.steps[0], durable=False)  # accepted, queued
    loaded = await pg.load(tx.transaction_id)  # the queue is written before reading
    assert loaded is not None and loaded.steps[0].status is StepStatus.PENDING
    with pytest.raises(LeaseLostError):
        await pg.record(old, tx)


@needs_server
async def test_appended_steps_lost_in_a_failed_batch_poison_their_lease(
    pg: PostgresStore, db: Any
) -> None:
    # A parallel group's first record inserts its steps; if that batch fails, a
    # sibling's next record must not insert its own row alone: the gap left where the
    # others should be would make the transaction unloadable.
    tx = make_tx(steps=1)
    lease = await start(pg, tx)
    await refuse(db, pg.schema, "INSERT", "steps")
    group = [TransactionStep.new("agent", f"act-{index}", {}) for index in range(2)]
    tx.steps.extend(group)
    group[1].status = StepStatus.RUNNING
    with pytest.raises(StoreError, match="refused by the test"):
        await pg.record(lease, tx, group[1])
    await sql(db, f"DROP TRIGGER refuse ON {pg.schema}.steps")
    group[0].status = StepStatus.RUNNING
    with pytest.raises(StoreError, match="refused by the test"):
        await pg.record(lease, tx, group[0])
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and len(loaded.steps) == 1


@needs_server
async def test_a_non_durable_write_is_visible_to_the_next_read(pg: PostgresStore) -> None:
    tx = make_tx()
    lease = await start(pg, tx)
    tx.steps[0].status = StepStatus.COMPLETED
    await pg.record(lease, tx, tx.steps[0], durable=False)
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and loaded.steps[0].status is StepStatus.COMPLETED


@needs_server
async def test_a_non_durable_write_survives_close(pg_url: str, schema: str) -> None:
    tx = make_tx()
    async with PostgresStore(pg_url, schema=schema) as first:
        lease = await start(first, tx)
        tx.steps[0].status = StepStatus.COMPLETED
        await first.record(lease, tx, tx.steps[0], durable=False)
    async with PostgresStore(pg_url, schema=schema, drop_schema_on_close=True) as second:
        loaded = await second.load(tx.transaction_id)
        assert loaded is not None and loaded.steps[0].status is StepStatus.COMPLETED


@needs_server
async def test_renew_pushes_only_the_owners_in_flight_leases(pg: PostgresStore, db: Any) -> None:
    mine = [make_tx() for _ in range(3)]
    for tx in mine:
        await start(pg, tx, owner="me", ttl=5)
    theirs = make_tx()
    await start(pg, theirs, owner="them", ttl=5)
    finished = make_tx()
    done_lease = await start(pg, finished, owner="me", ttl=5)
    finished.state = TransactionState.COMMITTED
    await pg.record(done_lease, finished)
    assert await pg.renew("me", 600) == 3
    rows = dict(
        await sql(
            db,
            "SELECT transaction_id, nullif(lease_expires_at, '-infinity') - now()"
            f" FROM {pg.schema}.transactions",
        )
    )
    assert all(rows[tx.transaction_id] > timedelta(seconds=500) for tx in mine)
    assert rows[theirs.transaction_id] < timedelta(seconds=6)
    assert rows[finished.transaction_id] is None  # its terminal record ended the lease
    assert await pg.renew("nobody", 600) == 0


# ---------------------------------------------------------------------- claims


@needs_server
async def test_claim_takes_only_expired_in_flight_transactions(pg: PostgresStore, db: Any) -> None:
    live, expired, pending = make_tx(), make_tx(), make_tx()
    await start(pg, live, owner="alive")
    first = await start(pg, expired, owner="dead")
    await pg.save(pending)
    await expire(db, pg.schema, expired.transaction_id)
    claimed = await pg.claim_expired("recoverer", 30, 10)
    assert [tx.transaction_id for tx, _ in claimed] == [expired.transaction_id]
    tx, lease = claimed[0]
    assert lease.owner == "recoverer" and lease.epoch == first.epoch + 1
    assert tx.recovery_attempts == 1 and tx.state is ACTIVE
    assert await pg.claim_expired("recoverer", 30, 10) == []  # now leased again
    with pytest.raises(LeaseLostError):
        await pg.record(first, expired)


@needs_server
async def test_claim_respects_its_limit_oldest_expiry_first(pg: PostgresStore, db: Any) -> None:
    txs = [make_tx() for _ in range(5)]
    for tx in txs:
        await start(pg, tx)
    for age, tx in enumerate(txs):
        await sql(
            db,
            f"UPDATE {pg.schema}.transactions SET lease_expires_at = now() - %s * interval '1 s'"
            " WHERE transaction_id = %s",
            age + 1,
            tx.transaction_id,
        )
    claimed = await pg.claim_expired("r", 30, 2)
    assert {tx.transaction_id for tx, _ in claimed} == {
        txs[4].transaction_id,
        txs[3].transaction_id,
    }


@needs_server
async def test_concurrent_claimers_divide_the_work_without_overlap(
    pg: PostgresStore, pg_url: str, db: Any
) -> None:
    txs = [make_tx(steps=1) for _ in range(120)]
    async with anyio.create_task_group() as group:
        for tx in txs:
            group.start_soon(start, pg, tx)
    await expire(db, pg.schema)
    claims: dict[str, list[str]] = {}
    claimers = [PostgresStore(pg_url, schema=pg.schema) for _ in range(4)]

    async def claim_all(name: str, store: PostgresStore) -> None:
        async with store:
            while batch := await store.claim_expired(name, 30, 7):
                claims.setdefault(name, []).extend(tx.transaction_id for tx, _ in batch)

    async with anyio.create_task_group() as group:
        for index, store in enumerate(claimers):
            group.start_soon(claim_all, f"r{index}", store)
    everything = [tid for tids in claims.values() for tid in tids]
    assert len(everything) == len(set(everything)) == 120


@needs_server
async def test_claim_skips_rows_locked_by_a_writer(pg: PostgresStore, pg_url: str, db: Any) -> None:
    locked, free = make_tx(), make_tx()
    await start(pg, locked)
    await start(pg, free)
    await expire(db, pg.schema)
    async with await psycopg.AsyncConnection.connect(pg_url) as holder:
        await holder.execute(
            f"SELECT 1 FROM {pg.schema}.transactions WHERE transaction_id = %s FOR UPDATE",
            (locked.transaction_id,),
        )
        with anyio.fail_after(10):  # SKIP LOCKED: no waiting on the held row
            claimed = await pg.claim_expired("r", 30, 10)
        assert [tx.transaction_id for tx, _ in claimed] == [free.transaction_id]
        await holder.rollback()


# ---------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "tamper, what",
    [
        ("UPDATE {s}.transactions SET state = 'exploded'", "unknown state"),
        ("UPDATE {s}.transactions SET header = '[1, 2]'", "header is not a JSON object"),
        (
            "UPDATE {s}.transactions SET header = jsonb_set(header, '{timeout_seconds}', '\"x\"')",
            "header does not validate",
        ),
        ("UPDATE {s}.steps SET doc = jsonb_set(doc, '{status}', '\"zzz\"')", "does not validate"),
        ("UPDATE {s}.steps SET doc = jsonb_set(doc, '{data}', '\"rm -rf\"')", "does not validate"),
        ("UPDATE {s}.steps SET doc = doc - 'action'", "does not validate"),
        ("DELETE FROM {s}.steps WHERE position = 1", "missing or out of order"),
        ("UPDATE {s}.steps SET step_id = 'other' WHERE position = 0", "holds step"),
    ],
)
@needs_server
async def test_a_tampered_row_is_rejected_on_load(
    pg: PostgresStore, db: Any, tamper: str, what: str
) -> None:
    tx = make_tx()
    await pg.save(tx)
    await sql(db, tamper.replace("{s}", pg.schema))
    with pytest.raises(CorruptRecordError, match=what):
        await pg.load(tx.transaction_id)
    with pytest.raises(CorruptRecordError):
        await pg.list()


@needs_server
async def test_a_tampered_row_is_never_driven_by_recovery(
    pg: PostgresStore, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = make_tx(), make_tx()
    await start(pg, bad)
    await start(pg, good)
    await sql(
        db,
        f"UPDATE {pg.schema}.steps SET doc = '{{}}' WHERE transaction_id = %s",
        bad.transaction_id,
    )
    await expire(db, pg.schema)
    with caplog.at_level(logging.ERROR, logger="aumai_transactions"):
        claimed = await pg.claim_expired("r", 30, 10)
    assert [tx.transaction_id for tx, _ in claimed] == [good.transaction_id]
    assert bad.transaction_id in caplog.text and "corrupt" in caplog.text
    assert await pg.claim_expired("r", 30, 10) == []  # its claim holds it off until expiry


@needs_server
async def test_an_unknown_state_makes_count_by_state_fail_loudly(
    pg: PostgresStore, db: Any
) -> None:
    await pg.save(make_tx())
    await sql(db, f"UPDATE {pg.schema}.transactions SET state = 'exploded'")
    with pytest.raises(CorruptRecordError, match="exploded"):
        await pg.count_by_state()


# ---------------------------------------------------------------------- listing, deleting


@needs_server
async def test_list_filters_and_orders_newest_first(pg: PostgresStore) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    txs = []
    for index in range(6):
        tx = make_tx(steps=1, agent="even" if index % 2 == 0 else "odd")
        tx.created_at = base + timedelta(minutes=index)
        tx.state = TransactionState.COMMITTED if index < 3 else TransactionState.ROLLED_BACK
        await pg.save(tx)
        txs.append(tx)
    ids = [tx.transaction_id for tx in txs]
    assert [t.transaction_id for t in await pg.list()] == ids[::-1]
    assert [t.transaction_id for t in await pg.list(limit=2)] == ids[:3:-1]
    committed = await pg.list(state=TransactionState.COMMITTED)
    assert [t.transaction_id for t in committed] == ids[2::-1]
    assert [t.transaction_id for t in await pg.list(agent_id="odd")] == [ids[5], ids[3], ids[1]]
    window = await pg.list(since=base + timedelta(minutes=1), until=base + timedelta(minutes=3))
    assert [t.transaction_id for t in window] == [ids[2], ids[1]]
    naive = await pg.list(since=(base + timedelta(minutes=4)).replace(tzinfo=None))
    assert [t.transaction_id for t in naive] == [ids[5], ids[4]]
    both = await pg.list(state=TransactionState.ROLLED_BACK, agent_id="even", limit=5)
    assert [t.transaction_id for t in both] == [ids[4]]
    assert await pg.count_by_state() == {
        TransactionState.COMMITTED: 3,
        TransactionState.ROLLED_BACK: 3,
    }


@needs_server
async def test_delete_refuses_a_live_lease_and_cascades_to_steps(
    pg: PostgresStore, db: Any
) -> None:
    tx = make_tx()
    await start(pg, tx, owner="driver")
    with pytest.raises(LeaseConflictError, match="driver"):
        await pg.delete(tx.transaction_id)
    await expire(db, pg.schema, tx.transaction_id)
    assert await pg.delete(tx.transaction_id) is True
    assert await pg.delete(tx.transaction_id) is False
    assert await sql(db, f"SELECT count(*) FROM {pg.schema}.steps") == [(0,)]


@needs_server
async def test_purge_removes_only_old_terminal_transactions(pg: PostgresStore) -> None:
    old = datetime(2020, 1, 1, tzinfo=UTC)
    states = [TransactionState.COMMITTED, TransactionState.FAILED, ACTIVE, PENDING]
    txs = []
    for state in states:
        tx = make_tx(steps=1)
        tx.created_at, tx.state = old, state
        await pg.save(tx)
        txs.append(tx)
    recent = make_tx(steps=1, state=TransactionState.COMMITTED)
    await pg.save(recent)
    cutoff = datetime(2021, 1, 1, tzinfo=UTC)
    removed = await pg.purge(states=list(TransactionState), older_than=cutoff)
    assert removed == 2
    left = {t.transaction_id for t in await pg.list()}
    assert left == {txs[2].transaction_id, txs[3].transaction_id, recent.transaction_id}
    assert await pg.purge(states=[ACTIVE], older_than=cutoff) == 0


# ---------------------------------------------------------------------- group commit


@needs_server
async def test_concurrent_writes_share_round_trips(pg: PostgresStore) -> None:
    txs = [make_tx(steps=1) for _ in range(200)]
    leases = {}
    async with anyio.create_task_group() as group:

        async def begin(tx: Transaction) -> None:
            leases[tx.transaction_id] = await start(pg, tx)

        for tx in txs:
            group.start_soon(begin, tx)
    before = pg.stats
    async with anyio.create_task_group() as group:
        for tx in txs:
            tx.steps[0].status = StepStatus.RUNNING
            group.start_soon(pg.record, leases[tx.transaction_id], tx, tx.steps[0])
    after = pg.stats
    assert after["ops"] - before["ops"] == 200
    assert after["batches"] - before["batches"] <= 20  # 200 writes, a handful of commits
    loaded = await pg.list(limit=None)
    assert all(t.steps[0].status is StepStatus.RUNNING for t in loaded)


@needs_server
async def test_a_groups_concurrent_records_share_round_trips(pg: PostgresStore) -> None:
    before = pg.stats
    tx = await drive_a_parallel_group(pg, 50)
    after = pg.stats
    assert after["ops"] - before["ops"] == 102  # the acquire, 100 step records, the end
    assert after["durable_batches"] - before["durable_batches"] <= 3  # not one per step
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None
    assert loaded.model_dump(mode="json") == tx.model_dump(mode="json")


@needs_server
async def test_a_cancelled_waiter_does_not_lose_the_others_writes(pg: PostgresStore) -> None:
    txs = [make_tx(steps=1) for _ in range(20)]
    leases = [await start(pg, tx) for tx in txs]
    for tx in txs:
        tx.state = TransactionState.COMMITTED
    async with anyio.create_task_group() as group:
        for lease, tx in zip(leases, txs, strict=True):
            group.start_soon(pg.record, lease, tx)
        await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    counts = await pg.count_by_state()  # whatever was sent was sent whole
    assert sum(counts.values()) == 20
    for lease, tx in zip(leases, txs, strict=True):
        await pg.record(lease, tx)  # every lease still writes
    assert await pg.count_by_state() == {TransactionState.COMMITTED: 20}


@needs_server
async def test_a_cancelled_acquire_still_queued_takes_no_lease(pg: PostgresStore) -> None:
    busy, late = make_tx(), make_tx()
    lease = await start(pg, busy)
    writer = pg._writer
    assert writer is not None
    async with anyio.create_task_group() as group:
        group.start_soon(pg.record, lease, busy)
        while writer._inflight is None:  # the record's batch is in flight
            await anyio.lowlevel.checkpoint()
        with anyio.CancelScope() as scope:
            scope.cancel()
            late.state = ACTIVE
            await pg.acquire(late, "w2", 30, (PENDING,))  # queued behind it, then cancelled
    assert await pg.load(late.transaction_id) is None
    assert await pg.load(busy.transaction_id) == busy


def hold_batches(pg: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, anyio.Event]:
    """The store's writer, whose batches wait (in flight) until the event returned is set."""
    writer = pg._writer
    assert writer is not None
    gate = anyio.Event()
    execute = writer._execute_main

    async def held(batch: Any) -> Any:
        await gate.wait()
        return await execute(batch)

    monkeypatch.setattr(writer, "_execute_main", held)
    return writer, gate


@needs_server
async def test_writes_queued_behind_a_cancelled_waiter_are_still_led(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The waiter of the first op still queued is woken to lead the next batch; when it
    # was cancelled meanwhile, the waiter behind it leads instead of sleeping for ever.
    first, dropped, behind = make_tx(), make_tx(), make_tx()
    leases = [await start(pg, tx) for tx in (first, dropped, behind)]
    for tx in (first, dropped, behind):
        tx.state = TransactionState.COMMITTED
    writer, gate = hold_batches(pg, monkeypatch)
    waiting = anyio.CancelScope()

    async def record_dropped() -> None:
        with waiting:
            await pg.record(leases[1], dropped)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(pg.record, leases[0], first)
            while writer._inflight is None:  # first's batch is in flight, held
                await anyio.lowlevel.checkpoint()
            group.start_soon(record_dropped)
            await anyio.lowlevel.checkpoint()  # queued behind it, asleep
            waiting.cancel()
            await anyio.lowlevel.checkpoint()
            group.start_soon(pg.record, leases[2], behind)
            await anyio.lowlevel.checkpoint()
            gate.set()
    # The cancelled record was kept (a queued record is never withdrawn) and written.
    assert await pg.count_by_state() == {TransactionState.COMMITTED: 3}


@needs_server
async def test_a_drain_behind_a_withdrawn_acquire_returns(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader drains the queue up to its last write; when that write is an acquire its
    # caller withdraws (cancelled while queued), the drain still ends.
    busy, late = make_tx(), make_tx()
    lease = await start(pg, busy)
    writer, gate = hold_batches(pg, monkeypatch)
    acquiring = anyio.CancelScope()

    async def acquire_late() -> None:
        with acquiring:
            late.state = ACTIVE
            await pg.acquire(late, "w2", 30, (PENDING,))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(pg.record, lease, busy)
            while writer._inflight is None:  # busy's batch is in flight, held
                await anyio.lowlevel.checkpoint()
            group.start_soon(acquire_late)
            await anyio.lowlevel.checkpoint()  # the acquire is queued behind it
            group.start_soon(writer.drain)
            await anyio.lowlevel.checkpoint()  # the drain waits for the acquire
            acquiring.cancel()
            await anyio.lowlevel.checkpoint()
            gate.set()
    assert await pg.load(late.transaction_id) is None


# ---------------------------------------------------------------------- the engine on top


class Ledger:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def handler(self, action: str, data: dict[str, Any]) -> dict[str, str]:
        self.calls.append(action)
        if action == "explode":
            raise RuntimeError("exploded")
        return {"did": action}

    def handlers(self) -> dict[str, Any]:
        names = ["a", "b", "c", "explode", "undo_a", "undo_b", "undo_c"]
        return {name: self.handler for name in names}


@needs_server
async def test_manager_commits_and_rolls_back_through_postgres(pg_url: str, schema: str) -> None:
    ledger = Ledger()
    store = PostgresStore(pg_url, schema=schema, drop_schema_on_close=True)
    async with TransactionManager(ledger.handlers(), store=store) as manager:
        ok = manager.begin()
        for name in "abc":
            manager.add_step(ok, "agent", name, {"x": name}, f"undo_{name}")
        assert (await manager.commit(ok)).state is TransactionState.COMMITTED
        bad = manager.begin()
        manager.add_step(bad, "agent", "a", {}, "undo_a")
        manager.add_step(bad, "agent", "explode", {}, "undo_b")
        result = await manager.commit(bad)
        assert result.state is TransactionState.ROLLED_BACK and result.error == "exploded"
        stored = await store.load(bad.transaction_id)
        assert stored is not None and stored.state is TransactionState.ROLLED_BACK
        assert [s.status for s in stored.steps] == [StepStatus.COMPENSATED, StepStatus.FAILED]
        done = await store.load(ok.transaction_id)
        assert done is not None and done.steps[2].result == {"did": "c"}
    assert ledger.calls == ["a", "b", "c", "a", "explode", "undo_a"]


@needs_server
async def test_recovery_finishes_what_a_dead_driver_left(pg_url: str, schema: str, db: Any) -> None:
    async with PostgresStore(pg_url, schema=schema) as dead:
        tx = make_tx(steps=3)
        lease = await start(dead, tx, owner="dead-worker")
        for step in tx.steps[:2]:
            step.status, step.attempts = StepStatus.COMPLETED, 1
            await dead.record(lease, tx, step)
        tx.steps[2].status, tx.steps[2].attempts = StepStatus.RUNNING, 1
        await dead.record(lease, tx, tx.steps[2])  # the driver dies here, in doubt
    await expire(db, schema)
    ledger: list[str] = []

    def undo(action: str, data: dict[str, Any]) -> None:
        ledger.append(action)

    store = PostgresStore(pg_url, schema=schema, drop_schema_on_close=True)
    handlers = {f"{kind}{i}": undo for i in range(3) for kind in ("act", "undo")}
    async with TransactionManager(handlers, store=store) as manager:
        results = await manager.recover()
        assert [r.state for r in results] == [TransactionState.ROLLED_BACK]
        assert ledger == ["undo2", "undo1", "undo0"]
        assert await manager.recover() == []
        stored = await store.load(tx.transaction_id)
        assert stored is not None and stored.recovery_attempts == 1
        assert {s.status for s in stored.steps} == {StepStatus.COMPENSATED}


@needs_server
async def test_a_paused_driver_that_lost_its_lease_runs_nothing_more(
    pg_url: str, schema: str, db: Any
) -> None:
    entered, resume = anyio.Event(), anyio.Event()
    calls: list[str] = []

    async def slow(action: str, data: dict[str, Any]) -> None:
        calls.append(action)
        entered.set()
        await resume.wait()

    async def quick(action: str, data: dict[str, Any]) -> None:
        calls.append(action)

    handlers = {"slow": slow, "next": quick, "undo_slow": quick, "undo_next": quick}
    paused = TransactionManager(handlers, store=PostgresStore(pg_url, schema=schema))
    successor = TransactionManager(
        handlers, store=PostgresStore(pg_url, schema=schema, drop_schema_on_close=True)
    )
    async with paused, successor:
        tx = paused.begin()
        paused.add_step(tx, "agent", "slow", {}, "undo_slow")
        paused.add_step(tx, "agent", "next", {}, "undo_next")
        outcome: list[BaseException] = []

        async def drive() -> None:
            try:
                await paused.commit(tx)
            except LeaseLostError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(drive)
            await entered.wait()
            await expire(db, schema, tx.transaction_id)
            results = await successor.recover()
            assert [r.state for r in results] == [TransactionState.ROLLED_BACK]
            resume.set()
        assert len(outcome) == 1
        assert calls == ["slow", "undo_slow"]  # "next" never ran
        stored = await successor.store.load(tx.transaction_id)
        assert stored is not None and stored.state is TransactionState.ROLLED_BACK
        assert stored.steps[0].status is StepStatus.COMPENSATED
