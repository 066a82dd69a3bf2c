"""Recovery: transactions whose driver died are driven to an end by another manager.

A crash is simulated by storing a transaction as its dead driver left it (in-flight
state, steps in mixed statuses, no live lease); the real-process crash tests live in
tests/test_crash.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    LeaseLostError,
    MemoryStore,
    StepContext,
    StepStatus,
    StoreUnavailableError,
    Transaction,
    TransactionManager,
    TransactionState,
)


class Ledger:
    """Handlers that record every call (action, idempotency key)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def handler(self, action: str, data: dict[str, Any], ctx: StepContext) -> dict[str, str]:
        self.calls.append((action, ctx.idempotency_key))
        return {"done": action}

    def mapping(self, *actions: str) -> dict[str, Any]:
        return {a: self.handler for a in actions}

    @property
    def actions(self) -> list[str]:
        return [a for a, _ in self.calls]


ACTIONS = ("a", "b", "c", "d", "undo_a", "undo_b", "undo_c", "undo_d")


def crashed(
    statuses: list[StepStatus],
    state: TransactionState = TransactionState.ACTIVE,
    recovery: list[str | None] | None = None,
) -> Transaction:
    """A transaction as a driver that died mid-way left it."""
    builder = TransactionManager()
    tx = builder.begin()
    names = "abcd"
    for index, status in enumerate(statuses):
        step = builder.add_step(
            tx,
            "agent",
            names[index],
            {"n": index},
            f"undo_{names[index]}",
            recovery=(recovery or [None] * len(statuses))[index],  # type: ignore[arg-type]
        )
        step.status = status
        if status is not StepStatus.PENDING:
            step.attempts = 1
    tx.state = state
    return tx


async def recover_with(
    tx: Transaction, policy: str = "compensate", ledger: Ledger | None = None
) -> tuple[MemoryStore, Ledger, Any]:
    store = MemoryStore()
    await store.save(tx)
    ledger = ledger or Ledger()
    manager = TransactionManager(ledger.mapping(*ACTIONS), store=store, sync_handlers="inline")
    results = await manager.recover(policy)  # type: ignore[arg-type]
    return store, ledger, results


async def test_compensate_undoes_in_doubt_and_completed_steps_in_reverse() -> None:
    tx = crashed(
        [StepStatus.COMPLETED, StepStatus.COMPLETED, StepStatus.RUNNING, StepStatus.PENDING]
    )
    _, ledger, results = await recover_with(tx)
    assert ledger.actions == ["undo_c", "undo_b", "undo_a"]
    assert [r.state for r in results] == [TransactionState.ROLLED_BACK]
    assert tx.state is TransactionState.ROLLED_BACK
    assert [s.status for s in tx.steps] == [StepStatus.COMPENSATED] * 3 + [StepStatus.PENDING]
    assert results[0].completed_steps == [s.step_id for s in reversed(tx.steps[:3])]


async def test_compensation_uses_the_idempotency_key_of_the_step_it_undoes() -> None:
    tx = crashed([StepStatus.COMPLETED, StepStatus.RUNNING])
    _, ledger, _ = await recover_with(tx)
    keys = dict(ledger.calls)
    assert keys["undo_a"] == f"{tx.transaction_id}:{tx.steps[0].step_id}"
    assert keys["undo_b"] == f"{tx.transaction_id}:{tx.steps[1].step_id}"


async def test_resume_reruns_the_in_doubt_step_with_the_same_key_and_carries_on() -> None:
    tx = crashed([StepStatus.COMPLETED, StepStatus.RUNNING, StepStatus.PENDING])
    _, ledger, results = await recover_with(tx, "resume")
    assert ledger.actions == ["b", "c"]
    assert ledger.calls[0][1] == f"{tx.transaction_id}:{tx.steps[1].step_id}"
    assert results[0].state is TransactionState.COMMITTED
    assert tx.steps[1].attempts == 2  # the attempt that died, then this one
    assert all(s.status is StepStatus.COMPLETED for s in tx.steps)


async def test_a_step_may_ask_to_be_resumed_under_the_compensate_policy() -> None:
    tx = crashed(
        [StepStatus.COMPLETED, StepStatus.RUNNING, StepStatus.PENDING],
        recovery=[None, "resume", None],
    )
    _, ledger, results = await recover_with(tx, "compensate")
    assert ledger.actions == ["b", "c"]
    assert results[0].state is TransactionState.COMMITTED


async def test_a_step_that_must_not_run_twice_is_compensated_under_resume() -> None:
    tx = crashed(
        [StepStatus.COMPLETED, StepStatus.RUNNING, StepStatus.PENDING],
        recovery=[None, "compensate", None],
    )
    _, ledger, results = await recover_with(tx, "resume")
    assert ledger.actions == ["undo_b", "undo_a"]
    assert results[0].state is TransactionState.ROLLED_BACK


async def test_a_recorded_compensation_never_runs_again() -> None:
    tx = crashed(
        [StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.COMPENSATED],
        state=TransactionState.COMPENSATING,
    )
    _, ledger, results = await recover_with(tx, "resume")  # compensating never resumes
    assert ledger.actions == ["undo_b", "undo_a"]
    assert results[0].state is TransactionState.ROLLED_BACK


async def test_a_failed_step_is_not_compensated_by_recovery() -> None:
    tx = crashed([StepStatus.COMPLETED, StepStatus.FAILED], state=TransactionState.COMPENSATING)
    _, ledger, _ = await recover_with(tx)
    assert ledger.actions == ["undo_a"]


async def test_poison_transaction_is_dead_lettered_without_running_anything() -> None:
    tx = crashed([StepStatus.COMPLETED, StepStatus.RUNNING])
    tx.recovery_attempts = 3  # three recoverers died on it already
    _, ledger, results = await recover_with(tx)
    assert ledger.calls == []
    assert results[0].state is TransactionState.DEAD_LETTER
    assert tx.state is TransactionState.DEAD_LETTER
    assert tx.error is not None and "dead-lettered after 3 recovery attempts" in tx.error


async def test_missing_handler_blocks_visibly_and_runs_nothing() -> None:
    tx = crashed([StepStatus.COMPLETED, StepStatus.RUNNING])
    store = MemoryStore()
    await store.save(tx)
    ledger = Ledger()
    manager = TransactionManager(ledger.mapping("a", "b", "undo_a"), store=store)
    results = await manager.recover()
    assert ledger.calls == []
    assert tx.state is TransactionState.ACTIVE
    assert tx.blocked_reason is not None and "'undo_b'" in tx.blocked_reason
    assert tx.recovery_attempts == 0
    assert results[0].state is TransactionState.ACTIVE
    # The lease is kept until it expires, so the next round does not spin on it.
    assert await manager.recover() == []


async def test_nothing_to_recover_returns_nothing() -> None:
    manager = TransactionManager({"a": lambda a, d: None})
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    await manager.commit(tx)
    assert await manager.recover() == []


async def test_a_driver_that_lost_its_lease_stops_before_the_next_handler() -> None:
    store = MemoryStore()
    entered, release = anyio.Event(), anyio.Event()
    ran: list[str] = []

    async def slow(action: str, data: dict[str, Any]) -> None:
        ran.append(action)
        entered.set()
        await release.wait()

    async def fast(action: str, data: dict[str, Any]) -> None:
        ran.append(action)

    # A lease that is over as soon as it is given: the driver "paused" past its lease.
    manager = TransactionManager(
        {"a": slow, "b": fast, "undo_a": fast}, store=store, lease_ttl=1e-9
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b")
    outcome: list[BaseException] = []

    async def drive() -> None:
        try:
            await manager.commit(tx)
        except LeaseLostError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(drive)
        await entered.wait()
        # Another worker takes the expired transaction over.
        assert [t for t, _ in await store.claim_expired("other-worker", 30, 10)] == [tx]
        release.set()
    assert len(outcome) == 1
    assert ran == ["a"]  # neither 'b' nor the compensation ran


async def test_recovery_worker_recovers_in_the_background() -> None:
    store = MemoryStore()
    done = anyio.Event()

    def undo(action: str, data: dict[str, Any]) -> None:
        done.set()

    tx = crashed([StepStatus.RUNNING])
    await store.save(tx)
    manager = TransactionManager({"a": undo, "undo_a": undo}, store=store, sync_handlers="inline")
    with anyio.fail_after(5):
        async with manager.recovery_worker(interval=0.01):
            await done.wait()
    assert tx.state is TransactionState.ROLLED_BACK


async def test_recover_rejects_an_unknown_policy() -> None:
    with pytest.raises(ValueError, match="'compensate' or 'resume'"):
        await TransactionManager().recover("retry")  # type: ignore[arg-type]


async def test_async_with_keeps_leases_renewed_while_a_long_handler_runs() -> None:
    renewed = anyio.Event()

    class RenewalWatchingStore(MemoryStore):
        @property
        def durable(self) -> bool:
            return True

        async def renew(self, owner: str, ttl: float) -> int:
            count = await super().renew(owner, ttl)
            if count:
                renewed.set()
            return count

    async def long_step(action: str, data: dict[str, Any]) -> None:
        await renewed.wait()  # returns once the heartbeat has renewed this lease

    manager = TransactionManager({"long": long_step}, store=RenewalWatchingStore(), lease_ttl=0.3)
    with anyio.fail_after(10):
        async with manager:
            tx = manager.begin()
            manager.add_step(tx, "agent", "long")
            result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED


@pytest.mark.parametrize(
    ("error", "state"),
    [
        ("Transaction {id} was interrupted: KeyboardInterrupt", TransactionState.FAILED),
        ("Transaction {id} timed out after 5s while running; ...", TransactionState.FAILED),
        ("charge_card failed: card declined", TransactionState.ROLLED_BACK),
        (None, TransactionState.ROLLED_BACK),
    ],
)
async def test_a_compensation_finished_by_recovery_ends_as_it_would_have_live(
    error: str | None, state: TransactionState
) -> None:
    # Interrupted or timed out: failed, however many Ctrl-Cs cut the compensation short;
    # a step's failure or a crash: rolled back.
    tx = crashed(
        [StepStatus.COMPLETED, StepStatus.COMPENSATING], state=TransactionState.COMPENSATING
    )
    tx.error = None if error is None else error.format(id=tx.transaction_id)
    _, ledger, results = await recover_with(tx)
    assert ledger.actions == ["undo_b", "undo_a"]
    assert [r.state for r in results] == [state]


async def test_an_open_transaction_that_timed_out_ends_failed_when_recovery_compensates_it() -> (
    None
):
    """Recovery rewrites the error of an open transaction it compensates (the code that
    chose its steps is gone), but that it timed out decides where it ends, as it would
    have live: failed, not rolled back."""
    tx = crashed([StepStatus.COMPLETED, StepStatus.RUNNING])
    for step in tx.steps:
        step.live = True
    tx.error = f"Transaction {tx.transaction_id} timed out after 1.0s while step b ran"
    _, ledger, results = await recover_with(tx)
    assert ledger.actions == ["undo_b", "undo_a"]
    assert [r.state for r in results] == [TransactionState.FAILED]
    assert tx.error is not None and tx.error.startswith("the open transaction's driver stopped")


async def test_an_open_transaction_that_died_before_its_first_step_is_rolled_back() -> None:
    """Entered, its lease taken, no step journaled yet: nothing in the journal tells it
    from any other transaction without a step, and nothing ran, so recovery rolls it
    back with the plain reason and calls no handler (the crash matrix's audit relies on
    this for a process killed in that window)."""
    tx = crashed([])
    _, ledger, results = await recover_with(tx)
    assert ledger.actions == []
    assert [r.state for r in results] == [TransactionState.ROLLED_BACK]
    assert tx.error == "the driver stopped mid-transaction; rolled back by recovery"


async def test_a_slow_compensation_holds_up_only_its_own_transaction() -> None:
    """Recovery keeps at most ``limit`` transactions in flight, topping the window up as
    they finish: the others are recovered while one compensation still waits."""
    store = MemoryStore()
    stuck = [crashed([StepStatus.COMPLETED]) for _ in range(4)]
    for tx in stuck:
        await store.save(tx)
    slow_id = stuck[0].transaction_id
    release = anyio.Event()
    undone: list[str] = []

    async def undo(action: str, data: dict[str, Any], ctx: StepContext) -> None:
        if ctx.transaction_id == slow_id:
            await release.wait()
        undone.append(ctx.transaction_id)
        if len(undone) == len(stuck) - 1:
            release.set()  # every other transaction got through first

    # Should the others wait for it, the slow compensation's time bound ends it.
    manager = TransactionManager({"a": undo, "undo_a": undo}, store=store, compensation_timeout=5)
    results = await manager.recover(limit=2)
    assert undone[-1] == slow_id
    assert sorted(undone) == sorted(tx.transaction_id for tx in stuck)
    assert {r.state for r in results} == {TransactionState.ROLLED_BACK}
    assert len(results) == len(stuck)


async def test_recovery_drives_the_window_with_a_worker_per_place_not_per_transaction() -> None:
    """A worker whose transaction is done takes the next one claimed: recovering many
    transactions starts no more tasks than the window holds."""
    store = MemoryStore()
    for _ in range(10):
        await store.save(crashed([StepStatus.COMPLETED]))
    tasks: set[asyncio.Task[Any] | None] = set()

    async def undo(action: str, data: dict[str, Any]) -> None:
        tasks.add(asyncio.current_task())
        await anyio.sleep(0)  # the other worker runs meanwhile

    manager = TransactionManager({"a": undo, "undo_a": undo}, store=store)
    results = await manager.recover(limit=2)
    assert {r.state for r in results} == {TransactionState.ROLLED_BACK}
    assert len(results) == 10
    assert len(tasks) == 2


async def test_a_claim_the_cancelled_idle_workers_never_take_is_still_driven() -> None:
    """The task group is cancelled while its workers are idle, and the claim in progress
    then queues transactions for them, which none of them will take (the cancellation
    reaches them first): each still gets a worker of its own, which drives it to its
    end (its compensation is shielded), as every claimed transaction got a task."""
    from aumai_transactions._recovery_rounds import RecoveryRounds

    store = MemoryStore()
    for _ in range(4):
        await store.save(crashed([StepStatus.COMPLETED, StepStatus.RUNNING]))
    undone: list[str] = []

    async def undo(action: str, data: dict[str, Any]) -> None:
        undone.append(action)

    manager = TransactionManager({name: undo for name in ACTIONS}, store=store)
    rounds: RecoveryRounds = manager._recovery_rounds()
    top_up = rounds._top_up
    claims = 0

    async def cancelled_mid_claim(window: Any, group: Any, *args: Any) -> bool:
        nonlocal claims
        claims += 1
        if claims == 2:
            assert window.idle == 2  # the first two are done; their workers wait
            group.cancel_scope.cancel()  # reaches the idle workers at once
            with anyio.CancelScope(shield=True):
                return await top_up(window, group, *args)  # queues two for them
        return await top_up(window, group, *args)

    rounds._top_up = cancelled_mid_claim  # type: ignore[method-assign]
    results = await rounds.run("compensate", 2)  # its own scope's cancellation ends it
    assert claims == 2
    assert undone == ["undo_b", "undo_a"] * 4
    assert len(results) == 4
    stored = await store.list(limit=None)
    assert [tx.state for tx in stored] == [TransactionState.ROLLED_BACK] * 4


async def test_a_plain_task_cancel_of_recover_lets_the_compensations_finish() -> None:
    """``task.cancel()`` on the task running ``recover()`` (as ``asyncio.timeout`` does)
    reaches the transactions it drives only through their task group, whose
    cancellation their compensation's shield holds off: each one finishes."""
    store = MemoryStore()
    tx = crashed([StepStatus.COMPLETED, StepStatus.RUNNING])
    await store.save(tx)
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def undo(action: str, data: dict[str, Any]) -> None:
        started.set()
        await release.wait()
        finished.append(action)

    manager = TransactionManager({name: undo for name in ACTIONS}, store=store)
    recovering = asyncio.ensure_future(manager.recover())
    await started.wait()
    recovering.cancel()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(recovering), 0.05)  # still running
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await recovering
    assert finished == ["undo_b", "undo_a"]
    assert tx.state is TransactionState.ROLLED_BACK


async def test_a_failed_claim_lets_the_transactions_already_claimed_finish() -> None:
    """A claim that fails while others are being driven is raised once they are done:
    it does not cut short what the previous claim started."""
    let_go = anyio.Event()

    class LockedOnSecondClaim(MemoryStore):
        claims = 0

        async def claim_expired(self, owner: str, ttl: float, limit: int) -> Any:
            self.claims += 1
            if self.claims == 2:
                let_go.set()  # the transaction still being driven may go on
                raise StoreUnavailableError("the journal is locked")
            return await super().claim_expired(owner, ttl, limit)

    store = LockedOnSecondClaim()
    quick, slow = (crashed([StepStatus.COMPLETED, StepStatus.RUNNING]) for _ in range(2))
    for tx in (quick, slow):
        await store.save(tx)

    async def step(action: str, data: dict[str, Any], ctx: StepContext) -> None:
        if ctx.transaction_id == slow.transaction_id:
            await let_go.wait()

    manager = TransactionManager({name: step for name in ACTIONS}, store=store)
    with pytest.raises(StoreUnavailableError, match="locked"):
        await manager.recover("resume", limit=2)
    assert quick.state is TransactionState.COMMITTED
    assert slow.state is TransactionState.COMMITTED  # resumed to its end, not cut short
