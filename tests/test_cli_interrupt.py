"""Ctrl-C during ``commit``, ``rollback`` and ``run``, with real processes and SIGINT.

One rule: an interrupted transaction ends ``failed``, whatever the number of Ctrl-Cs.
After one, the command compensates, prints the final state and the compensations that
ran (as at a normal end, human and ``--json``) and exits 130. A second one stops the
compensation: the transaction is left ``compensating`` under the dead process's lease,
and the command prints the exact ``recover`` command that finishes it (ending it
``failed`` too) and when the lease expires.

Nothing here sleeps: each handler that the test interrupts prints a marker line on
stderr and blocks; the test waits for that line before it sends the signal.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from aumai_transactions import RetryPolicy, Transaction, TransactionManager
from aumai_transactions.models import utcnow
from aumai_transactions.stores.sqlite import SqliteStore
from tests.test_cli_e2e import command
from tests.test_cli_maintenance import in_flight

HANDLERS = """
import os, sys

import anyio

LOG = os.environ["AUMAI_INTERRUPT_LOG"]


def _log(action):
    with open(LOG, "a", encoding="utf-8") as handle:
        handle.write(action + "\\n")


def _mark(action):
    print(f"MARK {action}", file=sys.stderr, flush=True)


def ok(action, data):
    _log(action)
    return {"ok": action}


async def hold(action, data):
    # A forward step that runs until it is cancelled.
    _log(action)
    _mark(action)
    await anyio.sleep(3600)


async def hold_once(action, data):
    # A compensation that blocks the first time (it is shielded: only a second Ctrl-C
    # stops it), and returns at once when recovery runs it again.
    _log(action)
    held = LOG + ".held"
    if os.path.exists(held):
        return None
    open(held, "w").close()
    _mark(action)
    await anyio.sleep(3600)


def gate(action, data):
    # A compensation that waits for a line on stdin (it runs in a worker thread).
    _log(action)
    _mark(action)
    sys.stdin.readline()


HANDLERS = {
    "reserve": ok,
    "release": ok,
    "wait": hold,
    "cancel": ok,
    "cancel_held": hold_once,
    "release_gated": gate,
}
"""


class Interrupted:
    """A CLI process whose stderr is read line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [*command(), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        assert self.process.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str) -> None:
        """Block until a stderr line starts with ``prefix`` (an event, not a sleep)."""
        while True:
            line = self.lines.get(timeout=60)
            assert line is not None, f"ended before {prefix!r}: {''.join(self.stderr)}"
            self.stderr.append(line)
            if line.startswith(prefix):
                return

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def finish(self, stdin: str = "") -> tuple[int, str, str]:
        """Exit code, stdout and all of stderr, once the process ends."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            if stdin:
                self.process.stdin.write(stdin)
            self.process.stdin.close()
            stdout = self.process.stdout.read()
            code = self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=60)
        while (line := self.lines.get(timeout=60)) is not None:
            self.stderr.append(line)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code, stdout, "".join(self.stderr)


class Setup:
    """A store, a handlers module and an environment for the CLI processes."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "ops.db"
        self.url = f"sqlite:///{self.db}"
        self.log = tmp_path / "side-effects.log"
        self.started: list[Interrupted] = []
        (tmp_path / "handlers.py").write_text(HANDLERS)
        self.spec = "handlers.py:HANDLERS"  # a relative file: recover's hint makes it absolute
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AUMAI_")},
            "HOME": str(tmp_path / "home"),
            "AUMAI_TRANSACTIONS_STORE": self.url,
            "AUMAI_INTERRUPT_LOG": str(self.log),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }

    def pending(self, *steps: tuple[str, str | None]) -> Transaction:
        """A pending transaction with ``steps`` (action, compensating action), stored."""

        async def save() -> Transaction:
            async with SqliteStore(self.db) as store:
                manager = TransactionManager(store=store)
                tx = manager.begin(timeout_seconds=600)
                for action, undo in steps:
                    manager.add_step(tx, "agent", action, {}, undo)
                await manager.save(tx)
                return tx

        return anyio.run(save)

    def start(self, *args: str) -> Interrupted:
        started = Interrupted(list(args), self.env, self.tmp_path)
        self.started.append(started)
        return started

    def kill_the_rest(self) -> None:
        """A test that failed before ``finish`` leaves no process behind."""
        for run in self.started:
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()

    def cli(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*command(), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.tmp_path,
            timeout=60,
        )
        assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        return done

    def shown(self, tx_id: str) -> Any:
        return json.loads(self.cli("show", tx_id, "--json").stdout)

    def side_effects(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = Setup(tmp_path)
    yield made
    made.kill_the_rest()


def test_one_ctrl_c_during_commit_prints_the_final_state_and_exits_130(setup: Setup) -> None:
    tx = setup.pending(("reserve", "release"), ("wait", "cancel"))
    run = setup.start("commit", tx.transaction_id, "--handlers", setup.spec)
    run.wait_for("MARK wait")
    run.interrupt()
    code, stdout, stderr = run.finish()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    # What the first Ctrl-C does, said when it is pressed.
    assert f"Ctrl-C: stopping transaction {tx.transaction_id} and compensating" in stderr
    # The same result rendering as a normal end: the panel, then the step table with
    # the compensations that ran.
    assert f"Transaction {tx.transaction_id}" in stdout
    assert "state        failed" in stdout
    assert "interrupted  #2 wait" in stdout
    rows = [line.split() for line in stdout.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [(row[2], row[3], row[-2:]) for row in rows] == [
        ("reserve", "compensated", ["release", "✓"]),
        ("wait", "compensated", ["cancel", "✓"]),
    ]
    # The interrupted step may have had its effect: compensated too, newest first.
    assert setup.side_effects() == ["reserve", "wait", "cancel", "release"]
    assert setup.shown(tx.transaction_id)["transaction"]["state"] == "failed"
    # In list, the row names the transaction: its error is not prefixed by its id again.
    listed = setup.cli("list").stdout
    assert "was interrupted by a cancellation" in listed
    assert tx.transaction_id not in listed


def test_one_ctrl_c_during_commit_prints_the_result_as_json(setup: Setup) -> None:
    tx = setup.pending(("reserve", "release"), ("wait", "cancel"))
    run = setup.start("commit", tx.transaction_id, "--handlers", setup.spec, "--json")
    run.wait_for("MARK wait")
    run.interrupt()
    code, stdout, stderr = run.finish()
    assert code == 130, stderr
    result = json.loads(stdout)
    first, second = (step.step_id for step in tx.steps)
    assert result["state"] == "failed" and result["interrupted"] is True
    assert result["completed_steps"] == [second, first]  # the order they were undone
    assert result["interrupted_steps"] == [second]
    assert result["error"] == (
        f"Transaction {tx.transaction_id} was interrupted by a cancellation before it finished."
    )
    assert [s["status"] for s in result["steps"]] == ["compensated", "compensated"]
    assert [s["compensation"] for s in result["steps"]] == ["compensated", "compensated"]
    # One duration for one transaction: the same as `show` reports.
    shown = setup.shown(tx.transaction_id)["transaction"]
    assert result["duration_seconds"] == shown["duration_seconds"]
    assert datetime.fromisoformat(result["finished_at"]) == datetime.fromisoformat(
        shown["finished_at"]
    )


def test_two_ctrl_cs_leave_it_compensating_and_say_how_to_finish_it(setup: Setup) -> None:
    tx = setup.pending(("reserve", "release"), ("wait", "cancel_held"))
    tid = tx.transaction_id
    before = utcnow()
    run = setup.start("commit", tid, "--handlers", setup.spec)
    run.wait_for("MARK wait")
    run.interrupt()
    run.wait_for("MARK cancel_held")  # the compensation runs (shielded) ...
    run.interrupt()  # ... and a second Ctrl-C stops it
    code, stdout, stderr = run.finish()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert stdout == ""  # no final state: there is none yet
    error, hint = [line for line in stderr.splitlines() if not line.startswith(("MARK", "Ctrl-C"))]
    assert error.startswith(
        f"error: interrupted again while compensating: transaction {tid} is left compensating; "
        "its lease expires at "
    )
    assert error.endswith("Recovery finishes it (it then ends failed, as it would have here).")
    expires = datetime.strptime(error.split("expires at ")[1][:20], "%Y-%m-%d %H:%M:%SZ")
    expires = expires.replace(tzinfo=before.tzinfo)
    assert before - timedelta(seconds=1) <= expires <= utcnow() + timedelta(seconds=31)
    # The exact command: this store, the handlers by absolute path.
    assert hint.startswith("Finish it after that with: ")
    words = shlex.split(hint.removeprefix("Finish it after that with: "))
    handlers = f"{setup.tmp_path / 'handlers.py'}:HANDLERS"
    assert words == ["aumai-transactions", "recover", "--store", setup.url, "--handlers", handlers]
    assert setup.shown(tid)["transaction"]["state"] == "compensating"

    # The dead process's lease, ended now instead of waited out; then the printed
    # command finishes the transaction, from another directory, and it ends failed.
    async def end_lease() -> None:
        async with SqliteStore(setup.db) as store:
            owner = (await store.leases([tid]))[tid].owner
            assert owner is not None
            assert await store.release_all(owner) == 1

    anyio.run(end_lease)
    elsewhere = setup.tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [*command(), *words[1:]], capture_output=True, text=True, env=setup.env, cwd=elsewhere
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "was interrupted by a cancellation" in done.stdout
    assert done.stdout.count(tid) == 1  # the id column only, not again in the outcome
    assert setup.shown(tid)["transaction"]["state"] == "failed"
    assert setup.side_effects() == ["reserve", "wait", "cancel_held", "cancel_held", "release"]


def test_ctrl_c_during_rollback_finishes_the_compensations_first(setup: Setup) -> None:
    tx = setup.pending(("reserve", "release_gated"), ("reserve", "release"))
    run = setup.start("rollback", tx.transaction_id, "--handlers", setup.spec, "--json")
    run.wait_for("MARK release_gated")  # the second compensation, running
    run.interrupt()
    run.wait_for("Ctrl-C: transaction")  # the interrupt has landed ...
    code, stdout, stderr = run.finish(stdin="go\n")  # ... then the compensation returns
    assert code == 130, stderr
    result = json.loads(stdout)
    assert result["state"] == "rolled_back" and result["interrupted"] is True
    assert [s["status"] for s in result["steps"]] == ["compensated", "compensated"]
    assert setup.side_effects() == ["release", "release_gated"]


def test_ctrl_c_during_run_prints_the_final_state_with_the_saga(setup: Setup) -> None:
    saga = setup.tmp_path / "saga.json"
    steps = [
        {"agent": "a", "action": "reserve", "compensate": "release"},
        {"agent": "a", "action": "wait", "compensate": "cancel"},
    ]
    saga.write_text(json.dumps({"name": "slow", "steps": steps}))
    run = setup.start("run", str(saga), "--handlers", setup.spec, "--json")
    run.wait_for("MARK wait")
    run.interrupt()
    code, stdout, stderr = run.finish()
    assert code == 130, stderr
    result = json.loads(stdout)
    assert (result["saga"], result["state"], result["interrupted"]) == ("slow", "failed", True)
    assert setup.shown(result["transaction_id"])["transaction"]["state"] == "failed"
    assert setup.side_effects() == ["reserve", "wait", "cancel", "release"]


def test_a_second_commit_of_a_transaction_being_driven_says_who_drives_it(
    setup: Setup,
) -> None:
    tx = setup.pending(("wait", "cancel"))
    tid = tx.transaction_id
    run = setup.start("commit", tid, "--handlers", setup.spec)
    try:
        run.wait_for("MARK wait")
        second = setup.cli("commit", tid, "--handlers", setup.spec, expect=2)
    finally:
        run.interrupt()
        run.finish()
    (line,) = second.stderr.splitlines()
    assert line.startswith(f"error: Transaction {tid} is being committed by manager-")
    assert f"`aumai-transactions show {tid}` to follow it" in line
    assert "try again" not in line


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip("SIGINT to a child process is POSIX")


def compensation_failed(setup: Setup) -> Transaction:
    """A compensation_failed transaction in the store: its second step failed, and the
    first one's compensation (release_gated) failed too."""

    def done(action: str, data: Any) -> None:
        return None

    def down(action: str, data: Any) -> None:
        raise RuntimeError(f"{action} is down")

    async def commit() -> Transaction:
        async with SqliteStore(setup.db) as store:
            handlers = {"reserve": done, "charge": down, "release_gated": down}
            once = RetryPolicy(max_attempts=1)
            manager = TransactionManager(handlers, store=store, compensation_retry=once)
            tx = manager.begin(timeout_seconds=600)
            manager.add_step(tx, "agent", "reserve", {}, "release_gated")
            manager.add_step(tx, "agent", "charge", {}, None)
            result = await manager.commit(tx)
            assert result.state.value == "compensation_failed", result
            return tx

    return anyio.run(commit)


def test_ctrl_c_during_retry_compensation_finishes_it_and_prints_the_end(setup: Setup) -> None:
    tx = compensation_failed(setup)
    run = setup.start("retry-compensation", tx.transaction_id, "--handlers", setup.spec)
    run.wait_for("MARK release_gated")  # the retried compensation, running
    run.interrupt()
    run.wait_for("Ctrl-C: transaction")  # said at once ...
    code, stdout, stderr = run.finish(stdin="go\n")  # ... then the compensation returns
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert "state        rolled_back" in stdout  # the final state, not just "interrupted"
    assert setup.side_effects() == ["release_gated"]
    assert setup.shown(tx.transaction_id)["transaction"]["state"] == "rolled_back"


def test_recover_watch_says_when_the_wait_on_a_live_lease_begins_and_ends(
    setup: Setup,
) -> None:
    tid = "busy-1"
    (setup.tmp_path / "busy.json").write_text(json.dumps([in_flight(tid)]))
    setup.cli("import", str(setup.tmp_path / "busy.json"))

    def lease_expires_in(seconds: float) -> None:  # rewritten in the database, no sleep
        with sqlite3.connect(setup.db) as db:
            db.execute(
                "UPDATE transactions SET lease_owner='worker-7', lease_expires=?, epoch=1 "
                "WHERE transaction_id=?",
                (round((time.time() + seconds) * 1_000_000), tid),
            )

    lease_expires_in(600)
    run = setup.start("recover", "--watch", "--interval", "0.1", "--handlers", setup.spec)
    run.wait_for("1 transaction(s) wait on a live lease; the first expires at ")
    lease_expires_in(-1)  # the worker died long ago: the next round takes it over
    run.wait_for("No transaction waits on a live lease any more.")
    run.interrupt()
    code, _, stderr = run.finish()
    assert code == 0, stderr
    assert stderr.count("wait on a live lease") == 1  # said when it changed, not each round
    assert setup.shown(tid)["transaction"]["state"] == "rolled_back"
    assert setup.side_effects() == ["cancel", "release"]
