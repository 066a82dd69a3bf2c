"""Property tests: whatever the steps and wherever the failure, compensation is exact."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aumai_transactions import (
    RetryPolicy,
    StepStatus,
    Transaction,
    TransactionManager,
    TransactionState,
)

NO_WAIT_RETRY = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0, retry_on=(ConnectionError,))


@dataclass(frozen=True)
class StepPlan:
    compensated: bool  # has a compensating action
    transient_failures: int  # failures a retry absorbs before the step succeeds
    kind: str  # "sync" or "async" handler


step_plans = st.builds(
    StepPlan,
    compensated=st.booleans(),
    transient_failures=st.integers(min_value=0, max_value=2),
    kind=st.sampled_from(["sync", "async"]),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[StepPlan], int | None, str]:
    plans = draw(st.lists(step_plans, min_size=0, max_size=10))
    failing = draw(st.none() | st.integers(min_value=0, max_value=max(0, len(plans) - 1)))
    if not plans:
        failing = None
    mode = draw(st.sampled_from(["thread", "inline"]))
    return plans, failing, mode


def run_scenario(
    plans: list[StepPlan], failing: int | None, mode: Any
) -> tuple[list[str], Transaction, Any]:
    calls: list[str] = []
    failures_left = {f"do_{i}": plan.transient_failures for i, plan in enumerate(plans)}

    def sync_handler(action: str, data: dict[str, Any]) -> int:
        calls.append(action)
        if action == f"do_{failing}":
            raise RuntimeError(f"{action} failed for good")
        if failures_left.get(action, 0):
            failures_left[action] -= 1
            raise ConnectionError(f"{action} failed, try again")
        return len(calls)

    async def async_handler(action: str, data: dict[str, Any]) -> int:
        await asyncio.sleep(0)
        return sync_handler(action, data)

    handlers: dict[str, Any] = {}
    for i, plan in enumerate(plans):
        func = sync_handler if plan.kind == "sync" else async_handler
        handlers[f"do_{i}"] = func
        handlers[f"undo_{i}"] = func
    manager = TransactionManager(handlers, sync_handlers=mode)
    tx = manager.begin(timeout_seconds=60)
    for i, plan in enumerate(plans):
        manager.add_step(
            tx,
            f"agent_{i % 3}",
            f"do_{i}",
            {"i": i},
            f"undo_{i}" if plan.compensated else None,
            retry=NO_WAIT_RETRY,
        )
    result = asyncio.run(manager.commit(tx))
    return calls, tx, result


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_compensations_are_exactly_the_completed_compensable_steps_in_reverse_once(
    scenario: tuple[list[StepPlan], int | None, str],
) -> None:
    plans, failing, mode = scenario
    calls, tx, result = run_scenario(plans, failing, mode)
    compensations = [c for c in calls if c.startswith("undo_")]
    forward = [c for c in calls if c.startswith("do_")]

    if failing is None:
        assert result.state is TransactionState.COMMITTED
        assert compensations == []
        assert result.completed_steps == [s.step_id for s in tx.steps]
        assert all(s.status is StepStatus.COMPLETED for s in tx.steps)
        return

    completed = list(range(failing))
    expected = [f"undo_{i}" for i in reversed(completed) if plans[i].compensated]
    assert compensations == expected  # exactly these, in reverse order
    assert len(set(compensations)) == len(compensations)  # each once
    # Forward actions ran in order, each until it succeeded; nothing after the failure.
    distinct_forward = list(dict.fromkeys(forward))
    assert distinct_forward == [f"do_{i}" for i in range(failing + 1)]
    assert forward.count(f"do_{failing}") == 1  # a permanent error is not retried
    # The failing step is never compensated, nothing after it ran.
    assert f"undo_{failing}" not in calls
    assert result.state is TransactionState.ROLLED_BACK
    assert result.failed_step == tx.steps[failing].step_id
    assert result.completed_steps == [tx.steps[i].step_id for i in reversed(completed)]
    assert result.compensation_errors == {}
    for i, step in enumerate(tx.steps):
        if i < failing:
            undone = StepStatus.COMPENSATED if plans[i].compensated else StepStatus.COMPLETED
            assert step.status is undone
            assert step.attempts == plans[i].transient_failures + 1
        elif i == failing:
            assert step.status is StepStatus.FAILED
        else:
            assert step.status is StepStatus.PENDING and step.attempts == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=10))
def test_manual_rollback_compensates_every_compensable_step_in_reverse(
    compensated: list[bool],
) -> None:
    calls: list[str] = []

    def handler(action: str, data: dict[str, Any]) -> None:
        calls.append(action)

    n = len(compensated)
    manager = TransactionManager(
        {name: handler for i in range(n) for name in (f"do_{i}", f"undo_{i}")},
        sync_handlers="inline",
    )
    tx = manager.begin()
    for i, has_undo in enumerate(compensated):
        manager.add_step(tx, "agent", f"do_{i}", {}, f"undo_{i}" if has_undo else None)
    result = asyncio.run(manager.rollback(tx))
    assert calls == [f"undo_{i}" for i in reversed(range(n)) if compensated[i]]
    assert result.state is TransactionState.ROLLED_BACK
    assert result.completed_steps == [s.step_id for s in reversed(tx.steps)]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=5), json_values)
def test_any_json_data_and_result_survive_a_dump_and_validate(
    data: dict[str, Any], returned: Any
) -> None:
    manager = TransactionManager({"act": lambda action, d: returned}, sync_handlers="inline")
    tx = manager.begin()
    step = manager.add_step(tx, "agent", "act", data)
    asyncio.run(manager.commit(tx))
    assert step.result == returned
    text = json.dumps(tx.model_dump(mode="json"))
    restored = Transaction.model_validate(json.loads(text))
    assert restored.steps[0].data == data
    assert restored.steps[0].result == returned
    assert restored.model_dump(mode="json") == tx.model_dump(mode="json")
