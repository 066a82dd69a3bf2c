"""A compensation pass that cannot suspend runs in the committing task itself.

With a store that never suspends and inline sync compensations, the pass needs no task
of its own: a cancellation reaches a task only where it suspends, and the only places
this pass may suspend (a retry's pause, an awaitable a sync handler returns) run
shielded in a task of their own, under the compensation time bound. These tests cut
in at exactly those places.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    RetryPolicy,
    StepStatus,
    Transaction,
    TransactionManager,
    TransactionResult,
    TransactionState,
)


def declined(action: str, data: dict[str, Any]) -> None:
    raise RuntimeError("card declined")


def reserved(action: str, data: dict[str, Any]) -> dict[str, str]:
    return {"hold": "h-1"}


def trip(manager: TransactionManager) -> Transaction:
    tx = manager.begin()
    manager.add_step(tx, "inventory", "reserve", {}, "release")
    manager.add_step(tx, "billing", "charge", {})
    return tx


def busy_once(paused: asyncio.Event | anyio.Event, releases: list[int]) -> TransactionManager:
    """A manager whose release fails once (setting ``paused``: the retry's pause, the
    task's first suspension, comes next), then succeeds."""

    def release(action: str, data: dict[str, Any]) -> None:
        releases.append(len(releases) + 1)
        if len(releases) == 1:
            paused.set()
            raise RuntimeError("inventory busy")

    return TransactionManager(
        {"reserve": reserved, "charge": declined, "release": release},
        sync_handlers="inline",
        compensation_retry=RetryPolicy(max_attempts=3, initial_delay=0.2),
    )


async def test_a_plain_cancel_during_a_retrys_pause_waits_for_the_compensation() -> None:
    paused = asyncio.Event()
    releases: list[int] = []
    manager = busy_once(paused, releases)
    tx = trip(manager)
    committing = asyncio.ensure_future(manager.commit(tx))
    await paused.wait()
    committing.cancel()  # as asyncio.timeout() or wait_for() would
    with pytest.raises(asyncio.CancelledError):
        await committing
    assert releases == [1, 2]  # the pause ran out and the retry ran, then it was raised
    assert tx.state is TransactionState.ROLLED_BACK
    assert tx.steps[0].status is StepStatus.COMPENSATED
    assert tx.steps[0].compensation_attempts == 2


async def test_the_compensation_bound_still_ends_a_retrys_pause() -> None:
    releases: list[str] = []

    def release(action: str, data: dict[str, Any]) -> None:
        releases.append(action)
        raise RuntimeError("inventory busy")

    manager = TransactionManager(
        {"reserve": reserved, "charge": declined, "release": release},
        sync_handlers="inline",
        compensation_retry=RetryPolicy(max_attempts=3, initial_delay=30),
        compensation_timeout=0.05,
    )
    tx = trip(manager)
    result = await asyncio.wait_for(manager.commit(tx), 10)  # not the 30 s pause
    assert releases == ["release"]
    assert result.state is TransactionState.COMPENSATION_FAILED
    step = tx.steps[0]
    assert step.status is StepStatus.COMPENSATION_FAILED
    assert step.compensation_error == "compensation timed out after 0.05s"
    assert result.compensation_errors == {step.step_id: step.compensation_error}


async def test_an_awaitable_a_sync_compensation_returns_is_seen_through() -> None:
    started, finish = asyncio.Event(), asyncio.Event()
    undone: list[str] = []

    async def releasing() -> None:
        started.set()
        await finish.wait()
        undone.append("release")

    def release(action: str, data: dict[str, Any]) -> Any:
        return releasing()  # a sync handler returning an awaitable: it is awaited

    manager = TransactionManager(
        {"reserve": reserved, "charge": declined, "release": release}, sync_handlers="inline"
    )
    tx = trip(manager)
    committing = asyncio.ensure_future(manager.commit(tx))
    await started.wait()
    committing.cancel()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(committing), 0.05)  # still compensating
    finish.set()
    with pytest.raises(asyncio.CancelledError):
        await committing
    assert undone == ["release"]
    assert tx.state is TransactionState.ROLLED_BACK


async def test_an_awaitable_that_outlasts_the_bound_is_cut_short() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    def release(action: str, data: dict[str, Any]) -> Any:
        return forever()

    manager = TransactionManager(
        {"reserve": reserved, "charge": declined, "release": release},
        sync_handlers="inline",
        compensation_timeout=0.05,
    )
    tx = trip(manager)
    result = await asyncio.wait_for(manager.commit(tx), 10)
    assert result.state is TransactionState.COMPENSATION_FAILED
    assert tx.steps[0].compensation_error == "compensation timed out after 0.05s"


async def test_an_anyio_cancellation_during_a_retrys_pause_is_shielded() -> None:
    paused = anyio.Event()
    releases: list[int] = []
    manager = busy_once(paused, releases)
    tx = trip(manager)
    scopes: list[anyio.CancelScope] = []
    results: list[TransactionResult] = []

    async def run() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            results.append(await manager.commit(tx))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await paused.wait()
        scopes[0].cancel()  # an enclosing anyio scope, cancelled mid-compensation
    assert releases == [1, 2]
    assert [r.state for r in results] == [TransactionState.ROLLED_BACK]  # returned whole
