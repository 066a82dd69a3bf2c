"""How parallel groups are drawn: a bracket down the rows of a group's steps.

Consecutive steps with the same ``group`` ran at the same time (a parallel group, made
by ``add_step(..., group=...)``, ``tx.parallel()`` or a saga file's ``parallel:``). The
step table, the timeline and the live display mark them with one bracket, so a group
reads as one unit however many lanes it takes::

    ┌ lodging ≤2      first step of the group, its name and its concurrency cap
    │                 the steps in between
    └                 the last step
    [ lodging         a group of one step
"""

from __future__ import annotations

from collections.abc import Sequence

from ..models import TransactionStep

__all__ = ["GroupRun", "group_marks", "group_runs", "group_summary"]

GroupRun = tuple[str, int, int, int | None]
"""One parallel group: its name, its first and last position (0-based, inclusive) and
its concurrency cap (None: all its steps at once)."""


def group_runs(groups: Sequence[str | None], caps: Sequence[int | None] = ()) -> list[GroupRun]:
    """The runs of consecutive equal group names in ``groups``; ``caps`` are the steps'
    ``group_concurrency`` (the smallest given in a run is its cap, as in the engine)."""
    runs: list[GroupRun] = []
    index = 0
    while index < len(groups):
        name = groups[index]
        end = index
        while end + 1 < len(groups) and groups[end + 1] == name:
            end += 1
        if name is not None:
            limits = [cap for cap in caps[index : end + 1] if cap is not None]
            runs.append((name, index, end, min(limits) if limits else None))
        index = end + 1
    return runs


def group_marks(groups: Sequence[str | None], caps: Sequence[int | None] = ()) -> list[str]:
    """For each position, its part of the group bracket ("" outside any group)."""
    marks = [""] * len(groups)
    for name, first, last, cap in group_runs(groups, caps):
        label = name + (f" ≤{cap}" if cap is not None else "")
        if first == last:
            marks[first] = f"[ {label}"
            continue
        marks[first] = f"┌ {label}"
        for middle in range(first + 1, last):
            marks[middle] = "│"
        marks[last] = "└"
    return marks


def group_summary(steps: Sequence[TransactionStep]) -> str | None:
    """``#2–#3 parallel-1, #5–#7 lodging (at most 2 at once)``, or None without groups."""
    runs = group_runs([s.group for s in steps], [s.group_concurrency for s in steps])
    parts = []
    for name, first, last, cap in runs:
        where = f"#{first + 1}" if first == last else f"#{first + 1}–#{last + 1}"
        limit = f" (at most {cap} at once)" if cap is not None else ""
        parts.append(f"{where} {name}{limit}")
    return ", ".join(parts) or None
