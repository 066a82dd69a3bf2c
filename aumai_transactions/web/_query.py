"""The query parameters of the list page and its API twin: declared once, parsed once.

Each parameter is declared here with its OpenAPI schema and its parser, so the
OpenAPI document and the validation cannot drift apart. A bad value, an unknown
parameter or a repeated one is a :class:`BadRequest` whose message names what was
wrong and what is accepted (the page and the API answer 400 with it, never a 500).
Moments are parsed as the CLI's ``--since`` is (an ISO date or time, or ``1h``/``7d``
back from now).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from ..cli._errors import CliError
from ..cli._parse import parse_since
from ..models import TransactionState
from ..stores import ListPosition

__all__ = [
    "LIST_PARAMETERS",
    "BadRequest",
    "ListQuery",
    "Parameter",
    "cursor_of",
    "parse_list_query",
]

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
_STATES = [state.value for state in TransactionState]


class BadRequest(ValueError):
    """A request the client can fix; its message says what was wrong and what works."""


@dataclass(frozen=True, slots=True)
class Parameter:
    """One query parameter: its name, its words in the OpenAPI document, its schema,
    and how a given value becomes the Python value the query holds."""

    name: str
    description: str
    schema: dict[str, Any]
    parse: Callable[[str], Any]


def _state(value: str) -> TransactionState:
    try:
        return TransactionState(value.strip().lower())
    except ValueError:
        raise BadRequest(
            f"state {value!r} is not a transaction state; accepted: {', '.join(_STATES)}."
        ) from None


def _text(name: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not value.strip() or len(value) > 200:
            raise BadRequest(f"{name} must be 1 to 200 characters, not {len(value)}.")
        return value.strip()

    return parse


def _moment(name: str) -> Callable[[str], datetime]:
    def parse(value: str) -> datetime:
        try:
            moment = parse_since(value, name)
        except CliError as exc:
            raise BadRequest(exc.message) from None
        except (OverflowError, ValueError):  # 99999d back from now: before year 1
            raise BadRequest(f"{name} {value!r} is too far in the past.") from None
        assert moment is not None
        return moment

    return parse


def _limit(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_LIMIT or not value.strip().isdigit():
        raise BadRequest(f"limit {value!r} must be a whole number from 1 to {MAX_LIMIT}.")
    return number


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cursor_of(position: ListPosition) -> str:
    """The ``before`` value of the page after the one ending at ``position``: its
    creation time in microseconds since the epoch, a colon, its id."""
    micros = (position.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}:{position.transaction_id}"


def _cursor(value: str) -> ListPosition:
    micros, sep, transaction_id = value.partition(":")
    moment = None
    if sep and transaction_id and micros.isdigit() and len(micros) <= 18:
        try:
            moment = _EPOCH + timedelta(microseconds=int(micros))
        except OverflowError:
            moment = None
    if moment is None:
        raise BadRequest(
            f"before {value!r} is not a page position; use the link of the page's "
            "'older' button (or the Link header of the API's answer)."
        )
    return ListPosition(moment, transaction_id)


LIST_PARAMETERS: Sequence[Parameter] = (
    Parameter(
        "state",
        "Only transactions in this state.",
        {"type": "string", "enum": _STATES},
        _state,
    ),
    Parameter(
        "agent", "Only transactions with a step by this agent.", {"type": "string"}, _text("agent")
    ),
    Parameter(
        "action",
        "Only transactions with a step of this action.",
        {"type": "string"},
        _text("action"),
    ),
    Parameter(
        "since",
        "Only transactions created at or after this moment: ISO date/time, or 1h, 7d ago.",
        {"type": "string", "example": "1h"},
        _moment("since"),
    ),
    Parameter(
        "until",
        "Only transactions created before this moment: ISO date/time, or 1h, 7d ago.",
        {"type": "string", "example": "2026-01-31T12:00:00Z"},
        _moment("until"),
    ),
    Parameter(
        "limit",
        f"At most this many per page (default {DEFAULT_LIMIT}).",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        _limit,
    ),
    Parameter(
        "before",
        "The page after the one this position ended (from the 'next' Link).",
        {"type": "string"},
        _cursor,
    ),
)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What the list shows: the filters, the page size and where the page starts."""

    state: TransactionState | None = None
    agent: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    before: ListPosition | None = None
    given: dict[str, str] = field(default_factory=dict)
    """The parameters as given (canonical order), for links to other pages."""

    def link(self, **changes: str | None) -> str:
        """The query string of this list with ``changes`` (None removes one)."""
        values = {**self.given, **changes}
        kept = {name: value for name, value in values.items() if value is not None}
        return "?" + urlencode(kept) if kept else "?"


def parse_list_query(
    items: Sequence[tuple[str, str]], ignored: frozenset[str] = frozenset()
) -> ListQuery:
    """Parse the query string's ``(name, value)`` pairs; empty values count as absent
    (an HTML form sends every field). Names in ``ignored`` are skipped."""
    known: Mapping[str, Parameter] = {p.name: p for p in LIST_PARAMETERS}
    given: dict[str, str] = {}
    for name, value in items:
        if name in ignored:
            continue
        if name not in known:
            raise BadRequest(f"unknown query parameter {name!r}; accepted: {', '.join(known)}.")
        if name in given:
            raise BadRequest(f"query parameter {name!r} is given twice; give it once.")
        if value.strip():
            given[name] = value
    values = {name: known[name].parse(value) for name, value in given.items()}
    since, until = values.get("since"), values.get("until")
    if since is not None and until is not None and since >= until:
        raise BadRequest("since must be earlier than until.")
    ordered = {p.name: given[p.name] for p in LIST_PARAMETERS if p.name in given}
    return ListQuery(**values, given=ordered)
