"""The Store contract, run against every backend (memory, sqlite, postgres).

Every test here takes the ``store`` fixture (or ``store_factory`` when two stores must
share one location) from ``conftest.py``, which is parametrized over the backends; a
test never asks which backend it runs on. Expired leases are made by acquiring with a
negative time-to-live, never by sleeping.

The memory store keeps the very objects it is given, the others keep copies; the
tests hand each store call its own object (``copy``) wherever that could matter, and
compare what comes back through ``model_dump(mode="json")``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aumai_transactions import OpenTransaction, TransactionManager
from aumai_transactions.errors import LeaseConflictError, LeaseLostError, StepFailedError
from aumai_transactions.models import (
    LeaseInfo,
    LeaseSummary,
    Resolution,
    RetryPolicy,
    StepStatus,
    Transaction,
    TransactionState,
    TransactionStep,
    utcnow,
)
from aumai_transactions.stores import Lease, ListPosition, OperatorStore, RecordsNowait, Store

PENDING = TransactionState.PENDING
ACTIVE = TransactionState.ACTIVE
COMPENSATING = TransactionState.COMPENSATING
COMMITTED = TransactionState.COMMITTED
ROLLED_BACK = TransactionState.ROLLED_BACK
FAILED = TransactionState.FAILED

EXPIRED = -60.0  # a lease that was already over when it was taken
LIVE = 60.0


def make_tx(
    steps: int = 3,
    *,
    agent: str = "agent-a",
    state: TransactionState = PENDING,
    created_at: datetime | None = None,
) -> Transaction:
    """A transaction built the way the manager builds them."""
    manager = TransactionManager()
    tx = manager.begin(timeout_seconds=120)
    for index in range(steps):
        manager.add_step(tx, agent, f"act{index}", {"n": index, "text": "é€ ✓"}, f"undo{index}")
    tx.state = state
    if created_at is not None:
        tx.created_at = created_at
    return tx


def copy(tx: Transaction) -> Transaction:
    """An independent copy: what another process would hold."""
    return tx.model_copy(deep=True)


def dump(tx: Transaction | None) -> dict[str, Any] | None:
    return None if tx is None else tx.model_dump(mode="json")


async def in_flight(
    store: Store,
    *,
    owner: str = "driver-a",
    ttl: float = LIVE,
    state: TransactionState = ACTIVE,
    **make: Any,
) -> tuple[Transaction, Lease]:
    """A transaction stored in flight under a lease held by ``owner``."""
    tx = make_tx(state=state, **make)
    lease = await store.acquire(tx, owner, ttl, [PENDING])
    return tx, lease


# --------------------------------------------------------------------- basics


async def test_describes_itself(store: Store) -> None:
    assert isinstance(store, Store)
    assert isinstance(store.url, str) and "://" in store.url
    assert isinstance(store.durable, bool)


async def test_open_and_close_are_idempotent(store_factory: Callable[[], Store]) -> None:
    store = store_factory()
    await store.open()
    await store.open()
    tx = make_tx()
    await store.save(copy(tx))
    await store.close()
    await store.close()
    async with store_factory() as again:
        assert again is not None


async def test_load_of_unknown_id_is_none(store: Store) -> None:
    assert await store.load("no-such-transaction") is None


async def test_save_and_load_round_trip_every_field(store: Store) -> None:
    tx = make_tx(steps=3)
    tx.timeout_seconds = 12.5
    tx.error = "an error, kept"
    tx.blocked_reason = "blocked: no handler for 'x'"
    tx.recovery_attempts = 2
    tx.updated_at = tx.created_at + timedelta(seconds=1)
    tx.finished_at = tx.created_at + timedelta(seconds=2)
    first, second, third = tx.steps
    first.status = StepStatus.COMPENSATED
    first.attempts = 2
    first.compensation_attempts = 1
    first.result = {"id": 7, "nested": [1, 2.5, None, {"ok": True}], "text": "ünï"}
    first.started_at = tx.created_at
    first.finished_at = tx.created_at + timedelta(microseconds=1)
    first.compensated_at = tx.created_at + timedelta(milliseconds=3)
    first.retry = RetryPolicy(max_attempts=4, initial_delay=0.5, jitter=0.0)
    first.recovery = "resume"
    second.status = StepStatus.FAILED
    second.error = "boom"
    second.compensation_error = "undo failed"
    second.compensating_action = None
    third.data = {}
    await store.save(copy(tx))
    loaded = await store.load(tx.transaction_id)
    assert dump(loaded) == dump(tx)
    assert loaded is not None
    assert [s.step_id for s in loaded.steps] == [s.step_id for s in tx.steps]
    assert loaded.created_at == tx.created_at  # exact, microseconds included


async def test_a_transaction_without_steps_round_trips(store: Store) -> None:
    tx = make_tx(steps=0)
    await store.save(copy(tx))
    assert dump(await store.load(tx.transaction_id)) == dump(tx)


async def test_save_replaces_a_copy_nobody_drives(store: Store) -> None:
    tx = make_tx(steps=1)
    await store.save(copy(tx))
    tx.steps.append(TransactionStep(agent_id="agent-b", action="later"))
    tx.error = "changed"
    await store.save(copy(tx))
    loaded = await store.load(tx.transaction_id)
    assert dump(loaded) == dump(tx)
    assert [t.transaction_id for t in await store.list(agent_id="agent-b")] == [tx.transaction_id]


async def test_save_refuses_a_transaction_driven_under_a_live_lease(store: Store) -> None:
    tx, _ = await in_flight(store)
    before = dump(await store.load(tx.transaction_id))
    replacement = copy(tx)
    replacement.state = PENDING
    with pytest.raises(LeaseConflictError):
        await store.save(replacement)
    assert dump(await store.load(tx.transaction_id)) == before


# --------------------------------------------------------------------- acquire


async def test_acquire_writes_the_transaction_and_grants_a_lease(store: Store) -> None:
    tx = make_tx(state=ACTIVE)
    before = utcnow()
    lease = await store.acquire(tx, "driver-a", LIVE, [PENDING])
    assert lease.transaction_id == tx.transaction_id
    assert lease.owner == "driver-a"
    assert lease.epoch >= 1
    assert lease.expires_at >= before + timedelta(seconds=LIVE - 1)
    assert dump(await store.load(tx.transaction_id)) == dump(tx)


async def test_acquire_of_a_saved_pending_transaction(store: Store) -> None:
    tx = make_tx()
    await store.save(copy(tx))
    tx.state = ACTIVE
    await store.acquire(tx, "driver-a", LIVE, [PENDING])
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None and loaded.state is ACTIVE


async def test_acquire_refuses_an_unexpected_stored_state(store: Store) -> None:
    tx = make_tx(state=COMMITTED)
    await store.save(copy(tx))
    before = dump(await store.load(tx.transaction_id))
    driver = copy(tx)
    driver.state = ACTIVE
    with pytest.raises(LeaseConflictError):
        await store.acquire(driver, "driver-a", LIVE, [PENDING])
    assert dump(await store.load(tx.transaction_id)) == before
    lease = await store.acquire(driver, "driver-a", LIVE, [PENDING, COMMITTED])
    assert lease.owner == "driver-a"


async def test_acquire_refuses_a_live_lease_and_writes_nothing(store: Store) -> None:
    tx, first = await in_flight(store, owner="driver-a")
    before = dump(await store.load(tx.transaction_id))
    rival = copy(tx)
    rival.error = "the rival's copy"
    with pytest.raises(LeaseConflictError) as refused:
        await store.acquire(rival, "driver-b", LIVE, [PENDING, ACTIVE])
    # It says who holds it and what will happen, not "try again".
    assert "being driven by driver-a" in str(refused.value)
    assert "that worker finishes it" in str(refused.value)
    assert "try again" not in str(refused.value)
    assert dump(await store.load(tx.transaction_id)) == before
    await store.release(first)
    second = await store.acquire(rival, "driver-b", LIVE, [ACTIVE])
    assert second.epoch > first.epoch


async def test_every_new_lease_has_a_greater_epoch(store: Store) -> None:
    tx = make_tx(state=ACTIVE)
    epochs = []
    lease = await store.acquire(tx, "driver-0", EXPIRED, [PENDING])
    epochs.append(lease.epoch)
    for index in range(1, 4):  # taken over after expiry, each by a new driver
        lease = await store.acquire(copy(tx), f"driver-{index}", EXPIRED, [ACTIVE])
        epochs.append(lease.epoch)
    await store.release(lease)
    lease = await store.acquire(copy(tx), "driver-4", LIVE, [ACTIVE])
    epochs.append(lease.epoch)
    assert epochs == sorted(set(epochs))


# --------------------------------------------------------------------- record


async def test_record_writes_the_header_and_the_step(store: Store) -> None:
    tx, lease = await in_flight(store)
    step = tx.steps[1]
    step.status = StepStatus.COMPLETED
    step.attempts = 1
    step.result = {"charged": 12.5, "currency": "€"}
    step.finished_at = utcnow()
    tx.updated_at = utcnow()
    await store.record(lease, tx, step)
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None
    assert dump(loaded) == dump(tx)
    tx.state = COMMITTED
    tx.finished_at = utcnow()
    await store.record(lease, tx)
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None and loaded.state is COMMITTED
    assert loaded.finished_at == tx.finished_at


async def test_a_non_durable_record_is_kept_with_the_next_write(store: Store) -> None:
    tx, lease = await in_flight(store)
    first, second, _ = tx.steps
    first.status = StepStatus.COMPLETED
    await store.record(lease, tx, first, durable=False)
    second.status = StepStatus.RUNNING
    await store.record(lease, tx, second)
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None
    assert [s.status for s in loaded.steps] == [
        StepStatus.COMPLETED,
        StepStatus.RUNNING,
        StepStatus.PENDING,
    ]


async def _nowait(store: RecordsNowait, *args: Any, **kwargs: Any) -> None:
    """``record_nowait``, and its write awaited when there is one to wait for."""
    written = store.record_nowait(*args, **kwargs)
    if written is not None:
        await written


async def test_record_nowait_hands_records_over_in_call_order(store: Store) -> None:
    # Every built-in store has it; the engine journals through it (``RecordsNowait``).
    assert isinstance(store, RecordsNowait)
    tx, lease = await in_flight(store)
    running, completed = copy(tx), copy(tx)
    running.steps[0].status = StepStatus.RUNNING
    completed.steps[0].status = StepStatus.COMPLETED
    intent = store.record_nowait(lease, running, running.steps[0])
    # Handed over after the intent (not awaited yet: a store that wrote it already has
    # nothing to wait for), so stored after it.
    assert store.record_nowait(lease, completed, completed.steps[0], durable=False) is None
    if intent is not None:
        await intent
    await store.record(lease, completed)
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None and loaded.steps[0].status is StepStatus.COMPLETED


async def test_record_nowait_rejects_a_stale_lease_as_record_does(store: Store) -> None:
    assert isinstance(store, RecordsNowait)
    tx, stale = await in_flight(store, ttl=EXPIRED)
    await store.acquire(copy(tx), "driver-b", LIVE, [ACTIVE])
    before = dump(await store.load(tx.transaction_id))
    tx.steps[0].status = StepStatus.COMPLETED
    with pytest.raises(LeaseLostError):  # at once, or once awaited
        await _nowait(store, stale, tx, tx.steps[0])
    assert dump(await store.load(tx.transaction_id)) == before


async def test_record_nowait_writes_the_previous_step_it_carries(store: Store) -> None:
    assert isinstance(store, RecordsNowait)
    tx, lease = await in_flight(store)
    first, second, third = tx.steps
    first.status = StepStatus.RUNNING
    await _nowait(store, lease, copy(tx), first)
    # The first step's completion rides with the second's intent: one record.
    first.status, first.result = StepStatus.COMPLETED, {"id": "r-1"}
    second.status = StepStatus.RUNNING
    await _nowait(store, lease, copy(tx), tx.steps[1], previous=copy(tx).steps[0])
    assert dump(await store.load(tx.transaction_id)) == dump(tx)
    # The end carries the last completion; a step appended since the acquire too.
    second.status = StepStatus.COMPLETED
    late = append(tx, "late-agent", "book", StepStatus.COMPLETED)
    late.result = "booked"
    tx.state = COMMITTED
    held = copy(tx)
    await _nowait(store, lease, held, None, previous=held.steps[3])
    await _nowait(store, lease, held, held.steps[1], durable=False)
    await store.record(lease, held)
    loaded = await store.load(tx.transaction_id)
    assert dump(loaded) == dump(tx)
    assert loaded is not None and third.status is StepStatus.PENDING
    assert ids(await store.list(agent_id="late-agent")) == [tx.transaction_id]


async def test_record_nowait_with_a_stale_lease_writes_neither_step(store: Store) -> None:
    assert isinstance(store, RecordsNowait)
    tx, stale = await in_flight(store, ttl=EXPIRED)
    await store.acquire(copy(tx), "driver-b", LIVE, [ACTIVE])
    before = dump(await store.load(tx.transaction_id))
    tx.steps[0].status = StepStatus.COMPLETED
    tx.steps[1].status = StepStatus.RUNNING
    with pytest.raises(LeaseLostError):
        await _nowait(store, stale, tx, tx.steps[1], previous=tx.steps[0])
    assert dump(await store.load(tx.transaction_id)) == before


async def test_a_stale_record_is_rejected_and_changes_nothing(store: Store) -> None:
    tx, stale = await in_flight(store, owner="driver-a", ttl=EXPIRED)
    taker = copy(tx)
    fresh = await store.acquire(taker, "driver-b", LIVE, [ACTIVE])
    assert fresh.epoch > stale.epoch
    before = dump(await store.load(tx.transaction_id))
    tx.steps[0].status = StepStatus.COMPLETED
    tx.state = COMPENSATING
    tx.error = "written by the stale driver"
    with pytest.raises(LeaseLostError):
        # A non-durable stale write may be dropped quietly; the next write must raise.
        await store.record(stale, tx, tx.steps[0], durable=False)
        await store.record(stale, tx, tx.steps[1])
    with pytest.raises(LeaseLostError):
        await store.record(stale, tx)
    assert dump(await store.load(tx.transaction_id)) == before
    taker.steps[0].status = StepStatus.RUNNING
    await store.record(fresh, taker, taker.steps[0])
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None and loaded.steps[0].status is StepStatus.RUNNING


async def test_a_stale_record_among_concurrent_ones_does_not_break_them(store: Store) -> None:
    drivers = [await in_flight(store, owner=f"driver-{i}") for i in range(8)]
    victim, stale = await in_flight(store, owner="driver-x", ttl=EXPIRED)
    await store.acquire(copy(victim), "driver-y", LIVE, [ACTIVE])
    outcomes: dict[str, str] = {}

    async def write(tx: Transaction, lease: Lease) -> None:
        tx.steps[0].status = StepStatus.RUNNING
        tx.error = f"by {lease.owner}"
        try:
            await store.record(lease, tx, tx.steps[0])
        except LeaseLostError:
            outcomes[tx.transaction_id] = "lost"
        else:
            outcomes[tx.transaction_id] = "ok"

    async with anyio.create_task_group() as group:
        for tx, lease in [*drivers[:4], (victim, stale), *drivers[4:]]:
            group.start_soon(write, tx, lease)
    assert outcomes.pop(victim.transaction_id) == "lost"
    assert set(outcomes.values()) == {"ok"}
    for tx, lease in drivers:
        loaded = await store.load(tx.transaction_id)
        assert loaded is not None and loaded.error == f"by {lease.owner}"
    loaded = await store.load(victim.transaction_id)
    assert loaded is not None and loaded.error is None


# --------------------------------------------------------------------- appended steps
# An open transaction appends steps to a transaction that is already active and
# leased; a parallel group records several of its steps at once under one lease.


def append(
    tx: Transaction, agent: str, action: str, status: StepStatus = StepStatus.PENDING
) -> TransactionStep:
    """A step added after ``acquire``, the way the driver of an open transaction adds it."""
    step = TransactionStep.new(agent, action, {"n": len(tx.steps)}, f"un{action}")
    step.status = status
    tx.steps.append(step)
    return step


async def drive_a_parallel_group(store: Store, size: int) -> Transaction:
    """Write what a parallel group of ``size`` steps appended to a leased transaction
    writes: every step's durable intent and lazy completion, all at once, then the
    transaction's durable end. Returns the transaction as its driver holds it."""
    tx, lease = await in_flight(store, steps=1)
    group = [append(tx, "agent", f"act-{index}") for index in range(size)]

    async def run(step: TransactionStep) -> None:
        step.status = StepStatus.RUNNING
        await store.record(lease, tx, step)
        step.status = StepStatus.COMPLETED
        await store.record(lease, tx, step, durable=False)

    async with anyio.create_task_group() as tasks:
        for step in group:
            tasks.start_soon(run, step)
    tx.state = COMMITTED
    await store.record(lease, tx)
    return tx


async def test_a_step_appended_after_acquire_is_stored_at_its_position(store: Store) -> None:
    tx, lease = await in_flight(store, steps=2)
    step = append(tx, "late-agent", "book", StepStatus.RUNNING)
    step.attempts = 1
    step.interrupted = True
    step.recorded_only = True
    await store.record(lease, tx, step)
    loaded = await store.load(tx.transaction_id)
    assert dump(loaded) == dump(tx)
    assert loaded is not None and loaded.steps[2].step_id == step.step_id
    assert ids(await store.list(agent_id="late-agent")) == [tx.transaction_id]
    step.status = StepStatus.COMPLETED
    step.result = {"booked": "ü"}
    await store.record(lease, tx, step, durable=False)
    tx.state = COMMITTED
    await store.record(lease, tx)
    assert dump(await store.load(tx.transaction_id)) == dump(tx)


async def test_a_record_keeps_the_appended_steps_before_it_that_it_had_not_seen(
    store: Store,
) -> None:
    # A group's steps are appended together; the last one may be recorded first.
    tx, lease = await in_flight(store, steps=1)
    group = [append(tx, f"group-agent-{index}", f"act-{index}") for index in range(3)]
    group[2].status = StepStatus.RUNNING
    await store.record(lease, tx, group[2])
    loaded = await store.load(tx.transaction_id)
    assert dump(loaded) == dump(tx)  # no gap: the others are held, still pending
    for index in range(3):
        found = await store.list(agent_id=f"group-agent-{index}")
        assert ids(found) == [tx.transaction_id]
    group[0].status = StepStatus.RUNNING
    await store.record(lease, tx, group[0])
    assert dump(await store.load(tx.transaction_id)) == dump(tx)


async def test_appended_steps_survive_a_reopen(store_factory: Callable[[], Store]) -> None:
    async with store_factory() as store:
        tx, lease = await in_flight(store, steps=1)
        held = append(tx, "flights", "hold", StepStatus.COMPLETED)
        held.result = {"flight": "LH 123"}
        await store.record(lease, tx, held, durable=False)
        charge = append(tx, "billing", "charge", StepStatus.RUNNING)
        await store.record(lease, tx, charge)
    async with store_factory() as again:
        assert dump(await again.load(tx.transaction_id)) == dump(tx)
        assert ids(await again.list(agent_id="flights")) == [tx.transaction_id]
        # The lease outlives the store object: the driver goes on through a new one.
        charge.status = StepStatus.COMPLETED
        await again.record(lease, tx, charge, durable=False)
        await again.record(lease, tx, append(tx, "shipping", "ship", StepStatus.RUNNING))
    async with store_factory() as third:
        assert dump(await third.load(tx.transaction_id)) == dump(tx)
        assert ids(await third.list(agent_id="shipping")) == [tx.transaction_id]


async def test_concurrent_records_of_one_transaction_lose_and_reorder_nothing(
    store: Store,
) -> None:
    tx, lease = await in_flight(store, steps=2)
    group = [append(tx, f"agent-{index % 5}", f"act-{index}") for index in range(50)]

    async def drive(index: int, step: TransactionStep) -> None:
        for attempt in (1, 2, 3):
            step.status = StepStatus.RUNNING
            step.attempts = attempt
            tx.error = f"{step.step_id}: attempt {attempt}"  # the header changes each time
            await store.record(lease, tx, step, durable=(index + attempt) % 2 == 0)
            await anyio.lowlevel.checkpoint()  # let the siblings write in between
        step.status = StepStatus.COMPLETED
        step.result = {"index": index}
        tx.updated_at = utcnow()
        await store.record(lease, tx, step, durable=index % 3 == 0)

    async with anyio.create_task_group() as tasks:
        for index, step in enumerate(group):
            tasks.start_soon(drive, index, step)
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None
    assert [s.step_id for s in loaded.steps] == [s.step_id for s in tx.steps]
    assert [(s.status, s.attempts, s.result) for s in loaded.steps[2:]] == [
        (StepStatus.COMPLETED, 3, {"index": index}) for index in range(50)
    ]
    assert (loaded.error, loaded.updated_at) == (tx.error, tx.updated_at)  # the newest header
    assert dump(loaded) == dump(tx)
    for agent in range(5):
        assert ids(await store.list(agent_id=f"agent-{agent}")) == [tx.transaction_id]


async def test_a_stale_record_of_an_appended_step_is_refused_and_writes_nothing(
    store: Store,
) -> None:
    tx, stale = await in_flight(store, owner="driver-a", ttl=EXPIRED)
    taker = copy(tx)
    fresh = await store.acquire(taker, "driver-b", LIVE, [ACTIVE])
    before = dump(await store.load(tx.transaction_id))
    late = append(tx, "stale-agent", "book", StepStatus.RUNNING)
    tx.error = "written by the stale driver"
    with pytest.raises(LeaseLostError):
        await store.record(stale, tx, late)
    with pytest.raises(LeaseLostError):
        # A non-durable stale write may be dropped quietly; the next write must raise.
        await store.record(stale, tx, late, durable=False)
        await store.record(stale, tx, append(tx, "stale-agent", "pay"))
    assert dump(await store.load(tx.transaction_id)) == before
    assert await store.list(agent_id="stale-agent") == []
    # The position the stale driver wrote to is the new driver's to fill.
    await store.record(fresh, taker, append(taker, "fresh-agent", "book", StepStatus.RUNNING))
    assert dump(await store.load(tx.transaction_id)) == dump(taker)
    assert await store.list(agent_id="stale-agent") == []


# --------------------------------------------------------------------- leases


async def test_renew_extends_only_the_owners_in_flight_leases(store: Store) -> None:
    mine = [await in_flight(store, owner="driver-a", ttl=EXPIRED) for _ in range(2)]
    await in_flight(store, owner="driver-b", ttl=EXPIRED)
    done, done_lease = await in_flight(store, owner="driver-a")
    done.state = COMMITTED
    await store.record(done_lease, done)
    taken, _ = await in_flight(store, owner="driver-a", ttl=EXPIRED)
    await store.acquire(copy(taken), "driver-c", EXPIRED, [ACTIVE])

    assert await store.renew("driver-a", LIVE) == 2
    claimed = await store.claim_expired("recoverer", LIVE, 100)
    claimed_ids = {tx.transaction_id for tx, _ in claimed}
    assert not claimed_ids & {tx.transaction_id for tx, _ in mine}
    assert len(claimed_ids) == 2  # driver-b's and the one driver-c took over
    assert await store.renew("nobody", LIVE) == 0


async def test_renew_leaves_a_blocked_transaction_to_lapse(store: Store) -> None:
    blocked, lease = await in_flight(store, owner="driver-a", ttl=EXPIRED)
    blocked.blocked_reason = "recovery blocked: no handler for 'refund'"
    await store.record(lease, blocked)
    assert await store.renew("driver-a", LIVE) == 0
    summary = await as_operator_store(store).lease_summary()
    assert (summary.blocked, summary.claimable) == (1, 1)
    claimed = await store.claim_expired("worker-with-handler", LIVE, 10)
    assert [tx.transaction_id for tx, _ in claimed] == [blocked.transaction_id]


async def test_release_lets_another_driver_in_at_once(store: Store) -> None:
    tx, lease = await in_flight(store, owner="driver-a")
    await store.release(lease)
    taken = await store.acquire(copy(tx), "driver-b", LIVE, [ACTIVE])
    assert taken.epoch > lease.epoch


async def test_a_stale_release_does_not_free_the_new_lease(store: Store) -> None:
    tx, stale = await in_flight(store, owner="driver-a", ttl=EXPIRED)
    await store.acquire(copy(tx), "driver-b", LIVE, [ACTIVE])
    await store.release(stale)
    with pytest.raises(LeaseConflictError):
        await store.acquire(copy(tx), "driver-c", LIVE, [ACTIVE])


async def test_claim_expired_takes_only_expired_in_flight_transactions(store: Store) -> None:
    pending = make_tx()
    await store.save(copy(pending))
    live, _ = await in_flight(store, ttl=LIVE)
    expired, expired_lease = await in_flight(store, ttl=EXPIRED)
    undoing, _ = await in_flight(store, ttl=EXPIRED, state=COMPENSATING)
    orphan, orphan_lease = await in_flight(store, ttl=LIVE)
    await store.release(orphan_lease)  # in flight with no lease at all
    finished, finished_lease = await in_flight(store, ttl=EXPIRED)
    finished.state = COMMITTED
    await store.record(finished_lease, finished)

    claimed = await store.claim_expired("recoverer", LIVE, 100)
    by_id = {tx.transaction_id: (tx, lease) for tx, lease in claimed}
    assert set(by_id) == {expired.transaction_id, undoing.transaction_id, orphan.transaction_id}
    for tx, lease in claimed:
        assert lease.owner == "recoverer"
        assert lease.transaction_id == tx.transaction_id
        assert tx.recovery_attempts == 1
        stored = await store.load(tx.transaction_id)
        assert stored is not None and stored.recovery_attempts == 1
    claimed_tx, new_lease = by_id[expired.transaction_id]
    assert new_lease.epoch > expired_lease.epoch
    assert dump(claimed_tx) is not None
    assert [s.step_id for s in claimed_tx.steps] == [s.step_id for s in expired.steps]
    with pytest.raises(LeaseLostError):
        await store.record(expired_lease, expired)
    assert await store.claim_expired("another", LIVE, 100) == []
    for tx in (pending, live, finished):
        stored = await store.load(tx.transaction_id)
        assert stored is not None and stored.recovery_attempts == 0


async def test_claim_expired_respects_the_limit(store: Store) -> None:
    ids = {(await in_flight(store, ttl=EXPIRED))[0].transaction_id for _ in range(5)}
    first = await store.claim_expired("recoverer", LIVE, 2)
    second = await store.claim_expired("recoverer", LIVE, 2)
    third = await store.claim_expired("recoverer", LIVE, 2)
    assert [len(first), len(second), len(third)] == [2, 2, 1]
    assert {tx.transaction_id for tx, _ in [*first, *second, *third]} == ids
    assert await store.claim_expired("recoverer", LIVE, 0) == []


async def test_concurrent_claimers_never_get_the_same_transaction(
    store_factory: Callable[[], Store],
) -> None:
    async with store_factory() as one, store_factory() as two:
        ids = {(await in_flight(one, ttl=EXPIRED))[0].transaction_id for _ in range(30)}
        got: dict[str, list[str]] = {"one": [], "two": []}

        async def claim_all(name: str, store: Store) -> None:
            while True:
                claimed = await store.claim_expired(f"recoverer-{name}", LIVE, 4)
                if not claimed:
                    return
                got[name] += [tx.transaction_id for tx, _ in claimed]

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(claim_all, "one", one)
                group.start_soon(claim_all, "two", two)
        every = got["one"] + got["two"]
        assert len(every) == len(set(every))
        assert set(every) == ids


# --------------------------------------------------------------------- queries


async def populate(store: Store) -> tuple[datetime, list[Transaction]]:
    """Six transactions a minute apart, in assorted states and agents."""
    base = utcnow().replace(microsecond=0) - timedelta(hours=1)
    plan = [
        (COMMITTED, "billing"),
        (ROLLED_BACK, "shipping"),
        (COMMITTED, "shipping"),
        (PENDING, "billing"),
        (FAILED, "billing"),
        (COMMITTED, "mail"),
    ]
    made = []
    for minute, (state, agent) in enumerate(plan):
        tx = make_tx(steps=2, agent=agent, state=state, created_at=base + timedelta(minutes=minute))
        tx.steps[1].agent_id = "common"
        await store.save(copy(tx))
        made.append(tx)
    return base, made


def ids(found: list[Transaction]) -> list[str]:
    return [tx.transaction_id for tx in found]


async def test_list_is_newest_first_and_filters_combine(store: Store) -> None:
    base, made = await populate(store)
    newest_first = [tx.transaction_id for tx in reversed(made)]
    assert ids(await store.list()) == newest_first
    assert ids(await store.list(limit=2)) == newest_first[:2]
    assert ids(await store.list(state=COMMITTED)) == ids([made[5], made[2], made[0]])
    assert ids(await store.list(agent_id="billing")) == ids([made[4], made[3], made[0]])
    assert ids(await store.list(agent_id="common")) == newest_first
    assert await store.list(agent_id="nobody") == []
    assert ids(
        await store.list(since=base + timedelta(minutes=1), until=base + timedelta(minutes=4))
    ) == ids([made[3], made[2], made[1]])  # since inclusive, until exclusive
    assert ids(await store.list(state=COMMITTED, agent_id="shipping", since=base, limit=5)) == ids(
        [made[2]]
    )
    listed = await store.list(agent_id="mail")
    assert [dump(tx) for tx in listed] == [dump(made[5])]


async def test_list_filters_by_action(store: Store) -> None:
    _, made = await populate(store)
    made[1].steps[0].action = "refund"  # what the store holds is what the filter sees
    await store.save(copy(made[1]))
    assert ids(await store.list(action="refund")) == ids([made[1]])
    assert ids(await store.list(action="act1", state=COMMITTED)) == ids([made[5], made[2], made[0]])
    assert await store.list(action="undo0") == []  # a compensating action is not an action


async def test_list_pages_by_position_with_ties_broken_by_id(store: Store) -> None:
    moment = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    made = [
        make_tx(steps=1, created_at=moment + timedelta(seconds=second % 3)) for second in range(7)
    ]
    for tx in made:
        await store.save(copy(tx))
    order = ids(sorted(made, key=lambda tx: (tx.created_at, tx.transaction_id), reverse=True))
    assert ids(await store.list()) == order
    pages: list[str] = []
    before = None
    while page := await store.list(limit=3, before=before):
        pages += ids(page)
        before = ListPosition.of(page[-1])
    assert pages == order  # every transaction once, in order, across pages of three
    late = make_tx(steps=1, created_at=moment + timedelta(minutes=1))
    await store.save(copy(late))  # a newer one arriving moves no page boundary
    assert ids(await store.list(limit=3, before=ListPosition.of(made[0]))) == [
        tid for tid in order[order.index(made[0].transaction_id) + 1 :][:3]
    ]
    position = ListPosition(order_tx(made, order[3]).created_at, order[3])
    assert ids(await store.list(before=position, state=PENDING, limit=10)) == order[4:]


def order_tx(made: list[Transaction], tid: str) -> Transaction:
    return next(tx for tx in made if tx.transaction_id == tid)


async def test_count_by_state(store: Store) -> None:
    assert await store.count_by_state() == {}
    await populate(store)
    await in_flight(store)
    assert await store.count_by_state() == {
        COMMITTED: 3,
        ROLLED_BACK: 1,
        PENDING: 1,
        FAILED: 1,
        ACTIVE: 1,
    }


async def test_delete(store: Store) -> None:
    _, made = await populate(store)
    assert await store.delete(made[0].transaction_id) is True
    assert await store.load(made[0].transaction_id) is None
    assert await store.delete(made[0].transaction_id) is False
    assert made[0].transaction_id not in ids(await store.list(agent_id="billing"))
    driven, _ = await in_flight(store)
    with pytest.raises(LeaseConflictError):
        await store.delete(driven.transaction_id)
    assert await store.load(driven.transaction_id) is not None
    abandoned, _ = await in_flight(store, ttl=EXPIRED)
    assert await store.delete(abandoned.transaction_id) is True


async def test_purge_removes_old_terminal_transactions_only(store: Store) -> None:
    base, made = await populate(store)
    old_active, _ = await in_flight(store, ttl=EXPIRED, created_at=base - timedelta(days=1))
    every_state = list(TransactionState)
    purged = await store.purge(states=every_state, older_than=base + timedelta(minutes=3))
    assert purged == 3  # made[0..2]; the pending one and the in-flight one stay
    left = set(ids(await store.list()))
    assert left == {tx.transaction_id for tx in made[3:]} | {old_active.transaction_id}
    assert await store.purge(states=[COMMITTED], older_than=base + timedelta(hours=2)) == 1
    assert await store.purge(states=[ACTIVE, PENDING], older_than=utcnow()) == 0
    assert await store.count_by_state() == {PENDING: 1, FAILED: 1, ACTIVE: 1}


# --------------------------------------------------------------------- engine


class Ledger:
    """Async handlers that note what ran; ``fail`` names the actions that raise."""

    def __init__(self, *fail: str) -> None:
        self.ran: list[str] = []
        self.fail = set(fail)

    async def __call__(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        self.ran.append(action)
        if action in self.fail:
            raise RuntimeError(f"{action} failed")
        return {"action": action, "n": data.get("n")}

    def handlers(self) -> dict[str, Any]:
        return {name: self for name in ("reserve", "charge", "ship", "unreserve", "refund")}


def order(manager: TransactionManager) -> Transaction:
    tx = manager.begin(timeout_seconds=60)
    manager.add_step(tx, "stock", "reserve", {"n": 1}, "unreserve")
    manager.add_step(tx, "billing", "charge", {"n": 2}, "refund")
    manager.add_step(tx, "shipping", "ship", {"n": 3})
    return tx


async def test_engine_commit_round_trip(store: Store) -> None:
    ledger = Ledger()
    manager = TransactionManager(ledger.handlers(), store=store)
    tx = order(manager)
    result = await manager.commit(tx)
    assert result.state is COMMITTED
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None
    assert dump(loaded) == dump(tx)
    assert loaded.state is COMMITTED and loaded.finished_at is not None
    assert [s.status for s in loaded.steps] == [StepStatus.COMPLETED] * 3
    assert [s.result for s in loaded.steps] == [
        {"action": "reserve", "n": 1},
        {"action": "charge", "n": 2},
        {"action": "ship", "n": 3},
    ]
    assert await store.claim_expired("recoverer", LIVE, 10) == []


async def test_engine_failure_and_rollback_round_trip(store: Store) -> None:
    ledger = Ledger("ship")
    manager = TransactionManager(ledger.handlers(), store=store)
    tx = order(manager)
    result = await manager.commit(tx)
    assert result.state is ROLLED_BACK
    assert ledger.ran == ["reserve", "charge", "ship", "refund", "unreserve"]
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None
    assert dump(loaded) == dump(tx)
    assert loaded.state is ROLLED_BACK
    assert loaded.error == "ship failed"
    assert [s.status for s in loaded.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    ]
    assert (await store.list(state=ROLLED_BACK))[0].transaction_id == tx.transaction_id


def booking(ledger: Ledger, store: Store) -> TransactionManager:
    actions = ("search", "hold", "hotel", "car", "unhold", "unhotel", "uncar")
    return TransactionManager(dict.fromkeys(actions, ledger), store=store)


async def book_a_trip(tx: OpenTransaction) -> None:
    """An agent's booking: search, hold a flight, then book a hotel and a car at once."""
    async with tx:
        found = await tx.run("search", "search", {"n": 1})
        await tx.run("flights", "hold", {"n": found["n"] + 1}, "unhold")
        async with tx.parallel("lodging") as group:
            group.run("hotels", "hotel", {"n": 3}, "unhotel")
            group.run("cars", "car", {"n": 4}, "uncar")


# Checked inside the manager's block: leaving it closes the store.


async def test_engine_open_transaction_with_a_parallel_group_round_trip(store: Store) -> None:
    async with booking(Ledger(), store) as manager:
        await anyio.lowlevel.checkpoint()  # the manager's lease renewer is running
        tx = manager.transaction()
        await book_a_trip(tx)
        assert tx.result is not None and tx.result.state is COMMITTED
        loaded = await store.load(tx.transaction_id)
        assert dump(loaded) == dump(tx.transaction)
        assert loaded is not None
        assert [(s.action, s.group, s.status) for s in loaded.steps] == [
            ("search", None, StepStatus.COMPLETED),
            ("hold", None, StepStatus.COMPLETED),
            ("hotel", "lodging", StepStatus.COMPLETED),
            ("car", "lodging", StepStatus.COMPLETED),
        ]
        assert [s.result for s in loaded.steps][1:] == [
            {"action": "hold", "n": 2},
            {"action": "hotel", "n": 3},
            {"action": "car", "n": 4},
        ]
        assert ids(await store.list(agent_id="cars")) == [tx.transaction_id]
        assert await store.claim_expired("recoverer", LIVE, 10) == []


async def test_engine_open_transaction_failing_in_a_group_round_trip(store: Store) -> None:
    async with booking(Ledger("car"), store) as manager:
        await anyio.lowlevel.checkpoint()  # the manager's lease renewer is running
        tx = manager.transaction()
        with pytest.raises(StepFailedError):
            await book_a_trip(tx)
        assert tx.result is not None and tx.result.state is ROLLED_BACK
        loaded = await store.load(tx.transaction_id)
        assert dump(loaded) == dump(tx.transaction)
        assert loaded is not None and loaded.state is ROLLED_BACK
        statuses = {s.action: s.status for s in loaded.steps}
        assert (statuses["hold"], statuses["car"]) == (StepStatus.COMPENSATED, StepStatus.FAILED)
        assert await store.claim_expired("recoverer", LIVE, 10) == []


async def test_engine_recovers_an_abandoned_transaction_from_the_store(store: Store) -> None:
    tx = make_tx(state=ACTIVE)
    first, second, _ = tx.steps
    first.status = StepStatus.COMPLETED
    first.attempts = 1
    second.status = StepStatus.RUNNING  # in doubt: its driver died mid-call
    second.attempts = 1
    await store.acquire(tx, "dead-driver", EXPIRED, [PENDING])
    ran: list[str] = []

    async def handler(action: str, data: dict[str, Any]) -> None:
        ran.append(action)

    actions = ("act0", "act1", "act2", "undo0", "undo1", "undo2")
    manager = TransactionManager(dict.fromkeys(actions, handler), store=store)
    results = await manager.recover()
    assert [r.state for r in results] == [ROLLED_BACK]
    assert ran == ["undo1", "undo0"]
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None and loaded.state is ROLLED_BACK
    assert [s.status for s in loaded.steps][:2] == [StepStatus.COMPENSATED] * 2
    assert loaded.recovery_attempts == 1
    assert await manager.recover() == []


async def test_a_save_with_expected_states_does_not_undo_progress(store: Store) -> None:
    manager = TransactionManager(store=store)
    tx = manager.begin()
    manager.add_step(tx, "agent", "reserve")
    await store.save(tx, expected=[PENDING])  # absent: inserted
    stale = copy(tx)
    stale.steps.append(stale.steps[0].model_copy(update={"step_id": "s-late"}))
    await manager.commit(tx)  # another process commits meanwhile
    with pytest.raises(LeaseConflictError, match="'committed'; expected 'pending'"):
        await store.save(stale, expected=[PENDING])
    stored = await store.load(tx.transaction_id)
    assert stored is not None
    assert stored.state is COMMITTED and len(stored.steps) == 1


# --------------------------------------------------------------------- operator stores
# Leases made visible, a worker's leases handed back, one transaction taken for an
# operator action, and the resolved state with its note.

COMPENSATION_FAILED = TransactionState.COMPENSATION_FAILED
DEAD_LETTER = TransactionState.DEAD_LETTER
RESOLVED = TransactionState.RESOLVED


def as_operator_store(store: Store) -> OperatorStore:
    assert isinstance(store, OperatorStore)
    return store


async def ended(
    store: Store, state: TransactionState = COMPENSATION_FAILED, **make: Any
) -> Transaction:
    """A transaction its driver ended in ``state`` (journaled, lease released)."""
    tx, lease = await in_flight(store, **make)
    tx.steps[0].status = StepStatus.COMPENSATED
    tx.steps[1].status = StepStatus.COMPENSATION_FAILED
    tx.steps[1].compensation_error = "refund failed"
    tx.state = state
    tx.finished_at = utcnow()
    await store.record(lease, tx, tx.steps[1])
    await store.record(lease, tx, tx.steps[0])
    await store.release(lease)
    return tx


async def test_leases_show_owner_expiry_epoch_and_whether_they_are_live(store: Store) -> None:
    ops = as_operator_store(store)
    never = make_tx()
    await store.save(copy(never))
    driven, driven_lease = await in_flight(store, owner="driver-a", ttl=LIVE)
    lapsed, lapsed_lease = await in_flight(store, owner="driver-b", ttl=EXPIRED)
    orphan, orphan_lease = await in_flight(store, owner="driver-c")
    await store.release(orphan_lease)
    finished = await ended(store, COMMITTED, owner="driver-d")
    wanted = [never, driven, lapsed, orphan, finished]
    found = await ops.leases(
        [*(tx.transaction_id for tx in wanted), "no-such", driven.transaction_id]
    )
    assert set(found) == {tx.transaction_id for tx in wanted}
    assert found[never.transaction_id] == LeaseInfo(transaction_id=never.transaction_id)
    live = found[driven.transaction_id]
    assert (live.owner, live.expires_at, live.epoch) == (
        "driver-a",
        driven_lease.expires_at,
        driven_lease.epoch,
    )
    assert live.live and not live.lapsed
    gone = found[lapsed.transaction_id]
    assert (gone.owner, gone.expires_at, gone.epoch) == (
        "driver-b",
        lapsed_lease.expires_at,
        lapsed_lease.epoch,
    )
    assert not gone.live and gone.lapsed
    for released, lease in ((orphan, orphan_lease), (finished, None)):
        info = found[released.transaction_id]
        assert (info.owner, info.expires_at, info.live, info.lapsed) == (None, None, False, False)
        assert info.epoch >= 1 and (lease is None or info.epoch == lease.epoch)
    assert await ops.leases([]) == {}


async def test_lease_summary_counts_who_waits_on_a_live_lease(store: Store) -> None:
    ops = as_operator_store(store)
    assert await ops.lease_summary() == LeaseSummary(waiting=0, first_expiry=None, claimable=0)
    _, soon = await in_flight(store, owner="driver-a", ttl=LIVE)
    await in_flight(store, owner="driver-a", ttl=LIVE * 2)
    _, later = await in_flight(store, owner="driver-b", ttl=LIVE * 3, state=COMPENSATING)
    await in_flight(store, owner="driver-c", ttl=EXPIRED)
    _, orphan = await in_flight(store, owner="driver-c")
    await store.release(orphan)
    await store.save(make_tx())  # pending: no lease to wait on
    await ended(store, COMMITTED, owner="driver-d")
    summary = await ops.lease_summary()
    assert summary == LeaseSummary(waiting=3, first_expiry=soon.expires_at, claimable=2)
    others = await ops.lease_summary(exclude_owner="driver-a")
    assert others == LeaseSummary(waiting=1, first_expiry=later.expires_at, claimable=2)
    assert summary.blocked == 0
    await store.claim_expired("recoverer", LIVE, 10)
    assert await ops.lease_summary(exclude_owner="recoverer") == summary.model_copy(
        update={"claimable": 0}
    )


async def test_release_all_hands_an_owners_in_flight_transactions_to_recovery(
    store: Store,
) -> None:
    ops = as_operator_store(store)
    mine = [await in_flight(store, owner="w1", ttl=LIVE * 60) for _ in range(2)]
    undoing = await in_flight(store, owner="w1", ttl=EXPIRED, state=COMPENSATING)
    mine.append(undoing)
    await ended(store, COMMITTED, owner="w1")
    theirs, _ = await in_flight(store, owner="w2", ttl=LIVE * 60)
    assert await ops.release_all("w1") == 3
    assert await store.renew("w1", LIVE) == 0  # the old incarnation cannot hold them again
    claimed = await store.claim_expired("recoverer", LIVE, 10)
    assert {tx.transaction_id for tx, _ in claimed} == {tx.transaction_id for tx, _ in mine}
    new_epochs = {lease.transaction_id: lease.epoch for _, lease in claimed}
    for tx, old in mine:
        assert new_epochs[tx.transaction_id] > old.epoch
        with pytest.raises(LeaseLostError):  # the old incarnation is fenced off
            await store.record(old, tx)
    with pytest.raises(LeaseConflictError):
        await store.acquire(copy(theirs), "intruder", LIVE, [ACTIVE])
    assert await ops.release_all("w1") == 0
    assert await ops.release_all("nobody") == 0


async def test_claim_takes_one_transaction_as_stored(store: Store) -> None:
    ops = as_operator_store(store)
    tx = await ended(store)
    stored = await store.load(tx.transaction_id)
    before = (await ops.leases([tx.transaction_id]))[tx.transaction_id]
    claimed = await ops.claim(tx.transaction_id, "operator", LIVE, [COMPENSATION_FAILED])
    assert claimed is not None
    got, lease = claimed
    assert dump(got) == dump(stored)
    assert got.recovery_attempts == 0  # not a recovery
    assert (lease.transaction_id, lease.owner) == (tx.transaction_id, "operator")
    assert lease.epoch == before.epoch + 1
    info = (await ops.leases([tx.transaction_id]))[tx.transaction_id]
    assert (info.owner, info.epoch, info.live, info.expires_at) == (
        "operator",
        lease.epoch,
        True,
        lease.expires_at,
    )
    with pytest.raises(LeaseConflictError, match="operator"):  # held: nobody else gets it
        await ops.claim(tx.transaction_id, "another", LIVE, [COMPENSATION_FAILED])
    got.state = RESOLVED
    await store.record(lease, got)
    await store.release(lease)
    loaded = await store.load(tx.transaction_id)
    assert loaded is not None and loaded.state is RESOLVED
    assert await ops.claim("no-such-transaction", "operator", LIVE, [COMPENSATION_FAILED]) is None


async def test_claim_refuses_another_state_and_writes_nothing(store: Store) -> None:
    ops = as_operator_store(store)
    for tx in (await ended(store, COMMITTED), (await in_flight(store, ttl=EXPIRED))[0]):
        before = await ops.leases([tx.transaction_id])
        with pytest.raises(LeaseConflictError, match=f"'{tx.state.value}'"):
            await ops.claim(tx.transaction_id, "operator", LIVE, [COMPENSATION_FAILED, DEAD_LETTER])
        assert await ops.leases([tx.transaction_id]) == before


async def test_claim_returns_what_another_driver_wrote_since_a_copy_was_read(
    store: Store,
) -> None:
    ops = as_operator_store(store)
    tx = await ended(store)
    read_earlier = await store.load(tx.transaction_id)
    assert read_earlier is not None
    read_earlier = copy(read_earlier)  # what an operator's screen shows
    first = await ops.claim(tx.transaction_id, "operator-a", LIVE, [COMPENSATION_FAILED])
    assert first is not None
    retried, lease = first
    retried.steps[1].status = StepStatus.COMPENSATED
    retried.steps[1].compensation_attempts = 4
    await store.record(lease, retried, retried.steps[1])
    await store.release(lease)
    second = await ops.claim(tx.transaction_id, "operator-b", LIVE, [COMPENSATION_FAILED])
    assert second is not None
    assert dump(second[0]) == dump(retried) != dump(read_earlier)


async def test_concurrent_claims_of_one_transaction_give_it_to_one(
    store_factory: Callable[[], Store],
) -> None:
    async with store_factory() as one, store_factory() as two:
        tx = await ended(one)
        outcomes: list[str] = []

        async def take(name: str, store: Store) -> None:
            try:
                claimed = await as_operator_store(store).claim(
                    tx.transaction_id, name, LIVE, [COMPENSATION_FAILED]
                )
            except LeaseConflictError:
                outcomes.append("refused")
            else:
                assert claimed is not None
                outcomes.append(claimed[1].owner)

        async with anyio.create_task_group() as group:
            for index in range(3):
                group.start_soon(take, f"one-{index}", one)
                group.start_soon(take, f"two-{index}", two)
        assert len(outcomes) == 6 and outcomes.count("refused") == 5


async def test_a_resolution_round_trips_and_resolved_is_terminal(
    store_factory: Callable[[], Store],
) -> None:
    async with store_factory() as store:
        tx = await ended(store, DEAD_LETTER)
        claimed = await as_operator_store(store).claim(
            tx.transaction_id, "operator", LIVE, [DEAD_LETTER]
        )
        assert claimed is not None
        got, lease = claimed
        got.resolution = Resolution(
            note="refunded by hand in the PSP dashboard ✓",
            by="ops",
            at=utcnow(),
            previous_state=DEAD_LETTER,
        )
        got.state = RESOLVED
        await store.record(lease, got)
        await store.release(lease)
        saved = make_tx(state=RESOLVED)
        saved.resolution = Resolution(note="by save", at=utcnow(), previous_state=DEAD_LETTER)
        await store.save(copy(saved))
    async with store_factory() as again:
        assert dump(await again.load(tx.transaction_id)) == dump(got)
        assert dump(await again.load(saved.transaction_id)) == dump(saved)
        assert set(ids(await again.list(state=RESOLVED))) == {
            tx.transaction_id,
            saved.transaction_id,
        }
        assert (await again.count_by_state())[RESOLVED] == 2
        assert await again.claim_expired("recoverer", LIVE, 10) == []
        assert await again.purge(states=[RESOLVED], older_than=utcnow() + timedelta(days=1)) == 2
