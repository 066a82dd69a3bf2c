"""Open transactions in the blocking facade: ``with manager.transaction() as tx:``."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import aumai_transactions
from aumai_transactions import StepFailedError, StepStatus, TransactionState, open_store
from aumai_transactions import core as original
from aumai_transactions import sync as blocking

from ._support import Recorder, actions_of
from .test_sync import _parameters, _RenewalWatchingStore


def flights(action: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """A search stub: the options an agent chooses from."""
    return [{"flight": "TP1351", "price": 310}, {"flight": "FR8342", "price": 95}]


def test_the_code_chooses_each_step_from_the_last_result_and_leaving_commits() -> None:
    recorder = Recorder()
    manager = blocking.TransactionManager(
        {"search": flights, **recorder.handlers("hold", "release", "charge", kind="async")}
    )
    with manager.transaction(timeout_seconds=30) as tx:
        options = tx.run("agent", "search", {"to": "LIS"})
        cheapest = min(options, key=lambda option: option["price"])
        held = tx.run("agent", "hold", {"flight": cheapest["flight"]}, "release")
        tx.run("agent", "charge", {"amount": cheapest["price"]})
        assert tx.result is None  # nothing is decided while the block runs
    assert held == {"done": "hold"}
    assert recorder.calls == [("hold", {"flight": "FR8342"}), ("charge", {"amount": 95})]
    result = tx.result
    assert result is not None and result.state is TransactionState.COMMITTED
    assert tx.transaction.state is TransactionState.COMMITTED
    assert actions_of(tx.transaction, result.completed_steps) == ["search", "hold", "charge"]
    assert tx.transaction.steps[0].result == options
    assert manager.get_transaction(tx.transaction_id) is tx.transaction
    assert tx.transaction.timeout_seconds == 30


def test_a_failing_step_raises_and_compensates_what_ran_newest_first() -> None:
    recorder = Recorder(fail={"charge"})
    manager = blocking.TransactionManager(
        recorder.handlers("hold", "release", "seat", "unseat", "charge", "refund")
    )
    with pytest.raises(StepFailedError) as info:
        with manager.transaction() as tx:
            tx.run("agent", "hold", {}, "release")
            tx.run("agent", "seat", {}, "unseat")
            tx.run("agent", "charge", {}, "refund")
            pytest.fail("the failing step raised")  # pragma: no cover
    assert recorder.actions == ["hold", "seat", "charge", "unseat", "release"]
    error = info.value
    assert error.step.action == "charge" and error.step.status is StepStatus.FAILED
    assert error.result is tx.result
    assert error.result is not None and error.result.state is TransactionState.ROLLED_BACK
    assert error.result.failed_step == error.step.step_id
    assert error.result.error == "charge failed"
    assert actions_of(tx.transaction, error.result.completed_steps) == ["seat", "hold"]
    assert [s.status for s in tx.transaction.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    ]


def test_a_caught_step_failure_lets_the_code_try_something_else() -> None:
    recorder = Recorder(fail={"book_car"})
    manager = blocking.TransactionManager(recorder.handlers("book_car", "book_taxi"))
    with manager.transaction() as tx:
        try:
            tx.run("agent", "book_car")
        except StepFailedError as failure:
            assert failure.result is None  # still inside the block
            tx.run("agent", "book_taxi")
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED
    assert recorder.actions == ["book_car", "book_taxi"]


def test_an_exception_in_the_block_compensates_then_propagates() -> None:
    recorder = Recorder()
    manager = blocking.TransactionManager(recorder.handlers("hold", "release"))
    with pytest.raises(LookupError, match="no seat left"):
        with manager.transaction() as tx:
            tx.run("agent", "hold", {}, "release")
            raise LookupError("no seat left")
    assert recorder.actions == ["hold", "release"]
    assert tx.result is not None and tx.result.state is TransactionState.ROLLED_BACK
    assert tx.result.error == "the code in the transaction raised LookupError: no seat left"


async def _sleeps(action: str, data: dict[str, Any]) -> None:
    await anyio.sleep(30)


def test_the_deadline_cuts_a_running_step_short_and_compensates() -> None:
    recorder = Recorder()
    manager = blocking.TransactionManager(
        {**recorder.handlers("hold", "release", "unwait"), "wait": _sleeps}
    )
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out after 0.2s"):
        with manager.transaction(timeout_seconds=0.2) as tx:
            tx.run("agent", "hold", {}, "release")
            tx.run("agent", "wait", {}, "unwait")
            pytest.fail("the deadline raised")  # pragma: no cover
    assert time.monotonic() - started < 10
    # The step cut short is in doubt: compensated too, newest first.
    assert recorder.actions == ["hold", "unwait", "release"]
    assert tx.result is not None and tx.result.state is TransactionState.FAILED
    assert tx.transaction.state is TransactionState.FAILED
    assert [s.status for s in tx.transaction.steps] == [StepStatus.COMPENSATED] * 2
    assert tx.transaction.steps[1].interrupted


def test_a_deadline_passed_in_the_code_between_steps_is_raised_as_the_block_ends() -> None:
    recorder = Recorder()
    manager = blocking.TransactionManager(recorder.handlers("hold", "release"))
    with pytest.raises(TimeoutError, match="timed out after 0.2s while open"):
        with manager.transaction(timeout_seconds=0.2) as tx:
            tx.run("agent", "hold", {}, "release")
            time.sleep(0.3)  # the code between steps cannot be cut short; its end is
            assert recorder.actions == ["hold"]  # nothing was undone behind its back
            with pytest.raises(TimeoutError, match="past its deadline"):
                tx.run("agent", "hold")
            assert tx.result is None
    assert recorder.actions == ["hold", "release"]
    assert tx.result is not None and tx.result.state is TransactionState.FAILED


def test_the_steps_of_a_group_really_run_at_once_and_results_come_in_order() -> None:
    both = threading.Barrier(2, timeout=5)  # passes only if both handlers run at once

    def book(action: str, data: dict[str, Any]) -> str:
        both.wait()
        return f"{action} {data['city']}"

    manager = blocking.TransactionManager({"hotel": book, "car": book, "charge": print})
    with manager.transaction() as tx:
        with tx.parallel("lodging") as group:
            hotel = group.run("hotel_agent", "hotel", {"city": "LIS"}, "charge")
            car = group.run("car_agent", "car", {"city": "OPO"})
            assert hotel.status is StepStatus.PENDING  # they start as the block ends
        assert group.results == ["hotel LIS", "car OPO"]
        assert group.steps == [hotel, car] and group.name == "lodging"
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED
    assert [s.group for s in tx.transaction.steps] == ["lodging", "lodging"]


def test_a_failure_in_a_group_cancels_its_siblings_and_compensates_everything() -> None:
    recorder = Recorder(fail={"car"})
    cancelled = threading.Event()

    async def waits_for_ever(action: str, data: dict[str, Any]) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    manager = blocking.TransactionManager(
        {
            **recorder.handlers("flight", "unflight", "car", "unhotel"),
            "hotel": waits_for_ever,
        }
    )
    with pytest.raises(StepFailedError) as info:
        with manager.transaction() as tx:
            tx.run("agent", "flight", {}, "unflight")
            with tx.parallel() as group:
                group.run("agent", "hotel", {}, "unhotel")
                group.run("agent", "car", {}, "uncar")
    assert cancelled.is_set()
    assert info.value.step.action == "car"
    # The cancelled sibling is in doubt and undone first (reverse declaration order).
    assert recorder.actions == ["flight", "car", "unhotel", "unflight"]
    assert info.value.result is not None
    assert info.value.result.state is TransactionState.ROLLED_BACK


def test_blocks_in_two_threads_run_at_the_same_time() -> None:
    both = threading.Barrier(2, timeout=5)  # passes only if both blocks are in a step at once
    manager = blocking.TransactionManager({"meet": lambda a, d: both.wait()})
    results: dict[int, Any] = {}

    def agent(n: int) -> None:
        with manager.transaction() as tx:
            tx.run(f"agent-{n}", "meet")
        results[n] = tx.result

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [0, 1]
    assert {r.state for r in results.values()} == {TransactionState.COMMITTED}


def test_rollback_inside_the_block_aborts_and_no_step_runs_after_it() -> None:
    recorder = Recorder()
    manager = blocking.TransactionManager(recorder.handlers("hold", "release"))
    with manager.transaction() as tx:
        tx.run("agent", "hold", {}, "release")
        rolled = tx.rollback()
        assert rolled.state is TransactionState.ROLLED_BACK
        with pytest.raises(ValueError, match="steps run only inside its open block"):
            tx.run("agent", "hold")
    assert tx.result is rolled
    assert recorder.actions == ["hold", "release"]
    with pytest.raises(ValueError, match="steps run only inside its open block"):
        tx.run("agent", "hold")  # nor after the block


def test_bad_steps_are_refused_from_the_block_and_it_goes_on() -> None:
    manager = blocking.TransactionManager({"a": print})
    with manager.transaction() as tx:
        with pytest.raises(TypeError, match="data must be a dict"):
            tx.run("agent", "a", [1])  # type: ignore[arg-type]
        tx.run("agent", "a")
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED
    assert len(tx.transaction.steps) == 1


def test_ctrl_c_during_a_step_compensates_then_raises_keyboard_interrupt() -> None:
    undone: list[str] = []

    async def presses_ctrl_c(action: str, data: dict[str, Any]) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # to the process, as a terminal sends it
        await anyio.sleep_forever()  # until the interrupt cancels it

    manager = blocking.TransactionManager(
        {"a": print, "undo_a": lambda a, d: undone.append(a), "b": presses_ctrl_c}
    )
    with pytest.raises(KeyboardInterrupt):
        with manager.transaction() as tx:
            tx.run("agent", "a", {}, "undo_a")
            tx.run("agent", "b")
            pytest.fail("the interrupt raised")  # pragma: no cover
    assert undone == ["undo_a"]
    assert tx.transaction.state is TransactionState.FAILED
    assert tx.result is not None and "interrupted by Ctrl-C (KeyboardInterrupt)" in (
        tx.result.error or ""
    )
    # The interrupted step had no compensation: it ends failed, marked interrupted.
    assert [s.status for s in tx.transaction.steps] == [StepStatus.COMPENSATED, StepStatus.FAILED]
    assert tx.result.interrupted_steps == [tx.transaction.steps[1].step_id]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _load(url: str, transaction_id: str) -> aumai_transactions.Transaction | None:
    async def load() -> aumai_transactions.Transaction | None:
        async with open_store(url) as store:
            return await store.load(transaction_id)

    return anyio.run(load)


class _SlowToLease(aumai_transactions.MemoryStore):
    """A store whose first lease presses Ctrl-C and then never comes."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = True

    async def acquire(self, *args: Any, **kwargs: Any) -> aumai_transactions.Lease:
        if self.stuck:
            self.stuck = False
            os.kill(os.getpid(), signal.SIGINT)
            await anyio.sleep_forever()
        return await super().acquire(*args, **kwargs)


def test_ctrl_c_while_the_block_is_entered_stops_it_before_anything_runs() -> None:
    recorder = Recorder()
    manager = blocking.TransactionManager(recorder.handlers("a"), store=_SlowToLease())
    with pytest.raises(KeyboardInterrupt):
        with manager.transaction() as tx:
            tx.run("agent", "a")  # pragma: no cover
    assert recorder.actions == []
    stuck = manager.get_all_transactions()[0]
    assert stuck.state is TransactionState.PENDING and stuck.steps == []
    # The facade's loop is unharmed: the next block runs.
    with manager.transaction() as tx:
        tx.run("agent", "a")
    assert recorder.actions == ["a"]
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# Without `with manager:` the async block renews the lease itself, in a task group its
# one holding task enters and leaves; with it, the manager's renewal serves.
WITH_OR_WITHOUT = pytest.mark.parametrize("opened", [False, True], ids=["alone", "with-manager"])


@WITH_OR_WITHOUT
def test_a_blocking_open_transaction_is_durable_on_sqlite(tmp_path: Path, opened: bool) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    recorder = Recorder()
    manager = blocking.TransactionManager(recorder.handlers("hold", "release"), store=url)
    if opened:
        manager.open()
    with manager.transaction() as tx:
        tx.run("agent", "hold", {"seat": "12A"}, "release")
        with tx.parallel() as group:
            group.run("agent", "hold", {"seat": "12B"}, "release")
            group.run("agent", "hold", {"seat": "12C"}, "release")
    manager.close()
    stored = _load(url, tx.transaction_id)
    assert stored is not None and stored.state is TransactionState.COMMITTED
    assert [(s.data["seat"], s.status, s.result) for s in stored.steps] == [
        ("12A", StepStatus.COMPLETED, {"done": "hold"}),
        ("12B", StepStatus.COMPLETED, {"done": "hold"}),
        ("12C", StepStatus.COMPLETED, {"done": "hold"}),
    ]
    assert stored.steps[0].group is None
    assert stored.steps[1].group == stored.steps[2].group is not None


@WITH_OR_WITHOUT
def test_the_block_keeps_its_lease_renewed_while_a_long_handler_runs(opened: bool) -> None:
    store = _RenewalWatchingStore()
    seen: list[bool] = []

    def long_step(action: str, data: dict[str, Any]) -> None:
        seen.append(store.renewed.wait(timeout=10))

    manager = blocking.TransactionManager({"long": long_step}, store=store, lease_ttl=0.3)
    if opened:
        manager.open()
    with manager.transaction() as tx:
        tx.run("agent", "long")
    manager.close()
    assert seen == [True]
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED


async def test_the_block_refuses_to_block_a_running_event_loop() -> None:
    manager = blocking.TransactionManager()
    tx = manager.transaction()
    with pytest.raises(RuntimeError, match="inside an event loop"):
        tx.__enter__()
    assert tx.transaction.state is TransactionState.PENDING


@pytest.mark.parametrize(
    ("async_class", "sync_class", "attributes"),
    [
        (
            aumai_transactions.OpenTransaction,
            blocking.OpenTransaction,
            ["result", "transaction", "transaction_id"],
        ),
        (aumai_transactions.ParallelGroup, blocking.ParallelGroup, ["name", "results", "steps"]),
    ],
)
def test_the_blocking_block_has_the_same_methods_and_arguments(
    async_class: type, sync_class: type, attributes: list[str]
) -> None:
    drivers = {"start", "finish", "stop"}  # what the async block's exit does, in steps
    public = [
        name
        for name, _ in inspect.getmembers(async_class, inspect.isfunction)
        if not name.startswith("_") and name not in drivers
    ]
    assert "run" in public
    for name in public:
        assert _parameters(getattr(async_class, name)) == _parameters(getattr(sync_class, name))
        assert not inspect.iscoroutinefunction(getattr(sync_class, name))
    for name in attributes:
        assert isinstance(getattr(sync_class, name), property), name


def test_the_original_module_path_has_open_transactions_too() -> None:
    manager = original.TransactionManager({"a": lambda a, d: {"n": d["n"] + 1}})
    with manager.transaction() as tx:
        assert tx.run("agent", "a", {"n": 1}) == {"n": 2}
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED


def test_a_block_never_left_is_compensated_as_the_program_ends(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            from aumai_transactions.sync import TransactionManager

            manager = TransactionManager({"hold": print, "release": print})
            tx = manager.transaction().__enter__()  # and never __exit__
            tx.run("agent", "hold", {}, "release")
            print("end of script")
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hold {}", "end of script", "release {}"]
