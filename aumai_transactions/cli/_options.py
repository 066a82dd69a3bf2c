"""The options every command shares, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

from ._store import ENV_VAR

__all__ = ["HandlersOption", "JsonOption", "RevealOption", "StoreOption", "TxIdOption"]

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar=ENV_VAR,
        metavar="URL",
        show_default=False,
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

TxIdOption = Annotated[
    str,
    typer.Option(
        "--tx-id",
        metavar="ID",
        show_default=False,
        help="Transaction id (a unique prefix of at least 4 characters works too).",
    ),
]
