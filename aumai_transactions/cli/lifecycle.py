"""Building and driving one transaction: create, status, add-step, commit, rollback.

Each command is its own short process, so the pending transaction lives in the store
between them: ``create`` and ``add-step`` save it; ``commit`` and ``rollback`` load it,
register it with a manager over the same store, and drive it there.

``create`` and ``status`` print the original tool's JSON documents (its keys first, in
its order) whenever stdout is not a terminal, or with ``--json``; a panel on a
terminal. ``create -q`` prints the bare id, for ``TX=$(aumai-transactions create -q)``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.panel import Panel

from .. import (
    LeaseConflictError,
    Transaction,
    TransactionManager,
    TransactionResult,
    TransactionState,
)
from ..models import utcnow
from ._driving import LEASE_TTL, Driving, busy_error, report_result, run_driving
from ._errors import CliError
from ._handlers import check_handlers, load_handlers
from ._options import (
    HandlersOption,
    HiddenTxIdOption,
    JsonOption,
    RevealOption,
    StoreOption,
    TxIdArgument,
    TxIdOption,
    transaction_id,
)
from ._output import Output, format_time, state_cell
from ._parse import parse_data
from ._store import cli_store, find_transaction, run_async
from ._timeline import progress_display
from ._views import details_panel, step_rows

QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Print only the new id (for TX=$(aumai-transactions create -q))."
    ),
]

__all__ = ["app"]

app = typer.Typer()

_PANEL = "Build and drive a transaction"


def _deadline_note(tx: Transaction) -> str | None:
    deadline = tx.deadline
    if deadline is None:
        return None
    if deadline <= utcnow():
        return (
            f"its deadline passed at {format_time(deadline)}: a commit now fails without "
            "running any step (create one with a longer --timeout)"
        )
    return f"commit before {format_time(deadline)} (created with --timeout {tx.timeout_seconds:g})"


def _seconds(value: float | None) -> float | int | None:
    """A timeout as the original printed it: ``60``, not ``60.0``, when it is whole."""
    if value is not None and float(value).is_integer():
        return int(value)
    return value


def _document(tx: Transaction, *, steps: bool) -> dict[str, Any]:
    """The original tool's document for ``create`` (``steps=False``) or ``status``: these
    keys first and in this order; keys added later go after them."""
    document: dict[str, Any] = {"transaction_id": tx.transaction_id, "state": tx.state.value}
    if steps:
        document["steps"] = len(tx.steps)
    document["created_at"] = tx.created_at.isoformat()
    document["timeout_seconds"] = _seconds(tx.timeout_seconds)
    return document


def _summary_panel(tx: Transaction, *, title: str) -> Panel:
    note = _deadline_note(tx) if tx.state is TransactionState.PENDING else None
    return details_panel(
        [
            ("id", tx.transaction_id),
            ("state", state_cell(tx.state.value)),
            ("steps", len(tx.steps)),
            ("created", format_time(tx.created_at)),
            ("timeout", "none" if tx.timeout_seconds is None else f"{tx.timeout_seconds:g} s"),
            ("note", note),
        ],
        title=title,
    )


@app.command("create", rich_help_panel=_PANEL)
def create(
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="Seconds from now until the transaction times out."),
    ] = 60,
    quiet: QuietOption = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a pending transaction and print it (JSON unless on a terminal).

    The JSON document is the original tool's: transaction_id, state, created_at,
    timeout_seconds. With -q, only the id.
    """
    if quiet and as_json:
        raise CliError("--quiet prints the bare id and --json a document: give one of them.")
    output = Output.document(json_mode=as_json)
    if not timeout > 0 or timeout == float("inf"):
        raise CliError(f"--timeout must be a positive number of seconds, not {timeout:g}.")

    async def body() -> Transaction:
        async with cli_store(store, output, creates=True) as opened:
            manager = TransactionManager(store=opened)
            tx = manager.begin(timeout_seconds=timeout)
            await manager.save(tx)
            return tx

    tx = run_async(body)
    if quiet:
        output.stdout.write(tx.transaction_id + "\n")
        output.stdout.flush()
        return
    output.emit(_document(tx, steps=False), _summary_panel(tx, title="Created transaction"))


@app.command("status", rich_help_panel=_PANEL)
def status(
    tx_id: TxIdArgument = None,
    tx_id_option: TxIdOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a transaction's state, step count, creation time and timeout.

    The fields the original tool printed: transaction_id, state, steps (the step
    count), created_at, timeout_seconds; as JSON unless on a terminal.
    """
    output = Output.document(json_mode=as_json)
    tx_id = transaction_id(tx_id, tx_id_option, "status", documented=True)

    async def body() -> Transaction:
        async with cli_store(store, output) as opened:
            return await find_transaction(opened, tx_id)

    tx = run_async(body)
    output.emit(_document(tx, steps=True), _summary_panel(tx, title="Transaction"))


@app.command("add-step", rich_help_panel=_PANEL)
def add_step(
    tx_id: TxIdArgument = None,
    *,
    agent: Annotated[str, typer.Option("--agent", help="The agent performing the step.")],
    action: Annotated[str, typer.Option("--action", help="The action (a handler name).")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            metavar="JSON|@FILE",
            help="Step data: a JSON object, @file.json, or @- to read stdin.",
        ),
    ] = None,
    compensate: Annotated[
        str | None,
        typer.Option("--compensate", metavar="ACTION", help="The action that undoes this step."),
    ] = None,
    tx_id_option: HiddenTxIdOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
    reveal: RevealOption = False,
) -> None:
    """Append a step to a pending transaction.

    The step is an action by an agent, with JSON data and an optional compensating
    action; bad data is refused before anything is written.
    """
    output = Output(json_mode=as_json, reveal=reveal)
    tx_id = transaction_id(tx_id, tx_id_option, "add-step")
    step_data = parse_data(data)  # before the store is touched: bad input changes nothing

    async def body() -> Transaction:
        async with cli_store(store, output, creates=True) as opened:
            tx = await find_transaction(opened, tx_id)
            if tx.state is not TransactionState.PENDING:
                raise CliError(
                    f"Transaction {tx.transaction_id} is {tx.state.value}; steps can only be "
                    "added to pending transactions (create a new one)."
                )
            manager = TransactionManager(store=opened)
            manager.register_transaction(tx)
            manager.add_step(tx, agent, action, step_data, compensate)
            await manager.save(tx)
            return tx

    tx = run_async(body)
    row = step_rows(tx, output)[-1]
    output.emit(
        {"transaction_id": tx.transaction_id, "step": row},
        details_panel(
            [
                ("step", f"#{row['index']} {row['step_id']}"),
                ("agent", row["agent_id"]),
                ("action", row["action"]),
                ("undo", row["compensating_action"] or "— (nothing to undo)"),
                ("data", row["data"]),
            ],
            title=f"Added to {tx.transaction_id}",
        ),
    )
    if not as_json:
        note = _deadline_note(tx)
        output.note(
            f"Transaction {tx.transaction_id} has {len(tx.steps)} step(s)"
            + (f"; {note}." if note else ".")
        )


def _drive(
    store: str | None,
    output: Output,
    tx_id: str,
    spec: str,
    *,
    rollback: bool,
) -> None:
    handlers = load_handlers(spec)  # before the store is touched
    goal = TransactionState.ROLLED_BACK if rollback else TransactionState.COMMITTED
    allowed = (
        (TransactionState.PENDING, TransactionState.COMMITTED)
        if rollback
        else (TransactionState.PENDING,)
    )
    driving = Driving(store, spec)

    async def body() -> tuple[TransactionResult, Transaction]:
        async with cli_store(store, output, creates=True) as opened:
            tx = await find_transaction(opened, tx_id)
            if tx.state in (TransactionState.ACTIVE, TransactionState.COMPENSATING):
                raise await busy_error(opened, tx, spec)
            if tx.state not in allowed:
                wanted = " or ".join(state.value for state in allowed)
                raise CliError(
                    f"Transaction {tx.transaction_id} is {tx.state.value}; only {wanted} "
                    f"transactions can be {'rolled back' if rollback else 'committed'}."
                )
            needed = [step.compensating_action for step in tx.steps]
            if not rollback:
                needed += [step.action for step in tx.steps]
            check_handlers(handlers, spec, needed)
            manager = TransactionManager(handlers, store=opened, lease_ttl=LEASE_TTL)
            async with manager:
                manager.register_transaction(tx)
                title = "Rolling back" if rollback else "Committing"
                driving.started(opened, tx, rollback=rollback)
                with progress_display(tx, output, title=title):
                    try:
                        if rollback:
                            result = await manager.rollback(tx)
                        else:
                            result = await manager.commit(tx)
                    except LeaseConflictError:
                        # Another process took it between our read and our lease.
                        stored = await opened.load(tx.transaction_id)
                        if stored is None or stored.state not in (
                            TransactionState.ACTIVE,
                            TransactionState.COMPENSATING,
                        ):
                            raise
                        raise await busy_error(opened, stored, spec) from None
            return result, tx

    result, tx = run_driving(body, driving, output, goal)
    report_result(result, tx, output, goal)


@app.command("commit", rich_help_panel=_PANEL)
def commit(
    tx_id: TxIdArgument = None,
    *,
    handlers: HandlersOption,
    tx_id_option: HiddenTxIdOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
    reveal: RevealOption = False,
) -> None:
    """Run a pending transaction; undo it if a step fails (exit 1).

    Steps run in order with the handlers named by --handlers; when one fails, the
    completed ones are compensated in reverse order and the command exits 1. Ctrl-C
    compensates too: the transaction ends failed, and the command exits 130.
    """
    output = Output(json_mode=as_json, reveal=reveal)
    tx_id = transaction_id(tx_id, tx_id_option, "commit")
    _drive(store, output, tx_id, handlers, rollback=False)


@app.command("rollback", rich_help_panel=_PANEL)
def rollback(
    tx_id: TxIdArgument = None,
    *,
    handlers: HandlersOption,
    tx_id_option: HiddenTxIdOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
    reveal: RevealOption = False,
) -> None:
    """Compensate every step of a transaction, in reverse order.

    For a pending transaction (steps that ran elsewhere) or a committed one; exits 1
    when a compensation fails.
    """
    output = Output(json_mode=as_json, reveal=reveal)
    tx_id = transaction_id(tx_id, tx_id_option, "rollback")
    _drive(store, output, tx_id, handlers, rollback=True)
