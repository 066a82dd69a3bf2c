"""``run``: execute a saga declared in a JSON, TOML or YAML file, with a live display.

The file format (steps, parallel groups, validation) is in ``_saga``; this module
builds one transaction from it, a parallel group's steps added with its name and cap,
and commits it under the live display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import Transaction, TransactionManager, TransactionResult, TransactionState
from ._driving import LEASE_TTL, Driving, report_result, run_driving
from ._errors import CliError
from ._handlers import check_handlers, load_handlers
from ._options import HandlersOption, JsonOption, RevealOption, StoreOption
from ._output import Output
from ._saga import load_saga
from ._store import cli_store
from ._timeline import progress_display

__all__ = ["app"]

app = typer.Typer()


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

    The steps run as one new transaction, the steps of a ``parallel`` group at the same
    time; each step and each compensation is shown as it happens. Exits 1 when the saga
    does not commit.
    """
    output = Output(json_mode=as_json, reveal=reveal)
    saga = load_saga(saga_file)
    if timeout is not None and (not timeout > 0 or timeout == float("inf")):
        raise CliError(f"--timeout must be a positive number of seconds, not {timeout:g}.")
    mapping = load_handlers(handlers)
    check_handlers(mapping, handlers, [n for s in saga.steps for n in (s.action, s.compensate)])

    driving = Driving(store, handlers)
    goal = TransactionState.COMMITTED

    async def body() -> tuple[TransactionResult, Transaction]:
        async with cli_store(store, output, creates=True) as opened:
            manager = TransactionManager(mapping, store=opened, lease_ttl=LEASE_TTL)
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
                    group=step.group,
                    max_concurrency=step.max_concurrency,
                )
            async with manager:
                driving.started(opened, tx)
                with progress_display(tx, output, title=f"Saga {saga.name}"):
                    result = await manager.commit(tx)
            return result, tx

    extra = {"saga": saga.name}
    result, tx = run_driving(body, driving, output, goal, extra=extra)
    report_result(result, tx, output, goal, extra=extra)
