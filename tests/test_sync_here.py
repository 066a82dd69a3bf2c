"""The blocking facade runs a commit that cannot yield in the calling thread (no hop to
the portal's loop), with the same outcome, Ctrl-C included; anything else still goes
through the portal."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from aumai_transactions import RetryPolicy, StepStatus, TransactionState
from aumai_transactions import sync as blocking


def _threads_seen(seen: list[threading.Thread]) -> Any:
    def handler(action: str, data: dict[str, Any]) -> dict[str, str]:
        seen.append(threading.current_thread())
        return {"ran": action}

    return handler


def _run_script(script: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a Python of its own, in development mode, warnings as errors."""
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _manager(seen: list[threading.Thread], **options: Any) -> blocking.TransactionManager:
    handler = _threads_seen(seen)
    return blocking.TransactionManager(
        {"a": handler, "b": handler, "undo": handler}, sync_handlers="inline", **options
    )


def _two_steps(manager: blocking.TransactionManager, **step: Any) -> Any:
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {"n": 1}, "undo", **step)
    manager.add_step(tx, "agent", "b", {"n": 2}, "undo", **step)
    return tx


def test_an_inline_commit_on_the_memory_store_runs_in_the_calling_thread() -> None:
    seen: list[threading.Thread] = []
    manager = _manager(seen)
    result = manager.commit(_two_steps(manager))
    assert result.state is TransactionState.COMMITTED
    assert seen == [threading.current_thread()] * 2
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {}, "undo")
    assert manager.rollback(tx).state is TransactionState.ROLLED_BACK
    assert seen[2:] == [threading.current_thread()]  # the compensation, here too


def test_a_failing_inline_commit_compensates_in_the_calling_thread() -> None:
    seen: list[threading.Thread] = []

    def bad(action: str, data: dict[str, Any]) -> None:
        seen.append(threading.current_thread())
        raise RuntimeError("declined")

    handler = _threads_seen(seen)
    manager = blocking.TransactionManager(
        {"a": handler, "b": bad, "undo": handler}, sync_handlers="inline"
    )
    result = manager.commit(_two_steps(manager))
    assert result.state is TransactionState.ROLLED_BACK and result.error == "declined"
    assert seen == [threading.current_thread()] * 3
    assert [s.status for s in manager.get_all_transactions()[0].steps] == [
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    ]


@pytest.mark.parametrize(
    "shape",
    [
        "thread handlers",
        "async handler",
        "async listener",
        "retry",
        "group",
        "open block in flight",
    ],
)
def test_anything_that_could_yield_still_runs_on_the_portal(shape: str) -> None:
    seen: list[threading.Thread] = []
    if shape == "thread handlers":
        manager = blocking.TransactionManager({"a": _threads_seen(seen), "b": _threads_seen(seen)})
    elif shape == "async listener":

        async def listener(event: object) -> None:
            return None

        manager = _manager(seen, listeners=[listener])
    else:
        manager = _manager(seen)
    if shape == "async handler":

        async def other(action: str, data: dict[str, Any]) -> None:
            return None

        manager.manager._handlers.register("other", other)
    step: dict[str, Any] = {}
    if shape == "retry":
        step["retry"] = RetryPolicy(max_attempts=2)
    if shape == "group":
        step["group"] = "g"
    tx = _two_steps(manager, **step)
    if shape == "open block in flight":
        with manager.transaction():
            assert manager.commit(tx).state is TransactionState.COMMITTED
    else:
        assert manager.commit(tx).state is TransactionState.COMMITTED
    assert seen and threading.current_thread() not in seen


def test_ctrl_c_during_an_inline_commit_in_the_calling_thread_ends_it_then_raises() -> None:
    # Through the portal, the task of such a commit never yields, so a Ctrl-C takes
    # effect once it is over; here it is held until then too, never raised mid-step.
    seen: list[threading.Thread] = []

    def presses_ctrl_c(action: str, data: dict[str, Any]) -> None:
        seen.append(threading.current_thread())
        os.kill(os.getpid(), signal.SIGINT)

    manager = blocking.TransactionManager(
        {"a": presses_ctrl_c, "b": _threads_seen(seen), "undo": _threads_seen(seen)},
        sync_handlers="inline",
    )
    tx = _two_steps(manager)
    with pytest.raises(KeyboardInterrupt):
        manager.commit(tx)
    assert seen == [threading.current_thread()] * 2
    assert tx.state is TransactionState.COMMITTED
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_a_script_whose_calls_all_ran_here_exits_cleanly(tmp_path: Path) -> None:
    # The private loop is closed at exit even when the portal never started.
    script = tmp_path / "script.py"
    script.write_text(
        "from aumai_transactions import _portal, sync\n"
        "manager = sync.TransactionManager({'a': lambda a, d: None}, sync_handlers='inline')\n"
        "tx = manager.begin()\n"
        "manager.add_step(tx, 'agent', 'a', {})\n"
        "print(manager.commit(tx).state.value, _portal._portal is None)\n"
    )
    done = _run_script(script)
    assert (done.returncode, done.stdout, done.stderr) == (0, "committed True\n", "")


def test_a_compensation_retry_that_pauses_here_is_run_to_its_end() -> None:
    # A compensation's retry pauses on the loop: the call run here yields after all,
    # and the private loop runs it on until it is done.
    seen: list[threading.Thread] = []
    tries: list[str] = []

    def flaky_undo(action: str, data: dict[str, Any]) -> None:
        tries.append(action)
        if len(tries) == 1:
            raise RuntimeError("busy")

    def bad(action: str, data: dict[str, Any]) -> None:
        raise RuntimeError("declined")

    manager = blocking.TransactionManager(
        {"a": _threads_seen(seen), "b": bad, "undo": flaky_undo},
        sync_handlers="inline",
        compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0.001),
    )
    result = manager.commit(_two_steps(manager))
    assert result.state is TransactionState.ROLLED_BACK
    assert tries == ["undo", "undo"] and seen == [threading.current_thread()]
    assert manager.get_all_transactions()[0].steps[0].status is StepStatus.COMPENSATED


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_a_handler_raising_a_base_exception_here_compensates_and_raises_it(
    exc: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[threading.Thread] = []

    def stops(action: str, data: dict[str, Any]) -> None:
        raise exc

    manager = blocking.TransactionManager(
        {"a": _threads_seen(seen), "b": stops, "undo": _threads_seen(seen)},
        sync_handlers="inline",
    )
    tx = _two_steps(manager)
    with pytest.raises(exc):
        manager.commit(tx)
    # step a, then both compensations (b was cut short: in doubt, so it is undone too)
    assert seen == [threading.current_thread()] * 3
    assert [s.status for s in tx.steps] == [StepStatus.COMPENSATED] * 2
    gc.collect()  # a task whose exception nobody retrieved says so when collected
    assert "never retrieved" not in caplog.text
    tx = _two_steps(manager)  # the private loop is usable again
    manager.manager._handlers.register("b", _threads_seen(seen))
    assert manager.commit(tx).state is TransactionState.COMMITTED


@pytest.mark.parametrize("disposition", ["ignored", "the system's default"])
def test_a_script_with_sigint_ignored_or_left_to_the_system_still_runs_here(
    tmp_path: Path, disposition: str
) -> None:
    # A shell starts a background job with SIGINT ignored: no Ctrl-C can raise inside
    # the engine then, so the call needs no hop to the portal (a handler of the
    # program's own still goes there, see above).
    script = tmp_path / "script.py"
    ignored = disposition == "ignored"
    script.write_text(
        "import signal, threading\n"
        f"signal.signal(signal.SIGINT, signal.{'SIG_IGN' if ignored else 'SIG_DFL'})\n"
        "from aumai_transactions import _portal, sync\n"
        "seen = []\n"
        "manager = sync.TransactionManager(\n"
        "    {'a': lambda a, d: seen.append(threading.current_thread())}, sync_handlers='inline'\n"
        ")\n"
        "tx = manager.begin()\n"
        "manager.add_step(tx, 'agent', 'a', {})\n"
        "state = manager.commit(tx).state.value\n"
        "print(state, seen == [threading.main_thread()], _portal._portal is None,\n"
        "      signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n"
    )
    done = _run_script(script)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"committed True True {ignored}\n",
        "",
    )


def test_a_program_s_own_sigint_handler_sends_the_call_through_the_portal() -> None:
    seen: list[threading.Thread] = []
    manager = _manager(seen)
    calls: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        assert manager.commit(_two_steps(manager)).state is TransactionState.COMMITTED
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen and threading.current_thread() not in seen
