"""Operator actions on a transaction that needs a person: retry its failed
compensations, or resolve it by hand with a note.

Every test runs on every backend (the store fixtures of tests/stores/conftest.py);
what is checked in the journal is read back through a store object of its own (for
SQLite and PostgreSQL, a fresh connection). Nothing sleeps: compensation retries are
switched off, and a journal that a run cut short leaves is written as it would be.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    LeaseConflictError,
    RetryPolicy,
    StepFailedError,
    StepStatus,
    Store,
    Transaction,
    TransactionManager,
    TransactionState,
)
from aumai_transactions.stores import OperatorStore
from tests.stores.conftest import store_factory, store_kind  # noqa: F401 - fixtures

PENDING = TransactionState.PENDING
ACTIVE = TransactionState.ACTIVE
COMMITTED = TransactionState.COMMITTED
ROLLED_BACK = TransactionState.ROLLED_BACK
COMPENSATION_FAILED = TransactionState.COMPENSATION_FAILED
DEAD_LETTER = TransactionState.DEAD_LETTER
RESOLVED = TransactionState.RESOLVED
ACTIONS = ("a", "b", "c", "d", "undo_a", "undo_b", "undo_c", "undo_d")
NO_RETRY = RetryPolicy(max_attempts=1)
LIVE = 60.0


class Ledger:
    """Async handlers noting each call; ``failing`` maps actions to the error they raise."""

    def __init__(self, **failing: str) -> None:
        self.calls: list[str] = []
        self.failing = dict(failing)

    async def __call__(self, action: str, data: dict[str, Any]) -> dict[str, str]:
        self.calls.append(action)
        if action in self.failing:
            raise RuntimeError(self.failing[action])
        return {"done": action}

    def manager(self, store: Store, *actions: str) -> TransactionManager:
        return TransactionManager(
            dict.fromkeys(actions or ACTIONS, self), store=store, compensation_retry=NO_RETRY
        )


async def failed_compensation(
    store: Store, ledger: Ledger | None = None
) -> tuple[Transaction, Ledger]:
    """Commit a, b, c where c fails and undoing b fails: ``compensation_failed``."""
    ledger = ledger or Ledger(c="c failed", undo_b="the PSP is down")
    async with ledger.manager(store) as manager:
        tx = manager.begin()
        for name in "abc":
            manager.add_step(tx, "agent", name, {}, f"undo_{name}")
        result = await manager.commit(tx)
    assert result.state is COMPENSATION_FAILED
    assert ledger.calls == ["a", "b", "c", "undo_b", "undo_a"]
    ledger.calls.clear()
    return tx, ledger


async def journal(make: Callable[[], Store], transaction_id: str) -> Transaction:
    """The transaction as the journal holds it, read through a store object of its own."""
    async with make() as store:
        stored = await store.load(transaction_id)
    assert stored is not None
    return stored


def as_left(statuses: list[StepStatus], **fields: Any) -> Transaction:
    """A transaction as a run left it, steps a, b, c... in ``statuses`` (attempts 1
    for every step that started)."""
    builder = TransactionManager()
    tx = builder.begin()
    for index, status in enumerate(statuses):
        step = builder.add_step(tx, "agent", "abcd"[index], {}, f"undo_{'abcd'[index]}")
        step.status = status
        step.attempts = 0 if status is StepStatus.PENDING else 1
        if status is StepStatus.COMPENSATION_FAILED:
            step.compensation_error = "compensation timed out after 60.0s"
    tx.state = COMPENSATION_FAILED
    tx.error = "c failed"
    for name, value in fields.items():
        setattr(tx, name, value)
    return tx


# --------------------------------------------------------------------- retry


async def test_a_retry_after_fixing_the_handler_reruns_only_the_failed_compensation(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    store = store_factory()
    tx, ledger = await failed_compensation(store)
    a, b, c = tx.steps
    del ledger.failing["undo_b"]  # the PSP is back
    async with ledger.manager(store_factory()) as operator:
        result = await operator.retry_compensations(tx)
    assert ledger.calls == ["undo_b"]  # undo_a succeeded before: not run again
    assert result.state is ROLLED_BACK
    assert (result.completed_steps, result.compensation_errors) == ([b.step_id], {})
    assert tx.state is ROLLED_BACK  # the caller's object shows the outcome
    stored = await journal(store_factory, tx.transaction_id)
    assert stored.state is ROLLED_BACK and stored.error == "c failed"
    assert [(s.status, s.compensation_attempts) for s in stored.steps] == [
        (StepStatus.COMPENSATED, 1),
        (StepStatus.COMPENSATED, 2),
        (StepStatus.FAILED, 0),
    ]
    assert stored.steps[1].compensation_error is None
    with pytest.raises(ValueError, match="'rolled_back'"):
        await ledger.manager(store_factory()).retry_compensations(tx.transaction_id)
    assert ledger.calls == ["undo_b"]  # each once


async def test_a_compensation_that_still_fails_stays_compensation_failed_with_the_new_error(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    store = store_factory()
    tx, ledger = await failed_compensation(store)
    ledger.failing["undo_b"] = "the PSP is still down"
    async with ledger.manager(store_factory()) as operator:
        result = await operator.retry_compensations(tx.transaction_id)  # by id
    b = tx.steps[1]
    assert ledger.calls == ["undo_b"]
    assert result.state is COMPENSATION_FAILED
    assert result.compensation_errors == {b.step_id: "the PSP is still down"}
    stored = await journal(store_factory, tx.transaction_id)
    assert stored.state is COMPENSATION_FAILED
    assert (stored.steps[1].status, stored.steps[1].compensation_error) == (
        StepStatus.COMPENSATION_FAILED,
        "the PSP is still down",
    )
    assert stored.steps[1].compensation_attempts == 2
    assert stored.steps[0].status is StepStatus.COMPENSATED


async def test_a_retry_is_journaled_under_the_operators_lease_as_it_runs(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    store = store_factory()
    tx, ledger = await failed_compensation(store)
    seen: list[tuple[TransactionState, StepStatus, str | None, bool]] = []
    async with ledger.manager(store_factory()) as operator:
        ops = operator.store
        assert isinstance(ops, OperatorStore)

        async def watching_undo_b(action: str, data: dict[str, Any]) -> None:
            stored = await journal(store_factory, tx.transaction_id)
            lease = (await ops.leases([tx.transaction_id]))[tx.transaction_id]
            seen.append((stored.state, stored.steps[1].status, lease.owner, lease.live))

        operator._handlers.register("undo_b", watching_undo_b)
        result = await operator.retry_compensations(tx)
    assert seen == [(TransactionState.COMPENSATING, StepStatus.COMPENSATING, operator.owner, True)]
    assert result.state is ROLLED_BACK


async def test_a_retry_also_undoes_the_steps_the_time_bound_never_reached(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    # The bound ran out while undoing b: a was never undone; c is the failing step, and
    # d, after it, never ran.
    statuses = [StepStatus.COMPLETED, StepStatus.COMPENSATION_FAILED, StepStatus.FAILED]
    tx = as_left([*statuses, StepStatus.PENDING])
    async with store_factory() as store:
        await store.save(tx)
    ledger = Ledger()
    async with ledger.manager(store_factory()) as operator:
        result = await operator.retry_compensations(tx.transaction_id)
    assert ledger.calls == ["undo_b", "undo_a"]  # newest first, as the pass would have
    assert result.state is ROLLED_BACK
    stored = await journal(store_factory, tx.transaction_id)
    assert [s.status for s in stored.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
        StepStatus.PENDING,
    ]


async def test_a_retry_of_a_rolled_back_compensation_log_undoes_its_pending_steps(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    # rollback() of a pending transaction (steps run elsewhere): the bound ran out on b.
    tx = as_left([StepStatus.PENDING, StepStatus.COMPENSATION_FAILED, StepStatus.COMPENSATED])
    for step in tx.steps:
        step.attempts = 0  # none of them ran here
    async with store_factory() as store:
        await store.save(tx)
    ledger = Ledger()
    async with ledger.manager(store_factory()) as operator:
        result = await operator.retry_compensations(tx)
    assert ledger.calls == ["undo_b", "undo_a"]
    assert result.state is ROLLED_BACK


async def test_an_open_transaction_that_committed_keeps_its_commit(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    # The code caught a parallel group's failure and went on; undoing the sibling the
    # failure cut short failed, so the commit ended compensation_failed.
    store = store_factory()
    started = anyio.Event()
    ledger = Ledger(b="b failed", undo_c="undo_c failed")

    async def slow_c(action: str, data: dict[str, Any]) -> None:
        started.set()
        await anyio.sleep_forever()  # until the group's failure cancels it

    async def failing_b(action: str, data: dict[str, Any]) -> None:
        await started.wait()
        await ledger(action, data)

    async with ledger.manager(store) as manager:
        manager._handlers.register("c", slow_c)
        manager._handlers.register("b", failing_b)
        open_tx = manager.transaction()
        async with open_tx:
            await open_tx.run("agent", "a", {}, "undo_a")
            with pytest.raises(StepFailedError):
                async with open_tx.parallel("group") as group:
                    group.run("agent", "b", {}, "undo_b")
                    group.run("agent", "c", {}, "undo_c")
            await open_tx.run("agent", "d", {}, "undo_d")
    tx = open_tx.transaction
    assert tx.state is COMPENSATION_FAILED
    assert ledger.calls == ["a", "b", "d", "undo_c"]  # in doubt: undone before the commit
    ledger.calls.clear()
    del ledger.failing["undo_c"]
    async with ledger.manager(store_factory()) as operator:
        result = await operator.retry_compensations(tx.transaction_id)
    assert ledger.calls == ["undo_c"]  # a and d stay done: they were committed
    assert result.state is COMMITTED
    stored = await journal(store_factory, tx.transaction_id)
    assert stored.state is COMMITTED
    assert [s.status for s in stored.steps] == [
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.COMPENSATED,
        StepStatus.COMPLETED,
    ]


async def test_a_retry_needs_the_handlers_and_runs_nothing_without_them(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    store = store_factory()
    tx, ledger = await failed_compensation(store)
    lacking = ledger.manager(store_factory(), "a", "b", "c", "undo_a")
    with pytest.raises(ValueError, match="no handler for 'undo_b'; register it and retry"):
        await lacking.retry_compensations(tx)
    with pytest.raises(ValueError, match="no handlers"):
        await TransactionManager(store=store_factory()).retry_compensations(tx)
    assert ledger.calls == []
    stored = await journal(store_factory, tx.transaction_id)
    assert stored.state is COMPENSATION_FAILED
    async with store_factory() as again:  # and no lease was left behind
        assert isinstance(again, OperatorStore)
        assert not (await again.leases([tx.transaction_id]))[tx.transaction_id].live


# --------------------------------------------------------------------- resolve


@pytest.mark.parametrize("state", [COMPENSATION_FAILED, DEAD_LETTER])
async def test_resolve_ends_resolved_and_keeps_the_note_in_the_journal(
    store_factory: Callable[[], Store],  # noqa: F811
    state: TransactionState,
) -> None:
    tx = as_left([StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED], state=state)
    async with store_factory() as store:
        await store.save(tx)
    ledger = Ledger()
    async with ledger.manager(store_factory()) as operator:
        resolved = await operator.resolve(
            tx.transaction_id, note="  refunded by hand in the PSP dashboard  ", by="ops"
        )
        assert operator.get_transaction(tx.transaction_id) is resolved
    assert ledger.calls == []  # nothing runs
    stored = await journal(store_factory, tx.transaction_id)
    assert stored.state is RESOLVED and stored.state.is_terminal
    assert stored.resolution is not None
    assert (stored.resolution.note, stored.resolution.by, stored.resolution.previous_state) == (
        "refunded by hand in the PSP dashboard",
        "ops",
        state,
    )
    assert stored.resolution == resolved.resolution
    assert stored.updated_at == stored.resolution.at
    assert [s.status for s in stored.steps] == [s.status for s in tx.steps]  # the record stays
    assert stored.error == "c failed"
    with pytest.raises(ValueError, match="'resolved'"):
        await operator.resolve(tx.transaction_id, note="again")


async def test_resolve_updates_the_callers_object(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    store = store_factory()
    tx, ledger = await failed_compensation(store)
    async with ledger.manager(store_factory()) as operator:
        resolved = await operator.resolve(tx, note="undone by hand")
    assert resolved is tx and tx.state is RESOLVED
    assert tx.resolution is not None and tx.resolution.by is None
    assert tx.resolution.at - tx.created_at < timedelta(minutes=5)


@pytest.mark.parametrize(
    ("note", "by", "message"),
    [
        ("", None, "note must say what was done"),
        ("   ", None, "note must say what was done"),
        ("x" * 4001, None, "note must say what was done"),
        (None, None, "note must say what was done"),
        ("ok", "", "by must be a non-empty printable string"),
        ("ok", "ops\n", "by must be a non-empty printable string"),
    ],
)
async def test_resolve_refuses_a_bad_note_or_author(
    store_factory: Callable[[], Store],  # noqa: F811
    note: Any,
    by: Any,
    message: str,
) -> None:
    tx = as_left([StepStatus.COMPENSATION_FAILED])
    async with store_factory() as store:
        await store.save(tx)
        manager = TransactionManager(store=store)
        with pytest.raises(ValueError, match=message):
            await manager.resolve(tx.transaction_id, note=note, by=by)
        stored = await store.load(tx.transaction_id)
        assert stored is not None and stored.state is COMPENSATION_FAILED


# --------------------------------------------------------------------- refusals


async def states_an_operator_cannot_act_on(store: Store) -> dict[TransactionState, Transaction]:
    """A pending, an active (driven right now, under a live lease) and a committed one."""
    builder = TransactionManager(store=store)
    made = {}
    for state in (PENDING, ACTIVE, COMMITTED):
        tx = builder.begin()
        builder.add_step(tx, "agent", "a", {}, "undo_a")
        if state is PENDING:
            await builder.save(tx)
        elif state is ACTIVE:
            tx.state = ACTIVE
            await store.acquire(tx.model_copy(deep=True), "a-worker", LIVE, [PENDING])
        else:
            await builder.commit(tx)
        made[state] = tx
    return made


async def test_both_actions_refuse_other_states_saying_what_they_accept(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    ledger = Ledger()
    async with store_factory() as store:
        made = await states_an_operator_cannot_act_on(store)
        operator = ledger.manager(store)
        for state, tx in made.items():
            with pytest.raises(ValueError) as retry:
                await operator.retry_compensations(tx.transaction_id)
            assert str(retry.value) == (
                f"Transaction {tx.transaction_id} is in state '{state.value}'; only "
                "'compensation_failed' transactions can have their compensations retried."
            )
            with pytest.raises(ValueError) as resolve:
                await operator.resolve(tx, note="done by hand")
            assert str(resolve.value) == (
                f"Transaction {tx.transaction_id} is in state '{state.value}'; only "
                "'compensation_failed' or 'dead_letter' transactions can be resolved."
            )
            stored = await store.load(tx.transaction_id)
            assert stored is not None and stored.state is state
        with pytest.raises(ValueError, match="No transaction no-such-id in the store"):
            await operator.resolve("no-such-id", note="x")
        with pytest.raises(TypeError, match="a Transaction or a transaction id"):
            await operator.retry_compensations(42)  # type: ignore[arg-type]
    assert ledger.calls == []


async def test_both_actions_refuse_a_transaction_another_operator_holds(
    store_factory: Callable[[], Store],  # noqa: F811
) -> None:
    store = store_factory()
    tx, ledger = await failed_compensation(store)
    del ledger.failing["undo_b"]
    operator = ledger.manager(store_factory())
    async with store_factory() as other:
        assert isinstance(other, OperatorStore)
        held = await other.claim(tx.transaction_id, "other-operator", LIVE, [COMPENSATION_FAILED])
        assert held is not None
        with pytest.raises(LeaseConflictError, match="held by other-operator"):
            await operator.retry_compensations(tx)
        with pytest.raises(LeaseConflictError, match="held by other-operator"):
            await operator.resolve(tx, note="done by hand")
        assert ledger.calls == []
        await other.release(held[1])
    async with operator:  # the other operator let go (and its store is closed)
        assert (await operator.retry_compensations(tx)).state is ROLLED_BACK
    assert ledger.calls == ["undo_b"]
