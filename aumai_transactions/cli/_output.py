"""Output of the CLI: data to stdout, diagnostics to stderr, Rich for people, JSON for scripts.

Every command builds its rows once (plain dicts of JSON values, secrets already masked)
and hands them to :class:`Output`, which prints them either as a Rich table or, with
``--json``, as one JSON document on stdout. ``create`` and ``status`` print the original
tool's JSON documents whenever stdout is not a terminal (:meth:`Output.document`), so
``create | jq -r .transaction_id`` works as it did. Colours follow Rich's own
detection: none when stdout is not a terminal or when ``NO_COLOR`` is set. Consoles are
made per command run, because the streams they write to are only known then (tests
swap them). Diagnostics on stderr are masked like data (an error often quotes a token).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rich import box
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ._secrets import mask_secrets, mask_text

__all__ = [
    "Column",
    "Output",
    "format_duration",
    "format_time",
    "format_value",
    "state_style",
    "stdout_is_terminal",
]

Row = Mapping[str, Any]

_PIPE_WIDTH = 120

_STATE_STYLES = {
    "interrupted": "yellow",
    "pending": "cyan",
    "active": "blue",
    "running": "blue",
    "committed": "green",
    "completed": "green",
    "compensating": "yellow",
    "compensated": "yellow",
    "rolled_back": "yellow",
    "failed": "red",
    "compensation_failed": "bold red",
    "dead_letter": "bold magenta",
    "resolved": "green",
}


def stdout_is_terminal() -> bool:
    """True when stdout is a terminal (the real one: ``FORCE_COLOR`` does not make a
    pipe a terminal, so a script reading ``create``'s JSON never gets a panel)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def state_style(state: str | None) -> str:
    """The colour a transaction or step state is printed in."""
    return _STATE_STYLES.get(state or "", "")


def format_time(value: str | datetime | None) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM:SSZ`` (UTC), or an em dash when absent."""
    if value is None:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if moment.utcoffset() is not None else "")


def format_duration(seconds: float | None) -> str:
    """A duration in the unit that reads best (µs, ms, s, min, h)."""
    if seconds is None:
        return "—"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_value(value: Any) -> str:
    """A cell for an arbitrary JSON value: compact JSON for containers, str otherwise."""
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
    return str(value)


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table: which row key it shows, under which header, and how."""

    key: str
    header: str
    format: Callable[[Any], str | Text] = format_value
    justify: Literal["left", "right", "center"] = "left"
    no_wrap: bool = False
    max_width: int | None = None
    style: str | None = None
    overflow: Literal["fold", "ellipsis"] = "fold"


def state_cell(value: Any) -> Text:
    """A state, coloured by :func:`state_style`."""
    text = "—" if value is None else str(value)
    return Text(text, style=state_style(text))


class Output:
    """Where a command's results and diagnostics go, and in which form."""

    def __init__(self, *, json_mode: bool = False, reveal: bool = False) -> None:
        self.json_mode = json_mode
        self.reveal = reveal
        self.stdout = sys.stdout
        self.console = Console(file=sys.stdout, highlight=False)
        if not self.console.is_terminal and "COLUMNS" not in os.environ:
            # Piped or captured output has no width to respect: wrapping ids and
            # messages at 80 columns would only make the text harder to read.
            self.console.width = _PIPE_WIDTH
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    @classmethod
    def document(cls, *, json_mode: bool, reveal: bool = False) -> Output:
        """The output of a command whose result is a document scripts read (``create``,
        ``status``): JSON with ``--json`` or whenever stdout is not a terminal."""
        return cls(json_mode=json_mode or not stdout_is_terminal(), reveal=reveal)

    # ------------------------------------------------------------------ data

    def mask(self, value: Any) -> Any:
        """``value`` with secret-looking entries masked, unless ``--reveal`` was given."""
        return value if self.reveal else mask_secrets(value)

    def mask_text(self, text: str | None) -> str | None:
        """An error or other free text with the secrets it quotes masked, unless
        ``--reveal`` was given."""
        return text if self.reveal or text is None else mask_text(text)

    def table(
        self,
        rows: Iterable[Row],
        columns: Sequence[Column],
        *,
        title: str | None = None,
        row_style: Callable[[Row], str | None] | None = None,
        caption: str | None = None,
    ) -> Table:
        """Rows as a Rich table, one cell per column."""
        table = Table(
            title=title,
            caption=caption,
            title_justify="left",
            caption_justify="left",
            header_style="bold",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        for column in columns:
            table.add_column(
                column.header,
                justify=column.justify,
                no_wrap=column.no_wrap,
                max_width=column.max_width,
                style=column.style,
                overflow=column.overflow,
            )
        for row in rows:
            cells = [column.format(row.get(column.key)) for column in columns]
            table.add_row(*cells, style=row_style(row) if row_style else None)
        return table

    def emit(self, payload: Any, *renderables: RenderableType) -> None:
        """Print ``payload`` as JSON (``--json``) or the renderables for people."""
        if self.json_mode:
            self.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
            self.stdout.flush()
            return
        for renderable in renderables:
            self.console.print(renderable)

    def rows(
        self,
        rows: Sequence[Row],
        columns: Sequence[Column],
        *,
        title: str | None = None,
        row_style: Callable[[Row], str | None] | None = None,
        caption: str | None = None,
    ) -> None:
        """The rendering helper: the same rows as a JSON list or as a Rich table."""
        self.emit(
            list(rows),
            self.table(rows, columns, title=title, row_style=row_style, caption=caption),
        )

    # ------------------------------------------------------------------ diagnostics

    def note(self, message: str) -> None:
        """An informational line on stderr (never on stdout, which holds the data)."""
        self.err.print(escape(self._diagnostic(message)), style="dim")

    def warn(self, message: str) -> None:
        """A warning line on stderr."""
        self.err.print(f"[yellow]warning:[/] {escape(self._diagnostic(message))}")

    def error(self, message: str) -> None:
        """An error line on stderr: one line, no traceback."""
        self.err.print(f"[bold red]error:[/] {escape(self._diagnostic(message))}")

    def _diagnostic(self, message: str) -> str:
        return message if self.reveal else mask_text(message)
