"""Which store a command works on, opening it, and finding transactions in it.

The store is ``--store URL``, else ``$AUMAI_TRANSACTIONS_STORE``, else the SQLite file
``~/.aumai/transactions/transactions.db`` (the directory the original tool kept its
JSON file in, created with mode 0700). When that default database is created and the
original tool's ``transactions.json`` sits next to it, its transactions are imported
once, and the user is told.
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ..models import Transaction
from ..stores import Store, open_store
from ._errors import CliError
from ._output import Output
from ._transfer import parse_transactions

__all__ = [
    "DEFAULT_DIR",
    "ENV_VAR",
    "cli_store",
    "default_database",
    "find_transaction",
    "legacy_file",
    "run_async",
]

T = TypeVar("T")

ENV_VAR = "AUMAI_TRANSACTIONS_STORE"
"""The environment variable naming the store when ``--store`` is not given."""

DEFAULT_DIR = "~/.aumai/transactions"
_DATABASE_NAME = "transactions.db"
_LEGACY_NAME = "transactions.json"
_SUGGESTION_SCAN = 5000
_MIN_PREFIX = 4


def default_database() -> Path:
    """The default SQLite file, with ``~`` expanded (``$HOME`` decides, as tests rely on)."""
    return Path(DEFAULT_DIR).expanduser() / _DATABASE_NAME


def legacy_file() -> Path:
    """Where the original tool kept its transactions (a JSON list)."""
    return Path(DEFAULT_DIR).expanduser() / _LEGACY_NAME


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _expand_user(url: str) -> str:
    """``sqlite:///~/x.db`` names a file in the home directory, as a shell would."""
    scheme, sep, rest = url.partition(":///")
    if sep and scheme.lower() == "sqlite" and rest.startswith("~"):
        return _sqlite_url(Path(rest).expanduser())
    return url


def _make_store(url: str) -> Store:
    try:
        return open_store(url)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except ImportError as exc:
        raise CliError(
            f"The store {url.split('://', 1)[0]}:// needs a package that is not installed "
            f"({exc}); for PostgreSQL: pip install 'aumai-transactions[postgres]'."
        ) from None


def _read_legacy(path: Path) -> list[Transaction]:
    """The original tool's transactions, validated before anything is written."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"Cannot read the original tool's file {path}: {exc.strerror}.") from None
    try:
        return parse_transactions(text, str(path))
    except CliError as exc:
        raise CliError(
            f"{exc.message} This is the original tool's file, imported once into the new "
            f"database: fix it or move it aside, then run the command again."
        ) from None


@asynccontextmanager
async def cli_store(url: str | None, output: Output) -> AsyncIterator[Store]:
    """Open the store a command works on; close it when the command is done.

    With no URL (neither ``--store`` nor the environment variable) the default SQLite
    database is used; its directory is created 0700 and, the first time, the original
    tool's JSON file is imported.
    """
    legacy: list[Transaction] = []
    if url is None or not url.strip():
        database = default_database()
        try:
            database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"Cannot create the store directory {database.parent}: {exc}.") from None
        is_new = not database.exists() or database.stat().st_size == 0
        if is_new and legacy_file().is_file():
            legacy = _read_legacy(legacy_file())
        url = _sqlite_url(database)
    store = _make_store(_expand_user(url.strip()))
    await store.open()
    try:
        if legacy:
            for tx in legacy:
                await store.save(tx)
            output.note(
                f"Imported {len(legacy)} transaction(s) from {legacy_file()} (the original "
                f"tool's file, left in place) into the new database {store.url}."
            )
        yield store
    finally:
        await store.close()


async def find_transaction(store: Store, ident: str) -> Transaction:
    """The transaction with id ``ident`` or, failing that, the one id it uniquely prefixes.

    Raises CliError naming the closest ids when there is no such transaction.
    """
    ident = ident.strip()
    if not ident:
        raise CliError("The transaction id is empty.")
    tx = await store.load(ident)
    if tx is not None:
        return tx
    known = [t.transaction_id for t in await store.list(limit=_SUGGESTION_SCAN)]
    if len(ident) >= _MIN_PREFIX:
        matches = [tid for tid in known if tid.startswith(ident.lower())]
        if len(matches) == 1:
            found = await store.load(matches[0])
            if found is not None:
                return found
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise CliError(
                f"Transaction id prefix {ident!r} is ambiguous: it starts {len(matches)} ids "
                f"({shown}); give more of the id."
            )
    message = f"No transaction {ident!r} in {store.url}."
    close = difflib.get_close_matches(ident, known, n=3, cutoff=0.5)
    if close:
        message += " Closest ids: " + ", ".join(close) + "."
    elif not known:
        message += " The store holds no transactions."
    else:
        message += " See `aumai-transactions list` for the ids it holds."
    raise CliError(message)


def _unwrap(exc: BaseException) -> BaseException:
    """The single real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def run_async(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run one command's async body in a fresh event loop (a CLI process is short-lived)."""
    try:
        return anyio.run(func, *args)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None
