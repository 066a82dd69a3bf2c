"""A worker with a stable identity: ``TransactionManager(owner="w1")``.

A restarted worker takes over at once what its previous incarnation left in flight
(no waiting for the leases to expire); another owner does not; the epoch fences off
the old incarnation should it still run. Every test runs on every backend (the store
fixtures of tests/stores/conftest.py). Abandoned transactions are written as their
dead driver left them, under a lease an hour long; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    LeaseLostError,
    StepStatus,
    Store,
    Transaction,
    TransactionManager,
    TransactionState,
)
from aumai_transactions.models import LeaseSummary
from aumai_transactions.stores import Lease, OperatorStore
from tests._delegating_store import DelegatingStore
from tests.stores.conftest import store_factory, store_kind  # noqa: F401 - fixtures

ACTIVE = TransactionState.ACTIVE
HOUR = 3600.0
ACTIONS = ("a", "b", "c", "undo_a", "undo_b", "undo_c")


class Ledger:
    """Async handlers noting each call (action, step position)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"{action}{data['n']}")
        return {"done": action}

    def manager(self, store: Store, **options: Any) -> TransactionManager:
        return TransactionManager(dict.fromkeys(ACTIONS, self), store=store, **options)


async def left_in_flight(store: Store, owner: str, ttl: float = HOUR) -> tuple[Transaction, Lease]:
    """A transaction its driver ``owner`` was running when it died: step 0 completed,
    step 1 running (in doubt), step 2 not started; its lease runs for ``ttl``."""
    builder = TransactionManager()
    tx = builder.begin()
    for index, name in enumerate("abc"):
        builder.add_step(tx, "agent", name, {"n": index}, f"undo_{name}")
    tx.steps[0].status = StepStatus.COMPLETED
    tx.steps[1].status = StepStatus.RUNNING
    tx.steps[0].attempts = tx.steps[1].attempts = 1
    tx.state = ACTIVE
    lease = await store.acquire(tx.model_copy(deep=True), owner, ttl, [TransactionState.PENDING])
    return tx, lease


# --------------------------------------------------------------------- the argument


def test_the_default_owner_is_a_fresh_manager_id() -> None:
    first, second = TransactionManager(), TransactionManager()
    assert first.owner.startswith("manager-") and second.owner.startswith("manager-")
    assert first.owner != second.owner
    assert TransactionManager(owner="billing-worker-1").owner == "billing-worker-1"


@pytest.mark.parametrize("owner", ["", "   ", " w1", "w1\n", "w\x00", "x" * 129, 7, b"w1"])
def test_a_bad_owner_is_refused_saying_what_is_accepted(owner: Any) -> None:
    with pytest.raises(ValueError, match="owner must be a non-empty printable string of at most"):
        TransactionManager(owner=owner)


def test_a_store_that_cannot_hand_back_leases_is_refused_with_an_owner() -> None:
    from aumai_transactions import MemoryStore

    plain = DelegatingStore(MemoryStore())
    assert isinstance(plain, Store) and not isinstance(plain, OperatorStore)
    TransactionManager(store=plain)  # fine without an owner
    with pytest.raises(TypeError, match="owner= needs a store that can hand back"):
        TransactionManager(store=plain, owner="w1")


# --------------------------------------------------------------------- reclaiming


async def test_a_restarted_worker_recovers_what_its_previous_incarnation_left_at_once(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    async with store_factory() as store:
        left = [await left_in_flight(store, "w1") for _ in range(2)]
    ledger = Ledger()
    async with ledger.manager(store_factory(), owner="w1") as restarted:
        results = await restarted.recover()
        assert sorted(r.transaction_id for r in results) == sorted(
            tx.transaction_id for tx, _ in left
        )
        assert {r.state for r in results} == {TransactionState.ROLLED_BACK}
        assert sorted(ledger.calls) == ["undo_a0", "undo_a0", "undo_b1", "undo_b1"]
        for tx, old in left:
            stored = await restarted.store.load(tx.transaction_id)
            assert stored is not None and stored.state is TransactionState.ROLLED_BACK
            with pytest.raises(LeaseLostError):  # a stale driver of the old incarnation
                await restarted.store.record(old, tx)
        assert await restarted.waiting_on_leases() == LeaseSummary()
        assert await restarted.recover() == []


async def test_another_owner_waits_for_the_lease_and_is_told_when_it_expires(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    async with store_factory() as store:
        left = [await left_in_flight(store, "w1", ttl) for ttl in (HOUR, 2 * HOUR)]
    ledger = Ledger()
    async with ledger.manager(store_factory(), owner="w2") as other:
        assert await other.recover() == []
        assert ledger.calls == []
        summary = await other.waiting_on_leases()
        assert summary == LeaseSummary(waiting=2, first_expiry=left[0][1].expires_at)
        ops = other.store
        assert isinstance(ops, OperatorStore)
        leases = await ops.leases([tx.transaction_id for tx, _ in left])
        assert [(i.owner, i.live) for i in leases.values()] == [("w1", True), ("w1", True)]
    async with ledger.manager(store_factory()) as anonymous:  # a random owner: no one's heir
        assert await anonymous.recover() == []
    assert ledger.calls == []


async def test_the_hand_back_happens_before_the_first_commit_of_the_new_incarnation(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    async with store_factory() as store:
        ((left, _),) = [await left_in_flight(store, "w1")]
    ledger = Ledger()
    async with ledger.manager(store_factory(), owner="w1") as restarted:
        fresh = restarted.begin()
        restarted.add_step(fresh, "agent", "c", {"n": 9})
        assert (await restarted.commit(fresh)).state is TransactionState.COMMITTED
        # Its own renewals (it holds leases as "w1" now) do not keep the old ones alive.
        assert await restarted.store.renew("w1", HOUR) == 0
        results = await restarted.recover()
    assert [r.transaction_id for r in results] == [left.transaction_id]
    assert ledger.calls == ["c9", "undo_b1", "undo_a0"]


async def test_a_manager_does_not_take_its_own_drivers_transactions(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    entered, release = anyio.Event(), anyio.Event()
    ran: list[str] = []

    async def slow(action: str, data: dict[str, Any]) -> None:
        ran.append(action)
        entered.set()
        await release.wait()

    worker = TransactionManager({"a": slow, "undo_a": slow}, store=store_factory(), owner="w1")
    tx = worker.begin()
    worker.add_step(tx, "agent", "a", {}, "undo_a")
    with anyio.fail_after(10):  # a manager that took its own would hang in undo_a
        async with worker, anyio.create_task_group() as group:
            group.start_soon(worker.commit, tx)
            await entered.wait()
            assert await worker.recover() == []  # its own lease: live, not handed back
            release.set()
    assert tx.state is TransactionState.COMMITTED and ran == ["a"]


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
async def test_a_still_running_old_incarnation_is_fenced_off_by_the_epoch(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    # A misconfiguration: two live processes with one owner name. The restarted one
    # takes the transaction over; the old one's driver stops at its next write.
    entered, release = anyio.Event(), anyio.Event()
    old_ledger, new_ledger = Ledger(), Ledger()

    async def slow(action: str, data: dict[str, Any]) -> None:
        old_ledger.calls.append(f"{action}{data['n']}")
        entered.set()
        await release.wait()

    old = TransactionManager(
        {**dict.fromkeys(ACTIONS, old_ledger), "b": slow}, store=store_factory(), owner="w1"
    )
    outcome: list[BaseException] = []
    tx = old.begin()
    for index, name in enumerate("abc"):
        old.add_step(tx, "agent", name, {"n": index}, f"undo_{name}")

    async def drive() -> None:
        try:
            await old.commit(tx)
        except LeaseLostError as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with old, anyio.create_task_group() as group:
            group.start_soon(drive)
            await entered.wait()
            async with new_ledger.manager(store_factory(), owner="w1") as restarted:
                results = await restarted.recover()
            release.set()
    assert [r.state for r in results] == [TransactionState.ROLLED_BACK]
    assert new_ledger.calls == ["undo_b1", "undo_a0"]
    assert len(outcome) == 1  # the old driver stopped ...
    assert old_ledger.calls == ["a0", "b1"]  # ... before running anything else
    async with store_factory() as store:
        stored = await store.load(tx.transaction_id)
    assert stored is not None and stored.state is TransactionState.ROLLED_BACK
    assert [s.status for s in stored.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.PENDING,
    ]
