"""The timeline of one transaction laid out for SVG: one bar per step, one per
compensation, a parallel group's steps on lanes of their own.

The events are the CLI's (``show --json``'s ``timeline``), in the rows the CLI's
timeline uses (by start; a group's steps together, one lane each), so the terminal
and the browser draw the same picture. The template draws what this module computes
(positions in the SVG's user units, CSS classes, hover text); it computes no time
itself. A step that was retried is a row of bars, one per attempt: the earlier ones
(from the step's ``earlier_attempts``) fainter, each with its own times and error, the
last one the step's own bar, marked ``×N``.

A compensation records only when it ended: it is drawn from when the previous one
ended (see ``timeline_events``); one that has not ended (it failed, or is running)
is drawn to the end of the picture, open. A step cut short while running recorded
no end either: it is drawn dashed up to when the compensation pass began.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..cli._output import format_duration
from ..cli._secrets import mask_text
from ..cli._timeline import timeline_rows, timeline_span
from ..models import StepAttempt, Transaction

__all__ = ["WIDTH", "Bar", "Timeline", "lay_out_timeline"]

WIDTH = 960
_LABELS = 300  # the label column
_CHART = WIDTH - _LABELS - 20
_ROW = 26
_BAR = 16
_TOP = 28  # the axis


@dataclass(frozen=True, slots=True)
class Bar:
    """One row of the timeline: a step's run or a compensation."""

    kind: str  # "step" | "compensation"
    index: int
    step_id: str
    label: str
    status: str
    classes: str
    x: float
    y: float
    width: float
    row_y: float
    tip: str
    marker: str  # "✗" failed, "⚠" interrupted, "" otherwise
    link: str | None  # for a compensation: an SVG path from the step it undoes
    earlier: tuple[tuple[float, float, str], ...] = ()  # a retried step's earlier
    # attempts, on its row: x, width, hover text


@dataclass(frozen=True, slots=True)
class Timeline:
    """Everything the template draws."""

    width: int
    height: int
    chart_x: int
    chart_width: int
    bars: list[Bar]
    bands: list[tuple[str, float, float]]  # a group's name, its top and its height
    ticks: list[tuple[float, str, str]]  # x, label, text-anchor
    end: tuple[float, str, str] | None  # where the transaction ended: x, state, label


def _moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _clock(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%H:%M:%S.%f")[:-3] + "Z"


def _tip(event: dict[str, Any], attempts: int, start: datetime | None, end: datetime | None) -> str:
    what = "undoes" if event["kind"] == "compensation" else "step"
    lines = [
        f"#{event['index']} {event['action']} ({what}, agent {event['agent_id']})",
        f"status: {event['status']}",
        f"start: {_clock(start)}",
        f"end: {_clock(end)}",
    ]
    if start is not None and end is not None:
        lines.append(f"took: {format_duration((end - start).total_seconds())}")
    if attempts > 1:
        lines.append(f"attempts: {attempts}")
    if event["error"]:
        lines.append(f"error: {event['error']}")
    return "\n".join(lines)


def lay_out_timeline(tx: Transaction, events: list[dict[str, Any]]) -> Timeline | None:
    """The picture of ``events`` (``timeline_events(tx, ...)``), or None when nothing
    ran yet."""
    extent = timeline_span(tx, events)
    if extent is None:
        return None
    origin, span = extent

    def x_of(moment: datetime | None) -> float | None:
        if moment is None:
            return None
        return _LABELS + (moment - origin).total_seconds() / span * _CHART

    undo = [e for e in events if e["kind"] == "compensation"]
    cut = x_of(_moment(undo[0]["start"]) if undo else tx.finished_at)
    ordered = timeline_rows(events, origin)
    bars: list[Bar] = []
    step_ends: dict[str, tuple[float, float]] = {}
    for row, event in enumerate(ordered):
        step = tx.steps[event["index"] - 1]
        row_y = _TOP + row * _ROW
        y = row_y + (_ROW - _BAR) / 2
        start, end = _moment(event["start"]), _moment(event["end"])
        x0, x1 = x_of(start), x_of(end)
        classes = [event["kind"], f"status-{event['status']}"]
        if x0 is None and x1 is None:
            x0 = x1 = float(_LABELS)
            classes.append("unknown")
        elif x0 is None:
            x0 = x1
        elif x1 is None:
            interrupted = event["status"] == "interrupted" and cut is not None
            x1 = cut if interrupted else float(_LABELS + _CHART)
            classes.append("open")
        assert x0 is not None and x1 is not None
        x1 = max(x1, x0)
        attempts = step.attempts if event["kind"] == "step" else step.compensation_attempts
        arrow = "▶" if event["kind"] == "step" else "↩"
        label = f"{arrow} #{event['index']} {event['action']}"
        if attempts > 1:
            label += f" ×{attempts}"
        marker = {"failed": "✗", "compensation_failed": "✗", "interrupted": "⚠"}.get(
            event["status"], ""
        )
        link = None
        earlier: tuple[tuple[float, float, str], ...] = ()
        if event["kind"] == "step":
            step_ends[event["step_id"]] = (x1, y + _BAR / 2)
            earlier = tuple(
                _attempt_bar(event, number, attempts, attempt, x_of)
                for number, attempt in enumerate(step.earlier_attempts or (), start=1)
            )
        elif event["step_id"] in step_ends:
            sx, sy = step_ends[event["step_id"]]
            ty = y + _BAR / 2
            link = (
                f"M{sx:.1f},{sy:.1f} C{sx + 24:.1f},{sy:.1f} "
                f"{x0 - 24:.1f},{ty:.1f} {x0:.1f},{ty:.1f}"
            )
        bars.append(
            Bar(
                kind=event["kind"],
                index=event["index"],
                step_id=event["step_id"],
                label=label,
                status=event["status"],
                classes=" ".join(classes),
                x=round(x0, 1),
                y=round(y, 1),
                width=round(max(x1 - x0, 3.0), 1),
                row_y=row_y,
                tip=_tip(event, attempts, start, end),
                marker=marker,
                link=link,
                earlier=earlier,
            )
        )
    bands = _bands(ordered)
    ticks = [
        (_LABELS + _CHART * i / 4, "+" + format_duration(span * i / 4), "middle") for i in range(5)
    ]
    ticks[-1] = (*ticks[-1][:2], "end")  # the last label stays inside the picture
    finish = None
    if tx.finished_at is not None:
        finish_x = x_of(tx.finished_at)
        assert finish_x is not None
        label = f"■ {tx.state.value} at {_clock(tx.finished_at)}"
        finish = (round(finish_x, 1), tx.state.value, label)
    height = _TOP + len(ordered) * _ROW + 30
    return Timeline(WIDTH, height, _LABELS, _CHART, bars, bands, ticks, finish)


def _attempt_bar(
    event: dict[str, Any],
    number: int,
    attempts: int,
    attempt: StepAttempt,
    x_of: Callable[[datetime | None], float | None],
) -> tuple[float, float, str]:
    """One earlier attempt of a retried step: where it is drawn, and its hover text."""
    end = x_of(attempt.finished_at)
    assert end is not None
    start = x_of(attempt.started_at)
    x0 = end if start is None else start
    took = (
        "—"
        if attempt.started_at is None
        else format_duration((attempt.finished_at - attempt.started_at).total_seconds())
    )
    lines = [
        f"#{event['index']} {event['action']}: attempt {number} of {attempts}, failed",
        f"start: {_clock(attempt.started_at)}",
        f"end: {_clock(attempt.finished_at)}",
        f"took: {took}",
    ]
    if attempt.error:
        lines.append(f"error: {mask_text(attempt.error)}")  # masked as every error shown
    return round(x0, 1), round(max(end - x0, 3.0), 1), "\n".join(lines)


def _bands(ordered: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """The rows of each parallel group's lanes: (name, top, height)."""
    bands: list[tuple[str, float, float]] = []
    row = 0
    while row < len(ordered):
        event = ordered[row]
        group = event["group"] if event["kind"] == "step" else None
        end = row
        while (
            group is not None
            and end + 1 < len(ordered)
            and ordered[end + 1]["kind"] == "step"
            and ordered[end + 1]["group"] == group
        ):
            end += 1
        if group is not None:
            bands.append((group, _TOP + row * _ROW, (end - row + 1) * _ROW))
        row = end + 1
    return bands
