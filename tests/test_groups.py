"""Parallel groups: steps that start together, fail together, and are undone in order.

Handlers wait on events the test controls, so "at the same time", "cancelled" and the
order in which siblings finish are facts the test arranges, never timing it hopes for.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aumai_transactions import (
    StepStatus,
    TransactionManager,
    TransactionState,
    open_store,
)


class Gate:
    """Handlers that block until the test releases them, recording what happened."""

    def __init__(self, names: list[str], failing: str | None = None) -> None:
        self.release = {name: anyio.Event() for name in names}
        self.entered = {name: anyio.Event() for name in names}
        self.done = {name: anyio.Event() for name in names}
        self.failing = failing
        self.log: list[str] = []
        self.cancelled: list[str] = []
        self.progress = anyio.Event()  # set (and replaced) whenever a step starts or ends

    def _progressed(self) -> None:
        self.progress.set()
        self.progress = anyio.Event()

    async def step(self, action: str, data: dict[str, Any]) -> dict[str, str]:
        self.log.append(f"start:{action}")
        self.entered[action].set()
        self._progressed()
        try:
            await self.release[action].wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(action)
            raise
        finally:
            self.done[action].set()
            self._progressed()
        if action == self.failing:
            raise RuntimeError(f"{action} failed")
        self.log.append(f"end:{action}")
        return {"id": action}

    async def undo(self, action: str, data: dict[str, Any]) -> None:
        self.log.append(action)

    def handlers(self, names: list[str]) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        for name in names:
            mapping[name] = self.step
            mapping[f"undo_{name}"] = self.undo
        return mapping


def declare(
    manager: TransactionManager,
    before: list[str],
    group: list[str],
    after: list[str],
    max_concurrency: int | None = None,
) -> Any:
    tx = manager.begin(timeout_seconds=None)
    for name in before:
        manager.add_step(tx, "agent", name, {}, f"undo_{name}")
    for name in group:
        manager.add_step(
            tx, "agent", name, {}, f"undo_{name}", group="g", max_concurrency=max_concurrency
        )
    for name in after:
        manager.add_step(tx, "agent", name, {}, f"undo_{name}")
    return tx


async def test_the_steps_of_a_group_start_together_and_the_next_step_waits_for_all() -> None:
    names = ["pre", "hotel", "car", "seat", "charge"]
    gate = Gate(names)
    for name in ("pre", "charge"):
        gate.release[name].set()
    manager = TransactionManager(gate.handlers(names))
    tx = declare(manager, ["pre"], ["hotel", "car", "seat"], ["charge"])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(manager.commit, tx)
            for name in ("hotel", "car", "seat"):  # all three run before any is released
                await gate.entered[name].wait()
            assert "start:charge" not in gate.log
            for name in ("seat", "hotel", "car"):
                gate.release[name].set()
    assert tx.state is TransactionState.COMMITTED
    assert gate.log.index("start:charge") > max(
        gate.log.index(f"end:{n}") for n in ("hotel", "car", "seat")
    )
    assert [s.status for s in tx.steps] == [StepStatus.COMPLETED] * 5


async def test_max_concurrency_caps_how_many_siblings_run_at_once() -> None:
    running = 0
    peak = 0

    async def step(action: str, data: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1

    manager = TransactionManager({f"s{i}": step for i in range(6)})
    tx = manager.begin()
    for i in range(6):
        manager.add_step(tx, "agent", f"s{i}", group="g", max_concurrency=2)
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    assert peak == 2


async def test_the_first_failure_cancels_running_siblings_which_are_compensated() -> None:
    names = ["pre", "hotel", "car", "seat"]
    gate = Gate(names, failing="car")
    gate.release["pre"].set()
    manager = TransactionManager(gate.handlers(names))
    tx = declare(manager, ["pre"], ["hotel", "car", "seat"], [])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(manager.commit, tx)
            for name in ("hotel", "car", "seat"):
                await gate.entered[name].wait()
            gate.release["hotel"].set()
            await gate.done["hotel"].wait()
            gate.release["car"].set()  # fails; "seat" is still waiting
    pre, hotel, car, seat = tx.steps
    assert gate.cancelled == ["seat"]
    assert tx.state is TransactionState.ROLLED_BACK
    assert car.status is StepStatus.FAILED and not car.interrupted
    assert seat.interrupted and seat.status is StepStatus.COMPENSATED
    assert seat.error is not None and car.step_id in seat.error
    assert hotel.status is StepStatus.COMPENSATED and not hotel.interrupted
    # Reverse declaration order across the transaction; the failing step is not undone.
    assert [e for e in gate.log if e.startswith("undo_")] == ["undo_seat", "undo_hotel", "undo_pre"]


async def test_a_deadline_during_a_group_compensates_every_sibling_that_ran() -> None:
    names = ["pre", "a", "b"]
    gate = Gate(names)
    gate.release["pre"].set()
    manager = TransactionManager(gate.handlers(names))
    tx = declare(manager, ["pre"], ["a", "b"], [])
    tx.timeout_seconds = 0.2
    result = await manager.commit(tx)
    assert result.state is TransactionState.FAILED
    assert sorted(gate.cancelled) == ["a", "b"]
    assert sorted(result.interrupted_steps) == sorted(s.step_id for s in tx.steps[1:])
    assert [e for e in gate.log if e.startswith("undo_")] == ["undo_b", "undo_a", "undo_pre"]


async def test_an_outer_cancellation_during_a_group_compensates_then_carries_on() -> None:
    names = ["a", "b", "c"]
    gate = Gate(names)
    gate.release["a"].set()
    manager = TransactionManager(gate.handlers(names))
    tx = declare(manager, [], ["a", "b", "c"], [])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(manager.commit, tx)
            await gate.done["a"].wait()
            await gate.entered["b"].wait()
            await gate.entered["c"].wait()
            tasks.cancel_scope.cancel()
    assert tx.state is TransactionState.FAILED
    assert [e for e in gate.log if e.startswith("undo_")] == ["undo_c", "undo_b", "undo_a"]
    assert [s.interrupted for s in tx.steps] == [False, True, True]


async def test_native_asyncio_cancellation_of_a_group_is_held_until_compensation_ends() -> None:
    names = ["a", "b"]
    gate = Gate(names)
    manager = TransactionManager(gate.handlers(names))
    tx = declare(manager, [], ["a", "b"], [])
    task = asyncio.ensure_future(manager.commit(tx))
    await gate.entered["a"].wait()
    await gate.entered["b"].wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tx.state is TransactionState.FAILED
    assert [e for e in gate.log if e.startswith("undo_")] == ["undo_b", "undo_a"]


def test_a_group_name_cannot_come_back_after_another_step() -> None:
    manager = TransactionManager()
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", group="g")
    manager.add_step(tx, "agent", "b")
    with pytest.raises(ValueError, match="group 'g'.*consecutive"):
        manager.add_step(tx, "agent", "c", group="g")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group": ""}, "group must be a non-empty string"),
        ({"group": 3}, "group must be a non-empty string"),
        ({"max_concurrency": 2}, "give group= too"),
        ({"group": "g", "max_concurrency": 0}, "max_concurrency must be a positive integer"),
    ],
)
def test_bad_group_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    manager = TransactionManager()
    with pytest.raises(ValueError, match=message):
        manager.add_step(manager.begin(), "agent", "a", **kwargs)


async def test_a_group_is_journaled_on_a_durable_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"

    async def step(action: str, data: dict[str, Any]) -> dict[str, str]:
        await anyio.sleep(0)
        return {"id": action}

    async with TransactionManager({n: step for n in "abcd"}, store=url) as manager:
        tx = manager.begin()
        manager.add_step(tx, "x", "a")
        for name in "bc":
            manager.add_step(tx, "x", name, group="g")
        manager.add_step(tx, "x", "d")
        result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    async with open_store(url) as store:
        stored = await store.load(tx.transaction_id)
    assert stored is not None
    assert [(s.action, s.group, s.status, s.result) for s in stored.steps] == [
        ("a", None, StepStatus.COMPLETED, {"id": "a"}),
        ("b", "g", StepStatus.COMPLETED, {"id": "b"}),
        ("c", "g", StepStatus.COMPLETED, {"id": "c"}),
        ("d", None, StepStatus.COMPLETED, {"id": "d"}),
    ]


# ---------------------------------------------------------------- every failure position


@st.composite
def group_scenarios(draw: st.DrawFn) -> tuple[int, int, int, list[int], int | None]:
    before = draw(st.integers(min_value=0, max_value=3))
    size = draw(st.integers(min_value=1, max_value=5))
    after = draw(st.integers(min_value=0, max_value=2))
    order = draw(st.permutations(list(range(size))))
    failing = draw(st.none() | st.integers(min_value=0, max_value=size - 1))
    return before, size, after, list(order), failing


@settings(max_examples=60, deadline=None)
@given(group_scenarios(), st.sampled_from([None, 1, 2]))
def test_whatever_fails_in_a_group_exactly_what_ran_is_undone_once_in_order(
    scenario: tuple[int, int, int, list[int], int | None], limit: int | None
) -> None:
    before, size, after, order, failing_index = scenario
    pre = [f"p{i}" for i in range(before)]
    group = [f"g{i}" for i in range(size)]
    post = [f"q{i}" for i in range(after)]
    failing = None if failing_index is None else group[failing_index]
    gate = Gate(pre + group + post, failing=failing)
    for name in pre + post:
        gate.release[name].set()

    async def scenario_run() -> Any:
        manager = TransactionManager(gate.handlers(pre + group + post))
        tx = declare(manager, pre, group, post, max_concurrency=limit)
        finished = anyio.Event()

        async def commit() -> None:
            await manager.commit(tx)
            finished.set()
            gate._progressed()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(commit)
            # Release the siblings one at a time: of those that have started, the first
            # in the drawn order (with a limit, the others wait for a free slot), until
            # one fails and the group is cancelled, or all are done.
            remaining = [group[index] for index in order]
            while remaining and not finished.is_set():
                ready = [name for name in remaining if gate.entered[name].is_set()]
                if not ready:
                    await gate.progress.wait()
                    continue
                name = ready[0]
                remaining.remove(name)
                gate.release[name].set()
                await gate.done[name].wait()
                if name == failing:
                    break
        return tx

    tx = anyio.run(scenario_run)
    undone = [e.removeprefix("undo_") for e in gate.log if e.startswith("undo_")]
    started = [name for name in pre + group + post if f"start:{name}" in gate.log]
    if failing is None:
        assert tx.state is TransactionState.COMMITTED
        assert undone == []
        assert started == pre + group + post
        return
    assert tx.state is TransactionState.ROLLED_BACK
    expected = [name for name in reversed(pre + group) if name in started and name != failing]
    assert undone == expected  # each once, reverse declaration order, nothing unstarted
    assert len(set(undone)) == len(undone)
    statuses = {s.action: s.status for s in tx.steps}
    assert all(statuses[name] is StepStatus.PENDING for name in post)
