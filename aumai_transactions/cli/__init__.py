"""The ``aumai-transactions`` command line: Typer commands, Rich output, a durable store.

The CLI renders what the public API returns and holds no engine logic. Commands live
in one module per group (``lifecycle``, ``run``, ``browse``, ``maintenance``), merged
into one flat command list here. Errors the user can fix are one line on stderr and
exit code 2; a commit, rollback, run or recovery that ends anywhere but its goal state
exits 1; success exits 0. Tracebacks are never shown (set
``AUMAI_TRANSACTIONS_DEBUG=1`` to see one).
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import StoreError, __version__
from . import browse, lifecycle, maintenance, run
from ._errors import EXIT_ERROR, EXIT_INTERRUPTED, CliError
from ._output import Output

__all__ = ["app", "main"]

_DEBUG_VAR = "AUMAI_TRANSACTIONS_DEBUG"


def _one_line(message: str) -> str:
    return " ".join(message.split())


class _Commands(TyperGroup):
    """The command group: turns every failure into one line on stderr and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, BrokenPipeError):
            raise  # Typer reports these itself (a closed pipe quietly, as `| head` expects)
        except KeyboardInterrupt:
            Output().error("interrupted.")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if os.environ.get(_DEBUG_VAR):
                raise
            Output().error(_one_line(_describe(exc)))
            raise typer.Exit(exc.code if isinstance(exc, CliError) else EXIT_ERROR) from None


def _describe(exc: Exception) -> str:
    """The one-line message for a failure, naming its kind when that helps."""
    if isinstance(exc, CliError):
        return exc.message
    if isinstance(exc, StoreError):
        return f"store error: {exc}"
    if isinstance(exc, ValueError | TypeError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"unexpected {type(exc).__name__}: {exc} (set {_DEBUG_VAR}=1 to see the traceback)"


class _StderrHandler(logging.Handler):
    """Library warnings as dim lines on whatever stderr is now (tests and Live swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            Output().note(f"{record.name} {record.levelname}: {record.getMessage()}")
        except Exception:  # logging must never break a command
            self.handleError(record)


def _configure_logging() -> None:
    """Route the library's warnings to stderr lines; done in ``main`` only, because it
    changes process-wide logging (tests drive ``app`` in-process and keep theirs)."""
    logger = logging.getLogger("aumai_transactions")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler(logging.WARNING))
        logger.propagate = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aumai-transactions {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=_Commands,
    name="aumai-transactions",
    help="ACID-like transactions for multi-agent operations: build, run, inspect and "
    "recover transactions in a durable store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """ACID-like transactions for multi-agent operations, from a terminal."""


app.add_typer(lifecycle.app)
app.add_typer(run.app)
app.add_typer(browse.app)
app.add_typer(maintenance.app)


def main() -> None:
    """Entry point of the ``aumai-transactions`` console script."""
    _configure_logging()
    app(prog_name="aumai-transactions")
