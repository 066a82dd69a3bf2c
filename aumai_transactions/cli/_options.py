"""The options every command shares, declared once, and the one way to name a transaction.

Every command that works on one transaction takes its id as the positional ``TX_ID``.
``status`` also documents ``--tx-id ID``, the original tool's spelling, so its scripts
keep working; ``add-step``, ``commit``, ``rollback`` and ``show`` accept ``--tx-id``
too, hidden from their help, for scripts written against earlier releases.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ._errors import CliError
from ._store import ENV_VAR, note_store_source

__all__ = [
    "HandlersOption",
    "HiddenTxIdOption",
    "JsonOption",
    "RevealOption",
    "StoreOption",
    "TxIdArgument",
    "TxIdOption",
    "transaction_id",
]

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar=ENV_VAR,
        metavar="URL",
        show_default=False,
        callback=note_store_source,
        help=(
            "Store URL: sqlite:///path.db, postgresql://user@host/db or memory://. "
            "Default: sqlite:///~/.aumai/transactions/transactions.db."
        ),
    ),
]

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")
]

RevealOption = Annotated[
    bool,
    typer.Option(
        "--reveal",
        help="Show step data under secret-looking keys (password, token, api_key, ...) unmasked.",
    ),
]

HandlersOption = Annotated[
    str,
    typer.Option(
        "--handlers",
        metavar="MODULE:ATTR",
        show_default=False,
        help="The mapping of action names to handlers: module:attr or path/to/file.py:attr.",
    ),
]

_ID_HELP = "Transaction id (a unique prefix of at least 4 characters works too)."

TxIdArgument = Annotated[
    str | None,
    typer.Argument(metavar="TX_ID", show_default=False, help=_ID_HELP),
]
"""The transaction a command works on, as its positional argument."""

TxIdOption = Annotated[
    str | None,
    typer.Option(
        "--tx-id",
        metavar="ID",
        show_default=False,
        help="The same as TX_ID (the original tool's spelling, for its scripts).",
    ),
]
"""``--tx-id`` as ``status`` documents it."""

HiddenTxIdOption = Annotated[
    str | None,
    typer.Option("--tx-id", metavar="ID", show_default=False, hidden=True),
]
"""``--tx-id`` accepted but not shown, for scripts written against earlier releases."""


def transaction_id(
    positional: str | None, option: str | None, command: str, *, documented: bool = False
) -> str:
    """The id given as ``TX_ID`` or ``--tx-id`` (one of them, or both alike);
    ``documented``: the command shows ``--tx-id`` in its help, so the error names it."""
    if positional is not None and option is not None and positional != option:
        raise CliError(
            f"Two transaction ids: {positional!r} and --tx-id {option!r}; give one "
            f"(aumai-transactions {command} TX_ID)."
        )
    chosen = positional if positional is not None else option
    if chosen is None:
        also = " (or --tx-id ID)" if documented else ""
        raise CliError(f"Missing the transaction id: aumai-transactions {command} TX_ID{also}.")
    return chosen
