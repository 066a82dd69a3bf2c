"""Rows built from transactions, steps and results, and the tables that show them.

Rows are plain dicts of JSON values with secrets already masked: the same rows are
printed as JSON with ``--json`` and as Rich tables otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..models import StepStatus, Transaction, TransactionResult, TransactionState
from ._output import Column, Output, format_duration, format_time, format_value, state_cell

__all__ = [
    "ATTENTION_STATES",
    "STEP_COLUMNS",
    "compensation_outcome",
    "data_table",
    "details_panel",
    "result_payload",
    "result_renderables",
    "seconds_between",
    "step_rows",
    "transaction_duration",
    "transaction_row",
]

ATTENTION_STATES = (TransactionState.COMPENSATION_FAILED, TransactionState.DEAD_LETTER)
"""States no driver will leave on its own: an operator has to look."""


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in seconds, or None when either end is unknown."""
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def transaction_duration(tx: Transaction) -> float | None:
    """How long the transaction ran: from its first step's start (or its creation, when
    no step ran) to its end. Time spent pending before the commit is not counted."""
    starts = [step.started_at for step in tx.steps if step.started_at is not None]
    return seconds_between(min(starts) if starts else tx.created_at, tx.finished_at)


def compensation_outcome(status: StepStatus, compensating_action: str | None) -> str | None:
    """What became of a step's compensation: none, compensated, failed, in progress or
    None (not run)."""
    if compensating_action is None:
        return "none"
    return {
        StepStatus.COMPENSATED: "compensated",
        StepStatus.COMPENSATION_FAILED: "failed",
        StepStatus.COMPENSATING: "in progress",
    }.get(status)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def transaction_row(tx: Transaction) -> dict[str, Any]:
    """The summary of one transaction (no step data, so nothing to mask)."""
    return {
        "transaction_id": tx.transaction_id,
        "state": tx.state.value,
        "steps": len(tx.steps),
        "agents": tx.agents,
        "created_at": _iso(tx.created_at),
        "finished_at": _iso(tx.finished_at),
        "duration_seconds": transaction_duration(tx),
        "timeout_seconds": tx.timeout_seconds,
        "error": tx.error,
        "blocked_reason": tx.blocked_reason,
        "recovery_attempts": tx.recovery_attempts,
    }


def step_rows(tx: Transaction, output: Output) -> list[dict[str, Any]]:
    """One row per step, in order, with data and results masked unless ``--reveal``."""
    return [
        {
            "index": index,
            "step_id": step.step_id,
            "agent_id": step.agent_id,
            "action": step.action,
            "status": step.status.value,
            "attempts": step.attempts,
            "started_at": _iso(step.started_at),
            "finished_at": _iso(step.finished_at),
            "duration_seconds": seconds_between(step.started_at, step.finished_at),
            "error": step.error,
            "compensating_action": step.compensating_action,
            "compensation": compensation_outcome(step.status, step.compensating_action),
            "compensation_attempts": step.compensation_attempts,
            "compensation_error": step.compensation_error,
            "compensated_at": _iso(step.compensated_at),
            "data": output.mask(step.data),
            "result": output.mask(step.result),
        }
        for index, step in enumerate(tx.steps, start=1)
    ]


def _compensation_cell(row: dict[str, Any]) -> Text:
    """The compensating action and what became of it: ✓ done, ✗ failed, … running."""
    action = row["compensating_action"]
    if action is None:
        return Text("—", style="dim")
    mark, style = {
        "compensated": (" ✓", "yellow"),
        "failed": (" ✗", "bold red"),
        "in progress": (" …", "yellow"),
    }.get(row["compensation"], ("", ""))
    text = Text(action)
    text.append(mark, style=style)
    if row["compensation_attempts"] > 1:
        text.append(f" ×{row['compensation_attempts']}")
    if row["compensation_error"]:
        text.append(f" {row['compensation_error']}", style="red")
    return text


STEP_COLUMNS = [
    Column("index", "#", justify="right"),
    Column("agent_id", "agent"),
    Column("action", "action"),
    Column("status", "status", format=state_cell, no_wrap=True),
    Column("attempts", "tries", justify="right"),
    Column("duration_seconds", "took", format=format_duration, justify="right", no_wrap=True),
    Column("error", "error", style="red"),
    Column("compensation_view", "undo", format=lambda cell: cell),
]
"""The per-step table of ``show``, ``commit``, ``rollback`` and ``run``."""


def steps_table(rows: list[dict[str, Any]], output: Output) -> Table:
    """The per-step table: status, attempts, duration, error, compensation outcome."""
    view = [{**row, "compensation_view": _compensation_cell(row)} for row in rows]
    return output.table(view, STEP_COLUMNS, title="Steps")


DATA_COLUMNS = [
    Column("index", "#", justify="right"),
    Column("action", "action"),
    Column("data", "data"),
    Column("result", "result"),
]
"""Step data and results, masked: a table of their own, as they can be long."""


def data_table(rows: list[dict[str, Any]], output: Output) -> Table:
    """The (masked) data each step was given and the result it returned."""
    return output.table(rows, DATA_COLUMNS, title="Data and results")


def details_panel(pairs: Sequence[tuple[str, Any] | None], *, title: str, style: str = "") -> Panel:
    """Label/value lines in a panel; None pairs and None values are left out."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for pair in pairs:
        if pair is None or pair[1] is None:
            continue
        label, value = pair
        grid.add_row(label, value if isinstance(value, Text) else format_value(value))
    return Panel(grid, title=title, title_align="left", border_style=style, expand=False)


def result_payload(result: TransactionResult, tx: Transaction, output: Output) -> dict[str, Any]:
    """The JSON of a commit, rollback or run: the result and the steps as they ended."""
    return {**result.model_dump(mode="json"), "steps": step_rows(tx, output)}


def result_renderables(
    result: TransactionResult, tx: Transaction, output: Output, *, goal: TransactionState
) -> list[RenderableType]:
    """A panel with the outcome and a table of the steps."""
    index_of = {step.step_id: index for index, step in enumerate(tx.steps, start=1)}
    failed = None
    if result.failed_step is not None:
        step = tx.steps[index_of[result.failed_step] - 1]
        failed = f"#{index_of[result.failed_step]} {step.action} ({step.agent_id})"
    compensation_errors = (
        "; ".join(
            f"#{index_of.get(step_id, '?')}: {message}"
            for step_id, message in result.compensation_errors.items()
        )
        or None
    )
    reached = result.state is goal
    panel = details_panel(
        [
            ("state", state_cell(result.state.value)),
            ("failed step", failed),
            ("error", result.error),
            ("compensation errors", compensation_errors),
            ("took", format_duration(result.duration_seconds)),
            ("finished", format_time(result.finished_at)),
        ],
        title=f"Transaction {result.transaction_id}",
        style="green" if reached else "red",
    )
    return [panel, steps_table(step_rows(tx, output), output)]
