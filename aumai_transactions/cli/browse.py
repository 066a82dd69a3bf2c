"""Looking at the store: list, show, stats. These commands never write."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import RenderableType
from rich.text import Text

from .. import Transaction, TransactionState
from ..models import LeaseInfo
from ._groups import group_summary
from ._options import HiddenTxIdOption, JsonOption, RevealOption, StoreOption, TxIdArgument
from ._options import transaction_id as chosen_id
from ._output import Column, Output, format_duration, format_time, state_cell
from ._parse import parse_since
from ._payloads import list_rows, problem_text, read_leases, show_payload
from ._store import cli_store, find_transaction, run_async
from ._timeline import timeline_table
from ._views import (
    ATTENTION_STATES,
    data_table,
    details_panel,
    lease_text,
    marked_steps,
    seconds_between,
    steps_table,
    transaction_duration,
)
from .operator import OPERATOR_HINT

__all__ = ["app", "percentile"]

app = typer.Typer()

_PANEL = "Inspect the store"

StateOption = Annotated[
    TransactionState | None,
    typer.Option("--state", case_sensitive=False, help="Only transactions in this state."),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="ISO|1h|7d",
        help="Only transactions created since this moment, or this long ago.",
    ),
]


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The nearest-rank percentile of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _short_id(value: Any) -> str:
    return str(value)[:8]


def _first_words(value: Any, limit: int = 80) -> str | Text:
    if isinstance(value, Text):  # a lease, styled: short already
        return value
    text = str(value or "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _minute(value: Any) -> str:
    return format_time(value)[:16]


# Fixed columns never wrap; the error column takes what is left (`show` has the whole
# story), and narrow terminals lose the agents column rather than every other one.
_LIST_COLUMNS = [
    Column("transaction_id", "id", format=_short_id, no_wrap=True),
    Column("state", "state", format=state_cell, no_wrap=True),
    Column("steps", "steps", justify="right", no_wrap=True),
    Column(
        "agents",
        "agents",
        format=lambda agents: ", ".join(agents),
        no_wrap=True,
        max_width=22,
        overflow="ellipsis",
    ),
    Column("created_at", "created (UTC)", format=_minute, no_wrap=True),
    Column("duration_seconds", "took", format=format_duration, justify="right", no_wrap=True),
    Column("problem", "error", format=_first_words, style="red"),
]
_NARROW = 130  # below this many columns the agents column is left out

_OPEN = "yes: an open transaction, each step run as the code chose it"


def _attention_lines(counts: dict[TransactionState, int]) -> list[Text]:
    """The count of transactions needing an operator, and how to list them."""
    parts = [f"{counts[state]} {state.value}" for state in ATTENTION_STATES if counts.get(state)]
    if not parts:
        return []
    total = sum(counts.get(state, 0) for state in ATTENTION_STATES)
    worst = next(state for state in ATTENTION_STATES if counts.get(state))
    return [
        Text(f"⚠ {total} transaction(s) need an operator: {', '.join(parts)}", style="bold red"),
        Text(f"  see them with: aumai-transactions list --state {worst.value}", style="dim"),
    ]


def _problem(row: dict[str, Any]) -> str | Text | None:
    """The list's last column: why it is stuck or failed; for an in-flight one, who
    holds it until when (a lapsed lease marked); resolved by hand, the operator's note
    (``resolved: refunded by hand``)."""
    if row["lease"] is not None:
        return lease_text(row["lease"], short=True)  # styled: blue, or a lapse in yellow
    return problem_text(row)


def _resolution_line(tx: Transaction, output: Output) -> Text | None:
    """``show``'s line on a transaction an operator closed by hand."""
    if tx.resolution is None:
        return None
    by = f" by {tx.resolution.by}" if tx.resolution.by else ""
    return Text(
        f"{output.mask_text(tx.resolution.note)} ({by.strip() or 'by an operator'}, "
        f"{format_time(tx.resolution.at)}; was {tx.resolution.previous_state.value})",
        style="green",
    )


@app.command("list", rich_help_panel=_PANEL)
def list_transactions(
    state: StateOption = None,
    agent: Annotated[
        str | None, typer.Option("--agent", help="Only transactions with a step by this agent.")
    ] = None,
    since: SinceOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many, newest first.")
    ] = 50,
    store: StoreOption = None,
    as_json: JsonOption = False,
    reveal: RevealOption = False,
) -> None:
    """List transactions, newest first; problems counted on top.

    Transactions in compensation_failed or dead_letter need an operator: they are
    counted above the table and highlighted in it.
    """
    output = Output(json_mode=as_json, reveal=reveal)
    moment = parse_since(since)

    async def body() -> tuple[list[Transaction], dict[TransactionState, int], dict[str, LeaseInfo]]:
        async with cli_store(store, output) as opened:
            found = await opened.list(state=state, agent_id=agent, since=moment, limit=limit)
            return found, await opened.count_by_state(), await read_leases(opened, found)

    found, counts, leases = run_async(body)
    rows = list_rows(found, leases, output)
    total = sum(counts.values())
    if as_json:
        output.emit(rows)
        return
    for line in _attention_lines(counts):
        output.console.print(line)
    view = [{**row, "problem": _problem(row)} for row in rows]
    caption = f"{len(rows)} shown of {total} stored" + (
        f"; --limit {limit} reached" if len(rows) == limit else ""
    )
    columns = [
        column
        for column in _LIST_COLUMNS
        if column.key != "agents" or output.console.width >= _NARROW
    ]
    output.console.print(
        output.table(
            view,
            columns,
            title="Transactions",
            caption=caption,
            row_style=lambda row: (
                "bold red" if row["state"] in {s.value for s in ATTENTION_STATES} else None
            ),
        )
    )


@app.command("show", rich_help_panel=_PANEL)
def show(
    transaction_id: TxIdArgument = None,
    tx_id_option: HiddenTxIdOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
    reveal: RevealOption = False,
) -> None:
    """Show a transaction's steps, outcomes and timeline.

    Each step with its status, attempts, duration, error and compensation outcome
    (steps cut short while running or recorded without a handler are marked, the steps
    of a parallel group bracketed together), then a timeline of the steps and
    compensations on one time axis, a group's steps on lanes of their own.
    """
    output = Output(json_mode=as_json, reveal=reveal)
    tx_id = chosen_id(transaction_id, tx_id_option, "show")

    async def body() -> tuple[Transaction, LeaseInfo | None]:
        async with cli_store(store, output) as opened:
            found = await find_transaction(opened, tx_id)
            return found, (await read_leases(opened, [found])).get(found.transaction_id)

    tx, lease = run_async(body)
    payload = show_payload(tx, lease, output)
    summary, rows, events = payload["transaction"], payload["steps"], payload["timeline"]
    attention = tx.state in ATTENTION_STATES
    panel = details_panel(
        [
            ("id", tx.transaction_id),
            ("state", state_cell(tx.state.value)),
            ("agents", ", ".join(tx.agents) or None),
            ("open", _OPEN if summary["open"] else None),
            ("parallel", group_summary(tx.steps)),
            ("created", format_time(tx.created_at)),
            ("finished", format_time(tx.finished_at) if tx.finished_at else None),
            ("took", format_duration(summary["duration_seconds"]) if tx.finished_at else None),
            ("timeout", "none" if tx.timeout_seconds is None else f"{tx.timeout_seconds:g} s"),
            ("lease", lease_text(summary["lease"]) if summary["lease"] else None),
            ("recoveries", tx.recovery_attempts or None),
            ("resolution", _resolution_line(tx, output)),
            ("error", Text(summary["error"], style="red") if tx.error else None),
            (
                "blocked",
                Text(summary["blocked_reason"], style="red") if tx.blocked_reason else None,
            ),
            *marked_steps(tx),
        ],
        title="Transaction",
        style="red" if attention else "",
    )
    renderables: list[RenderableType] = [panel]
    if tx.state is TransactionState.COMPENSATION_FAILED:
        hint = OPERATOR_HINT.format(tx=tx.transaction_id)
        renderables.append(Text(hint, style="bold"))
    if rows:
        renderables.append(steps_table(rows, output))
        renderables.append(data_table(rows, output))
    timeline = timeline_table(tx, events)
    if timeline is not None:
        renderables.append(timeline)
    output.emit(payload, *renderables)


@app.command("stats", rich_help_panel=_PANEL)
def stats(
    since: SinceOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Counts by state, agent and action, with p50/p95 durations; failures, retries,
    recoveries and dead letters (what the OpenTelemetry metrics count, from the journal)."""
    output = Output(json_mode=as_json)
    moment = parse_since(since)

    async def body() -> tuple[list[Transaction], dict[TransactionState, int]]:
        async with cli_store(store, output) as opened:
            return await opened.list(since=moment), await opened.count_by_state()

    found, counts = run_async(body)
    if moment is not None:
        counts = dict(Counter(tx.state for tx in found))
    by_state = _state_rows(found, counts)
    by_agent = _agent_rows(found)
    by_action = _action_rows(found)
    totals = _journal_counts(found, counts)
    payload = {
        "total": sum(counts.values()),
        "by_state": by_state,
        "by_agent": by_agent,
        "by_action": by_action,
        "counts": totals,
    }
    duration = [
        Column("p50_seconds", "p50", format=format_duration, justify="right"),
        Column("p95_seconds", "p95", format=format_duration, justify="right"),
    ]
    output.emit(
        payload,
        output.table(
            by_state,
            [Column("state", "state", format=state_cell), Column("count", "count", justify="right")]
            + duration,
            title=f"By state ({payload['total']} transactions)",
        ),
        output.table(
            by_agent,
            [
                Column("agent_id", "agent"),
                Column("transactions", "transactions", justify="right"),
                Column("steps", "steps", justify="right"),
                Column("failed_steps", "failed", justify="right"),
            ]
            + duration,
            title="By agent (step durations)",
        ),
        output.table(
            by_action,
            [
                Column("action", "action"),
                Column("steps", "steps", justify="right"),
                Column("failed_steps", "failed", justify="right"),
                Column("retries", "retries", justify="right"),
                Column("compensated", "undone", justify="right"),
                Column("compensations_failed", "undo failed", justify="right"),
            ]
            + duration,
            title="By action (step durations)",
        ),
        output.table(
            [{"count": name.replace("_", " "), "value": value} for name, value in totals.items()],
            [Column("count", "what"), Column("value", "count", justify="right")],
            title="Counts",
        ),
    )


def _journal_counts(
    found: list[Transaction], counts: dict[TransactionState, int]
) -> dict[str, int]:
    """What the metrics of ``aumai_transactions.otel`` count, as the journal has it now."""
    steps = [step for tx in found for step in tx.steps]
    return {
        "compensations_failed": sum(s.status.value == "compensation_failed" for s in steps),
        "step_retries": sum(max(0, s.attempts - 1) for s in steps),
        "compensation_retries": sum(max(0, s.compensation_attempts - 1) for s in steps),
        "recoveries": sum(tx.recovery_attempts for tx in found),
        "recovered_transactions": sum(tx.recovery_attempts > 0 for tx in found),
        "dead_letters": counts.get(TransactionState.DEAD_LETTER, 0),
    }


def _action_rows(found: list[Transaction]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    durations: dict[str, list[float]] = defaultdict(list)
    for tx in found:
        for step in tx.steps:
            row = rows.setdefault(
                step.action,
                {
                    "action": step.action,
                    "steps": 0,
                    "failed_steps": 0,
                    "retries": 0,
                    "compensated": 0,
                    "compensations_failed": 0,
                },
            )
            status = step.status.value
            row["steps"] += 1
            row["failed_steps"] += status == "failed"
            row["retries"] += max(0, step.attempts - 1)
            row["compensated"] += status == "compensated"
            row["compensations_failed"] += status == "compensation_failed"
            seconds = seconds_between(step.started_at, step.finished_at)
            if seconds is not None:
                durations[step.action].append(seconds)
    for action, row in rows.items():
        row["p50_seconds"] = percentile(durations[action], 50)
        row["p95_seconds"] = percentile(durations[action], 95)
    return sorted(rows.values(), key=lambda r: (-r["steps"], r["action"]))


def _state_rows(
    found: list[Transaction], counts: dict[TransactionState, int]
) -> list[dict[str, Any]]:
    durations: dict[TransactionState, list[float]] = defaultdict(list)
    for tx in found:
        seconds = transaction_duration(tx) if tx.finished_at else None
        if seconds is not None:
            durations[tx.state].append(seconds)
    return [
        {
            "state": state.value,
            "count": counts[state],
            "p50_seconds": percentile(durations[state], 50),
            "p95_seconds": percentile(durations[state], 95),
        }
        for state in TransactionState
        if counts.get(state)
    ]


def _agent_rows(found: list[Transaction]) -> list[dict[str, Any]]:
    transactions: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    durations: dict[str, list[float]] = defaultdict(list)
    for tx in found:
        transactions.update(tx.agents)
        for step in tx.steps:
            steps[step.agent_id] += 1
            if step.status.value == "failed":
                failed[step.agent_id] += 1
            seconds = seconds_between(step.started_at, step.finished_at)
            if seconds is not None:
                durations[step.agent_id].append(seconds)
    return [
        {
            "agent_id": agent,
            "transactions": transactions[agent],
            "steps": steps[agent],
            "failed_steps": failed[agent],
            "p50_seconds": percentile(durations[agent], 50),
            "p95_seconds": percentile(durations[agent], 95),
        }
        for agent in sorted(transactions, key=lambda a: (-transactions[a], a))
    ]
