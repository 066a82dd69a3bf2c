"""Drawing a transaction in time: the live display while it runs, the timeline of ``show``.

The live display reads the very transaction object the engine drives (its steps change
status in place, and each change is journaled before the next action), so what it
shows is what the journal records: no hooks into the engine are needed. Error texts are
masked here as everywhere else (a failing call often quotes its token).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import datetime
from typing import Any

from rich import box
from rich.console import RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ..models import StepStatus, Transaction, TransactionStep, utcnow
from ._groups import group_marks
from ._output import Output, format_duration, state_style
from ._secrets import Masking
from ._views import seconds_between

__all__ = [
    "progress_display",
    "timeline_events",
    "timeline_rows",
    "timeline_span",
    "timeline_table",
]

_WIDTH = 40
_MAY_BE_UNDONE = (
    StepStatus.COMPENSATING,
    StepStatus.COMPENSATED,
    StepStatus.COMPENSATION_FAILED,
)


def _live_status(
    step: TransactionStep, spinners: dict[str, Spinner], output: Output
) -> tuple[Any, Text]:
    """The icon and the words for one step of the live display."""
    status = step.status
    if status in (StepStatus.RUNNING, StepStatus.COMPENSATING):
        key = f"{step.step_id}:{status.value}"
        icon: Any = spinners.setdefault(key, Spinner("dots", style=state_style(status.value)))
        if status is StepStatus.RUNNING:
            words = f"running (attempt {step.attempts})"
        else:
            words = (
                f"undoing with {step.compensating_action} (attempt {step.compensation_attempts})"
            )
        return icon, Text(words, style=state_style(status.value))
    symbol, words = {
        StepStatus.PENDING: ("·", "waiting"),
        StepStatus.COMPLETED: ("✓", "done" if not step.recorded_only else "recorded only"),
        StepStatus.FAILED: ("✗", f"failed: {output.mask_text(step.error)}"),
        StepStatus.COMPENSATED: ("↩", f"undone by {step.compensating_action}"),
        StepStatus.COMPENSATION_FAILED: (
            "✗",
            f"compensation failed: {output.mask_text(step.compensation_error)}",
        ),
    }[status]
    if step.interrupted:
        words += " (interrupted: may have run)"
    return Text(symbol, style=state_style(status.value)), Text(
        words, style=state_style(status.value) if status is not StepStatus.PENDING else "dim"
    )


def _live_table(
    tx: Transaction, title: str, spinners: dict[str, Spinner], output: Output
) -> RenderableType:
    heading = f"{title} {tx.transaction_id} · {tx.state.value}"
    table = Table(
        title=heading,
        min_width=len(heading),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    steps = list(tx.steps)  # a snapshot: an open transaction appends as it runs
    marks = group_marks([s.group for s in steps], [s.group_concurrency for s in steps])
    table.add_column("#", justify="right")
    if any(marks):
        table.add_column("group", no_wrap=True)
    table.add_column("agent")
    table.add_column("action")
    table.add_column("")
    table.add_column("status")
    table.add_column("took", justify="right")
    now = utcnow()
    for index, (step, mark) in enumerate(zip(steps, marks, strict=True), start=1):
        icon, words = _live_status(step, spinners, output)
        end = now if step.status is StepStatus.RUNNING else step.finished_at
        took = format_duration(seconds_between(step.started_at, end))
        group = [mark] if any(marks) else []
        table.add_row(str(index), *group, step.agent_id, step.action, icon, words, took)
    return table


@contextmanager
def progress_display(tx: Transaction, output: Output, *, title: str) -> Iterator[None]:
    """While the block drives ``tx``: a live table of its steps on a terminal.

    With ``--json``, whatever handlers print goes to stderr, so stdout holds nothing but
    the JSON document. Off a terminal nothing is drawn; the final table is printed by
    the command afterwards.
    """
    if output.json_mode:
        with redirect_stdout(sys.stderr):
            yield
        return
    if not output.console.is_terminal:
        yield
        return
    spinners: dict[str, Spinner] = {}
    # Rich draws a last frame at full height when Live stops, then clears only what is
    # still on the screen: a table taller than the terminal would leave the lines that
    # scrolled off above the final panel. The last frame is empty instead.
    done = False

    def frame() -> RenderableType:
        return Text("") if done else _live_table(tx, title, spinners, output)

    with Live(
        get_renderable=frame,
        console=output.console,
        refresh_per_second=12,
        transient=True,
    ) as live:
        live.refresh()  # drawn at once, not a refresh period later
        try:
            yield
        finally:
            done = True


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def timeline_events(tx: Transaction, output: Masking) -> list[dict[str, Any]]:
    """The forward runs and compensations of ``tx`` in time order.

    Steps record when they started and finished; a compensation records only when it
    succeeded. Compensations run one after another, so one starts when the previous
    ended (or, for the first, when the last failed or interrupted step that recorded
    an end ended: in a parallel group, the sibling whose failure stopped the others):
    that is the start given here. A start or end that cannot be known is None. A step
    cut short while running has the status ``interrupted``; each event carries its
    parallel group (None outside one) and its error text, masked.
    """
    events: list[dict[str, Any]] = []
    stopped_at: list[datetime] = []
    for index, step in enumerate(tx.steps, start=1):
        if step.started_at is None:
            continue
        status = {StepStatus.FAILED: "failed", StepStatus.RUNNING: "running"}.get(
            step.status, "interrupted" if step.interrupted else "completed"
        )
        if (step.status is StepStatus.FAILED or step.interrupted) and step.finished_at:
            stopped_at.append(step.finished_at)  # compensation starts when this run ended
        events.append(
            {
                "kind": "step",
                "index": index,
                "step_id": step.step_id,
                "action": step.action,
                "agent_id": step.agent_id,
                "group": step.group,
                "status": status,
                "start": _iso(step.started_at),
                "end": _iso(step.finished_at),
                "error": output.mask_text(step.error),
            }
        )
    previous_end = max(stopped_at, default=None)
    for index, step in reversed(list(enumerate(tx.steps, start=1))):
        if step.compensating_action is None or step.status not in _MAY_BE_UNDONE:
            continue
        end = step.compensated_at if step.status is StepStatus.COMPENSATED else None
        events.append(
            {
                "kind": "compensation",
                "index": index,
                "step_id": step.step_id,
                "action": step.compensating_action,
                "agent_id": step.agent_id,
                "group": step.group,
                "status": step.status.value,
                "start": _iso(previous_end),
                "end": _iso(end),
                "error": output.mask_text(step.compensation_error),
            }
        )
        previous_end = end
    return events


def _moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _bar(start: float | None, end: float | None, status: str, cut: float | None = None) -> Text:
    """A bar on a line of ``_WIDTH`` cells; positions are fractions of the time span.

    An interrupted step recorded no end: it is drawn dashed up to ``cut``, the moment
    the compensation pass began (it was stopped by then, and may have had its effect).
    """
    style = state_style(status)
    if start is None and end is None:
        return Text("?".rjust(_WIDTH), style="dim")
    first = round((start if start is not None else end or 0.0) * (_WIDTH - 1))
    if start is not None and end is None and status == "interrupted" and cut is not None:
        last = max(first, round(cut * (_WIDTH - 1)))
        return Text(" " * first + "╌" * (last - first + 1), style=style)
    last = round((end if end is not None else start or 0.0) * (_WIDTH - 1))
    if start is None or end is None:
        mark = "✗" if status in ("failed", "compensation_failed") else "◆"
        return Text(" " * (last if start is None else first) + mark, style=style)
    return Text(" " * first + "━" * max(1, last - first + 1), style=style)


def timeline_rows(events: list[dict[str, Any]], origin: datetime) -> list[dict[str, Any]]:
    """The events in the order of the timeline's rows: by start, a parallel group's
    steps together in declaration order (one lane each) from the group's first start."""
    group_start: dict[str, datetime] = {}
    for event in events:
        start = _moment(event["start"])
        if event["kind"] == "step" and event["group"] is not None and start is not None:
            known = group_start.get(event["group"])
            group_start[event["group"]] = start if known is None else min(known, start)

    def start_of(event: dict[str, Any]) -> datetime:
        if event["kind"] == "step" and event["group"] in group_start:
            return group_start[event["group"]]
        return _moment(event["start"] or event["end"]) or origin

    return sorted(events, key=start_of)  # stable: siblings keep declaration order


def timeline_span(tx: Transaction, events: list[dict[str, Any]]) -> tuple[datetime, float] | None:
    """Where the timeline starts and how many seconds it spans (from the first known
    moment to the last, the transaction's end included); None when nothing ran yet."""
    moments = [
        moment
        for event in events
        for moment in (_moment(event["start"]), _moment(event["end"]))
        if moment is not None
    ]
    if tx.finished_at is not None and moments:
        moments.append(tx.finished_at)
    # A retried step's earlier attempts began before the last one (the step's own times).
    moments += [
        attempt.started_at or attempt.finished_at
        for step in tx.steps
        for attempt in step.earlier_attempts or ()
    ]
    if not moments:
        return None
    origin, last = min(moments), max(moments)
    return origin, max((last - origin).total_seconds(), 1e-9)


def timeline_table(tx: Transaction, events: list[dict[str, Any]]) -> Table | None:
    """The events drawn as bars on one time axis, or None when nothing ran yet.

    The steps of a parallel group are on lanes of their own, one row each, bracketed
    together in a ``group`` column: their bars start together and overlap.
    """
    extent = timeline_span(tx, events)
    if extent is None:
        return None
    origin, span = extent

    def fraction(value: str | None) -> float | None:
        moment = _moment(value)
        return None if moment is None else (moment - origin).total_seconds() / span

    ordered = timeline_rows(events, origin)
    # When the compensation pass began (or the transaction ended, with nothing to undo):
    # an interrupted step was stopped by then.
    undo = [event for event in events if event["kind"] == "compensation"]
    cut = fraction(undo[0]["start"] if undo else _iso(tx.finished_at))
    marks = group_marks(
        [e["group"] if e["kind"] == "step" else None for e in ordered],
        [tx.steps[e["index"] - 1].group_concurrency for e in ordered],
    )
    table = Table(
        title="Timeline",
        title_justify="left",
        caption=f"0 → {format_duration(span)}, from {origin.strftime('%H:%M:%S.%f')[:-3]}Z",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    if any(marks):
        table.add_column("group", no_wrap=True)
    table.add_column("event")
    table.add_column("timeline", no_wrap=True, min_width=_WIDTH)
    table.add_column("at", justify="right")
    table.add_column("took", justify="right")
    for event, mark in zip(ordered, marks, strict=True):
        arrow = "▶" if event["kind"] == "step" else "↩"
        label = Text(f"{arrow} #{event['index']} {event['action']}")
        if event["status"] == "interrupted":
            label.append(" ⚠", style=state_style("interrupted"))
        begin = _moment(event["start"] or event["end"])
        at = seconds_between(origin, begin)
        bar = _bar(fraction(event["start"]), fraction(event["end"]), event["status"], cut)
        took = seconds_between(_moment(event["start"]), _moment(event["end"]))
        cells: list[Text | str] = [mark] if any(marks) else []
        cells += [label, bar, "—" if at is None else f"+{format_duration(at)}"]
        table.add_row(*cells, format_duration(took))
    if tx.finished_at is not None:
        table.add_row(
            *([""] if any(marks) else []),
            Text(f"■ {tx.state.value}", style=state_style(tx.state.value)),
            _bar(fraction(_iso(tx.finished_at)), None, tx.state.value),
            f"+{format_duration(seconds_between(origin, tx.finished_at))}",
            "",
        )
    return table
