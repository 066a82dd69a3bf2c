"""In doubt means compensated: a step cut short by the deadline or a cancellation may
have had its effect, so it is compensated like a completed one, but never while its
forward call may still be running. Plus the other promises a result makes: no silent
no-op compensation, recorded-only steps marked, each step its own copy of its data.

Every test keeps a ledger of effects and compensations as the world would see them,
and checks that each effect ends compensated (after it happened) or committed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    StepStatus,
    TransactionManager,
    TransactionState,
)
from aumai_transactions import sync as blocking


class World:
    """The side effects handlers had, in the order they had them (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self._lock = threading.Lock()

    def record(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    def effect(self, action: str, data: dict[str, Any]) -> dict[str, str]:
        self.record(action)
        return {"id": f"{action}-1"}

    def undo(self, action: str, data: dict[str, Any]) -> None:
        self.record(action)

    def slow_effect(self, seconds: float) -> Any:
        def handler(action: str, data: dict[str, Any]) -> dict[str, str]:
            time.sleep(seconds)  # a plain function: a thread cannot be interrupted
            self.record(action)
            return {"id": f"{action}-1"}

        return handler

    def assert_every_effect_undone_after_it_happened(self, *actions: str) -> None:
        for action in actions:
            assert action in self.events, (action, self.events)
            assert f"undo_{action}" in self.events, (action, self.events)
            assert self.events.index(action) < self.events.index(f"undo_{action}"), self.events


def handlers(world: World, **extra: Any) -> dict[str, Any]:
    return {
        "a": world.effect,
        "undo_a": world.undo,
        "b": world.effect,
        "undo_b": world.undo,
        **extra,
    }


# ---------------------------------------------------------------- the deadline


async def test_a_timeout_waits_for_a_sync_handler_thread_then_compensates_its_effect() -> None:
    world = World()
    manager = TransactionManager(handlers(world, slow=world.slow_effect(0.5)))
    tx = manager.begin(timeout_seconds=0.2)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    slow = manager.add_step(tx, "agent", "slow", compensating_action="undo_b")
    started = time.monotonic()
    result = await manager.commit(tx)
    elapsed = time.monotonic() - started

    # The effect of the slow step happened after the deadline; it was undone after it.
    assert world.events == ["a", "slow", "undo_b", "undo_a"]
    assert elapsed >= 0.45, "compensated before the handler's thread returned"
    assert result.state is TransactionState.FAILED
    assert result.interrupted_steps == [slow.step_id]
    assert result.failed_step == slow.step_id
    assert slow.interrupted and slow.status is StepStatus.COMPENSATED
    assert slow.result == {"id": "slow-1"}  # what the thread returned, for its compensation
    assert "compensated" in (result.error or "")


async def test_a_timeout_during_a_self_shielding_async_handler_compensates_it() -> None:
    world = World()

    async def shielded(action: str, data: dict[str, Any]) -> dict[str, str]:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.3)
            world.record(action)
        return {"id": "x"}

    manager = TransactionManager(
        handlers(world, shielded=shielded, undo_shielded=world.undo, b=world.slow_effect(0))
    )
    tx = manager.begin(timeout_seconds=0.1)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "shielded", compensating_action="undo_shielded")
    manager.add_step(tx, "agent", "b", compensating_action="undo_b")
    result = await manager.commit(tx)
    assert result.state is TransactionState.FAILED
    # The shielded handler ran to its end; only then were it and "a" undone.
    world.assert_every_effect_undone_after_it_happened("a", "shielded")
    assert world.events[:2] == ["a", "shielded"]
    assert world.events[-2:] == ["undo_shielded", "undo_a"]


async def test_a_thread_still_running_past_the_compensation_bound_is_compensation_failed() -> None:
    world = World()
    release = threading.Event()

    def stuck(action: str, data: dict[str, Any]) -> None:
        release.wait(10)
        world.record(action)

    manager = TransactionManager(handlers(world, stuck=stuck), compensation_timeout=0.3)
    tx = manager.begin(timeout_seconds=0.1)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    step = manager.add_step(tx, "agent", "stuck", compensating_action="undo_b")
    try:
        result = await manager.commit(tx)
    finally:
        release.set()
    assert result.state is TransactionState.COMPENSATION_FAILED
    message = result.compensation_errors[step.step_id]
    assert "still running" in message and "0.3s" in message
    assert step.status is StepStatus.COMPENSATION_FAILED and step.interrupted
    assert "undo_b" not in world.events  # never compensated while it may still run


async def test_an_interrupted_handler_that_raises_after_all_is_the_failing_step() -> None:
    world = World()

    def fails_late(action: str, data: dict[str, Any]) -> None:
        time.sleep(0.3)
        raise RuntimeError("card declined")

    manager = TransactionManager(handlers(world, fails_late=fails_late))
    tx = manager.begin(timeout_seconds=0.1)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    step = manager.add_step(tx, "agent", "fails_late", compensating_action="undo_b")
    result = await manager.commit(tx)
    assert world.events == ["a", "undo_a"]
    assert step.status is StepStatus.FAILED and "card declined" in (step.error or "")
    assert result.state is TransactionState.FAILED


async def test_an_interrupted_step_without_a_compensation_ends_failed_and_marked() -> None:
    world = World()
    manager = TransactionManager(handlers(world, email=world.slow_effect(0.3)))
    tx = manager.begin(timeout_seconds=0.1)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    email = manager.add_step(tx, "agent", "email")
    result = await manager.commit(tx)
    assert result.state is TransactionState.FAILED
    assert email.status is StepStatus.FAILED and email.interrupted
    assert email.step_id not in result.completed_steps
    assert world.events[-1] == "undo_a"


# ---------------------------------------------------------------- outer cancellation


@pytest.mark.parametrize("kind", ["thread", "async"])
async def test_an_outer_cancellation_compensates_the_running_step_too(kind: str) -> None:
    world = World()
    entered = anyio.Event()
    release = threading.Event()

    def in_thread(action: str, data: dict[str, Any]) -> None:
        anyio.from_thread.run_sync(entered.set)
        release.wait(10)
        world.record(action)

    async def in_loop(action: str, data: dict[str, Any]) -> None:
        entered.set()
        await anyio.sleep_forever()

    manager = TransactionManager(
        handlers(world, c=in_thread if kind == "thread" else in_loop, undo_c=world.undo)
    )
    tx = manager.begin(timeout_seconds=None)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    step = manager.add_step(tx, "agent", "c", compensating_action="undo_c")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(manager.commit, tx)
            await entered.wait()
            group.cancel_scope.cancel()
            release.set()
    assert tx.state is TransactionState.FAILED
    assert step.interrupted and step.status is StepStatus.COMPENSATED
    if kind == "thread":
        world.assert_every_effect_undone_after_it_happened("a", "c")
    assert world.events[-2:] == ["undo_c", "undo_a"]


# ---------------------------------------------------------------- the blocking facade


def test_the_blocking_facade_compensates_an_effect_that_outlived_the_deadline() -> None:
    world = World()
    manager = blocking.TransactionManager(handlers(world, slow=world.slow_effect(0.4)))
    tx = manager.begin(timeout_seconds=0.15)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "slow", compensating_action="undo_b")
    result = manager.commit(tx)
    assert result.state is TransactionState.FAILED
    assert world.events == ["a", "slow", "undo_b", "undo_a"]


# ---------------------------------------------------------------- no silent no-op compensation


async def test_a_missing_compensation_handler_is_compensation_failed_naming_it() -> None:
    world = World()
    manager = TransactionManager(handlers(world, fail=_raise))
    tx = manager.begin()
    typo = manager.add_step(tx, "agent", "a", compensating_action="undo_aa")
    manager.add_step(tx, "agent", "fail")
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMPENSATION_FAILED
    message = result.compensation_errors[typo.step_id]
    assert "'undo_aa'" in message and "undo_a" in message.split("known actions")[1]
    assert typo.status is StepStatus.COMPENSATION_FAILED


async def test_rollback_with_a_missing_compensation_handler_is_compensation_failed() -> None:
    world = World()
    manager = TransactionManager(handlers(world))
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b", compensating_action="refund")
    result = await manager.rollback(tx)
    assert result.state is TransactionState.COMPENSATION_FAILED
    assert world.events == ["undo_a"]  # the other compensation still ran


def test_strict_still_refuses_a_missing_compensation_handler_at_add_step() -> None:
    manager = TransactionManager({"a": print}, strict=True)
    with pytest.raises(ValueError, match="'undo_aa'.*known actions: a"):
        manager.add_step(manager.begin(), "agent", "a", compensating_action="undo_aa")


async def test_a_dry_run_manager_records_compensations_without_running_anything() -> None:
    manager = TransactionManager()
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    result = await manager.rollback(tx)
    assert result.state is TransactionState.ROLLED_BACK
    assert tx.steps[0].status is StepStatus.COMPENSATED


def _raise(action: str, data: dict[str, Any]) -> None:
    raise RuntimeError(f"{action} failed")


# ---------------------------------------------------------------- recorded only


async def test_a_step_without_a_handler_is_marked_recorded_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    manager = TransactionManager({"charge_card": world.effect})
    tx = manager.begin()
    with caplog.at_level(logging.WARNING, logger="aumai_transactions"):
        typo = manager.add_step(tx, "billing", "charge_crad")
    ran = manager.add_step(tx, "billing", "charge_card")
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    assert typo.recorded_only and not ran.recorded_only
    assert result.recorded_only_steps == [typo.step_id]
    assert "charge_crad" in caplog.text
    assert tx.model_dump(mode="json")["steps"][0]["recorded_only"] is True


# ---------------------------------------------------------------- each step its own data


async def test_one_dict_passed_to_several_steps_is_copied_for_each() -> None:
    def stamp(action: str, data: dict[str, Any]) -> None:
        data["stamped_by"] = action

    manager = TransactionManager({"create_user": stamp, "charge_card": stamp})
    user_data = {"user_id": "u-001"}
    tx = manager.begin()
    first = manager.add_step(tx, "users", "create_user", user_data)
    second = manager.add_step(tx, "billing", "charge_card", user_data)
    await manager.commit(tx)
    assert user_data == {"user_id": "u-001"}
    assert first.data["stamped_by"] == "create_user"
    assert second.data["stamped_by"] == "charge_card"


# ---------------------------------------------------------------- leases without `async with`


async def test_a_long_step_keeps_its_lease_without_async_with(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    world = World()
    finished = anyio.Event()
    takeovers: list[Any] = []

    async def long_step(action: str, data: dict[str, Any]) -> None:
        await anyio.sleep(3)
        world.record(action)

    manager = TransactionManager(
        handlers(world, long=long_step, undo_long=world.undo), store=url, lease_ttl=1
    )
    recoverer = TransactionManager(
        handlers(world, long=long_step, undo_long=world.undo), store=url, lease_ttl=1
    )
    tx = manager.begin(timeout_seconds=None)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "long", compensating_action="undo_long")

    async def commit() -> None:
        try:
            result = await manager.commit(tx)
            assert result.state is TransactionState.COMMITTED, result.error
        finally:
            finished.set()

    async def recover_every_fifth_of_a_second() -> None:
        while not finished.is_set():
            takeovers.extend(await recoverer.recover())
            with anyio.move_on_after(0.2):
                await finished.wait()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(commit)
            group.start_soon(recover_every_fifth_of_a_second)
    finally:
        await manager.close()
        await recoverer.close()
    assert takeovers == []
    assert world.events == ["a", "long"]
