"""Ctrl-C in a script that uses the blocking facade: a real process, a real SIGINT.

The child journals every side effect to an fsynced ledger file; a handler that blocks
prints a marker first, and the test signals only once it has read that marker (and,
where the child must go on, releases it through stdin once the child has said that it
took the interrupt). Nothing here waits on a sleep.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ._support import ROOT

SYNC_PY = str(ROOT / "aumai_transactions" / "sync.py")
# The facade's own modules: its blocking calls and its open transactions.
FACADE = {str(ROOT / "aumai_transactions" / name) for name in ("_portal.py", "_blocking_open.py")}
TOOK_IT = "Ctrl-C again is ignored"
IGNORED = "Ctrl-C ignored: still compensating"

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import os
    import sys

    from aumai_transactions.sync import SagaOrchestrator, TransactionManager

    LEDGER, SCENARIO = sys.argv[1], sys.argv[2]


    def record(line):
        with open(LEDGER, "a") as ledger:
            ledger.write(line + "\\n")
            ledger.flush()
            os.fsync(ledger.fileno())


    def effect(action, data):
        record(action)


    async def blocked(action, data):
        print("blocked in", action, flush=True)
        await asyncio.Event().wait()  # never set: only a cancellation ends it


    def blocked_in_thread(action, data):
        print("blocked in", action, flush=True)
        sys.stdin.readline()  # the test releases it once the interrupt was taken
        record(action)


    handlers = {"charge": effect, "refund": effect, "notify": effect, "unship": effect}
    if SCENARIO.startswith("rollback"):
        handlers |= {"ship": effect, "unship": blocked_in_thread}
    elif SCENARIO == "open-exit":
        handlers |= {"ship": effect, "refund": blocked_in_thread}
    elif SCENARIO.endswith("thread"):
        handlers |= {"ship": blocked_in_thread}
    else:
        handlers |= {"ship": blocked}
    # Only the in-doubt scenarios give the interrupted step a compensation.
    unship = "unship" if "in-doubt" in SCENARIO or SCENARIO.startswith("rollback") else None

    manager = TransactionManager(handlers)
    try:
        if SCENARIO == "saga":
            saga = SagaOrchestrator(manager)
            saga.register("billing", "charge", {}, "refund")
            saga.register("shipping", "ship", {}, unship)
            saga.register("mail", "notify", {})
            saga.execute(timeout_seconds=60)
        elif SCENARIO.startswith("open"):
            # An open transaction: each step chosen as the code goes.
            with manager.transaction(timeout_seconds=60) as open_tx:
                open_tx.run("billing", "charge", {}, "refund")
                if SCENARIO == "open-exit":  # the block fails; Ctrl-C comes as it ends
                    raise LookupError("out of stock")
                open_tx.run("shipping", "ship", {}, unship)
                open_tx.run("mail", "notify", {})
        else:
            tx = manager.begin(timeout_seconds=60)
            manager.add_step(tx, "billing", "charge", {}, "refund")
            manager.add_step(tx, "shipping", "ship", {}, unship)
            manager.add_step(tx, "mail", "notify", {})
            if SCENARIO.startswith("rollback"):
                manager.commit(tx)
                manager.rollback(tx)
            else:
                manager.commit(tx)
        print("returned normally", flush=True)
    except KeyboardInterrupt:
        (tx,) = manager.get_all_transactions()
        print("state", tx.state.value, flush=True)
        print("steps", *[f"{s.action}:{s.status.value}" for s in tx.steps], flush=True)
        raise
    """
)


class Child:
    """The script running in a child process, its output read line by line as it comes."""

    def __init__(self, tmp_path: Path, scenario: str) -> None:
        script = tmp_path / "script.py"
        script.write_text(SCRIPT)
        self.script = str(script)
        self.ledger = tmp_path / "ledger.txt"
        self.process = subprocess.Popen(
            [sys.executable, self.script, str(self.ledger), scenario],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        self._lines: dict[str, queue.Queue[str | None]] = {}
        self.seen: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._readers = [self._read(name) for name in ("stdout", "stderr")]

    def _read(self, name: str) -> threading.Thread:
        lines: queue.Queue[str | None] = queue.Queue()
        self._lines[name] = lines
        stream = getattr(self.process, name)

        def pump() -> None:
            for line in stream:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        return reader

    def wait_for(self, name: str, text: str) -> None:
        """Read ``name`` (stdout or stderr) until a line containing ``text``."""
        while True:
            line = self._lines[name].get(timeout=30)
            if line is None:
                raise AssertionError(f"{name} ended before {text!r}: {self.seen}")
            self.seen[name].append(line)
            if text in line:
                return

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def release(self) -> None:
        """Let a handler blocked on stdin return."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> tuple[int, list[str], list[str]]:
        """Wait for the child to end: its exit status, its whole stdout and stderr."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        status = self.process.wait(timeout=30)
        for name, reader in zip(("stdout", "stderr"), self._readers, strict=True):
            reader.join(timeout=30)
            while (line := self._lines[name].get_nowait()) is not None:
                self.seen[name].append(line)
        return status, self.seen["stdout"], self.seen["stderr"]

    def ledger_lines(self) -> list[str]:
        return self.ledger.read_text().splitlines() if self.ledger.exists() else []

    def close(self) -> None:
        """Kill the child if it still runs, and close its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for reader in self._readers:
            reader.join(timeout=30)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()


@pytest.fixture
def child(tmp_path: Path, request: pytest.FixtureRequest) -> Child:
    started = Child(tmp_path, request.param)
    request.addfinalizer(started.close)
    return started


def assert_a_short_clean_keyboard_interrupt(child: Child, status: int, stderr: list[str]) -> None:
    """Died of SIGINT, as a script with an uncaught KeyboardInterrupt does, and the
    traceback runs from the script's line to the facade only (sync and its _portal):
    no anyio portal frames."""
    assert status == -signal.SIGINT, stderr
    assert stderr[-1] == "KeyboardInterrupt", stderr
    assert not [line for line in stderr if "anyio" in line or "concurrent" in line], stderr
    frames = [line.split('"')[1] for line in stderr if line.startswith('  File "')]
    assert frames[0] == child.script, stderr
    assert set(frames[1:]) <= {SYNC_PY, *FACADE}, stderr
    assert len(frames) <= 4, stderr


@pytest.mark.parametrize("child", ["commit", "saga"], indirect=True)
def test_ctrl_c_in_a_step_compensates_what_completed_then_raises(child: Child) -> None:
    child.wait_for("stdout", "blocked in ship")
    assert child.ledger_lines() == ["charge"]
    child.interrupt()
    status, stdout, stderr = child.finish()
    # The charge was refunded before KeyboardInterrupt reached the script; the step
    # after the interrupted one never ran.
    assert child.ledger_lines() == ["charge", "refund"]
    state, steps = stdout[1:]
    assert state == "state failed"
    assert {"charge:compensated", "notify:pending"} <= set(steps.split()), steps
    assert any(TOOK_IT in line for line in stderr), stderr
    assert_a_short_clean_keyboard_interrupt(child, status, stderr)


@pytest.mark.parametrize("child", ["rollback"], indirect=True)
@pytest.mark.parametrize("presses", [1, 3])
def test_ctrl_c_during_a_rollback_lets_the_compensation_finish_then_raises(
    child: Child, presses: int
) -> None:
    child.wait_for("stdout", "blocked in unship")
    child.interrupt()
    child.wait_for("stderr", TOOK_IT)
    for _ in range(presses - 1):  # further Ctrl-Cs while compensating are ignored
        child.interrupt()
        child.wait_for("stderr", IGNORED)
    child.release()  # the compensation was not cut short: it goes on to its end
    status, stdout, stderr = child.finish()
    assert child.ledger_lines() == ["charge", "ship", "notify", "unship", "refund"]
    state, steps = stdout[1:]
    assert state == "state rolled_back"
    assert {"charge:compensated", "ship:compensated"} <= set(steps.split()), steps
    assert_a_short_clean_keyboard_interrupt(child, status, stderr)


@pytest.mark.parametrize(
    ("child", "ledger", "steps"),
    [
        # Cancelled at its await: the effect may or may not have happened; undone anyway.
        (
            "in-doubt-async",
            ["charge", "unship", "refund"],
            ["charge:compensated", "ship:compensated", "notify:pending"],
        ),
        # The thread goes on after the interrupt and has its effect; only then is it undone.
        (
            "in-doubt-thread",
            ["charge", "ship", "unship", "refund"],
            ["charge:compensated", "ship:compensated", "notify:pending"],
        ),
        # An open transaction: the block ends as a cancellation does (failed, all that
        # ran compensated), and the step after the interrupted one is never run.
        ("open", ["charge", "refund"], ["charge:compensated", "ship:failed"]),
        (
            "open-in-doubt-async",
            ["charge", "unship", "refund"],
            ["charge:compensated", "ship:compensated"],
        ),
        (
            "open-in-doubt-thread",
            ["charge", "ship", "unship", "refund"],
            ["charge:compensated", "ship:compensated"],
        ),
    ],
    indirect=["child"],
)
def test_ctrl_c_compensates_the_interrupted_step_too(
    child: Child, ledger: list[str], steps: list[str]
) -> None:
    child.wait_for("stdout", "blocked in ship")
    assert child.ledger_lines() == ["charge"]
    child.interrupt()
    child.wait_for("stderr", TOOK_IT)
    child.release()
    status, stdout, stderr = child.finish()
    assert child.ledger_lines() == ledger
    assert stdout[1:] == ["state failed", " ".join(["steps", *steps])]
    assert_a_short_clean_keyboard_interrupt(child, status, stderr)


@pytest.mark.parametrize("child", ["open-exit"], indirect=True)
def test_ctrl_c_as_an_open_transaction_ends_lets_it_compensate_then_raises(child: Child) -> None:
    child.wait_for("stdout", "blocked in refund")  # the block's exit is compensating
    child.interrupt()
    child.wait_for("stderr", "Interrupted: the open transaction ends first")
    child.interrupt()
    child.wait_for("stderr", IGNORED)
    child.release()
    status, stdout, stderr = child.finish()
    assert child.ledger_lines() == ["charge", "refund"]
    assert stdout[1:] == ["state rolled_back", "steps charge:compensated"]
    assert status == -signal.SIGINT and stderr[-1] == "KeyboardInterrupt", stderr
    assert any("LookupError: out of stock" in line for line in stderr), stderr
