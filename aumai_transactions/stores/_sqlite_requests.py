"""What the event loop hands the SQLite writer thread: an ``Op`` per request (its kind,
arguments, future and outcome), and a ``Record`` for the most frequent one, with its
values in slots of its own."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["RECORD", "Op", "Record"]

RECORD = 0
"""The kind of a ``Record`` (the writer's other operation kinds follow it)."""


class Op:
    """One request from the event loop to the writer thread, and its outcome."""

    __slots__ = ("args", "error", "future", "kind", "result")

    def __init__(
        self, kind: int, args: tuple[Any, ...], future: asyncio.Future[Any] | None = None
    ) -> None:
        self.kind = kind
        self.args = args
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


class Record(Op):
    """A ``record``: what it writes, in slots of its own (one object per record, where
    an argument tuple and a tuple for its step were three).

    ``header`` is the seven header columns a record rewrites (``header_of``), or None
    when the header is unchanged since the last one committed under the lease (the
    writer then only checks the epoch); ``state`` is the state either way. A step is
    an update of its known row (``body``, ``position``, ``step_id``) or, appended since
    the acquire, the rows to insert (``appended``: position, step id, body, agent).
    ``sent`` is the token of the header a durable record sends (``_headers``), which
    the writer confirms once the record committed. ``previous`` is the update of
    another known step row the record carries, written first (``body``, ``position``
    and ``step_id`` of a ``Record`` of its own, never queued).
    """

    __slots__ = (
        "appended",
        "body",
        "epoch",
        "header",
        "position",
        "previous",
        "sent",
        "state",
        "step_id",
        "tid",
    )

    def __init__(self, tid: str, epoch: int, state: str, header: tuple[Any, ...] | None) -> None:
        self.kind = RECORD
        self.args = ()
        self.future: asyncio.Future[Any] | None = None
        self.result = None
        self.error = None
        self.tid = tid
        self.epoch = epoch
        self.state = state
        self.header = header
        self.body: str | None = None
        self.position = 0
        self.step_id: str | None = None
        self.appended: tuple[tuple[int, str, str, str], ...] | None = None
        self.sent: object | None = None
        self.previous: Record | None = None
