"""``run``: execute a saga declared in a JSON, TOML or YAML file, with a live display.

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
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from .. import RetryPolicy, Transaction, TransactionManager, TransactionResult, TransactionState
from ._errors import EXIT_NOT_REACHED, CliError
from ._handlers import check_handlers, load_handlers
from ._options import HandlersOption, JsonOption, RevealOption, StoreOption
from ._output import Output
from ._parse import read_text
from ._store import cli_store, run_async
from ._timeline import progress_display
from ._transfer import json_error, validation_error
from ._views import result_payload, result_renderables

__all__ = ["Saga", "SagaStep", "app", "load_saga"]

app = typer.Typer()

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
_RETRY_KEYS = set(RetryPolicy.model_fields) - {"retry_on"}
_DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class SagaStep:
    """One step as the saga file declares it."""

    agent: str
    action: str
    data: dict[str, Any] = field(default_factory=dict)
    compensate: str | None = None
    retry: RetryPolicy | None = None
    recovery: str | None = None


@dataclass(frozen=True, slots=True)
class Saga:
    """The steps of a saga file, its name and its timeout (None: no timeout)."""

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
                "pip install 'aumai-transactions[yaml]' (or write the saga as JSON or TOML)."
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


def _unknown(keys: Any, allowed: set[str], where: str) -> None:
    extra = sorted(str(key) for key in keys if key not in allowed)
    if extra:
        raise CliError(
            f"{where}: unknown key(s) {', '.join(map(repr, extra))}; accepted: "
            f"{', '.join(sorted(allowed))}."
        )


def _text(entry: dict[str, Any], keys: tuple[str, ...], where: str, *, required: bool) -> Any:
    value = next((entry[key] for key in keys if key in entry), None)
    if value is None and required:
        raise CliError(f"{where}: missing {keys[0]!r}.")
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise CliError(f"{where}: {keys[0]!r} must be a non-empty string, not {value!r}.")
    return value


def _step(entry: Any, where: str) -> SagaStep:
    if not isinstance(entry, dict):
        raise CliError(f"{where}: expected a table/object of step fields, not {entry!r:.40}.")
    _unknown(entry, _STEP_KEYS, where)
    data = entry.get("data") or {}
    if not isinstance(data, dict):
        raise CliError(f"{where}: 'data' must be an object, not a {type(data).__name__}.")
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
    steps = [_step(entry, f"{path}, step {index}") for index, entry in enumerate(entries, 1)]
    return Saga(name=name, steps=steps, timeout=None if timeout is None else float(timeout))


@app.command("run", rich_help_panel="Build and drive a transaction")
def run(
    saga_file: Annotated[
        Path, typer.Argument(metavar="SAGA_FILE", help="The saga: a .json, .toml or .yaml file.")
    ],
    handlers: HandlersOption,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds before the saga times out (overrides the file)."),
    ] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
    reveal: RevealOption = False,
) -> None:
    """Run a saga file (JSON, TOML or YAML) with a live display.

    The steps run as one new transaction; each step and each compensation is shown
    as it happens. Exits 1 when the saga does not commit.
    """
    output = Output(json_mode=as_json, reveal=reveal)
    saga = load_saga(saga_file)
    if timeout is not None and (not timeout > 0 or timeout == float("inf")):
        raise CliError(f"--timeout must be a positive number of seconds, not {timeout:g}.")
    mapping = load_handlers(handlers)
    check_handlers(mapping, handlers, [n for s in saga.steps for n in (s.action, s.compensate)])

    async def body() -> tuple[TransactionResult, Transaction]:
        async with cli_store(store, output) as opened:
            manager = TransactionManager(mapping, store=opened)
            tx = manager.begin(timeout_seconds=timeout if timeout is not None else saga.timeout)
            for step in saga.steps:
                manager.add_step(
                    tx,
                    step.agent,
                    step.action,
                    dict(step.data),
                    step.compensate,
                    retry=step.retry,
                    recovery=step.recovery,  # type: ignore[arg-type]
                )
            async with manager:
                with progress_display(tx, output, title=f"Saga {saga.name}"):
                    result = await manager.commit(tx)
            return result, tx

    result, tx = run_async(body)
    goal = TransactionState.COMMITTED
    output.emit(
        {"saga": saga.name, **result_payload(result, tx, output)},
        *result_renderables(result, tx, output, goal=goal),
    )
    if result.state is not goal:
        raise typer.Exit(EXIT_NOT_REACHED)
