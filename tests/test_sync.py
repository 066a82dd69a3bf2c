"""The blocking facade: same API as the async classes, usable from scripts, refused in a loop."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import anyio
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


def test_the_sync_saga_without_a_manager_makes_its_own() -> None:
    saga = blocking.SagaOrchestrator()
    assert isinstance(saga.manager, blocking.TransactionManager)
    assert saga.register("agent", "a", {"k": 1}).steps == [("agent", "a")]
    result = saga.execute()
    assert result.state is TransactionState.COMMITTED
    assert saga.manager.get_all_transactions()[0].transaction_id == result.transaction_id
    assert blocking.SagaOrchestrator(manager=None).manager is not saga.manager


def _ctrl_c_in_the_second_step(undone: list[str]) -> tuple[Any, Any]:
    """A manager and a transaction whose second step presses Ctrl-C, then waits."""

    async def presses_ctrl_c(action: str, data: dict[str, Any]) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # to the process, as a terminal sends it
        await anyio.sleep_forever()  # until the interrupt cancels it

    manager = blocking.TransactionManager(
        {"a": lambda a, d: None, "undo_a": lambda a, d: undone.append(a), "b": presses_ctrl_c}
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {}, "undo_a")
    manager.add_step(tx, "agent", "b", {})
    manager.add_step(tx, "agent", "c", {})
    return manager, tx


def test_ctrl_c_compensates_then_raises_keyboard_interrupt_from_the_call() -> None:
    undone: list[str] = []
    manager, tx = _ctrl_c_in_the_second_step(undone)
    with pytest.raises(KeyboardInterrupt) as info:
        manager.commit(tx)
    assert undone == ["undo_a"]
    assert tx.state is TransactionState.FAILED
    assert [s.status for s in tx.steps][::2] == [StepStatus.COMPENSATED, StepStatus.PENDING]
    # Raised from the facade's frame, not from inside the portal; nothing chained.
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert info.traceback[-1].path == Path(blocking.__file__).with_name("_portal.py")
    # Python's own SIGINT handler is back in place.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_with_a_sigint_handler_of_the_programs_own() -> None:
    calls: list[int] = []

    def own_handler(signum: int, frame: object) -> None:
        calls.append(signum)
        raise KeyboardInterrupt

    undone: list[str] = []
    manager, tx = _ctrl_c_in_the_second_step(undone)
    previous = signal.signal(signal.SIGINT, own_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            manager.commit(tx)
        assert signal.getsignal(signal.SIGINT) is own_handler  # left alone
    finally:
        signal.signal(signal.SIGINT, previous)
    assert calls == [signal.SIGINT]
    assert undone == ["undo_a"] and tx.state is TransactionState.FAILED


def test_a_script_that_opens_a_manager_and_never_closes_it_still_exits(tmp_path: Path) -> None:
    # The lease renewal 'open' starts in the background is cancelled at exit.
    script = tmp_path / "script.py"
    script.write_text(
        "from aumai_transactions.sync import TransactionManager\n"
        "manager = TransactionManager(store='sqlite:///journal.db')\n"
        "manager.open()\n"
        "print(manager.commit(manager.begin()).state.value)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "committed\n", "")


def _meet_at(barrier: threading.Barrier, recorder: Recorder) -> Any:
    """A sync handler that passes only while another one waits at ``barrier`` too."""

    def meet(action: str, data: dict[str, Any]) -> dict[str, str]:
        barrier.wait()
        return recorder.sync(action, data)

    return meet


def test_the_blocking_add_step_declares_parallel_groups() -> None:
    recorder = Recorder()
    meet = _meet_at(threading.Barrier(2, timeout=5), recorder)
    manager = blocking.TransactionManager(
        {"hotel": meet, "car": meet, **recorder.handlers("flight", "charge")}
    )
    tx = manager.begin()
    manager.add_step(tx, "air", "flight")
    manager.add_step(tx, "stay", "hotel", group="lodging", max_concurrency=2)
    manager.add_step(tx, "road", "car", group="lodging")
    manager.add_step(tx, "bank", "charge")
    result = manager.commit(tx)
    assert result.state is TransactionState.COMMITTED, result.error
    assert recorder.actions[0] == "flight" and recorder.actions[3] == "charge"
    assert sorted(recorder.actions[1:3]) == ["car", "hotel"]
    assert [s.group for s in tx.steps] == [None, "lodging", "lodging", None]
    other = manager.begin()
    manager.add_step(other, "x", "hotel", group="g")
    manager.add_step(other, "x", "flight")
    with pytest.raises(ValueError, match="was closed by a step outside it"):
        manager.add_step(other, "x", "car", group="g")


def test_the_blocking_saga_registers_parallel_groups() -> None:
    recorder = Recorder(fail={"charge"})
    meet = _meet_at(threading.Barrier(2, timeout=5), recorder)
    manager = blocking.TransactionManager(
        {
            "hotel": meet,
            "car": meet,
            **recorder.handlers("flight", "unflight", "unhotel", "uncar", "charge"),
        }
    )
    saga = blocking.SagaOrchestrator(manager).register("air", "flight", {}, "unflight")
    group = [
        {"agent_id": "stay", "action": "hotel", "compensating_action": "unhotel"},
        ("road", "car", {"city": "LIS"}, "uncar"),
    ]
    assert saga.register_parallel(group, max_concurrency=2) is saga
    saga.register("bank", "charge")
    assert saga.steps == [("air", "flight"), ("stay", "hotel"), ("road", "car"), ("bank", "charge")]
    result = saga.execute(timeout_seconds=30)
    assert result.state is TransactionState.ROLLED_BACK
    # Both lodging steps ran at once (the barrier), then everything was undone, the
    # group in reverse declaration order whatever order its steps finished in.
    assert sorted(recorder.actions[1:3]) == ["car", "hotel"]
    assert recorder.actions[3:] == ["charge", "uncar", "unhotel", "unflight"]
    with pytest.raises(ValueError, match="needs at least one step"):
        saga.register_parallel([])
