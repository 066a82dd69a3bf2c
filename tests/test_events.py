"""Typed events: what listeners hear, in which order, and that they never change a run."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    MemoryStore,
    RetryPolicy,
    StepStatus,
    Transaction,
    TransactionManager,
    TransactionState,
    TransactionStep,
    events,
    sync,
)
from aumai_transactions import manager as manager_module
from aumai_transactions.stores import Lease

from ._support import Recorder


class JournalingStore(MemoryStore):
    """A memory store that remembers the order of its records: ("tx", state) for a
    record of the transaction alone (or its lease taken), (step_id, status) for a step's."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, str]] = []
        self.out_of_step: list[tuple[str, str]] = []

    def listener(self, heard: list[events.Event]) -> Any:
        """A listener appending to ``heard`` that checks each event comes right after
        the record it stands for (mismatches go to ``out_of_step``)."""

        def listen(event: events.Event) -> None:
            heard.append(event)
            stands_for = as_records([event])
            if stands_for and self.records[-1:] != stands_for:
                self.out_of_step.append(stands_for[0])

        return listen

    async def acquire(
        self, tx: Transaction, owner: str, ttl: float, expected: Iterable[TransactionState]
    ) -> Lease:
        lease = await super().acquire(tx, owner, ttl, expected)
        self.records.append(("tx", tx.state.value))
        return lease

    async def record(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
    ) -> None:
        await super().record(lease, tx, step, durable=durable)
        if step is None:
            self.records.append(("tx", tx.state.value))
        else:
            self.records.append((step.step_id, step.status.value))


_STEP_STATUS = {
    events.StepStarted: "running",
    events.StepInterrupted: "running",
    events.StepCompleted: "completed",
    events.StepFailed: "failed",
    events.CompensationStarted: "compensating",
    events.CompensationCompleted: "compensated",
    events.CompensationFailed: "compensation_failed",
}


def as_records(heard: Sequence[events.Event]) -> list[tuple[str, str]]:
    """The journal record each event stands for, in event order (others left out)."""
    out: list[tuple[str, str]] = []
    for event in heard:
        if isinstance(event, events.StepRetrying):
            continue  # no record: the next attempt's intent is the next one
        if isinstance(event, events.StepEvent):
            out.append((event.step_id, _STEP_STATUS[type(event)]))
        elif isinstance(event, events.TransactionEnded):
            out.append(("tx", event.state.value))
        elif isinstance(event, events.TransactionCompensating):
            out.append(("tx", "compensating"))
        elif isinstance(event, events.TransactionBegan):
            out.append(("tx", "compensating" if event.run == "rollback" else "active"))
    return out


def names(heard: Sequence[events.Event]) -> list[str]:
    return [type(event).__name__ for event in heard]


async def test_a_commit_tells_its_steps_in_order() -> None:
    heard: list[events.Event] = []
    manager = TransactionManager(Recorder().handlers("a", "b"), listeners=[heard.append])
    tx = manager.begin()
    first = manager.add_step(tx, "agent-1", "a", {"n": 1}, "undo_a")
    manager.add_step(tx, "agent-2", "b")
    await manager.commit(tx)
    assert names(heard) == [
        "TransactionBegan",
        "StepStarted",
        "StepCompleted",
        "StepStarted",
        "StepCompleted",
        "TransactionCommitted",
    ]
    began, started = heard[0], heard[1]
    assert isinstance(began, events.TransactionBegan)
    assert (began.transaction_id, began.run, began.steps) == (tx.transaction_id, "commit", 2)
    assert isinstance(started, events.StepStarted)
    assert (started.step_id, started.agent_id, started.action, started.attempt) == (
        first.step_id,
        "agent-1",
        "a",
        1,
    )
    assert started.idempotency_key == first.idempotency_key(tx.transaction_id)
    ended = heard[-1]
    assert isinstance(ended, events.TransactionCommitted)
    assert ended.state is TransactionState.COMMITTED and ended.duration_seconds >= 0
    assert all(event.at.tzinfo is not None for event in heard)


async def test_a_failure_tells_the_failed_step_and_each_compensation() -> None:
    heard: list[events.Event] = []
    store = JournalingStore()
    manager = TransactionManager(
        Recorder(fail=["c"]).handlers("a", "b", "c", "undo_a", "undo_b"),
        store=store,
        listeners=[store.listener(heard)],
    )
    tx = manager.begin()
    for name in "abc":
        manager.add_step(tx, "agent", name, {}, f"undo_{name}")
    await manager.commit(tx)
    assert names(heard)[6:] == [
        "StepFailed",
        "TransactionCompensating",
        "CompensationStarted",
        "CompensationCompleted",
        "CompensationStarted",
        "CompensationCompleted",
        "TransactionRolledBack",
    ]
    failed = heard[6]
    assert isinstance(failed, events.StepFailed)
    assert (failed.action, failed.error, failed.error_type) == ("c", "c failed", "RuntimeError")
    undo = heard[8]
    assert isinstance(undo, events.CompensationStarted)
    assert (undo.action, undo.compensating_action, undo.attempt) == ("b", "undo_b", 1)
    assert as_records(heard) == store.records and store.out_of_step == []


async def test_the_event_order_is_the_journal_order_in_a_failing_parallel_group() -> None:
    heard: list[events.Event] = []
    store = JournalingStore()
    release = anyio.Event()

    async def slow(action: str, data: dict[str, Any]) -> None:
        await release.wait()

    async def boom(action: str, data: dict[str, Any]) -> None:
        raise ValueError("no seats")

    async def undo(action: str, data: dict[str, Any]) -> None:
        return None

    manager = TransactionManager(
        {"first": undo, "slow": slow, "boom": boom, "undo": undo},
        store=store,
        listeners=[store.listener(heard)],
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "first", {}, "undo")
    manager.add_step(tx, "agent", "slow", {}, "undo", group="g")
    manager.add_step(tx, "agent", "boom", {}, "undo", group="g")
    result = await manager.commit(tx)
    assert result.state is TransactionState.ROLLED_BACK
    assert as_records(heard) == store.records and store.out_of_step == []
    kinds = names(heard)
    assert kinds.index("GroupStarted") < kinds.index("GroupEnded") < kinds.index("StepInterrupted")
    ended = next(e for e in heard if isinstance(e, events.GroupEnded))
    assert (ended.group, ended.failed_step, ended.error_type) == (
        "g",
        tx.steps[2].step_id,
        "ValueError",
    )
    interrupted = next(e for e in heard if isinstance(e, events.StepInterrupted))
    assert interrupted.step_id == tx.steps[1].step_id and interrupted.group == "g"


async def test_a_retry_tells_its_delay_and_each_attempt() -> None:
    heard: list[events.Event] = []
    calls = 0

    def flaky(action: str, data: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("try again")
        return "ok"

    store = JournalingStore()
    manager = TransactionManager(
        {"flaky": flaky}, sync_handlers="inline", store=store, listeners=[store.listener(heard)]
    )
    tx = manager.begin()
    manager.add_step(
        tx, "agent", "flaky", retry=RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0)
    )
    await manager.commit(tx)
    retrying = [e for e in heard if isinstance(e, events.StepRetrying)]
    assert [(e.attempt, e.error_type, e.delay_seconds) for e in retrying] == [
        (1, "ConnectionError", 0.001),
        (2, "ConnectionError", 0.002),
    ]
    assert [e.attempt for e in heard if isinstance(e, events.StepStarted)] == [1, 2, 3]
    assert as_records(heard) == store.records and store.out_of_step == []


async def test_a_rollback_and_an_open_transaction_say_which_run_they_are() -> None:
    heard: list[events.Event] = []
    store = JournalingStore()
    manager = TransactionManager(
        Recorder().handlers("a", "undo_a"), store=store, listeners=[store.listener(heard)]
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    await manager.rollback(tx)
    assert {e.run for e in heard if isinstance(e, events.TransactionEvent)} == {"rollback"}
    assert names(heard)[-1] == "TransactionRolledBack"
    assert as_records(heard) == store.records and store.out_of_step == []


async def test_an_open_transaction_that_raises_is_told_as_rolled_back() -> None:
    heard: list[events.Event] = []
    store = JournalingStore()
    manager = TransactionManager(
        Recorder().handlers("a", "undo_a"), store=store, listeners=[store.listener(heard)]
    )
    with pytest.raises(KeyError):
        async with manager.transaction() as tx:
            await tx.run("agent", "a", {}, "undo_a")
            raise KeyError("the model gave up")
    assert names(heard) == [
        "TransactionBegan",
        "StepStarted",
        "StepCompleted",
        "TransactionCompensating",
        "CompensationStarted",
        "CompensationCompleted",
        "TransactionRolledBack",
    ]
    assert {e.run for e in heard if isinstance(e, events.TransactionEvent)} == {"open"}
    assert as_records(heard) == store.records and store.out_of_step == []


async def test_recovery_tells_its_run_and_that_it_recovered() -> None:
    heard: list[events.Event] = []
    builder = TransactionManager()
    tx = builder.begin()
    for name in "ab":
        builder.add_step(tx, "agent", name, {}, f"undo_{name}")
    tx.steps[0].status = StepStatus.COMPLETED
    tx.steps[1].status = StepStatus.RUNNING
    tx.steps[0].attempts = tx.steps[1].attempts = 1
    tx.state = TransactionState.ACTIVE
    store = JournalingStore()
    await store.save(tx)
    manager = TransactionManager(
        Recorder().handlers("a", "b", "undo_a", "undo_b"),
        store=store,
        listeners=[store.listener(heard)],
    )
    [result] = await manager.recover()
    assert result.state is TransactionState.ROLLED_BACK
    assert names(heard)[0] == "TransactionBegan" and names(heard)[-2:] == [
        "TransactionRolledBack",
        "TransactionRecovered",
    ]
    began = heard[0]
    assert isinstance(began, events.TransactionBegan)
    assert (began.run, began.recovery_attempt) == ("recovery", 1)
    recovered = heard[-1]
    assert isinstance(recovered, events.TransactionRecovered)
    assert (recovered.state, recovered.direction) == (TransactionState.ROLLED_BACK, "compensate")
    assert as_records(heard[1:]) == store.records  # the claim is no acquire


async def test_recovery_without_a_handler_tells_it_is_blocked() -> None:
    heard: list[events.Event] = []
    builder = TransactionManager()
    tx = builder.begin()
    builder.add_step(tx, "agent", "a", {}, "undo_a")
    tx.steps[0].status = StepStatus.COMPLETED
    tx.state = TransactionState.ACTIVE
    store = MemoryStore()
    await store.save(tx)
    manager = TransactionManager(Recorder().handlers("a"), store=store, listeners=[heard.append])
    await manager.recover()
    blocked = heard[-1]
    assert isinstance(blocked, events.TransactionBlocked)
    assert blocked.missing_actions == ("undo_a",)


async def test_a_lost_lease_is_told() -> None:
    heard: list[events.Event] = []
    store = MemoryStore()
    taken = anyio.Event()

    async def hijacked(action: str, data: dict[str, Any]) -> None:
        # Another driver takes the transaction over while this step runs.
        stored = await store.load(tx.transaction_id)
        assert stored is not None
        store._leases[tx.transaction_id].epoch += 1
        taken.set()

    manager = TransactionManager({"a": hijacked}, store=store, listeners=[heard.append])
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    with pytest.raises(Exception, match="stale"):
        await manager.commit(tx)
    assert taken.is_set()
    assert isinstance(heard[-1], events.LeaseLost)
    assert heard[-1].error_type == "LeaseLostError"


async def test_a_raising_listener_is_logged_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def sync_boom(event: events.Event) -> None:
        raise RuntimeError("listener bug")

    async def async_boom(event: events.Event) -> None:
        raise RuntimeError("async listener bug")

    heard: list[events.Event] = []
    recorder = Recorder(fail=["b"])
    manager = TransactionManager(
        recorder.handlers("a", "b", "undo_a"), listeners=[sync_boom, async_boom, heard.append]
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    manager.add_step(tx, "agent", "b")
    with caplog.at_level(logging.ERROR, logger="aumai_transactions.events"):
        result = await manager.commit(tx)
        await manager.drain_events()
    assert result.state is TransactionState.ROLLED_BACK
    assert result.compensation_errors == {}
    assert recorder.actions == ["a", "b", "undo_a"]
    assert len(heard) == 9  # the listener after the raising one still hears everything
    raised = [r for r in caplog.records if r.name == "aumai_transactions.events"]
    assert len(raised) == 18  # each listener, each event
    assert all(r.levelno == logging.ERROR and r.exc_info for r in raised)
    assert {r.transaction_id for r in raised} == {tx.transaction_id}  # type: ignore[attr-defined]


async def test_a_slow_async_listener_never_holds_up_the_engine() -> None:
    go_on = anyio.Event()
    heard: list[str] = []

    async def slow(event: events.Event) -> None:
        await go_on.wait()
        heard.append(type(event).__name__)

    manager = TransactionManager(Recorder().handlers("a", "b"), listeners=[slow])
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    manager.add_step(tx, "agent", "b")
    result = await manager.commit(tx)  # the listener has not returned once yet
    assert result.state is TransactionState.COMMITTED and heard == []
    go_on.set()
    await manager.drain_events()
    assert heard[0] == "TransactionBegan" and heard[-1] == "TransactionCommitted"
    assert len(heard) == 6 and manager.events_dropped == 0


async def test_a_full_queue_drops_events_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    go_on = anyio.Event()
    heard: list[str] = []

    async def slow(event: events.Event) -> None:
        await go_on.wait()
        heard.append(type(event).__name__)

    manager = TransactionManager(listeners=[slow], event_queue_size=2)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    with caplog.at_level(logging.WARNING, logger="aumai_transactions.events"):
        result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    # The drain task took the first event at once; two more fit; the last one did not.
    go_on.set()
    await manager.drain_events()
    assert len(heard) + manager.events_dropped == 4
    assert manager.events_dropped >= 1
    assert heard[:1] == ["TransactionBegan"]
    assert sum("not keeping up" in r.getMessage() for r in caplog.records) == 1


async def test_unsubscribe_stops_the_next_runs() -> None:
    heard: list[events.Event] = []
    manager = TransactionManager()
    unsubscribe = manager.subscribe(heard.append)
    await manager.commit(manager.begin())
    assert names(heard) == ["TransactionBegan", "TransactionCommitted"]
    unsubscribe()
    unsubscribe()  # twice is harmless
    await manager.commit(manager.begin())
    assert len(heard) == 2


def test_with_nobody_listening_no_event_is_built() -> None:
    manager = TransactionManager()
    assert manager._driver(manager.begin())._emit is None
    manager.subscribe(print)
    assert manager._driver(manager.begin())._emit is not None


def test_a_listener_must_be_callable() -> None:
    with pytest.raises(TypeError, match="a listener must be a callable"):
        TransactionManager(listeners=["print"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="queue_size must be a positive integer"):
        TransactionManager(event_queue_size=0)


def test_the_blocking_facade_takes_listeners() -> None:
    heard: list[str] = []

    async def also(event: events.Event) -> None:
        heard.append("async " + type(event).__name__)

    manager = sync.TransactionManager(listeners=[lambda e: heard.append(type(e).__name__)])
    manager.subscribe(also)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    manager.commit(tx)
    manager.drain_events()
    assert heard.count("TransactionCommitted") == 1
    assert heard.count("async TransactionCommitted") == 1
    assert manager.events_dropped == 0


async def test_log_records_carry_the_ids_and_never_the_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "s3cr3t-card-4242"
    attempts = 0

    def charge(action: str, data: dict[str, Any]) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("card declined")

    def refund(action: str, data: dict[str, Any]) -> None:
        raise RuntimeError("refund refused")

    def reserve(action: str, data: dict[str, Any]) -> dict[str, str]:
        return {"token": secret}

    manager = TransactionManager(
        {"reserve": reserve, "charge": charge, "release": refund},
        sync_handlers="inline",
        compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0),
    )
    tx = manager.begin()
    reserved = manager.add_step(tx, "agent", "reserve", {"card": secret}, "release")
    charged = manager.add_step(
        tx, "agent", "charge", {"card": secret}, retry=RetryPolicy(max_attempts=2, initial_delay=0)
    )
    with caplog.at_level(logging.DEBUG, logger="aumai_transactions"):
        result = await manager.commit(tx)
    assert result.state is TransactionState.COMPENSATION_FAILED
    by_level = {
        (r.name, r.levelname, getattr(r, "step_id", None), getattr(r, "attempt", None))
        for r in caplog.records
    }
    assert ("aumai_transactions.engine", "INFO", charged.step_id, 1) in by_level  # a retry
    assert ("aumai_transactions.engine", "INFO", charged.step_id, 2) in by_level  # failed
    assert ("aumai_transactions.engine", "INFO", reserved.step_id, 1) in by_level  # comp. retry
    assert ("aumai_transactions.engine", "ERROR", reserved.step_id, 2) in by_level  # comp. failed
    for record in caplog.records:
        assert record.transaction_id == tx.transaction_id  # type: ignore[attr-defined]
        assert record.action in {"charge", "release"}  # type: ignore[attr-defined]
        assert secret not in record.getMessage()
        assert secret not in repr(vars(record))


async def test_an_operators_retry_is_its_own_run() -> None:
    heard: list[events.Event] = []
    refunds = 0

    def refund(action: str, data: dict[str, Any]) -> None:
        nonlocal refunds
        refunds += 1
        if refunds == 1:
            raise RuntimeError("provider down")

    manager = TransactionManager(
        {**Recorder(fail=["ship"]).handlers("charge", "ship"), "refund": refund},
        compensation_retry=RetryPolicy(max_attempts=1),
        listeners=[heard.append],
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "charge", {}, "refund")
    manager.add_step(tx, "agent", "ship")
    assert (await manager.commit(tx)).state is TransactionState.COMPENSATION_FAILED
    failed = next(e for e in heard if isinstance(e, events.CompensationFailed))
    assert (failed.compensating_action, failed.error_type) == ("refund", "RuntimeError")
    heard.clear()
    result = await manager.retry_compensations(tx)
    assert result.state is TransactionState.ROLLED_BACK
    assert names(heard) == [
        "TransactionBegan",
        "TransactionCompensating",
        "CompensationStarted",
        "CompensationCompleted",
        "TransactionRolledBack",
    ]
    assert {e.run for e in heard if isinstance(e, events.TransactionEvent)} == {
        "retry_compensations"
    }


async def test_a_stuck_async_listener_does_not_hold_the_managers_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = anyio.Event()

    async def stuck(event: events.Event) -> None:
        await never.wait()

    manager = TransactionManager(listeners=[stuck])
    await manager.commit(manager.begin())
    with anyio.move_on_after(0.01) as bound:
        await manager.drain_events()
    assert bound.cancelled_caught
    manager_module._DRAIN_ON_EXIT = 0.01  # type: ignore[attr-defined]
    try:
        with caplog.at_level(logging.WARNING, logger="aumai_transactions"):
            with anyio.fail_after(10):
                async with manager:
                    pass
    finally:
        manager_module._DRAIN_ON_EXIT = 5.0  # type: ignore[attr-defined]
    # The first event is being handled; the other one waits in the queue.
    assert "1 event(s) not yet delivered to async listeners" in caplog.text
    never.set()
    with anyio.fail_after(10):
        await manager.drain_events()
