"""The blocking facade: same API as the async classes, usable from scripts, refused in a loop."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import aumai_transactions
from aumai_transactions import StepStatus, TransactionState
from aumai_transactions import sync as blocking

from ._support import Recorder, completed_actions

ROOT = Path(__file__).resolve().parent.parent


def test_the_facade_works_from_a_script(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio

            from aumai_transactions.sync import SagaOrchestrator, TransactionManager


            def plain(action, data):
                print("ran", action)
                if action == "boom":
                    raise RuntimeError("boom!")
                return {"seen": action}


            async def asynchronous(action, data):
                await asyncio.sleep(0)
                print("ran", action)


            with TransactionManager(
                {"a": plain, "undo_a": plain, "b": asynchronous, "boom": plain}
            ) as manager:
                tx = manager.begin(timeout_seconds=30)
                manager.add_step(tx, "agent", "a", {"n": 1}, "undo_a")
                manager.add_step(tx, "agent", "b", {"n": 2})
                result = manager.commit(tx)
                print("commit", result.state.value, len(result.completed_steps))
                print("rollback", manager.rollback(tx).state.value)

                saga = SagaOrchestrator(manager)
                saga.register("agent", "a", {}, "undo_a").register("agent", "boom")
                failed = saga.execute(timeout_seconds=30)
                print("saga", failed.state.value, failed.error)
                print("known", len(manager.get_all_transactions()))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        "ran a",
        "ran b",
        "commit committed 2",
        "ran undo_a",
        "rollback rolled_back",
        "ran a",
        "ran boom",
        "ran undo_a",
        "saga rolled_back boom!",
        "known 2",
    ]


def test_the_facade_in_a_synchronous_test() -> None:
    recorder = Recorder(fail={"charge_card"})
    manager = blocking.TransactionManager(
        {
            **recorder.handlers("create_user", "delete_user"),
            **recorder.handlers("charge_card", kind="async"),
        }
    )
    tx = manager.begin()
    manager.add_step(tx, "users", "create_user", {"id": 1}, "delete_user")
    manager.add_step(tx, "billing", "charge_card", {"amount": 1})
    result = manager.commit(tx)
    assert result.state is TransactionState.ROLLED_BACK
    assert recorder.actions == ["create_user", "charge_card", "delete_user"]
    assert completed_actions(tx, result) == ["create_user"]
    assert manager.get_transaction(tx.transaction_id) is tx
    assert manager.get_all_transactions() == [tx]
    assert manager.store is manager.manager.store
    assert manager.recover() == []


def test_errors_pass_through_the_facade_unchanged() -> None:
    manager = blocking.TransactionManager()
    tx = manager.begin()
    manager.commit(tx)
    with pytest.raises(ValueError, match="only 'pending' transactions can be committed"):
        manager.commit(tx)
    with pytest.raises(ValueError, match="timeout_seconds must be a positive number"):
        manager.begin(timeout_seconds=-1)
    other = blocking.TransactionManager()
    restored = aumai_transactions.Transaction.model_validate(tx.model_dump(mode="json"))
    other.register_transaction(restored)
    assert other.get_transaction(tx.transaction_id) is restored


def test_the_sync_saga_and_manual_rollback() -> None:
    recorder = Recorder()
    manager = blocking.TransactionManager(recorder.handlers("a", "undo_a", "b", "undo_b"))
    saga = blocking.SagaOrchestrator(manager)
    assert saga.register("agent", "a", {}, "undo_a").register("agent", "b", {}, "undo_b") is saga
    result = saga.execute(timeout_seconds=10)
    assert result.state is TransactionState.COMMITTED
    tx = manager.get_transaction(result.transaction_id)
    assert tx is not None
    rolled = manager.rollback(tx)
    assert rolled.state is TransactionState.ROLLED_BACK
    assert recorder.actions == ["a", "b", "undo_b", "undo_a"]
    assert [s.status for s in tx.steps] == [StepStatus.COMPENSATED] * 2


def test_the_sync_saga_needs_a_sync_manager() -> None:
    with pytest.raises(TypeError, match=r"needs an aumai_transactions\.sync\.TransactionManager"):
        blocking.SagaOrchestrator(aumai_transactions.TransactionManager())  # type: ignore[arg-type]


async def test_the_facade_refuses_to_block_a_running_event_loop() -> None:
    manager = blocking.TransactionManager()
    tx = manager.begin()  # building a transaction does not block, so it is allowed
    manager.add_step(tx, "agent", "a")
    saga = blocking.SagaOrchestrator(manager).register("agent", "a")
    calls: list[Any] = [
        lambda: manager.commit(tx),
        lambda: manager.rollback(tx),
        lambda: manager.recover(),
        lambda: manager.save(tx),
        lambda: manager.close(),
        lambda: saga.execute(),
    ]
    for call in calls:
        with pytest.raises(RuntimeError) as info:
            call()
        message = str(info.value)
        assert "inside an event loop" in message and "`await`" in message
        assert "aumai_transactions.TransactionManager" in message
    assert tx.state is TransactionState.PENDING  # nothing ran
    result = await manager.manager.commit(tx)  # the async twin is the way
    assert result.state is TransactionState.COMMITTED


def _parameters(func: Any) -> list[tuple[str, Any, Any]]:
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(func).parameters.values()
        if p.name != "self"
    ]


@pytest.mark.parametrize(
    ("async_class", "sync_class"),
    [
        (aumai_transactions.TransactionManager, blocking.TransactionManager),
        (aumai_transactions.SagaOrchestrator, blocking.SagaOrchestrator),
    ],
)
def test_the_blocking_classes_have_the_same_methods_and_arguments(
    async_class: type, sync_class: type
) -> None:
    assert _parameters(async_class.__init__) == _parameters(sync_class.__init__)
    public = [
        name
        for name, member in inspect.getmembers(async_class, inspect.isfunction)
        if not name.startswith("_") and name not in {"recovery_worker", "keep_leases_renewed"}
    ]
    assert public, async_class
    for name in public:
        assert hasattr(sync_class, name), f"{sync_class.__qualname__} lacks {name}"
        assert _parameters(getattr(async_class, name)) == _parameters(getattr(sync_class, name)), (
            name
        )
        assert inspect.iscoroutinefunction(getattr(sync_class, name)) is False


class _RenewalWatchingStore(aumai_transactions.MemoryStore):
    """An in-memory store that says it is durable and reports every lease renewal."""

    def __init__(self) -> None:
        super().__init__()
        self.renewed = threading.Event()

    @property
    def durable(self) -> bool:
        return True

    async def renew(self, owner: str, ttl: float) -> int:
        renewed = await super().renew(owner, ttl)
        if renewed:
            self.renewed.set()
        return renewed


def test_the_facade_keeps_leases_renewed_while_a_long_handler_runs() -> None:
    store = _RenewalWatchingStore()
    seen: list[bool] = []

    def long_step(action: str, data: dict[str, Any]) -> None:
        # Runs in a worker thread; returns once the heartbeat has renewed its lease.
        seen.append(store.renewed.wait(timeout=10))

    with blocking.TransactionManager({"long": long_step}, store=store, lease_ttl=0.3) as manager:
        tx = manager.begin()
        manager.add_step(tx, "agent", "long")
        result = manager.commit(tx)
    assert seen == [True]
    assert result.state is TransactionState.COMMITTED
