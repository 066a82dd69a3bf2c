"""PostgresStore records: a header is sent only when it changed, fencing stays exact.

A record whose header is the one committed under its lease leaves the transaction row
as it is (the batch only checks the lease under a row lock): these tests see that
through the row's ``xmin`` (a new row version has a new one) and through a header
changed behind the store's back, and check that a header whose write failed is sent
again, that a stale record is refused with or without a header, and that the newest
header wins across lazy records. Staleness comes from rewriting ``lease_expires_at``
in the database, never from sleeping.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aumai_transactions.errors import LeaseLostError, StoreError
from aumai_transactions.models import StepStatus, TransactionState
from aumai_transactions.stores._headers import raw_header
from aumai_transactions.stores.postgres import PostgresStore

from .test_postgres import ACTIVE, db, expire, make_tx, pg, pg_url, refuse, schema, sql, start

__all__ = ["db", "pg", "pg_url", "schema"]  # the fixtures this module uses

COMMITTED = TransactionState.COMMITTED


async def row_version(db: Any, store: PostgresStore, tid: str) -> str:
    """The transaction row's ``xmin``: it changes with every new version of the row."""
    rows = await sql(
        db, f"SELECT xmin::text FROM {store.schema}.transactions WHERE transaction_id = %s", tid
    )
    return str(rows[0][0])


# ---------------------------------------------------------------------- no server needed


def test_a_batch_keeps_the_header_a_later_record_of_the_same_lease_does_not_resend() -> None:
    from aumai_transactions.stores._postgres_writer import Op, _Batch

    changed = Op(
        kind="record", tid="t1", epoch=1, owner="a", state="active", attempts=0, header="{}"
    )
    same = Op(kind="record", tid="t1", epoch=1, owner="a", state="active")
    other = Op(kind="record", tid="t2", epoch=1, owner="a", state="active")
    batch = json.loads(_Batch([changed, same, other]).params["batch"])
    assert [(r["tid"], r["header"], r["state"]) for r in batch["r"]] == [("t1", {}, "active")]
    assert batch["k"] == [{"tid": "t2", "epoch": 1, "owner": "a"}]


def test_a_terminal_record_without_a_header_still_ends_the_lease() -> None:
    from aumai_transactions.stores._postgres_writer import Op, _Batch

    ended = Op(kind="record", tid="t1", epoch=1, owner="a", state="committed")
    batch = json.loads(_Batch([ended]).params["batch"])
    assert batch["k"] == [] and [r["release"] for r in batch["r"]] == [True]


def test_a_step_appended_in_a_batch_stays_an_insert_when_rewritten_in_it() -> None:
    from aumai_transactions.stores._postgres_writer import Op, _Batch

    row = ("s1", 3, "agent", '{"n":1}')
    appended = Op(kind="record", tid="t1", epoch=1, owner="a", steps=[row], appends=True)
    rewritten = Op(kind="record", tid="t1", epoch=1, owner="a", steps=[(*row[:3], '{"n":2}')])
    known = Op(kind="record", tid="t2", epoch=1, owner="a", steps=[row])
    batch = json.loads(_Batch([appended, rewritten, known]).params["batch"])
    assert [(s["tid"], s["position"], s["doc"]) for s in batch["rs"]] == [("t1", 3, {"n": 2})]
    assert batch["ru"] == [{"tid": "t2", "step_id": "s1", "doc": {"n": 1}}]


# ---------------------------------------------------------------------- against a server

needs_server = pytest.mark.postgres


@needs_server
async def test_a_record_that_changes_no_header_leaves_the_row_as_it_is(
    pg: PostgresStore, db: Any
) -> None:
    tx = make_tx()
    lease = await start(pg, tx)
    tid = tx.transaction_id
    before = await row_version(db, pg, tid)
    tx.steps[0].status = StepStatus.RUNNING
    await pg.record(lease, tx, tx.steps[0])
    tx.steps[0].status = StepStatus.COMPLETED
    await pg.record(lease, tx, tx.steps[0], durable=False)
    loaded = await pg.load(tid)  # the lazy record is written before reading
    assert loaded is not None and loaded.steps[0].status is StepStatus.COMPLETED
    assert await row_version(db, pg, tid) == before
    tx.error = "changed"
    await pg.record(lease, tx)
    assert await row_version(db, pg, tid) != before
    loaded = await pg.load(tid)
    assert loaded is not None and loaded.error == "changed"


@needs_server
async def test_a_claimed_transaction_s_header_counts_as_written(pg: PostgresStore, db: Any) -> None:
    tx = make_tx()
    await start(pg, tx, owner="dead")
    await expire(db, pg.schema, tx.transaction_id)
    [(claimed, lease)] = await pg.claim_expired("recoverer", 30, 10)
    # Changed behind the store's back: a record that changes no header keeps it.
    await sql(
        db,
        f"""UPDATE {pg.schema}.transactions SET header = header || '{{"error": "seen"}}'
        WHERE transaction_id = %s""",
        tx.transaction_id,
    )
    claimed.steps[0].status = StepStatus.COMPENSATED
    await pg.record(lease, claimed, claimed.steps[0])
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and loaded.error == "seen"
    assert loaded.steps[0].status is StepStatus.COMPENSATED
    assert loaded.recovery_attempts == claimed.recovery_attempts == 1


@needs_server
async def test_a_header_whose_durable_write_failed_is_sent_again(
    pg: PostgresStore, db: Any
) -> None:
    tx = make_tx()
    lease = await start(pg, tx)
    await refuse(db, pg.schema, "UPDATE", "transactions")
    tx.error = "changed"
    with pytest.raises(StoreError, match="refused by the test"):
        await pg.record(lease, tx)
    await sql(db, f"DROP TRIGGER refuse ON {pg.schema}.transactions")
    tx.steps[0].status = StepStatus.RUNNING
    await pg.record(lease, tx, tx.steps[0])  # the header it failed to write, again
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and loaded.error == "changed"
    assert loaded.steps[0].status is StepStatus.RUNNING


@needs_server
async def test_a_header_committed_by_a_durable_record_is_not_sent_again(pg: PostgresStore) -> None:
    # The writer confirms the header of a durable record once it is written: the next
    # record with the same header only checks the lease.
    tx = make_tx()
    lease = await start(pg, tx)
    tx.error = "changed"
    await pg.record(lease, tx)
    assert pg._headers.unchanged(tx.transaction_id, lease.epoch, raw_header(tx)) == "active"


@needs_server
async def test_records_between_header_changes_keep_the_newest_header(pg: PostgresStore) -> None:
    tx = make_tx()
    lease = await start(pg, tx)
    tx.steps[0].status = StepStatus.RUNNING
    await pg.record(lease, tx, tx.steps[0])  # the acquire's header: none sent
    tx.error = "lazily"
    tx.steps[0].status = StepStatus.COMPLETED
    await pg.record(lease, tx, tx.steps[0], durable=False)
    tx.steps[1].status = StepStatus.RUNNING
    await pg.record(lease, tx, tx.steps[1])  # the lazy record's header, sent again
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and loaded.error == "lazily"
    assert [s.status for s in loaded.steps[:2]] == [StepStatus.COMPLETED, StepStatus.RUNNING]
    tx.state = COMMITTED
    await pg.record(lease, tx)
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and loaded.state is COMMITTED and loaded.error == "lazily"


@needs_server
async def test_a_header_changed_back_after_a_lazy_record_is_sent(pg: PostgresStore) -> None:
    # The lazy record's header is not known to be committed, nor is the acquire's any
    # longer the stored one: going back to the acquire's header must still send it.
    tx = make_tx()
    lease = await start(pg, tx)
    tx.error = "for a moment"
    await pg.record(lease, tx, durable=False)
    tx.error = None
    await pg.record(lease, tx)
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and loaded.error is None


@needs_server
async def test_a_stale_record_without_a_header_is_refused(pg: PostgresStore, db: Any) -> None:
    tx = make_tx()
    old = await start(pg, tx, owner="paused")
    tx.steps[0].status = StepStatus.RUNNING
    await pg.record(old, tx, tx.steps[0])  # its header is committed: the next sends none
    # Another process's claim (this store would note the new lease's header itself).
    await sql(
        db,
        f"""UPDATE {pg.schema}.transactions SET lease_owner = 'successor',
        lease_epoch = lease_epoch + 1, lease_expires_at = now() + interval '30 seconds'
        WHERE transaction_id = %s""",
        tx.transaction_id,
    )
    tx.steps[0].status = StepStatus.COMPLETED
    with pytest.raises(LeaseLostError, match="stale"):
        await pg.record(old, tx, tx.steps[0])
    tx.steps[1].status = StepStatus.RUNNING
    await pg.record(old, tx, tx.steps[1], durable=False)  # accepted, queued, refused
    with pytest.raises(LeaseLostError, match="stale"):
        await pg.record(old, tx)
    loaded = await pg.load(tx.transaction_id)
    assert loaded is not None and loaded.state is ACTIVE
    assert [s.status for s in loaded.steps[:2]] == [StepStatus.RUNNING, StepStatus.PENDING]
