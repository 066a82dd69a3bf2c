"""An operator's actions on a transaction no driver will finish: retry-compensation, resolve.

Both take a ``compensation_failed`` transaction (``resolve`` a ``dead_letter`` one too)
and call the library's :meth:`TransactionManager.retry_compensations` and
:meth:`TransactionManager.resolve`; on another state the library's one-line message is
the error (exit 2). Both are journaled by the library.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import Transaction, TransactionManager, TransactionResult, TransactionState
from ._driving import LEASE_TTL, Driving, report_result, run_driving
from ._handlers import load_handlers
from ._options import HandlersOption, JsonOption, RevealOption, StoreOption, TxIdArgument
from ._options import transaction_id as chosen_id
from ._output import Output, format_time, state_cell
from ._store import cli_store, find_transaction, run_async
from ._views import details_panel, transaction_row

__all__ = ["OPERATOR_HINT", "app"]

app = typer.Typer()

_PANEL = "Act as an operator"

OPERATOR_HINT = (
    "→ retry its compensations: aumai-transactions retry-compensation {tx} --handlers SPEC\n"
    '→ or, once put right by hand: aumai-transactions resolve {tx} --note "what was done"'
)
"""What ``show`` tells the operator of a ``compensation_failed`` transaction."""


@app.command("retry-compensation", rich_help_panel=_PANEL)
def retry_compensation(
    tx_id: TxIdArgument = None,
    *,
    handlers: HandlersOption,
    store: StoreOption = None,
    as_json: JsonOption = False,
    reveal: RevealOption = False,
) -> None:
    """Retry the failed compensations of a compensation_failed transaction.

    Runs, newest first, every compensation that failed or was never reached, with the
    handlers named by --handlers (those that succeeded are not run again). Exits 0
    when the transaction ends rolled_back, 1 otherwise.
    """
    output = Output(json_mode=as_json, reveal=reveal)
    ident = chosen_id(tx_id, None, "retry-compensation")
    mapping = load_handlers(handlers)  # before the store is touched

    driving = Driving(store, handlers)

    async def body() -> tuple[TransactionResult, Transaction]:
        async with cli_store(store, output, creates=True) as opened:
            tx = await find_transaction(opened, ident)
            manager = TransactionManager(mapping, store=opened, lease_ttl=LEASE_TTL)
            async with manager:
                # Ctrl-C as during rollback: the compensations finish first; a second
                # one leaves the rest to recover, and the command says how.
                driving.started(opened, tx, rollback=True)
                result = await manager.retry_compensations(tx)
            return result, tx

    goal = TransactionState.ROLLED_BACK
    result, tx = run_driving(body, driving, output, goal)
    report_result(result, tx, output, goal)


@app.command("resolve", rich_help_panel=_PANEL)
def resolve(
    tx_id: TxIdArgument = None,
    *,
    note: Annotated[
        str,
        typer.Option("--note", help="What was done by hand (kept in the journal)."),
    ],
    by: Annotated[
        str | None, typer.Option("--by", help="Who did it (kept in the journal).")
    ] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Mark a compensation_failed or dead_letter transaction resolved by hand.

    For when its effects were put right outside the engine. It ends resolved, a
    terminal state that list no longer counts as a problem; the note, who and when are
    kept in the journal, and the steps keep the record of what failed.
    """
    output = Output(json_mode=as_json)
    ident = chosen_id(tx_id, None, "resolve")

    async def body() -> Transaction:
        async with cli_store(store, output) as opened:
            tx = await find_transaction(opened, ident)
            async with TransactionManager(store=opened, lease_ttl=LEASE_TTL) as manager:
                return await manager.resolve(tx, note, by=by)

    tx = run_async(body)
    row = transaction_row(tx, output)
    resolution = row["resolution"]
    output.emit(
        row,
        details_panel(
            [
                ("state", state_cell(tx.state.value)),
                ("was", resolution["previous_state"]),
                ("note", resolution["note"]),
                ("by", resolution["by"]),
                ("at", format_time(resolution["at"])),
            ],
            title=f"Transaction {tx.transaction_id}",
            style="green",
        ),
    )
