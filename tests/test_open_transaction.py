"""Open transactions: the code runs each step and chooses the next from the last result."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    MemoryStore,
    StepFailedError,
    StepStatus,
    TransactionManager,
    TransactionState,
    open_store,
)


class Booking:
    """Handlers of a small travel agency that record what they did."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def search(self, action: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        self.log.append(action)
        return [{"flight": "TP123", "price": 320}, {"flight": "LH456", "price": 280}]

    async def act(self, action: str, data: dict[str, Any]) -> dict[str, Any]:
        self.log.append(f"{action}:{data.get('flight', data.get('what', ''))}")
        if data.get("fail"):
            raise RuntimeError(f"{action} declined")
        return {"ref": f"{action}-1"}

    def handlers(self) -> dict[str, Any]:
        acts = ["hold", "release", "hotel", "cancel_hotel", "car", "return_car", "charge"]
        return {"search": self.search, **{name: self.act for name in acts}}


async def test_the_next_step_is_chosen_from_the_last_result_and_the_block_commits() -> None:
    agency = Booking()
    manager = TransactionManager(agency.handlers())
    async with manager.transaction(timeout_seconds=30) as tx:
        options = await tx.run("search_agent", "search", {"to": "LIS"})
        cheapest = min(options, key=lambda o: o["price"])
        hold = await tx.run("flight_agent", "hold", {"flight": cheapest["flight"]}, "release")
        assert hold == {"ref": "hold-1"}
        assert tx.transaction.state is TransactionState.ACTIVE
    assert agency.log == ["search", "hold:LH456"]
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED
    assert tx.result.completed_steps == [s.step_id for s in tx.transaction.steps]
    assert all(s.live for s in tx.transaction.steps)
    assert manager.get_transaction(tx.transaction_id) is tx.transaction


async def test_a_failing_step_raises_and_everything_that_ran_is_compensated() -> None:
    agency = Booking()
    manager = TransactionManager(agency.handlers())
    with pytest.raises(StepFailedError) as caught:
        async with manager.transaction() as tx:
            await tx.run("f", "hold", {"flight": "TP1"}, "release")
            async with tx.parallel() as lodging:
                lodging.run("h", "hotel", {"what": "room"}, "cancel_hotel")
                lodging.run("c", "car", {"what": "car"}, "return_car")
            await tx.run("b", "charge", {"fail": True})
    error = caught.value
    assert error.step.action == "charge" and "declined" in str(error)
    assert error.result is tx.result and error.result is not None
    assert error.result.state is TransactionState.ROLLED_BACK
    assert error.result.failed_step == error.step.step_id
    assert agency.log[-3:] == ["return_car:car", "cancel_hotel:room", "release:TP1"]
    assert lodging.results == [{"ref": "hotel-1"}, {"ref": "car-1"}]


async def test_a_caught_step_failure_lets_the_code_try_something_else() -> None:
    agency = Booking()
    manager = TransactionManager(agency.handlers())
    async with manager.transaction() as tx:
        try:
            await tx.run("f", "hold", {"flight": "TP1", "fail": True}, "release")
        except StepFailedError as error:
            assert error.result is None  # still inside the block: nothing decided yet
            await tx.run("f", "hold", {"flight": "LH2"}, "release")
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED
    first, second = tx.transaction.steps
    assert first.status is StepStatus.FAILED and second.status is StepStatus.COMPLETED
    assert tx.result.completed_steps == [second.step_id]
    assert "release:TP1" not in agency.log  # the failing step is not compensated


async def test_an_exception_in_the_code_compensates_and_propagates() -> None:
    agency = Booking()
    manager = TransactionManager(agency.handlers())
    with pytest.raises(LookupError, match="no seat"):
        async with manager.transaction() as tx:
            await tx.run("f", "hold", {"flight": "TP1"}, "release")
            raise LookupError("no seat left")
    assert agency.log == ["hold:TP1", "release:TP1"]
    assert tx.result is not None and tx.result.state is TransactionState.ROLLED_BACK
    assert "LookupError" in (tx.result.error or "")


async def test_the_deadline_cuts_the_code_short_between_steps_and_compensates() -> None:
    agency = Booking()
    manager = TransactionManager(agency.handlers())
    with pytest.raises(TimeoutError, match="timed out"):
        async with manager.transaction(timeout_seconds=0.2) as tx:
            await tx.run("f", "hold", {"flight": "TP1"}, "release")
            await anyio.sleep_forever()  # an LLM that never answers
    assert agency.log == ["hold:TP1", "release:TP1"]
    assert tx.result is not None and tx.result.state is TransactionState.FAILED


async def test_the_deadline_during_a_step_interrupts_and_compensates_it() -> None:
    entered = anyio.Event()
    log: list[str] = []

    async def slow(action: str, data: dict[str, Any]) -> None:
        entered.set()
        await anyio.sleep_forever()

    async def undo(action: str, data: dict[str, Any]) -> None:
        log.append(action)

    manager = TransactionManager({"slow": slow, "undo_slow": undo})
    with pytest.raises(TimeoutError):
        async with manager.transaction(timeout_seconds=0.2) as tx:
            await tx.run("a", "slow", {}, "undo_slow")
    (step,) = tx.transaction.steps
    assert entered.is_set() and step.interrupted and log == ["undo_slow"]
    assert tx.result is not None and tx.result.interrupted_steps == [step.step_id]


async def test_an_outer_cancellation_compensates_then_carries_on() -> None:
    agency = Booking()
    manager = TransactionManager(agency.handlers())
    reached = anyio.Event()

    async def agent() -> None:
        async with manager.transaction() as tx:
            await tx.run("f", "hold", {"flight": "TP1"}, "release")
            reached.set()
            await anyio.sleep_forever()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(agent)
            await reached.wait()
            tasks.cancel_scope.cancel()
    assert agency.log == ["hold:TP1", "release:TP1"]
    (tx,) = manager.get_all_transactions()
    assert tx.state is TransactionState.FAILED


async def test_native_cancellation_of_the_agent_task_compensates_too() -> None:
    agency = Booking()
    manager = TransactionManager(agency.handlers())
    reached = asyncio.Event()

    async def agent() -> None:
        async with manager.transaction() as tx:
            await tx.run("f", "hold", {"flight": "TP1"}, "release")
            reached.set()
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(agent())
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert agency.log == ["hold:TP1", "release:TP1"]


async def test_rollback_aborts_on_purpose_and_refuses_further_steps() -> None:
    agency = Booking()
    manager = TransactionManager(agency.handlers())
    async with manager.transaction() as tx:
        await tx.run("f", "hold", {"flight": "TP1"}, "release")
        result = await tx.rollback()
        assert result.state is TransactionState.ROLLED_BACK
        with pytest.raises(ValueError, match="rolled_back: steps run only inside"):
            await tx.run("f", "hold", {"flight": "LH2"}, "release")
    assert tx.result is result
    assert agency.log == ["hold:TP1", "release:TP1"]


async def test_steps_are_refused_after_the_block() -> None:
    manager = TransactionManager()
    async with manager.transaction() as tx:
        pass
    with pytest.raises(ValueError, match="committed"):
        await tx.run("a", "b")
    with pytest.raises(ValueError, match="committed"):
        tx.parallel()


async def test_bad_step_arguments_are_refused_before_anything_runs() -> None:
    manager = TransactionManager({"a": print})
    async with manager.transaction() as tx:
        with pytest.raises(TypeError, match="JSON-serializable"):
            await tx.run("agent", "a", {"when": object()})
        with pytest.raises(ValueError, match="agent_id"):
            await tx.run("", "a")
    assert tx.transaction.steps == []


async def test_a_group_sibling_left_in_doubt_is_undone_before_a_caught_failure_commits() -> None:
    agency = Booking()
    entered = anyio.Event()

    async def waits(action: str, data: dict[str, Any]) -> None:
        entered.set()
        await anyio.sleep_forever()

    async def fails_once_entered(action: str, data: dict[str, Any]) -> None:
        await entered.wait()
        raise RuntimeError("no rooms")

    manager = TransactionManager({**agency.handlers(), "waits": waits, "full": fails_once_entered})
    async with manager.transaction() as tx:
        try:
            async with tx.parallel() as group:
                group.run("c", "waits", {}, "return_car")
                group.run("h", "full", {}, "cancel_hotel")
        except StepFailedError as error:
            assert error.step.action == "full"
    waited, full = tx.transaction.steps
    assert waited.interrupted and waited.status is StepStatus.COMPENSATED
    assert full.status is StepStatus.FAILED
    assert agency.log == ["return_car:"]
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED


async def test_a_durable_open_transaction_journals_every_step(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    agency = Booking()
    async with TransactionManager(agency.handlers(), store=url) as manager:
        async with manager.transaction() as tx:
            await tx.run("s", "search", {})
            async with tx.parallel() as group:
                group.run("h", "hotel", {"what": "room"}, "cancel_hotel")
                group.run("c", "car", {"what": "car"}, "return_car")
    async with open_store(url) as store:
        stored = await store.load(tx.transaction_id)
    assert stored is not None and stored.state is TransactionState.COMMITTED
    assert [(s.action, s.group, s.status) for s in stored.steps] == [
        ("search", None, StepStatus.COMPLETED),
        ("hotel", "group-1", StepStatus.COMPLETED),
        ("car", "group-1", StepStatus.COMPLETED),
    ]


async def test_recovery_compensates_an_open_transaction_whose_driver_died() -> None:
    # As the journal holds an open transaction whose process died: two steps ran (the
    # second still in flight), no live lease. Even under "resume" it is compensated.
    builder = TransactionManager()
    tx = builder.begin()
    for action, undo, status in [
        ("hold", "release", StepStatus.COMPLETED),
        ("hotel", "cancel_hotel", StepStatus.RUNNING),
    ]:
        step = builder.new_step("agent", action, {"what": action}, undo, live=True)
        step.status, step.attempts = status, 1
        tx.steps.append(step)
    tx.state = TransactionState.ACTIVE
    store = MemoryStore()
    await store.save(tx)

    agency = Booking()
    recoverer = TransactionManager(agency.handlers(), store=store)
    (result,) = await recoverer.recover(policy="resume")
    assert result.state is TransactionState.ROLLED_BACK
    assert agency.log == ["cancel_hotel:hotel", "release:hold"]
    recovered = await store.load(tx.transaction_id)
    assert recovered is not None and "open transaction" in (recovered.error or "")
    assert recovered.steps[1].interrupted


async def test_an_open_transaction_keeps_its_lease_while_the_code_thinks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    agency = Booking()
    manager = TransactionManager(agency.handlers(), store=url, lease_ttl=1)
    recoverer = TransactionManager(agency.handlers(), store=url, lease_ttl=1)
    done = anyio.Event()
    taken_over: list[Any] = []

    async def agent() -> None:
        try:
            async with manager.transaction(timeout_seconds=None) as tx:
                await tx.run("f", "hold", {"flight": "TP1"}, "release")
                await anyio.sleep(2.5)  # the model thinks for longer than two leases
                await tx.run("h", "hotel", {"what": "room"}, "cancel_hotel")
            assert tx.result is not None and tx.result.state is TransactionState.COMMITTED
        finally:
            done.set()

    async def recover_all_the_time() -> None:
        while not done.is_set():
            taken_over.extend(await recoverer.recover())
            with anyio.move_on_after(0.2):
                await done.wait()

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(agent)
            tasks.start_soon(recover_all_the_time)
    finally:
        await manager.close()
        await recoverer.close()
    assert taken_over == []
    assert agency.log == ["hold:TP1", "hotel:room"]


async def test_a_timeout_error_of_the_code_own_before_the_deadline_is_a_plain_exception() -> None:
    agency = Booking()
    manager = TransactionManager(agency.handlers())
    with pytest.raises(TimeoutError, match="the model API timed out"):
        async with manager.transaction(timeout_seconds=60) as tx:
            await tx.run("f", "hold", {"flight": "TP1"}, "release")
            raise TimeoutError("the model API timed out")
    assert tx.result is not None and tx.result.state is TransactionState.ROLLED_BACK
    assert agency.log == ["hold:TP1", "release:TP1"]
