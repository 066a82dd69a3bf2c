"""The engine: timeouts, cancellation, retries, failing compensations, concurrency, journal.

No test sleeps to wait for a race: handlers block on ``anyio.Event``s the test controls,
and a timeout test uses a short deadline over a handler that would otherwise wait forever.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    LeaseConflictError,
    MemoryStore,
    RetryPolicy,
    StepStatus,
    Transaction,
    TransactionManager,
    TransactionState,
    TransactionStep,
)
from aumai_transactions._driver import records_nowait
from aumai_transactions.stores import Lease

from ._support import Recorder, completed_actions

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0)


async def wait_forever(action: str, data: dict[str, Any]) -> None:
    await anyio.Event().wait()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Record the delays the engine sleeps for between attempts, without waiting."""
    delays: list[float] = []
    real_sleep = anyio.sleep

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    yield delays


# ---------------------------------------------------------------- timeouts


async def test_a_transaction_past_its_deadline_fails_at_commit_and_runs_nothing() -> None:
    recorder = Recorder()
    manager = TransactionManager(recorder.handlers("a", "undo_a", "b"))
    tx = manager.begin(timeout_seconds=5)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b")
    tx.created_at -= timedelta(seconds=6)  # begun six seconds ago

    result = await manager.commit(tx)
    assert recorder.calls == []
    assert result.state is TransactionState.FAILED and tx.state is TransactionState.FAILED
    assert result.error is not None and "timed out before commit" in result.error
    assert tx.transaction_id in result.error
    assert result.failed_step is None and result.completed_steps == []
    assert [(s.status, s.attempts) for s in tx.steps] == [(StepStatus.PENDING, 0)] * 2
    with pytest.raises(ValueError, match="in state 'failed'"):
        await manager.commit(tx)


async def test_an_old_dump_of_the_original_tool_is_past_its_deadline() -> None:
    tx = Transaction.model_validate(
        {
            "transaction_id": "t-1",
            "steps": [{"step_id": "s-1", "agent_id": "a", "action": "x", "data": {}}],
            "state": "pending",
            "created_at": "2020-01-01T00:00:00",
            "timeout_seconds": 60,
        }
    )
    recorder = Recorder()
    result = await TransactionManager(recorder.handlers("x")).commit(tx)
    assert result.state is TransactionState.FAILED and recorder.calls == []


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_timeout_while_a_step_runs_cancels_it_and_compensates_promptly(
    kind: str,
) -> None:
    cancelled: list[str] = []

    async def hang(action: str, data: dict[str, Any]) -> None:
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            cancelled.append(action)
            raise

    recorder = Recorder()
    handlers: dict[str, Any] = recorder.handlers("a", "undo_a", "b", "undo_b", "c", kind=kind)
    manager = TransactionManager({**handlers, "hang": hang, "undo_hang": recorder.sync})
    tx = manager.begin(timeout_seconds=0.25)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b", compensating_action="undo_b")
    manager.add_step(tx, "agent", "hang", compensating_action="undo_hang")
    manager.add_step(tx, "agent", "c")

    started = anyio.current_time()
    with anyio.fail_after(5):
        result = await manager.commit(tx)
    elapsed = anyio.current_time() - started

    assert elapsed < 2.0, f"commit returned {elapsed:.2f}s after it started"
    assert cancelled == ["hang"]
    # The interrupted step is in doubt: it is compensated first, then the completed ones.
    assert recorder.actions == ["a", "b", "undo_hang", "undo_b", "undo_a"]
    assert result.state is TransactionState.FAILED and tx.state is TransactionState.FAILED
    assert result.error is not None and "timed out" in result.error
    assert result.failed_step == tx.steps[2].step_id
    assert result.interrupted_steps == [tx.steps[2].step_id]
    assert completed_actions(tx, result) == ["hang", "b", "a"]
    assert result.compensation_errors == {}
    assert [s.status for s in tx.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.PENDING,
    ]
    assert [s.interrupted for s in tx.steps] == [False, False, True, False]
    assert tx.steps[2].error is not None and "timed out" in tx.steps[2].error


async def test_a_timeout_does_not_wait_for_a_blocked_sync_handler_thread() -> None:
    release = threading.Event()
    entered = threading.Event()

    def blocking(action: str, data: dict[str, Any]) -> None:
        entered.set()
        release.wait(10)  # a plain function cannot be interrupted; it is abandoned

    recorder = Recorder()
    manager = TransactionManager({**recorder.handlers("a", "undo_a"), "block": blocking})
    tx = manager.begin(timeout_seconds=0.25)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "block")
    try:
        started = anyio.current_time()
        with anyio.fail_after(5):
            result = await manager.commit(tx)
        assert anyio.current_time() - started < 2.0
    finally:
        release.set()
    assert entered.is_set()
    assert result.state is TransactionState.FAILED
    assert recorder.actions == ["a", "undo_a"]


async def test_a_timeout_during_a_retry_backoff_fails_the_transaction() -> None:
    recorder = Recorder(fail={"flaky"})
    manager = TransactionManager(recorder.handlers("a", "undo_a", "flaky"))
    tx = manager.begin(timeout_seconds=0.25)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    step = manager.add_step(
        tx, "agent", "flaky", retry=RetryPolicy(max_attempts=5, initial_delay=30, jitter=0)
    )
    with anyio.fail_after(5):
        result = await manager.commit(tx)
    assert result.state is TransactionState.FAILED
    assert recorder.actions == ["a", "flaky", "undo_a"]
    assert step.attempts == 1 and step.status is StepStatus.FAILED


# ---------------------------------------------------------------- failing compensations


async def test_a_compensation_that_keeps_failing_ends_in_compensation_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder(fail={"undo_b", "c"})
    manager = TransactionManager(
        recorder.handlers("a", "undo_a", "b", "undo_b", "c"), compensation_retry=FAST_RETRY
    )
    tx = manager.begin()
    a = manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    b = manager.add_step(tx, "agent", "b", compensating_action="undo_b")
    c = manager.add_step(tx, "agent", "c")
    with caplog.at_level(logging.ERROR, logger="aumai_transactions"):
        result = await manager.commit(tx)

    # Every compensation is tried, whatever the others do; the failing one three times.
    assert recorder.actions == ["a", "b", "c", "undo_b", "undo_b", "undo_b", "undo_a"]
    assert result.state is TransactionState.COMPENSATION_FAILED
    assert tx.state is TransactionState.COMPENSATION_FAILED
    assert result.compensation_errors == {b.step_id: "undo_b failed"}
    # The step's own error is kept; the compensation error never replaces it.
    assert result.error == "c failed" and result.failed_step == c.step_id
    assert (b.status, b.compensation_attempts, b.compensation_error) == (
        StepStatus.COMPENSATION_FAILED,
        3,
        "undo_b failed",
    )
    assert a.status is StepStatus.COMPENSATED and a.compensation_error is None
    assert any("undo_b failed" in r.getMessage() for r in caplog.records)


async def test_compensations_retry_by_default_with_backoff(sleeps: list[float]) -> None:
    recorder = Recorder(fail={"undo_a", "b"})
    manager = TransactionManager(recorder.handlers("a", "undo_a", "b"))
    tx = manager.begin()
    a = manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b")
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMPENSATION_FAILED
    assert a.compensation_attempts == 3
    assert len(sleeps) == 2 and sleeps[0] < sleeps[1]


async def test_a_compensation_that_fails_once_then_succeeds_rolls_back() -> None:
    failures = iter([True])

    def undo(action: str, data: dict[str, Any]) -> None:
        if next(failures, False):
            raise ConnectionError("busy")

    recorder = Recorder(fail={"b"})
    manager = TransactionManager(
        {**recorder.handlers("a", "b"), "undo_a": undo}, compensation_retry=FAST_RETRY
    )
    tx = manager.begin()
    a = manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b")
    result = await manager.commit(tx)
    assert result.state is TransactionState.ROLLED_BACK
    assert result.compensation_errors == {}
    assert (a.status, a.compensation_attempts, a.compensation_error) == (
        StepStatus.COMPENSATED,
        2,
        None,
    )


async def test_a_compensation_that_hangs_is_cut_off_by_its_time_bound() -> None:
    recorder = Recorder(fail={"c"})
    manager = TransactionManager(
        {**recorder.handlers("a", "undo_a", "b", "c"), "undo_b": wait_forever},
        compensation_timeout=0.2,
    )
    tx = manager.begin()
    a = manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    b = manager.add_step(tx, "agent", "b", compensating_action="undo_b")
    manager.add_step(tx, "agent", "c")
    with anyio.fail_after(5):
        result = await manager.commit(tx)
    assert result.state is TransactionState.COMPENSATION_FAILED
    assert result.compensation_errors[b.step_id] == "compensation timed out after 0.2s"
    assert "not compensated" in result.compensation_errors[a.step_id]
    assert b.status is StepStatus.COMPENSATION_FAILED
    assert result.error == "c failed"


# ---------------------------------------------------------------- concurrency


async def test_two_concurrent_commits_of_one_transaction_run_it_once() -> None:
    entered = anyio.Event()
    release = anyio.Event()
    calls: list[str] = []

    async def gated(action: str, data: dict[str, Any]) -> None:
        calls.append(action)
        entered.set()
        await release.wait()

    manager = TransactionManager({"gated": gated, "after": Recorder().async_})
    tx = manager.begin()
    manager.add_step(tx, "agent", "gated")
    manager.add_step(tx, "agent", "after")
    results: list[Any] = []

    async def commit() -> None:
        results.append(await manager.commit(tx))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(commit)
            await entered.wait()
            with pytest.raises(ValueError) as info:
                await manager.commit(tx)
            release.set()
    assert str(info.value) == (
        f"Transaction {tx.transaction_id} is in state 'active'; "
        "only 'pending' transactions can be committed."
    )
    assert calls == ["gated"]
    assert [r.state for r in results] == [TransactionState.COMMITTED]


async def test_commits_started_at_the_same_instant_run_the_transaction_exactly_once() -> None:
    recorder = Recorder()
    manager = TransactionManager(recorder.handlers("a", "b", kind="async"))
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    manager.add_step(tx, "agent", "b")
    outcomes: list[str] = []

    async def commit() -> None:
        try:
            outcomes.append((await manager.commit(tx)).state.value)
        except ValueError:
            outcomes.append("refused")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(commit)
    assert sorted(outcomes) == ["committed"] + ["refused"] * 9
    assert recorder.actions == ["a", "b"]


async def test_two_thousand_transactions_commit_concurrently_in_one_event_loop() -> None:
    n = 2000
    arrived = 0
    everyone_in = anyio.Event()

    async def enter(action: str, data: dict[str, Any]) -> int:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            everyone_in.set()
        # Nobody passes until all 2,000 transactions are inside this step at once.
        await everyone_in.wait()
        return int(data["i"])

    async def leave(action: str, data: dict[str, Any]) -> None:
        return None

    manager = TransactionManager({"enter": enter, "leave": leave})
    transactions = []
    for i in range(n):
        tx = manager.begin(timeout_seconds=60)
        manager.add_step(tx, f"agent-{i % 7}", "enter", {"i": i}, "leave")
        manager.add_step(tx, f"agent-{i % 5}", "leave", {"i": i})
        transactions.append(tx)
    results: list[Any] = [None] * n

    async def commit(index: int, tx: Transaction) -> None:
        results[index] = await manager.commit(tx)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for index, tx in enumerate(transactions):
                group.start_soon(commit, index, tx)

    assert arrived == n
    assert all(r.state is TransactionState.COMMITTED for r in results)
    assert [tx.steps[0].result for tx in transactions] == list(range(n))
    assert len({r.transaction_id for r in results}) == n
    assert len(manager.get_all_transactions()) == n


# ---------------------------------------------------------------- outer cancellation


@pytest.mark.parametrize("timeout", [None, 60])
async def test_outer_cancellation_during_a_step_compensates_then_reraises(
    timeout: float | None,
) -> None:
    entered = anyio.Event()

    async def hang(action: str, data: dict[str, Any]) -> None:
        entered.set()
        await anyio.Event().wait()

    recorder = Recorder()
    manager = TransactionManager(
        {**recorder.handlers("a", "undo_a", "b", "undo_b", "undo_hang"), "hang": hang}
    )
    tx = manager.begin(timeout_seconds=timeout)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b", compensating_action="undo_b")
    manager.add_step(tx, "agent", "hang", compensating_action="undo_hang")
    outcome: list[str] = []

    async def commit() -> None:
        try:
            await manager.commit(tx)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("returned")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(commit)
            await entered.wait()
            group.cancel_scope.cancel()

    assert outcome == ["cancelled"]
    assert recorder.actions == ["a", "b", "undo_hang", "undo_b", "undo_a"]
    assert tx.state is TransactionState.FAILED
    assert tx.error is not None and "interrupted" in tx.error
    assert [s.status for s in tx.steps] == [StepStatus.COMPENSATED] * 3
    assert tx.steps[2].interrupted


async def test_outer_cancellation_during_compensation_waits_for_it_to_finish() -> None:
    in_compensation = anyio.Event()
    release = anyio.Event()
    calls: list[str] = []

    async def undo(action: str, data: dict[str, Any]) -> None:
        calls.append(f"{action}:start")
        in_compensation.set()
        await release.wait()
        calls.append(f"{action}:end")

    recorder = Recorder(fail={"b"})
    manager = TransactionManager({**recorder.handlers("a", "b"), "undo_a": undo})
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b")
    scope = anyio.CancelScope()
    finished = anyio.Event()

    async def commit() -> None:
        with scope:
            await manager.commit(tx)
        finished.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(commit)
            await in_compensation.wait()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert not finished.is_set()  # the shielded compensation is still running
            release.set()
    assert calls == ["undo_a:start", "undo_a:end"]
    assert tx.state is TransactionState.ROLLED_BACK
    assert tx.steps[0].status is StepStatus.COMPENSATED


async def test_native_asyncio_cancellation_during_compensation_does_not_interrupt_it() -> None:
    in_compensation = anyio.Event()
    release = anyio.Event()
    calls: list[str] = []

    async def undo(action: str, data: dict[str, Any]) -> None:
        calls.append(f"{action}:start")
        in_compensation.set()
        await release.wait()
        calls.append(f"{action}:end")

    recorder = Recorder(fail={"b"})
    manager = TransactionManager({**recorder.handlers("a", "b"), "undo_a": undo})
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b")

    task = asyncio.ensure_future(manager.commit(tx))
    with anyio.fail_after(5):
        await in_compensation.wait()
        task.cancel()  # what asyncio.timeout() and asyncio.wait_for() do at their deadline
        await anyio.wait_all_tasks_blocked()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls == ["undo_a:start", "undo_a:end"]
    assert tx.state is TransactionState.ROLLED_BACK


async def test_repeated_native_asyncio_cancellation_still_compensates() -> None:
    entered = anyio.Event()
    in_compensation = anyio.Event()
    release = anyio.Event()

    async def hang(action: str, data: dict[str, Any]) -> None:
        entered.set()
        await anyio.Event().wait()

    async def undo(action: str, data: dict[str, Any]) -> None:
        in_compensation.set()
        await release.wait()

    manager = TransactionManager({"a": Recorder().async_, "undo_a": undo, "hang": hang})
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "hang")

    task = asyncio.ensure_future(manager.commit(tx))
    with anyio.fail_after(5):
        await entered.wait()
        task.cancel()
        await in_compensation.wait()
        task.cancel()
        await anyio.wait_all_tasks_blocked()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert tx.state is TransactionState.FAILED
    assert tx.steps[0].status is StepStatus.COMPENSATED


async def test_asyncio_timeout_during_a_step_compensates_then_raises_timeout_error() -> None:
    entered = anyio.Event()

    async def hang(action: str, data: dict[str, Any]) -> None:
        entered.set()
        await anyio.Event().wait()

    recorder = Recorder()
    manager = TransactionManager({**recorder.handlers("a", "undo_a"), "hang": hang})
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "hang")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await manager.commit(tx)
    assert entered.is_set()
    assert recorder.actions == ["a", "undo_a"]
    assert tx.state is TransactionState.FAILED


async def test_a_base_exception_from_a_handler_compensates_then_propagates() -> None:
    def interrupt(action: str, data: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    recorder = Recorder()
    manager = TransactionManager(
        {**recorder.handlers("a", "undo_a"), "interrupt": interrupt}, sync_handlers="inline"
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "interrupt")
    with pytest.raises(KeyboardInterrupt):
        await manager.commit(tx)
    assert recorder.actions == ["a", "undo_a"]
    assert tx.state is TransactionState.FAILED


# ---------------------------------------------------------------- retries


async def test_a_step_is_retried_with_exponential_backoff_until_it_succeeds(
    sleeps: list[float],
) -> None:
    failures = 3

    def flaky(action: str, data: dict[str, Any]) -> str:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("busy")
        return "ok"

    manager = TransactionManager({"flaky": flaky})
    tx = manager.begin()
    step = manager.add_step(
        tx,
        "agent",
        "flaky",
        retry=RetryPolicy(
            max_attempts=5, initial_delay=0.01, multiplier=3, max_delay=0.05, jitter=0
        ),
    )
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    assert (step.attempts, step.result, step.error) == (4, "ok", None)
    assert sleeps == [0.01, 0.03, 0.05]


async def test_a_step_that_exhausts_its_retries_fails_and_is_not_compensated(
    sleeps: list[float],
) -> None:
    recorder = Recorder(fail={"b"})
    manager = TransactionManager(recorder.handlers("a", "undo_a", "b", "undo_b"))
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    b = manager.add_step(
        tx, "agent", "b", compensating_action="undo_b", retry=RetryPolicy(max_attempts=3)
    )
    result = await manager.commit(tx)
    assert recorder.actions == ["a", "b", "b", "b", "undo_a"]
    assert (b.attempts, b.status, b.error) == (3, StepStatus.FAILED, "b failed")
    assert result.state is TransactionState.ROLLED_BACK and result.failed_step == b.step_id
    assert len(sleeps) == 2


async def test_only_the_exceptions_named_in_retry_on_are_retried() -> None:
    calls: list[str] = []

    def picky(action: str, data: dict[str, Any]) -> None:
        calls.append(action)
        raise ValueError("bad request")

    manager = TransactionManager({"picky": picky})
    tx = manager.begin()
    step = manager.add_step(
        tx,
        "agent",
        "picky",
        retry=RetryPolicy(max_attempts=5, initial_delay=0.001, retry_on=(ConnectionError,)),
    )
    result = await manager.commit(tx)
    assert calls == ["picky"] and step.attempts == 1
    assert result.state is TransactionState.ROLLED_BACK and result.error == "bad request"


async def test_retries_really_wait_between_attempts() -> None:
    times: list[float] = []

    async def flaky(action: str, data: dict[str, Any]) -> None:
        times.append(anyio.current_time())
        if len(times) < 3:
            raise ConnectionError("busy")

    manager = TransactionManager({"flaky": flaky})
    tx = manager.begin()
    manager.add_step(
        tx, "agent", "flaky", retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)
    )
    assert (await manager.commit(tx)).state is TransactionState.COMMITTED
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.009 and gaps[1] >= 0.019


# ---------------------------------------------------------------- the journal


class JournalSpy(MemoryStore):
    """A memory store that remembers every write the engine makes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, str | None, str | None]] = []

    async def acquire(self, tx: Transaction, *args: Any, **kwargs: Any) -> Lease:
        lease = await super().acquire(tx, *args, **kwargs)
        self.writes.append((tx.state.value, None, None))
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
        self.writes.append(
            (tx.state.value, step.action if step else None, step.status.value if step else None)
        )


async def test_every_step_intent_is_journaled_before_its_handler_runs() -> None:
    spy = JournalSpy()
    seen_by_handler: list[tuple[str, str | None, str | None]] = []

    def handler(action: str, data: dict[str, Any]) -> None:
        seen_by_handler.append(spy.writes[-1])
        if action == "b":
            raise RuntimeError("b failed")

    manager = TransactionManager(
        {name: handler for name in ("a", "undo_a", "b")}, store=spy, sync_handlers="inline"
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b")
    await manager.commit(tx)

    # When each handler ran, the last write was the intent for that very step.
    assert seen_by_handler == [
        ("active", "a", "running"),
        ("active", "b", "running"),
        ("compensating", "a", "compensating"),
    ]
    assert spy.writes == [
        ("active", None, None),
        ("active", "a", "running"),
        ("active", "a", "completed"),
        ("active", "b", "running"),
        ("active", "b", "failed"),
        ("compensating", None, None),
        ("compensating", "a", "compensating"),
        ("compensating", "a", "compensated"),
        ("rolled_back", None, None),
    ]
    assert await spy.load(tx.transaction_id) is tx


class NowaitSpy(MemoryStore):
    """Has ``record_nowait`` beside its ``record``: the engine journals through it."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[tuple[str | None, bool, str | None]] = []

    async def record(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
    ) -> None:
        raise AssertionError("the engine journals through record_nowait")

    def record_nowait(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
        previous: TransactionStep | None = None,
    ) -> None:
        self.handed.append(
            (step.action if step else None, durable, previous.action if previous else None)
        )
        super().record_nowait(lease, tx, step, durable=durable, previous=previous)


async def test_the_engine_journals_through_record_nowait_where_the_store_has_it() -> None:
    spy = NowaitSpy()
    manager = TransactionManager({"a": lambda action, data: None}, store=spy)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    # The intent durable, the completion lazy, the final state durable.
    assert spy.handed == [("a", True, None), ("a", False, None), (None, True, None)]
    assert records_nowait(NowaitSpy) and records_nowait(MemoryStore)
    # A store overriding ``record`` alone is journaled through its ``record`` (above).
    assert not records_nowait(JournalSpy)


class DurableNowaitSpy(NowaitSpy):
    """As a durable store: the engine folds each completion into the next record."""

    @property
    def durable(self) -> bool:
        return True


async def test_a_durable_store_gets_each_completion_with_the_record_that_follows() -> None:
    spy = DurableNowaitSpy()
    manager = TransactionManager(
        {"a": lambda action, data: None, "undo_a": lambda action, data: None}, store=spy
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    # Each intent durable, carrying the completion before it; the end carries the last.
    assert spy.handed == [("a", True, None), ("a", True, "a"), (None, True, "a")]

    # A rollback: the move to compensating rides with the first compensation's intent.
    spy.handed.clear()
    failing = TransactionManager(
        {"a": lambda action, data: None, "undo_a": lambda action, data: None, "b": _fails},
        store=spy,
    )
    tx = failing.begin()
    failing.add_step(tx, "agent", "a", {}, "undo_a")
    failing.add_step(tx, "agent", "b")
    result = await failing.commit(tx)
    assert result.state is TransactionState.ROLLED_BACK
    assert spy.handed == [
        ("a", True, None),
        ("b", True, "a"),  # b's intent, with a's completion
        ("b", True, None),  # b failed
        ("a", True, None),  # a's compensation intent, with the move to compensating
        (None, True, "a"),  # the end, with the compensation's completion
    ]
    stored = await spy.load(tx.transaction_id)
    assert stored is not None and stored.steps[0].status is StepStatus.COMPENSATED


class CarryingSpy(DurableNowaitSpy):
    """As a store whose acquire carries a running step's intent: what each acquire saw."""

    acquire_carries_intent = True

    def __init__(self) -> None:
        super().__init__()
        self.acquired: list[list[tuple[str, StepStatus, int]]] = []
        self.refuse = False

    async def acquire(self, tx: Transaction, owner: str, ttl: float, expected: Any) -> Lease:
        self.acquired.append([(s.action, s.status, s.attempts) for s in tx.steps])
        if self.refuse:
            raise LeaseConflictError("refused, for the test")
        return await super().acquire(tx, owner, ttl, expected)


async def test_the_lease_carries_the_first_intent_where_the_store_says_it_can() -> None:
    spy = CarryingSpy()
    ran: list[StepStatus] = []

    async def first(action: str, data: dict[str, Any]) -> None:
        stored = await spy.load(tx.transaction_id)  # what the journal says meanwhile
        assert stored is not None
        ran.append(stored.steps[0].status)

    def noop(action: str, data: dict[str, Any]) -> None:
        return None

    manager = TransactionManager({"first": first, "a": noop, "undo_a": noop}, store=spy)
    tx = manager.begin()
    manager.add_step(tx, "agent", "first", {}, "undo_a")
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    # The acquire wrote the first step running (its intent), before its handler ran.
    assert spy.acquired == [[("first", StepStatus.RUNNING, 1), ("a", StepStatus.PENDING, 0)]]
    assert ran == [StepStatus.RUNNING]
    assert tx.steps[0].attempts == 1 and tx.steps[0].status is StepStatus.COMPLETED
    # No intent of its own for the first step: the second's carries its completion.
    assert spy.handed == [("a", True, "first"), (None, True, "a")]


async def test_a_refused_acquire_leaves_the_first_step_as_it_was() -> None:
    spy = CarryingSpy()
    spy.refuse = True
    manager = TransactionManager({"a": lambda action, data: None}, store=spy)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    with pytest.raises(LeaseConflictError):
        await manager.commit(tx)
    step = tx.steps[0]
    assert (step.status, step.attempts, step.started_at) == (StepStatus.PENDING, 0, None)
    assert tx.state is TransactionState.PENDING
    spy.refuse = False
    result = await manager.commit(tx)  # nothing ran: it may be committed again
    assert result.state is TransactionState.COMMITTED and step.attempts == 1


async def test_a_parallel_first_step_or_a_store_without_it_gets_an_intent_of_its_own() -> None:
    spy = CarryingSpy()
    manager = TransactionManager({"a": lambda action, data: None}, store=spy)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", group="g")
    manager.add_step(tx, "agent", "a", group="g")
    await manager.commit(tx)
    assert [status for _, status, _ in spy.acquired[0]] == [StepStatus.PENDING] * 2

    plain = DurableNowaitSpy()  # no acquire_carries_intent
    manager = TransactionManager({"a": lambda action, data: None}, store=plain)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    await manager.commit(tx)
    assert plain.handed == [("a", True, None), (None, True, "a")]


def _fails(action: str, data: dict[str, Any]) -> None:
    raise RuntimeError("no")


async def test_a_handler_that_opens_its_own_cancel_scope_runs_under_the_deadline() -> None:
    """Regression: the deadline scope was once entered at the pass's first suspension,
    which broke scope nesting when that suspension sat inside the handler's own scope."""

    async def scoped(action: str, data: dict[str, Any]) -> str:
        with anyio.move_on_after(5):
            await anyio.sleep(0)
        return "done"

    manager = TransactionManager({"a": scoped})
    tx = manager.begin(timeout_seconds=30)
    manager.add_step(tx, "agent", "a")
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    assert tx.steps[0].result == "done"


async def test_an_inline_sync_step_that_overruns_the_deadline_stops_the_pass() -> None:
    """Inline sync handlers cannot be interrupted; the deadline is checked between steps."""
    ran: list[str] = []

    def slow(action: str, data: dict[str, Any]) -> None:
        ran.append(action)
        time.sleep(0.06)  # the work of this step outlasts the transaction's 0.05 s

    def record(action: str, data: dict[str, Any]) -> None:
        ran.append(action)

    manager = TransactionManager({"a": slow, "b": record, "undo_a": record}, sync_handlers="inline")
    tx = manager.begin(timeout_seconds=0.05)
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    manager.add_step(tx, "agent", "b")
    result = await manager.commit(tx)
    assert ran == ["a", "undo_a"]
    assert result.state is TransactionState.FAILED
    assert result.error is not None and "timed out" in result.error


async def test_a_handler_that_spoils_its_step_data_fails_the_step_cleanly(tmp_path: Path) -> None:
    """A durable journal writes the step's data with every record: a handler that puts
    a non-JSON value into it must not leave the transaction stuck mid-way."""
    from aumai_transactions.stores.sqlite import SqliteStore

    undone: list[str] = []

    def spoil(action: str, data: dict[str, Any]) -> None:
        data["when"] = object()

    def undo(action: str, data: dict[str, Any]) -> None:
        undone.append(action)

    handlers = {"a": lambda a, d: None, "b": spoil, "undo_a": undo, "undo_b": undo}
    async with TransactionManager(handlers, store=SqliteStore(tmp_path / "j.db")) as manager:
        tx = manager.begin()
        manager.add_step(tx, "agent", "a", compensating_action="undo_a")
        manager.add_step(tx, "agent", "b", compensating_action="undo_b")
        result = await manager.commit(tx)
        stored = await manager.store.load(tx.transaction_id)
    assert result.state is TransactionState.ROLLED_BACK
    assert result.failed_step == tx.steps[1].step_id
    assert result.error is not None and "data['when']" in result.error
    assert undone == ["undo_a"]
    assert stored is not None and stored.state is TransactionState.ROLLED_BACK
    assert stored.steps[1].data["when"].startswith("<object object")
