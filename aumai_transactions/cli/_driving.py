"""Driving one transaction from a command (commit, rollback, run) and reporting its end,
also when Ctrl-C stopped it.

An interrupted transaction ends ``failed``, whatever the number of Ctrl-Cs. The CLI
runs the engine on asyncio: the first Ctrl-C cancels the command, and the engine
compensates (shielded) before the cancellation goes on; the command then prints the
final state and the compensations that ran, as at a normal end, and exits 130. A
second Ctrl-C stops the compensation itself: the transaction is left ``compensating``
under this process's lease, and the command prints the ``recover`` command that
finishes it (also ending it ``failed``) and when the lease expires, and exits 130.

What an interrupt reports is read back from the store (each change is journaled
before the next action), falling back to the object the engine drove when the store
cannot be read (a ``memory://`` store is gone with the loop that held it).
"""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import FrameType
from typing import Any, TypeVar

import typer

from ..models import (
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    ends_failed,
    utcnow,
)
from ..stores import Store
from ._errors import EXIT_INTERRUPTED, EXIT_NOT_REACHED, CliError
from ._handlers import absolute_spec
from ._output import Output, format_time
from ._store import cli_store, run_async
from ._views import result_payload, result_renderables

__all__ = ["LEASE_TTL", "Driving", "busy_error", "report_result", "result_of", "run_driving"]

T = TypeVar("T")

LEASE_TTL = 30.0
"""Seconds a command's lease on the transaction it drives lasts unless renewed (the
manager renews it while the command runs): how long ``recover`` waits after a crash."""

_UNDONE = (StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)


@dataclass
class Driving:
    """The transaction a command drives, noted as it starts, for the report an
    interrupt prints. ``store`` and ``handlers`` are the options as given."""

    store: str | None
    handlers: str
    tx: Transaction | None = None
    url: str | None = None
    _sigint: Any = field(default=None, repr=False)

    def started(self, store: Store, tx: Transaction, *, rollback: bool = False) -> None:
        """Note the store and the transaction, just before the engine takes it; from
        now on the first Ctrl-C says what it does (and what a second one would do)."""
        self.url = store.url
        self.tx = tx
        tid = tx.transaction_id
        self._say_on_first_ctrl_c(
            f"Ctrl-C: transaction {tid} finishes its compensations first; Ctrl-C again "
            "stops them and leaves the rest to `aumai-transactions recover`."
            if rollback
            else f"Ctrl-C: stopping transaction {tid} and compensating what it ran (it "
            "will end failed); Ctrl-C again stops the compensation and leaves the rest to "
            "`aumai-transactions recover`."
        )

    def _say_on_first_ctrl_c(self, line: str) -> None:
        """Wrap asyncio's own SIGINT handler (which cancels the command on the first
        Ctrl-C and raises KeyboardInterrupt on the second) so that the first also prints
        a line. The line is printed from the event loop, never from the signal handler:
        a handler that writes could land in the middle of another write to stderr."""
        runner = signal.getsignal(signal.SIGINT)
        if not callable(runner) or runner is signal.default_int_handler:
            return  # not run by asyncio's runner in the main thread: leave it alone
        loop = asyncio.get_running_loop()
        seen = [0]

        def say() -> None:
            sys.stderr.write(line + "\n")  # through Live's redirection when it draws
            sys.stderr.flush()

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            seen[0] += 1
            if seen[0] == 1:
                loop.call_soon_threadsafe(say)
            runner(signum, frame)

        signal.signal(signal.SIGINT, on_sigint)
        self._sigint = on_sigint

    def stopped(self, before: Any) -> None:
        """Give SIGINT back to the handler it had ``before`` the command's event loop
        (asyncio's runner leaves ours in place: it only restores its own)."""
        if self._sigint is not None and signal.getsignal(signal.SIGINT) is self._sigint:
            signal.signal(signal.SIGINT, before)
        self._sigint = None

    def recover_command(self) -> str:
        """The exact command that finishes the transaction once its lease expires."""
        words = ["aumai-transactions", "recover"]
        if self.url is not None:
            words += ["--store", self.url]
        words += ["--handlers", absolute_spec(self.handlers)]
        return shlex.join(words)


async def busy_error(store: Store, tx: Transaction, handlers: str) -> CliError:
    """Why an in-flight transaction cannot be driven now, and what happens instead:
    its driver finishes it (follow it with ``show``), or, when that driver is gone,
    ``recover`` does."""
    tid = tx.transaction_id
    leases = getattr(store, "leases", None)
    lease = (await leases([tid])).get(tid) if leases is not None else None
    doing = "committed" if tx.state is TransactionState.ACTIVE else "rolled back (compensating)"
    follow = f"`aumai-transactions show {tid}` to follow it"
    recover = f"`aumai-transactions recover --handlers {handlers}` finishes it"
    if lease is None:  # the store does not show leases
        return CliError(
            f"Transaction {tid} is being {doing} by another process, which will end it: "
            f"{follow} (should that process have died, {recover} once its lease expires)."
        )
    if lease.live:
        until = format_time(lease.expires_at)
        return CliError(
            f"Transaction {tid} is being {doing} by {lease.owner}, which will end it: "
            f"{follow} (should that process have died, {recover} after its lease expires "
            f"at {until})."
        )
    lapsed = f" at {format_time(lease.expires_at)}" if lease.expires_at else ""
    return CliError(
        f"Transaction {tid} is {tx.state.value}, but its driver {lease.owner} stopped (its "
        f"lease lapsed{lapsed}): {recover}."
    )


def result_of(tx: Transaction) -> TransactionResult:
    """The result of ``tx`` as the journal records it, for a run whose result the
    engine never returned (it was interrupted): the same fields, in the same terms."""
    steps = tx.steps
    if tx.state is TransactionState.COMMITTED:
        completed = [s.step_id for s in steps if s.status is StepStatus.COMPLETED]
    else:  # undone newest first, as the compensation pass goes
        completed = [
            s.step_id
            for s in reversed(steps)
            if s.status in _UNDONE
            or (s.status is StepStatus.COMPLETED and s.compensating_action is None)
        ]
    starts = [s.started_at for s in steps if s.started_at is not None]
    failed = [s.step_id for s in steps if s.status is StepStatus.FAILED and not s.interrupted]
    return TransactionResult.new(
        tx.transaction_id,
        tx.state,
        completed,
        failed[0] if failed else None,
        tx.error,
        {
            s.step_id: s.compensation_error
            for s in steps
            if s.status is StepStatus.COMPENSATION_FAILED and s.compensation_error
        },
        min(starts) if starts else tx.created_at,
        tx.finished_at,
        [s.step_id for s in steps if s.interrupted],
        [s.step_id for s in steps if s.recorded_only],
    )


def _end_state(tx: Transaction) -> str:
    """The state recovery ends ``tx`` in: failed when it was interrupted or timed out
    (as had its compensation finished here), rolled back when a step failed."""
    if ends_failed(tx):
        return "it then ends failed, as it would have here"
    return "it then ends rolled_back, as it would have here"


def report_result(
    result: TransactionResult,
    tx: Transaction,
    output: Output,
    goal: TransactionState,
    *,
    extra: dict[str, Any] | None = None,
    code: int | None = None,
) -> None:
    """Print how a commit, rollback or run ended; exit ``code``, else 1 when it did not
    reach ``goal``."""
    payload = {**(extra or {}), **result_payload(result, tx, output)}
    if code is not None:
        payload["interrupted"] = True
    output.emit(payload, *result_renderables(result, tx, output, goal=goal))
    if code is not None:
        raise typer.Exit(code)
    if result.state is not goal:
        raise typer.Exit(EXIT_NOT_REACHED)


def run_driving(
    body: Callable[[], Awaitable[T]],
    driving: Driving,
    output: Output,
    goal: TransactionState,
    *,
    extra: dict[str, Any] | None = None,
) -> T:
    """Run ``body`` (which calls ``driving.started``); on Ctrl-C, report where the
    transaction stands and exit 130."""
    before = signal.getsignal(signal.SIGINT)
    try:
        return run_async(body)
    except KeyboardInterrupt:
        if driving.tx is None:  # stopped before the engine took the transaction
            raise
        interrupted_at = utcnow()
    finally:
        driving.stopped(before)
    _report_interrupted(driving, output, goal, extra, interrupted_at)
    raise AssertionError("unreachable")  # pragma: no cover


async def _stored(driving: Driving, output: Output) -> tuple[Transaction | None, Any]:
    """The transaction as stored, and its lease if the store can show it."""
    assert driving.tx is not None
    tid = driving.tx.transaction_id
    async with cli_store(driving.url, output) as opened:
        tx = await opened.load(tid)
        leases = getattr(opened, "leases", None)
        lease = (await leases([tid])).get(tid) if tx is not None and leases else None
        return tx, lease


def _report_interrupted(
    driving: Driving,
    output: Output,
    goal: TransactionState,
    extra: dict[str, Any] | None,
    interrupted_at: datetime,
) -> None:
    assert driving.tx is not None
    try:
        stored, lease = run_async(_stored, driving, output)
    except Exception:  # the store cannot be read now: report what the engine left
        stored, lease = None, None
    tx = stored if stored is not None else driving.tx
    if tx.state is TransactionState.PENDING:
        output.error(f"interrupted before transaction {tx.transaction_id} started; it is pending.")
        raise typer.Exit(EXIT_INTERRUPTED)
    result = result_of(tx)
    if tx.state.is_terminal:
        report_result(result, tx, output, goal, extra=extra, code=EXIT_INTERRUPTED)
    expires = getattr(lease, "expires_at", None)
    exact = expires is not None
    if expires is None:
        expires = interrupted_at + timedelta(seconds=LEASE_TTL)
    command = driving.recover_command()
    if output.json_mode:
        payload = {**(extra or {}), **result_payload(result, tx, output), "interrupted": True}
        payload["recover"] = {
            "command": command,
            "lease_expires_at": expires.isoformat(),
            "lease_expiry_exact": exact,
        }
        output.emit(payload)
    wait = max(0, round((expires - utcnow()).total_seconds()))
    when = (
        f"its lease expires at {format_time(expires)} (in {wait} s)"
        if exact
        else f"its lease expires by {format_time(expires)} at the latest ({LEASE_TTL:g} s "
        "after the interrupt; this store does not show leases)"
    )
    output.error(
        f"interrupted again while compensating: transaction {tx.transaction_id} is left "
        f"{tx.state.value}; {when}. Recovery finishes it ({_end_state(tx)})."
    )
    output.note(f"Finish it after that with: {command}")
    raise typer.Exit(EXIT_INTERRUPTED)
