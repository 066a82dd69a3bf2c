"""Idempotency keys given by the caller (a tool call id) and the open transaction in scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    StepContext,
    StepFailedError,
    StepStatus,
    TransactionManager,
    TransactionState,
    current_transaction,
)
from aumai_transactions import sync as blocking
from tests.stores.conftest import BACKENDS, make_store


class Counter:
    """Handlers that count their calls and record the keys they were given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_next = False

    def book(self, action: str, data: dict[str, Any], ctx: StepContext) -> str:
        self.calls.append((action, ctx.idempotency_key))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("flaky")
        return f"{action}:{len(self.calls)}"

    def handlers(self) -> dict[str, Any]:
        return {"book": self.book, "cancel": self.book, "other": self.book}


@pytest.mark.parametrize("kind", BACKENDS)
async def test_a_given_key_is_the_steps_idempotency_key_and_is_journaled(
    kind: str, tmp_path: Path
) -> None:
    counter = Counter()
    store = make_store(kind, tmp_path)
    manager = TransactionManager(counter.handlers(), store=store)
    async with manager.transaction() as tx:
        await tx.run("agent", "book", {"n": 1}, "cancel", idempotency_key="call_A")
        await tx.run("agent", "book", {"n": 2}, "cancel")
    assert counter.calls[0] == ("book", "call_A")
    derived = counter.calls[1][1]
    assert derived == f"{tx.transaction_id}:{tx.transaction.steps[1].step_id}"
    stored = await store.load(tx.transaction_id)
    await store.close()
    assert stored is not None and [s.key for s in stored.steps] == ["call_A", None]


async def test_a_key_already_completed_returns_its_result_and_runs_nothing() -> None:
    counter = Counter()
    manager = TransactionManager(counter.handlers())
    with pytest.raises(RuntimeError, match="the model gave up"):
        async with manager.transaction() as tx:
            first = await tx.run("agent", "book", {}, "cancel", idempotency_key="call_A")
            again = await tx.run("agent", "book", {}, "cancel", idempotency_key="call_A")
            other = await tx.run("agent", "book", {}, "cancel", idempotency_key="call_B")
            raise RuntimeError("the model gave up")
    assert first == again == "book:1" and other == "book:2"
    # One step per distinct key, each compensated once, with its own key.
    assert [s.key for s in tx.transaction.steps] == ["call_A", "call_B"]
    assert counter.calls == [
        ("book", "call_A"),
        ("book", "call_B"),
        ("cancel", "call_B"),
        ("cancel", "call_A"),
    ]


async def test_a_key_whose_step_failed_runs_again_as_a_new_step() -> None:
    counter = Counter()
    counter.fail_next = True
    async with TransactionManager(counter.handlers()).transaction() as tx:
        with pytest.raises(StepFailedError):
            await tx.run("agent", "book", {}, idempotency_key="call_A")
        assert await tx.run("agent", "book", {}, idempotency_key="call_A") == "book:2"
    statuses = [(s.key, s.status) for s in tx.transaction.steps]
    assert statuses == [("call_A", StepStatus.FAILED), ("call_A", StepStatus.COMPLETED)]
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED


async def test_a_key_of_another_action_or_a_bad_key_is_refused() -> None:
    async with TransactionManager(Counter().handlers()).transaction() as tx:
        await tx.run("agent", "book", {}, idempotency_key="call_A")
        with pytest.raises(ValueError, match="key of a step of action 'book' already"):
            await tx.run("agent", "other", {}, idempotency_key="call_A")
        for bad in ("", " ", 7):
            with pytest.raises(ValueError, match="idempotency_key must be a non-empty string"):
                await tx.run("agent", "book", {}, idempotency_key=bad)  # type: ignore[arg-type]
    assert len(tx.transaction.steps) == 1


async def test_a_group_skips_a_completed_key_and_refuses_one_given_twice() -> None:
    counter = Counter()
    async with TransactionManager(counter.handlers()).transaction() as tx:
        await tx.run("agent", "book", {}, idempotency_key="call_A")
        async with tx.parallel() as group:
            group.run("agent", "book", {}, idempotency_key="call_A")
            group.run("agent", "book", {}, idempotency_key="call_B")
            with pytest.raises(ValueError, match="'call_B' is given twice in group"):
                group.run("agent", "book", {}, idempotency_key="call_B")
    assert group.results == ["book:1", "book:2"]
    assert [s.key for s in tx.transaction.steps] == ["call_A", "call_B"]
    assert len(counter.calls) == 2


async def test_the_open_transaction_is_in_scope_inside_its_block_and_its_tasks() -> None:
    seen: list[object] = []
    assert current_transaction() is None

    async def tool() -> None:
        seen.append(current_transaction())

    async with TransactionManager().transaction() as tx:
        async with anyio.create_task_group() as group:
            group.start_soon(tool)
        await tool()
    assert seen == [tx, tx]
    assert current_transaction() is None


def test_the_blocking_facade_passes_the_key_on() -> None:
    counter = Counter()
    with blocking.TransactionManager(counter.handlers()).transaction() as tx:
        tx.run("agent", "book", {}, idempotency_key="call_A")
        assert tx.run("agent", "book", {}, idempotency_key="call_A") == "book:1"
        with tx.parallel() as group:
            group.run("agent", "book", {}, idempotency_key="call_B")
    assert counter.calls == [("book", "call_A"), ("book", "call_B")]
