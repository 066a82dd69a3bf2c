"""The ``aumai-transactions`` command line: Typer commands, Rich output, a durable store.

The CLI renders what the public API returns and holds no engine logic. Commands live
in one module per group (``lifecycle``, ``run``, ``browse``, ``maintenance``,
``operator``), merged into one flat command list here. Errors the user can fix are one
line on stderr and exit code 2, Typer's own option validation included (an unknown
option, a bad value, a missing one: never its boxed usage panel); a commit, rollback,
run or recovery that ends anywhere but its goal state exits 1; success exits 0.
Tracebacks are never shown (set ``AUMAI_TRANSACTIONS_DEBUG=1`` to see one). Help shows
no type placeholder (``<bool>``) on flags.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .. import StoreError, __version__
from . import browse, lifecycle, maintenance, operator, run, serve
from ._errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NOT_REACHED, CliError
from ._output import Output

__all__ = ["app", "main"]

_DEBUG_VAR = "AUMAI_TRANSACTIONS_DEBUG"


def _one_line(message: str) -> str:
    return " ".join(message.split())


# The exceptions of the Click that Typer runs on: its own copy since Typer 0.2x,
# the click package before.
_CLICK: Any = importlib.import_module(
    "typer._click.exceptions" if importlib.util.find_spec("typer._click") else "click.exceptions"
)
_HELP_INSTEAD: tuple[type[BaseException], ...] = tuple(
    getattr(_CLICK, name) for name in ("NoArgsIsHelpError",) if hasattr(_CLICK, name)
)


def usage_line(exc: Any) -> str:
    """A Click usage error (bad or missing option, unknown command) as one line."""
    message = _one_line(exc.format_message()).replace("Value error, ", "")
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message = message.rstrip(".") + f" (see `{ctx.command_path} -h`)."
    return message


def _without_placeholders(params: Sequence[Any]) -> None:
    """Flags take no value: no ``<bool>`` after them in the help."""
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""


class _Commands(TyperGroup):
    """The command group: turns every failure into one line on stderr and an exit code."""

    def main(self, *args: Any, **extra: Any) -> Any:
        """Run the command line; a usage error is one line on stderr and exit code 2."""
        standalone_mode = extra.pop("standalone_mode", True)
        try:
            code = super().main(*args, **{**extra, "standalone_mode": False})
        except _HELP_INSTEAD as exc:  # no arguments at all: the help, as Typer shows it
            exc.show()  # type: ignore[attr-defined]
            code = EXIT_ERROR
        except _CLICK.ClickException as exc:
            Output().error(usage_line(exc))
            code = exc.exit_code
        except typer.Abort:
            Output().error("aborted.")
            code = EXIT_NOT_REACHED
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        _without_placeholders(params)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _without_placeholders(command.get_params(ctx))
        return command

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
app.add_typer(operator.app)
app.add_typer(serve.app)


def main() -> None:
    """Entry point of the ``aumai-transactions`` console script."""
    _configure_logging()
    app(prog_name="aumai-transactions")
