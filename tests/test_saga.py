"""SagaOrchestrator: register once, execute as a new transaction each time."""

from __future__ import annotations

import threading
from typing import Any

import anyio
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


class Lodging:
    """Hotel and car handlers that pass only when both run at once, and a charge step.

    The hotel finishes after the car (it waits for it), so the reverse of completion
    order (hotel, car) differs from the reverse of declaration order (car, hotel).
    """

    def __init__(self, fail: set[str] | None = None) -> None:
        self.recorder = Recorder(fail=fail or set())
        self.started = {"hotel": anyio.Event(), "car": anyio.Event()}
        self.car_done = anyio.Event()

    async def book(self, action: str, data: dict[str, Any]) -> dict[str, str]:
        other = "car" if action == "hotel" else "hotel"
        self.started[action].set()
        with anyio.fail_after(5):  # only if the other one has started too
            await self.started[other].wait()
            if action == "hotel":
                await self.car_done.wait()
        result = self.recorder.sync(action, data)
        if action == "car":
            self.car_done.set()
        return result

    def manager(self) -> TransactionManager:
        return TransactionManager(
            {
                "hotel": self.book,
                "car": self.book,
                **self.recorder.handlers(
                    "flight", "unflight", "unhotel", "uncar", "charge", "refund"
                ),
            }
        )


def lodging_saga(manager: TransactionManager, *, as_tuples: bool = False) -> SagaOrchestrator:
    saga = SagaOrchestrator(manager).register("air", "flight", {"to": "LIS"}, "unflight")
    if as_tuples:
        group: list[Any] = [("stay", "hotel", {"n": 2}, "unhotel"), ("road", "car", {}, "uncar")]
    else:
        group = [
            {
                "agent_id": "stay",
                "action": "hotel",
                "data": {"n": 2},
                "compensating_action": "unhotel",
            },
            {"agent_id": "road", "action": "car", "compensating_action": "uncar"},
        ]
    assert saga.register_parallel(group) is saga
    return saga.register("bank", "charge", {}, "refund")


@pytest.mark.parametrize("as_tuples", [False, True], ids=["dicts", "tuples"])
async def test_register_parallel_runs_the_group_at_once_between_its_neighbours(
    as_tuples: bool,
) -> None:
    lodging = Lodging()
    manager = lodging.manager()
    saga = lodging_saga(manager, as_tuples=as_tuples)
    assert saga.steps == [("air", "flight"), ("stay", "hotel"), ("road", "car"), ("bank", "charge")]
    result = await saga.execute()
    assert result.state is TransactionState.COMMITTED, result.error
    assert lodging.recorder.calls == [
        ("flight", {"to": "LIS"}),
        ("car", {}),
        ("hotel", {"n": 2}),
        ("charge", {}),
    ]
    tx = manager.get_transaction(result.transaction_id)
    assert tx is not None
    groups = [s.group for s in tx.steps]
    assert groups[0] is None is groups[3] and groups[1] == groups[2] is not None


async def test_a_failure_after_a_parallel_group_undoes_it_in_reverse_declaration_order() -> None:
    lodging = Lodging(fail={"charge"})
    manager = lodging.manager()
    result = await lodging_saga(manager).execute()
    assert result.state is TransactionState.ROLLED_BACK
    assert lodging.recorder.actions == [
        "flight",
        "car",
        "hotel",
        "charge",
        "uncar",  # declared after the hotel, so undone first, though it finished first
        "unhotel",
        "unflight",
    ]
    tx = manager.get_transaction(result.transaction_id)
    assert tx is not None
    assert completed_actions(tx, result) == ["car", "hotel", "flight"]


async def test_the_first_failure_in_a_registered_group_cancels_and_undoes_its_siblings() -> None:
    recorder = Recorder(fail={"car"})
    cancelled = anyio.Event()

    async def hotel(action: str, data: dict[str, Any]) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    manager = TransactionManager(
        {"hotel": hotel, **recorder.handlers("flight", "unflight", "car", "uncar", "unhotel")}
    )
    saga = SagaOrchestrator(manager).register("air", "flight", {}, "unflight")
    saga.register_parallel([("stay", "hotel", {}, "unhotel"), ("road", "car", {}, "uncar")])
    saga.register("air", "flight", {}, "unflight")
    result = await saga.execute()
    assert cancelled.is_set()
    assert result.state is TransactionState.ROLLED_BACK and result.error == "car failed"
    # The cancelled hotel is in doubt: undone; the failing car is not; nothing after ran.
    assert recorder.actions == ["flight", "car", "unhotel", "unflight"]


async def test_register_parallel_passes_max_concurrency_on() -> None:
    together = threading.Barrier(2, timeout=0.5)
    met: list[bool] = []

    def meet(action: str, data: dict[str, Any]) -> None:
        try:
            together.wait()
            met.append(True)
        except threading.BrokenBarrierError:
            met.append(False)

    manager = TransactionManager({"a": meet, "b": meet})
    saga = SagaOrchestrator(manager).register_parallel([("x", "a"), ("x", "b")], max_concurrency=1)
    result = await saga.execute()
    assert result.state is TransactionState.COMMITTED
    assert met == [False, False]  # one at a time: they never met at the barrier
    tx = manager.get_transaction(result.transaction_id)
    assert tx is not None and [s.group_concurrency for s in tx.steps] == [1, 1]


async def test_each_registered_group_is_its_own_group() -> None:
    manager = TransactionManager()
    saga = SagaOrchestrator(manager)
    saga.register_parallel([("x", "a"), ("x", "b")]).register_parallel([("x", "c")])
    first, second = await saga.execute(), await saga.execute()
    for result in (first, second):
        tx = manager.get_transaction(result.transaction_id)
        assert tx is not None and result.state is TransactionState.COMMITTED
        one, two, three = (s.group for s in tx.steps)
        assert one == two and three not in (None, one)


@pytest.mark.parametrize(
    ("steps", "error", "message"),
    [
        ([], ValueError, "needs at least one step; each step is a dict with register's"),
        ("ab", TypeError, "takes a list of steps, not a str"),
        ({"agent_id": "x"}, TypeError, "takes a list of steps, not a dict"),
        ([("x", "a"), ["x", "b"]], TypeError, "step 1 is a list; each step is a dict"),
        ([{"agent_id": "x", "action": "a", "timeout": 1}], ValueError, "unknown key.*'timeout'"),
        ([{"agent_id": "x"}], ValueError, "step 0 lacks action"),
        ([("x",)], ValueError, r"step 0 is a tuple of 1 items.*\(agent_id, action\[, data"),
        ([("x", "a", {}, None, None)], ValueError, "step 0 is a tuple of 5 items"),
        ([("x", "a"), ("x", "")], ValueError, "step 1: action must be a non-empty string"),
        ([("x", "a", [1])], TypeError, "step 0: data must be a dict, not list"),
        ([{"agent_id": "x", "action": "a", "retry": 3}], TypeError, "retry must be a RetryPolicy"),
    ],
)
def test_register_parallel_refuses_bad_steps_and_keeps_nothing(
    steps: Any, error: type[Exception], message: str
) -> None:
    manager = TransactionManager()
    saga = SagaOrchestrator(manager).register("x", "first")
    with pytest.raises(error, match=message):
        saga.register_parallel(steps)
    assert saga.steps == [("x", "first")]
    assert manager.get_all_transactions() == []


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_register_parallel_refuses_a_bad_max_concurrency(limit: Any) -> None:
    saga = SagaOrchestrator(TransactionManager())
    with pytest.raises(ValueError, match="max_concurrency must be a positive integer"):
        saga.register_parallel([("x", "a")], max_concurrency=limit)
    assert saga.steps == []


def test_register_parallel_in_strict_mode_refuses_unknown_actions() -> None:
    saga = SagaOrchestrator(TransactionManager({"a": print}, strict=True))
    with pytest.raises(ValueError, match="step 1: No handler for action 'b'"):
        saga.register_parallel([("x", "a"), ("x", "b")])
    assert saga.steps == []
