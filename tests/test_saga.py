"""SagaOrchestrator: register once, execute as a new transaction each time."""

from __future__ import annotations

from typing import Any

import pytest

from aumai_transactions import (
    RetryPolicy,
    SagaOrchestrator,
    StepStatus,
    TransactionManager,
    TransactionState,
)

from ._support import Recorder, completed_actions

TRAVEL = ("book_flight", "cancel_flight", "book_hotel", "cancel_hotel", "rent_car", "return_car")


def travel_saga(manager: TransactionManager) -> SagaOrchestrator:
    saga = SagaOrchestrator(manager)
    saga.register("flight_agent", "book_flight", {"flight": "TP1351"}, "cancel_flight")
    saga.register("hotel_agent", "book_hotel", {"hotel": "Alfama Inn"}, "cancel_hotel")
    saga.register("car_agent", "rent_car", {"city": "LIS"}, "return_car")
    return saga


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_saga_runs_its_steps_in_order_and_commits(kind: str) -> None:
    recorder = Recorder()
    manager = TransactionManager(recorder.handlers(*TRAVEL, kind=kind))
    saga = travel_saga(manager)
    result = await saga.execute(timeout_seconds=60)
    assert result.state is TransactionState.COMMITTED
    assert recorder.calls == [
        ("book_flight", {"flight": "TP1351"}),
        ("book_hotel", {"hotel": "Alfama Inn"}),
        ("rent_car", {"city": "LIS"}),
    ]
    tx = manager.get_transaction(result.transaction_id)
    assert tx is not None and tx.timeout_seconds == 60
    assert [(s.agent_id, s.action) for s in tx.steps] == saga.steps


async def test_a_failing_saga_step_compensates_the_earlier_ones_in_reverse() -> None:
    recorder = Recorder(fail={"rent_car"})
    manager = TransactionManager(recorder.handlers(*TRAVEL))
    result = await travel_saga(manager).execute()
    assert recorder.actions == [
        "book_flight",
        "book_hotel",
        "rent_car",
        "cancel_hotel",
        "cancel_flight",
    ]
    tx = manager.get_transaction(result.transaction_id)
    assert tx is not None
    assert result.state is TransactionState.ROLLED_BACK
    assert completed_actions(tx, result) == ["book_hotel", "book_flight"]
    assert result.failed_step == tx.steps[2].step_id and result.error == "rent_car failed"


async def test_each_execute_is_a_new_transaction() -> None:
    recorder = Recorder()
    manager = TransactionManager(recorder.handlers(*TRAVEL))
    saga = travel_saga(manager)
    first, second = await saga.execute(), await saga.execute()
    assert first.transaction_id != second.transaction_id
    assert first.state is second.state is TransactionState.COMMITTED
    assert recorder.actions == ["book_flight", "book_hotel", "rent_car"] * 2
    # Only the executed transactions are registered, not the probes of register().
    assert [tx.transaction_id for tx in manager.get_all_transactions()] == [
        first.transaction_id,
        second.transaction_id,
    ]


def test_register_is_chainable_and_lists_steps() -> None:
    saga = SagaOrchestrator(TransactionManager())
    assert saga.register("a", "x").register("b", "y", {"k": 1}, "undo_y") is saga
    assert saga.steps == [("a", "x"), ("b", "y")]


async def test_register_copies_the_data() -> None:
    recorder = Recorder()
    saga = SagaOrchestrator(TransactionManager(recorder.handlers("x")))
    data = {"k": 1}
    saga.register("agent", "x", data)
    data["k"] = 2
    await saga.execute()
    assert recorder.calls == [("x", {"k": 1})]


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("", "x"), ValueError, "agent_id must be a non-empty string"),
        (("agent", ""), ValueError, "action must be a non-empty string"),
        (("agent", "x", [1]), TypeError, "data must be a dict, not list"),
        (("agent", "x", {"s": {1}}), TypeError, "JSON-serializable"),
    ],
)
def test_register_validates_at_once_and_keeps_nothing_bad(
    args: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    manager = TransactionManager()
    saga = SagaOrchestrator(manager)
    with pytest.raises(error, match=message):
        saga.register(*args)
    assert saga.steps == []
    assert manager.get_all_transactions() == []


def test_register_in_strict_mode_refuses_unknown_actions() -> None:
    saga = SagaOrchestrator(TransactionManager({"x": print}, strict=True))
    with pytest.raises(ValueError, match="No handler for action 'y'"):
        saga.register("agent", "x", {}, "y")
    assert saga.steps == []


async def test_execute_rejects_a_bad_timeout() -> None:
    saga = SagaOrchestrator(TransactionManager()).register("agent", "x")
    with pytest.raises(ValueError, match="timeout_seconds must be a positive number"):
        await saga.execute(timeout_seconds=0)


def test_the_orchestrator_needs_a_manager() -> None:
    with pytest.raises(TypeError, match="SagaOrchestrator needs a TransactionManager, not dict"):
        SagaOrchestrator({})  # type: ignore[arg-type]


async def test_saga_steps_keep_their_retry_policy() -> None:
    failures = 1

    def flaky(action: str, data: dict[str, Any]) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("busy")

    manager = TransactionManager({"flaky": flaky})
    saga = SagaOrchestrator(manager)
    saga.register("agent", "flaky", retry=RetryPolicy(max_attempts=2, initial_delay=0.001))
    result = await saga.execute()
    assert result.state is TransactionState.COMMITTED
    tx = manager.get_transaction(result.transaction_id)
    assert tx is not None and tx.steps[0].attempts == 2


async def test_an_empty_saga_commits() -> None:
    result = await SagaOrchestrator(TransactionManager()).execute()
    assert result.state is TransactionState.COMMITTED and result.completed_steps == []


async def test_a_saga_on_a_dry_run_manager_records_only() -> None:
    manager = TransactionManager()
    result = await travel_saga(manager).execute()
    tx = manager.get_transaction(result.transaction_id)
    assert tx is not None
    assert result.state is TransactionState.COMMITTED
    assert [s.status for s in tx.steps] == [StepStatus.COMPLETED] * 3


async def test_a_saga_without_a_manager_makes_its_own_dry_run_manager() -> None:
    # The original tool's SagaOrchestrator() took no argument.
    first, second = SagaOrchestrator(), SagaOrchestrator(manager=None)
    assert isinstance(first.manager, TransactionManager)
    assert first.manager is not second.manager
    result = await travel_saga(first.manager).execute()
    assert result.state is TransactionState.COMMITTED
    first.register("flight_agent", "book_flight", {"flight": "TP1351"}, "cancel_flight")
    own = await first.execute()
    tx = first.manager.get_transaction(own.transaction_id)
    assert tx is not None and [s.status for s in tx.steps] == [StepStatus.COMPLETED]
    assert second.manager.get_all_transactions() == []
