"""Rows built from transactions, steps and results, and the tables that show them.

Rows are plain dicts of JSON values with secrets already masked (data, results and
every error text): the same rows are printed as JSON with ``--json`` and as Rich tables
otherwise. Steps the engine marked ``interrupted`` (cut short while running: in doubt,
so compensated) or ``recorded_only`` (no handler: no code ran) carry a marker in the
step table and a note line saying so. The steps of a parallel group are bracketed
together in a ``group`` column (see ``_groups``); a transaction whose steps an open
transaction ran (``live``) is ``open`` in its summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..models import (
    LeaseInfo,
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
)
from ._groups import group_marks, group_runs
from ._output import Column, Output, format_duration, format_time, format_value, state_cell
from ._secrets import Masking

__all__ = [
    "ATTENTION_STATES",
    "IN_FLIGHT",
    "STEP_COLUMNS",
    "compensation_outcome",
    "data_table",
    "details_panel",
    "lease_row",
    "lease_text",
    "marked_steps",
    "result_payload",
    "resolution_row",
    "result_renderables",
    "seconds_between",
    "step_notes",
    "step_rows",
    "steps_table",
    "transaction_duration",
    "transaction_row",
    "transaction_start",
    "with_step_names",
]

ATTENTION_STATES = (TransactionState.COMPENSATION_FAILED, TransactionState.DEAD_LETTER)
"""States no driver will leave on its own: an operator has to look. (``resolved``, where
an operator closed one by hand, is not among them: it is done.)"""


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


IN_FLIGHT = (TransactionState.ACTIVE, TransactionState.COMPENSATING)
"""States a driver holds a transaction in, under a lease."""

LAPSED = "lapsed: `recover` can take it now"
"""What a lapsed (or missing) lease of an in-flight transaction means to an operator."""


def lease_row(lease: LeaseInfo | None) -> dict[str, Any] | None:
    """The lease of an in-flight transaction, as JSON (None: the store shows none)."""
    if lease is None:
        return None
    return {
        "owner": lease.owner,
        "expires_at": _iso(lease.expires_at),
        "epoch": lease.epoch,
        "live": lease.live,
        "lapsed": lease.lapsed,
    }


def lease_text(row: dict[str, Any], *, short: bool = False) -> Text:
    """Who holds an in-flight transaction and until when; a lapsed or missing lease
    marked, as recovery can take the transaction now. ``short``: for a list cell."""
    when = format_time(row["expires_at"])
    if short:
        when = when[11:]  # the time of day: a lease lasts seconds
    if row["live"]:
        return Text(f"held by {row['owner']} until {when}", style="blue")
    if row["owner"] is None:
        return Text(f"no driver holds it ({LAPSED})", style="bold yellow")
    if short:
        return Text(f"⚠ {row['owner']}'s lease lapsed at {when}: recover can take it")
    return Text(f"⚠ {row['owner']}'s lease expired at {when} ({LAPSED})", style="bold yellow")


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in seconds, or None when either end is unknown."""
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def transaction_start(tx: Transaction) -> datetime:
    """When the transaction started running: its first step's start, or its creation
    when no step ran."""
    starts = [step.started_at for step in tx.steps if step.started_at is not None]
    return min(starts) if starts else tx.created_at


def transaction_duration(tx: Transaction) -> float | None:
    """How long the transaction ran: from :func:`transaction_start` to its end. Time
    spent pending before the commit is not counted. The one duration of a transaction
    wherever it is shown (``list``, ``show``, ``stats``, and the end of ``commit``,
    ``rollback`` and ``run``, human and JSON)."""
    return seconds_between(transaction_start(tx), tx.finished_at)


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


def transaction_row(tx: Transaction, output: Masking) -> dict[str, Any]:
    """The summary of one transaction (no step data; its error texts masked)."""
    return {
        "transaction_id": tx.transaction_id,
        "state": tx.state.value,
        "steps": len(tx.steps),
        "groups": len(group_runs([step.group for step in tx.steps])),
        "open": any(step.live for step in tx.steps),
        "agents": tx.agents,
        "created_at": _iso(tx.created_at),
        "finished_at": _iso(tx.finished_at),
        "duration_seconds": transaction_duration(tx),
        "timeout_seconds": tx.timeout_seconds,
        "error": output.mask_text(tx.error),
        "blocked_reason": output.mask_text(tx.blocked_reason),
        "recovery_attempts": tx.recovery_attempts,
        "resolution": None if tx.resolution is None else resolution_row(tx, output),
    }


def resolution_row(tx: Transaction, output: Masking) -> dict[str, Any]:
    """How an operator closed a transaction by hand: note, by, at, previous state."""
    assert tx.resolution is not None
    return {
        "note": output.mask_text(tx.resolution.note),
        "by": tx.resolution.by,
        "at": _iso(tx.resolution.at),
        "previous_state": tx.resolution.previous_state.value,
    }


def step_rows(tx: Transaction, output: Masking) -> list[dict[str, Any]]:
    """One row per step, in order, with data and results masked unless ``--reveal``."""
    return [
        {
            "index": index,
            "step_id": step.step_id,
            "agent_id": step.agent_id,
            "action": step.action,
            "status": step.status.value,
            "group": step.group,
            "group_concurrency": step.group_concurrency,
            "live": step.live,
            "attempts": step.attempts,
            # The attempts before the last (whose times and error are the step's own).
            "earlier_attempts": [
                {
                    "started_at": _iso(attempt.started_at),
                    "finished_at": _iso(attempt.finished_at),
                    "error": output.mask_text(attempt.error),
                }
                for attempt in step.earlier_attempts or ()
            ],
            "started_at": _iso(step.started_at),
            "finished_at": _iso(step.finished_at),
            "duration_seconds": seconds_between(step.started_at, step.finished_at),
            "error": output.mask_text(step.error),
            "compensating_action": step.compensating_action,
            "compensation": compensation_outcome(step.status, step.compensating_action),
            "compensation_attempts": step.compensation_attempts,
            "compensation_error": output.mask_text(step.compensation_error),
            "compensated_at": _iso(step.compensated_at),
            "interrupted": step.interrupted,
            "recorded_only": step.recorded_only,
            "note": step_note(step),
            "data": output.mask(step.data),
            "result": output.mask(step.result),
        }
        for index, step in enumerate(tx.steps, start=1)
    ]


INTERRUPTED_MARK = "⚠"
"""The step-table marker of a step cut short while running (in doubt)."""

RECORDED_ONLY_MARK = "∅"
"""The step-table marker of a step recorded without a handler (no code ran)."""

_UNDONE = {
    StepStatus.COMPENSATED: "compensated",
    StepStatus.COMPENSATING: "being compensated",
    StepStatus.COMPENSATION_FAILED: "its compensation failed",
}


def _undone(step: TransactionStep) -> str:
    """What became of an interrupted step's possible effect."""
    if step.status in _UNDONE:
        return _UNDONE[step.status]
    if step.compensating_action is None:
        return "nothing undoes it (no compensating action)"
    return "not compensated yet"


def step_note(step: TransactionStep) -> str | None:
    """What a step's markers mean, in words; None for a step with neither."""
    notes: list[str] = []
    if step.recorded_only:
        notes.append(f"recorded only: no handler for {step.action!r}, no code ran")
    if step.interrupted:
        notes.append(f"interrupted: may have run, {_undone(step)}")
    return "; ".join(notes) or None


def marked_steps(tx: Transaction) -> list[tuple[str, str | None]]:
    """Panel lines naming the interrupted and the recorded-only steps (None: none)."""
    interrupted = [f"#{i} {s.action}" for i, s in enumerate(tx.steps, 1) if s.interrupted]
    recorded = [f"#{i} {s.action}" for i, s in enumerate(tx.steps, 1) if s.recorded_only]
    return [
        ("interrupted", ", ".join(interrupted) or None),
        ("recorded only", ", ".join(recorded) or None),
    ]


def step_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per marked step: its marker, number, action and what the marker means."""
    lines = []
    for row in rows:
        if row["note"] is None:
            continue
        marks = (INTERRUPTED_MARK if row["interrupted"] else "") + (
            RECORDED_ONLY_MARK if row["recorded_only"] else ""
        )
        lines.append(f"{marks} #{row['index']} {row['action']}: {row['note']}")
    return lines


def _status_cell(row: dict[str, Any]) -> Text:
    """The step's status, with the markers of an interrupted or recorded-only step."""
    text = state_cell(row["status"])
    if row["interrupted"]:
        text.append(f" {INTERRUPTED_MARK}", style="bold yellow")
    if row["recorded_only"]:
        text.append(f" {RECORDED_ONLY_MARK}", style="bold magenta")
    return text


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


def with_step_names(text: str | None, names: dict[str, str]) -> str | None:
    """``text`` with the step ids it quotes given as ``#3 rent_car`` (a sibling's
    failure names the step by id: the table names steps by number)."""
    if text is None:
        return None
    for step_id, name in names.items():
        if step_id in text:
            text = text.replace(step_id, name)
    return text


STEP_COLUMNS = [
    Column("index", "#", justify="right"),
    Column("group_view", "group", no_wrap=True),
    Column("agent_id", "agent"),
    Column("action", "action"),
    Column("status_view", "status", format=lambda cell: cell, no_wrap=True),
    Column("attempts", "tries", justify="right"),
    Column("duration_seconds", "took", format=format_duration, justify="right", no_wrap=True),
    Column("error_view", "error", style="red"),
    Column("compensation_view", "undo", format=lambda cell: cell),
]
"""The per-step table of ``show``, ``commit``, ``rollback`` and ``run`` (the group
column only when a step is in a parallel group)."""


def steps_table(rows: list[dict[str, Any]], output: Output) -> RenderableType:
    """The per-step table: group bracket, status (with markers), attempts, duration,
    error, compensation outcome; under it, a note line for each marked step (as wide as
    the terminal, not wrapped to the table)."""
    marks = group_marks([row["group"] for row in rows], [row["group_concurrency"] for row in rows])
    names = {row["step_id"]: f"#{row['index']} {row['action']}" for row in rows}
    view = [
        {
            **row,
            "group_view": mark,
            "error_view": with_step_names(row["error"], names),
            "status_view": _status_cell(row),
            "compensation_view": _compensation_cell(row),
        }
        for row, mark in zip(rows, marks, strict=True)
    ]
    columns = [c for c in STEP_COLUMNS if c.key != "group_view" or any(marks)]
    table = output.table(view, columns, title="Steps")
    notes = [Text(line, style="yellow") for line in step_notes(rows)]
    return Group(table, *notes) if notes else table


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
    payload = result.model_dump(mode="json")
    payload["started_at"] = _iso(transaction_start(tx))  # the one duration: see above
    payload["finished_at"] = _iso(result.finished_at)  # as every other timestamp is written
    payload["duration_seconds"] = transaction_duration(tx)
    payload["error"] = output.mask_text(result.error)
    payload["compensation_errors"] = {
        step_id: output.mask_text(message)
        for step_id, message in result.compensation_errors.items()
    }
    return {**payload, "steps": step_rows(tx, output)}


def _step_list(step_ids: list[str], tx: Transaction, index_of: dict[str, int]) -> str | None:
    """``#2 charge, #3 ship`` for the given step ids (in step order), or None."""
    known = sorted((index_of[step_id], step_id) for step_id in step_ids if step_id in index_of)
    return ", ".join(f"#{index} {tx.steps[index - 1].action}" for index, _ in known) or None


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
            f"#{index_of.get(step_id, '?')}: {output.mask_text(message)}"
            for step_id, message in result.compensation_errors.items()
        )
        or None
    )
    interrupted = _step_list(result.interrupted_steps, tx, index_of)
    recorded_only = _step_list(result.recorded_only_steps, tx, index_of)
    reached = result.state is goal
    panel = details_panel(
        [
            ("state", state_cell(result.state.value)),
            ("failed step", failed),
            ("error", output.mask_text(result.error)),
            ("compensation errors", compensation_errors),
            ("interrupted", interrupted),
            ("recorded only", recorded_only),
            ("took", format_duration(transaction_duration(tx))),
            ("finished", format_time(result.finished_at)),
        ],
        title=f"Transaction {result.transaction_id}",
        style="green" if reached else "red",
    )
    return [panel, steps_table(step_rows(tx, output), output)]
