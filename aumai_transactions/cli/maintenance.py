"""Keeping the store in order: recover, export, import, purge."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.prompt import Confirm

from .. import Transaction, TransactionManager, TransactionResult, TransactionState
from ..models import LeaseSummary, utcnow
from ..stores import OperatorStore
from ._errors import EXIT_NOT_REACHED, CliError
from ._handlers import load_handlers
from ._options import HandlersOption, JsonOption, RevealOption, StoreOption
from ._output import Column, Output, format_time, state_cell
from ._parse import parse_duration, read_text
from ._payloads import without_own_id
from ._store import cli_store, run_async
from ._transfer import dump_transactions, parse_transactions, write_private_file
from ._views import details_panel

__all__ = ["app"]

app = typer.Typer()

_PANEL = "Maintain the store"
_IN_FLIGHT = (TransactionState.ACTIVE, TransactionState.COMPENSATING)
# Where recovery may end a transaction without an operator having to look: failed is
# one (an interrupted or timed-out transaction, its compensation finished by recovery).
_RECOVERY_GOALS = (
    TransactionState.COMMITTED,
    TransactionState.ROLLED_BACK,
    TransactionState.FAILED,
)


class Policy(StrEnum):
    """What recovery does with a transaction whose driver died."""

    compensate = "compensate"
    resume = "resume"


def _recovery_row(
    result: TransactionResult, tx: Transaction | None, output: Output
) -> dict[str, Any]:
    """One recovered transaction: its end state and what went wrong, masked."""
    blocked = tx.blocked_reason if tx is not None else None
    return {
        "transaction_id": result.transaction_id,
        "state": result.state.value,
        "blocked_reason": output.mask_text(blocked),
        "error": output.mask_text(result.error),
        "failed_step": result.failed_step,
        "compensation_errors": {
            step_id: output.mask_text(message)
            for step_id, message in result.compensation_errors.items()
        },
        "interrupted_steps": result.interrupted_steps,
        "recorded_only_steps": result.recorded_only_steps,
    }


_RECOVERY_COLUMNS = [
    Column("transaction_id", "id", no_wrap=True),
    Column("state", "state", format=state_cell),
    Column("outcome", "outcome", max_width=60),
]


def _print_round(output: Output, rows: list[dict[str, Any]], *, lines: bool) -> None:
    if lines and output.json_mode:
        for row in rows:
            output.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        output.stdout.flush()
        return
    view = [
        {
            **row,
            "outcome": without_own_id(
                row["blocked_reason"]
                or "; ".join(row["compensation_errors"].values())
                or row["error"]
                or "",
                row["transaction_id"],
            ),
        }
        for row in rows
    ]
    if output.json_mode:
        output.emit(rows)
    else:
        output.console.print(output.table(view, _RECOVERY_COLUMNS, title="Recovered"))


def waiting_line(summary: LeaseSummary) -> str | None:
    """How many in-flight transactions recovery left to a live lease, and when the
    first of those leases expires (None: none waits)."""
    if not summary.waiting:
        return None
    return (
        f"{summary.waiting} transaction(s) wait on a live lease; the first expires at "
        f"{format_time(summary.first_expiry)} (recover can take it then, if its driver "
        "has not finished it)."
    )


def _note_waiting_change(output: Output, last: list[str | None], summary: LeaseSummary) -> None:
    """In ``--watch``: say when what waits on a live lease changes (not every round)."""
    line = waiting_line(summary)
    if line != last[0]:
        if line is not None:
            output.note(line)
        elif last[0] is not None:
            output.note("No transaction waits on a live lease any more.")
        last[0] = line


@app.command("recover", rich_help_panel=_PANEL)
def recover(
    handlers: HandlersOption,
    policy: Annotated[
        Policy,
        typer.Option(
            "--policy",
            help="compensate: undo what may have run (a crash aborts); resume: carry on.",
        ),
    ] = Policy.compensate,
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep recovering every --interval seconds until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between rounds with --watch.")
    ] = 2.0,
    owner: Annotated[
        str | None,
        typer.Option(
            "--owner",
            help="Recover as this worker (its stable name): takes over at once, without "
            "waiting for their leases, the transactions a worker of that name holds. Only "
            "for a worker that is down, or its transactions get two drivers.",
        ),
    ] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
    reveal: RevealOption = False,
) -> None:
    """Finish transactions whose driver died, once or with --watch.

    Claims active and compensating transactions whose lease expired and drives each
    to an end; says how many wait on a live lease and when the first expires; exits 1
    when one is left needing an operator.
    """
    output = Output(json_mode=as_json, reveal=reveal)
    mapping = load_handlers(handlers)
    waiting: list[str | None] = [None]

    async def body() -> list[dict[str, Any]]:
        everything: list[dict[str, Any]] = []
        async with cli_store(store, output, creates=True) as opened:
            manager = TransactionManager(mapping, store=opened, owner=owner)
            async with manager:
                if watch:
                    output.note(f"Recovering every {interval:g}s from {opened.url}; Ctrl-C stops.")
                while True:
                    results = await manager.recover(policy.value)
                    rows = [
                        _recovery_row(r, manager.get_transaction(r.transaction_id), output)
                        for r in results
                    ]
                    everything += rows
                    if not watch:
                        if isinstance(opened, OperatorStore):
                            waiting[0] = waiting_line(await manager.waiting_on_leases())
                        return everything
                    if rows:
                        _print_round(output, rows, lines=True)
                    if isinstance(opened, OperatorStore):
                        _note_waiting_change(output, waiting, await manager.waiting_on_leases())
                    await anyio.sleep(interval)

    if watch:
        try:
            run_async(body)
        except KeyboardInterrupt:
            output.note("Stopped.")
        return
    rows = run_async(body)
    if not rows and not as_json:
        output.note(
            "Nothing to recover: no active or compensating transaction has an expired lease."
        )
    if waiting[0] is not None:
        output.note(waiting[0])
    if not rows and not as_json:
        return
    _print_round(output, rows, lines=False)
    if any(row["state"] not in {s.value for s in _RECOVERY_GOALS} for row in rows):
        raise typer.Exit(EXIT_NOT_REACHED)


StateFilter = Annotated[
    TransactionState | None,
    typer.Option("--state", case_sensitive=False, help="Only transactions in this state."),
]


@app.command("export", rich_help_panel=_PANEL)
def export(
    output_file: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (mode 0600) instead of stdout."),
    ] = None,
    state: StateFilter = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export transactions as JSON (the original tool's format).

    A list of transaction dumps, oldest first; step data is not masked (a backup).
    """
    output = Output(json_mode=as_json)

    async def body() -> list[Transaction]:
        async with cli_store(store, output) as opened:
            return await opened.list(state=state)

    found = run_async(body)
    found.reverse()
    text = dump_transactions(found)
    if output_file is None:
        output.stdout.write(text)
        output.stdout.flush()
        return
    write_private_file(output_file, text)
    output.emit(
        {"exported": len(found), "output": str(output_file)},
        f"Exported {len(found)} transaction(s) to {output_file}",
    )
    if not as_json:
        output.note(
            "The file holds step data unmasked (it is a backup); it is readable by you only."
        )


@app.command("import", rich_help_panel=_PANEL)
def import_(
    file: Annotated[
        str,
        typer.Argument(metavar="FILE", help="A JSON file as `export` writes it, or - for stdin."),
    ],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite transactions the store already holds.")
    ] = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import transactions from a JSON file, all or nothing.

    Every entry is validated before any is written; ids already stored are skipped
    unless --replace.
    """
    output = Output(json_mode=as_json)
    incoming = parse_transactions(read_text(file, "import"), "<stdin>" if file == "-" else file)

    async def body() -> dict[str, list[str]]:
        async with cli_store(store, output, creates=True) as opened:
            fresh: list[Transaction] = []
            skipped: list[str] = []
            replaced: list[str] = []
            for tx in incoming:
                stored = await opened.load(tx.transaction_id)
                if stored is None:
                    fresh.append(tx)
                elif not replace:
                    skipped.append(tx.transaction_id)
                elif stored.state in _IN_FLIGHT:
                    raise CliError(
                        f"Transaction {tx.transaction_id} is {stored.state.value} in the store; "
                        "an in-flight transaction is never replaced (nothing was imported)."
                    )
                else:
                    fresh.append(tx)
                    replaced.append(tx.transaction_id)
            for tx in fresh:
                await opened.save(tx)
            return {
                "imported": [tx.transaction_id for tx in fresh],
                "replaced": replaced,
                "skipped": skipped,
            }

    outcome = run_async(body)
    in_flight = [tx.transaction_id for tx in incoming if tx.state in _IN_FLIGHT]
    payload = {"file": file, **outcome, "in_flight": in_flight}
    output.emit(
        payload,
        details_panel(
            [
                ("file", file),
                ("imported", len(outcome["imported"])),
                ("replaced", len(outcome["replaced"]) or None),
                ("skipped", f"{len(outcome['skipped'])} already stored (--replace overwrites)")
                if outcome["skipped"]
                else None,
            ],
            title="Import",
        ),
    )
    if in_flight and not as_json:
        output.warn(
            f"{len(in_flight)} imported transaction(s) are active or compensating: "
            "`aumai-transactions recover` will drive them to an end."
        )


def _stdin_is_interactive() -> bool:
    return sys.stdin.isatty()


@app.command("purge", rich_help_panel=_PANEL)
def purge(
    state: Annotated[
        list[TransactionState],
        typer.Option(
            "--state", case_sensitive=False, help="Delete transactions in this state (repeatable)."
        ),
    ],
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", metavar="7d", help="Only those created this long ago or more."
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would go.")] = False,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete old transactions in given states (asks unless --yes)."""
    output = Output(json_mode=as_json)
    states = list(dict.fromkeys(state))
    flying = [s.value for s in states if s in _IN_FLIGHT]
    if flying:
        raise CliError(
            f"{' and '.join(flying)} transactions are in flight and are never purged; "
            "`aumai-transactions recover` drives them to an end first."
        )
    cutoff: datetime = utcnow() - parse_duration(older_than, "--older-than")

    async def count() -> int:
        async with cli_store(store, output) as opened:
            total = 0
            for one in states:
                total += len(await opened.list(state=one, until=cutoff))
            return total

    async def delete() -> int:
        async with cli_store(store, output) as opened:
            terminal = [s for s in states if s.is_terminal]
            deleted = await opened.purge(states=terminal, older_than=cutoff) if terminal else 0
            if TransactionState.PENDING in states:
                for tx in await opened.list(state=TransactionState.PENDING, until=cutoff):
                    deleted += int(await opened.delete(tx.transaction_id))
            return deleted

    names = ", ".join(s.value for s in states)
    candidates = run_async(count)
    summary = {
        "states": [s.value for s in states],
        "older_than": cutoff.isoformat(),
        "dry_run": dry_run,
    }
    if dry_run or candidates == 0:
        output.emit(
            {**summary, "deleted": 0, "matching": candidates},
            f"{candidates} transaction(s) in {names} created before {cutoff:%Y-%m-%d %H:%M:%S}Z"
            + (" would be deleted." if dry_run else "; nothing to delete."),
        )
        return
    if not yes:
        if not _stdin_is_interactive():
            raise CliError(
                f"Refusing to prompt: stdin is not a terminal. Pass --yes to delete "
                f"{candidates} transaction(s) in {names}."
            )
        question = (
            f"Delete {candidates} transaction(s) in {names} created before "
            f"{cutoff:%Y-%m-%d %H:%M}Z?"
        )
        if not Confirm.ask(question, console=output.err, default=False):
            output.note("Nothing deleted.")
            return
    deleted = run_async(delete)
    output.emit(
        {**summary, "deleted": deleted, "matching": candidates},
        f"Deleted {deleted} transaction(s).",
    )
