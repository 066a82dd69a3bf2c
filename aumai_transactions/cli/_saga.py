"""Saga files: a transaction's steps declared in JSON, TOML or YAML, read and validated.

A saga file is a list of steps, or an object with ``steps`` (and optionally ``name``,
``description`` and ``timeout`` in seconds)::

    timeout = 60
    [[steps]]
    agent = "flight_agent"
    action = "book_flight"
    data = { flight = "TP1351" }
    compensate = "cancel_flight"
    retry = { max_attempts = 3, initial_delay = 0.2 }

Each step takes ``agent``, ``action``, ``data``, ``compensate``, ``retry`` (the fields
of RetryPolicy) and ``recovery`` (``compensate`` or ``resume``). Unknown keys are
refused, so a typo never silently drops a compensation.

An entry of the list may instead be a parallel group: ``parallel`` (a non-empty list
of steps that start together), optionally ``name`` (the group's name, unique in the
file; ``parallel-1``, ``parallel-2``, ... by default, as
``SagaOrchestrator.register_parallel`` names its groups) and ``max_concurrency`` (how
many of its steps run at once). In TOML that is ``parallel = [{...}, {...}]`` or a
``[[steps.parallel]]`` table per step after the group's ``[[steps]]``. A group cannot
hold another group. The file's steps are numbered in order, a group's steps included,
as ``show`` numbers them.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import RetryPolicy
from ._errors import CliError
from ._parse import read_text
from ._transfer import json_error, validation_error

__all__ = ["Saga", "SagaStep", "load_saga"]

_TOP_KEYS = {"steps", "timeout", "timeout_seconds", "name", "description"}
_STEP_KEYS = {
    "agent",
    "agent_id",
    "action",
    "data",
    "compensate",
    "compensating_action",
    "retry",
    "recovery",
}
_GROUP_KEYS = {"parallel", "name", "max_concurrency"}
_RETRY_KEYS = set(RetryPolicy.model_fields) - {"retry_on"}
_DEFAULT_TIMEOUT = 60.0
_A_STEP = "a table/object with agent and action"


@dataclass(frozen=True, slots=True)
class SagaStep:
    """One step as the saga file declares it (``group``: its parallel group, if any)."""

    agent: str
    action: str
    data: dict[str, Any] = field(default_factory=dict)
    compensate: str | None = None
    retry: RetryPolicy | None = None
    recovery: str | None = None
    group: str | None = None
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Saga:
    """The steps of a saga file (a group's steps in place, in order), its name and its
    timeout (None: no timeout)."""

    name: str
    steps: list[SagaStep]
    timeout: float | None = _DEFAULT_TIMEOUT


def _parse_document(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise json_error(exc, str(path)) from None
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CliError(f"{path} is not valid TOML: {exc}.") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CliError(
                f"Reading the YAML saga {path} needs PyYAML, which is not installed: "
                'pip install -e ".[yaml]" in the checkout of aumai-transactions '
                "(or write the saga as JSON or TOML)."
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise CliError(f"{path} is not valid YAML: {problem}{where}.") from None
    raise CliError(
        f"Saga file {path} has the extension {suffix or '(none)'!r}; use .json, .toml, "
        ".yaml or .yml."
    )


def _unknown(keys: Any, allowed: set[str], where: str, also: str = "") -> None:
    extra = sorted(str(key) for key in keys if key not in allowed)
    if extra:
        raise CliError(
            f"{where}: unknown key(s) {', '.join(map(repr, extra))}; accepted: "
            f"{', '.join(sorted(allowed))}{also}."
        )


def _text(entry: dict[str, Any], keys: tuple[str, ...], where: str, *, required: bool) -> Any:
    value = next((entry[key] for key in keys if key in entry), None)
    if value is None and required:
        raise CliError(f"{where}: missing {keys[0]!r}.")
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise CliError(f"{where}: {keys[0]!r} must be a non-empty string, not {value!r}.")
    return value


def _step(entry: dict[str, Any], where: str, also: str = "") -> SagaStep:
    _unknown(entry, _STEP_KEYS, where, also)
    data = entry.get("data") or {}
    if not isinstance(data, dict):
        raise CliError(f"{where}: 'data' must be an object, not a {type(data).__name__}.")
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CliError(
            f"{where}: 'data' must hold JSON values only (strings, numbers, booleans, "
            f"null, lists, objects): {exc}; write dates and times as strings."
        ) from None
    retry = entry.get("retry")
    policy = None
    if retry is not None:
        if not isinstance(retry, dict):
            raise CliError(f"{where}: 'retry' must be an object such as {{max_attempts: 3}}.")
        _unknown(retry, _RETRY_KEYS, f"{where}, retry")
        try:
            policy = RetryPolicy.model_validate(retry)
        except ValidationError as exc:
            raise validation_error(exc, f"{where}, retry") from None
    recovery = entry.get("recovery")
    if recovery not in (None, "compensate", "resume"):
        raise CliError(f"{where}: 'recovery' must be 'compensate' or 'resume', not {recovery!r}.")
    return SagaStep(
        agent=_text(entry, ("agent", "agent_id"), where, required=True),
        action=_text(entry, ("action",), where, required=True),
        data=data,
        compensate=_text(entry, ("compensate", "compensating_action"), where, required=False),
        retry=policy,
        recovery=recovery,
    )


def _group(entry: dict[str, Any], where: str, default_name: str) -> list[SagaStep]:
    """The steps of a parallel group entry, each carrying the group's name and cap."""
    _unknown(entry, _GROUP_KEYS, f"{where} (a parallel group)", "; its steps go in 'parallel'")
    members = entry["parallel"]
    if not isinstance(members, list) or not members:
        shown = "an empty list" if isinstance(members, list) else repr(members)[:40]
        raise CliError(
            f"{where}: 'parallel' must be a non-empty list of steps ({_A_STEP} each), not {shown}."
        )
    name = _text(entry, ("name",), where, required=False) or default_name
    cap = entry.get("max_concurrency")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise CliError(f"{where}: 'max_concurrency' must be a positive whole number, not {cap!r}.")
    steps = []
    for index, member in enumerate(members, 1):
        inner = f"{where}, parallel step {index}"
        if not isinstance(member, dict):
            raise CliError(f"{inner}: expected {_A_STEP}, not {member!r:.40}.")
        if "parallel" in member:
            raise CliError(
                f"{inner}: a parallel group cannot hold another parallel group; list "
                f"its steps ({_A_STEP} each) in this group, or make it a group of its own "
                "in 'steps'."
            )
        step = _step(member, inner)
        steps.append(
            SagaStep(
                agent=step.agent,
                action=step.action,
                data=step.data,
                compensate=step.compensate,
                retry=step.retry,
                recovery=step.recovery,
                group=name,
                max_concurrency=cap,
            )
        )
    return steps


def _default_names(entries: list[Any]) -> Iterator[str]:
    """``parallel-1``, ``parallel-2``, ...: the names of unnamed groups, skipping the
    names the file gives its other groups."""
    chosen = {
        entry["name"]
        for entry in entries
        if isinstance(entry, dict) and "parallel" in entry and isinstance(entry.get("name"), str)
    }
    return (name for name in (f"parallel-{n}" for n in count(1)) if name not in chosen)


def _steps(entries: list[Any], path: Path) -> list[SagaStep]:
    """The steps of the file's list, a group's steps in place; group names unique."""
    steps: list[SagaStep] = []
    named: dict[str, int] = {}
    unused = _default_names(entries)
    for index, entry in enumerate(entries, 1):
        where = f"{path}, step {index}"
        if not isinstance(entry, dict):
            raise CliError(f"{where}: expected {_A_STEP} (or a parallel group), not {entry!r:.40}.")
        if "parallel" not in entry:
            steps.append(_step(entry, where, " (or parallel, for a group of steps)"))
            continue
        group = _group(entry, where, next(unused) if entry.get("name") is None else "")
        name = group[0].group
        assert name is not None
        if name in named:
            raise CliError(
                f"{where}: the parallel group name {name!r} is taken by step {named[name]}; "
                "each group needs a name of its own."
            )
        named[name] = index
        steps.extend(group)
    return steps


def load_saga(path: Path) -> Saga:
    """The saga in ``path``, validated; CliError naming the file and step at fault."""
    document = _parse_document(path, read_text(str(path), "Saga file"))
    timeout: float | None = _DEFAULT_TIMEOUT
    name = path.stem
    if isinstance(document, dict):
        _unknown(document, _TOP_KEYS, str(path))
        name = str(document.get("name") or name)
        for key in ("timeout", "timeout_seconds"):
            if key in document:
                timeout = document[key]
                if timeout is not None and (
                    isinstance(timeout, bool)
                    or not isinstance(timeout, int | float)
                    or not timeout > 0
                ):
                    raise CliError(f"{path}: {key!r} must be a positive number of seconds.")
        entries = document.get("steps")
    else:
        entries = document
    if not isinstance(entries, list) or not entries:
        raise CliError(f"{path}: expected a non-empty list of steps (or an object with 'steps').")
    steps = _steps(entries, path)
    return Saga(name=name, steps=steps, timeout=None if timeout is None else float(timeout))
