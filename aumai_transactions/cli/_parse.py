"""Parsing what users type: step data (JSON or @file), durations (7d) and moments (ISO or 1h)."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..models import utcnow
from ._errors import CliError
from ._transfer import json_error

__all__ = ["parse_data", "parse_duration", "parse_since", "read_text"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_FORMS = "a number and a unit s, m, h, d or w (30m, 1h, 7d)"


def read_text(source: str, what: str) -> str:
    """The text of a file, or of stdin for ``-``; CliError when it cannot be read."""
    if source == "-":
        return sys.stdin.read()
    path = Path(source).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{what}: there is no file {path}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{what}: cannot read {path}: {exc}.") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def parse_data(value: str | None) -> dict[str, Any]:
    """Step data from ``--data``: a JSON object, ``@file.json``, or ``@-`` for stdin."""
    if value is None:
        return {}
    what = "--data"
    text = value
    if value.startswith("@"):
        what = f"--data file {value[1:] or '?'}"
        text = read_text(value[1:], what)
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise json_error(exc, what) from None
    except ValueError as exc:
        raise CliError(f"{what} holds {exc}, which JSON step data cannot store.") from None
    if not isinstance(data, dict):
        raise CliError(
            f'{what} must be a JSON object such as {{"user_id": "u-001"}}, '
            f"not a JSON {type(data).__name__}."
        )
    return data


def parse_duration(value: str, option: str) -> timedelta:
    """``7d``, ``1h``, ``30m``, ``45s``, ``2w`` as a timedelta."""
    match = _DURATION.match(value)
    if match is None:
        raise CliError(f"{option} {value!r} is not a duration; use {_DURATION_FORMS}.")
    amount, unit = match.groups()
    return timedelta(seconds=float(amount) * _UNIT_SECONDS[unit.lower()])


def parse_since(value: str | None, option: str = "--since") -> datetime | None:
    """A moment: an ISO date or time (naive means UTC), or a duration back from now."""
    if value is None:
        return None
    if _DURATION.match(value):
        return utcnow() - parse_duration(value, option)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"{option} {value!r} is neither an ISO date/time (2025-01-31, "
            f"2025-01-31T12:00:00Z) nor a duration ({_DURATION_FORMS})."
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
