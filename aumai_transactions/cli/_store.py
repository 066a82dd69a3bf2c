"""Which store a command works on, opening it, and finding transactions in it.

The store is ``--store URL``, else ``$AUMAI_TRANSACTIONS_STORE``, else the SQLite file
``~/.aumai/transactions/transactions.db`` (the directory the original tool kept its
JSON file in, created with mode 0700). When that default database is created and the
original tool's ``transactions.json`` sits next to it, its transactions are imported
once, and the user is told.

Only commands that write create a store. A command that only reads (``list``,
``show``, ``status``, ``stats``, ``export``) stops with one line naming the missing
SQLite file and where its URL came from, instead of creating an empty store under a
mistyped name and reporting that it holds nothing. The one exception is the original
tool's file: a first ``list`` after an upgrade still imports it into the new default
database (that store is not empty, it is the user's data moving house).
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import anyio
import typer

from ..errors import StoreUnavailableError
from ..models import Transaction
from ..stores import Store, open_store
from ..stores.sqlite import SqliteStore
from ._errors import CliError
from ._output import Output
from ._transfer import parse_transactions

__all__ = [
    "DEFAULT_DIR",
    "ENV_VAR",
    "MIN_PREFIX",
    "cli_store",
    "default_database",
    "find_transaction",
    "legacy_file",
    "note_store_source",
    "run_async",
]

T = TypeVar("T")

ENV_VAR = "AUMAI_TRANSACTIONS_STORE"
"""The environment variable naming the store when ``--store`` is not given."""

DEFAULT_DIR = "~/.aumai/transactions"
_DATABASE_NAME = "transactions.db"
_LEGACY_NAME = "transactions.json"
_SUGGESTION_SCAN = 5000

MIN_PREFIX = 4
"""The fewest characters of an id that may stand for it (a shorter prefix is refused)."""

# (the --store value, where it came from, the command) as the option's callback saw it.
_STORE_SOURCE: ContextVar[tuple[str | None, str, str] | None] = ContextVar(
    "aumai_store_source", default=None
)


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


def note_store_source(
    ctx: typer.Context, param: typer.CallbackParam, value: str | None
) -> str | None:
    """The ``--store`` option's callback: remember whether its value came from the flag
    or from the environment, so an error can say where a wrong URL came from."""
    source = ctx.get_parameter_source(param.name or "store")
    origin = "env" if getattr(source, "name", "") == "ENVIRONMENT" else "flag"
    _STORE_SOURCE.set((value, origin, ctx.info_name or "this command"))
    return value


def _named_by(url: str | None) -> tuple[str, str]:
    """Where ``url`` came from, in words, and the command that was given it."""
    seen = _STORE_SOURCE.get()
    command = seen[2] if seen is not None else "this command"
    if url is None:
        return f"the default store (neither --store nor {ENV_VAR} is set)", command
    if seen is not None and seen[0] == url and seen[1] == "env":
        return f"named by {ENV_VAR}={url}", command
    return f"named by --store {url}", command


def _refuse_missing(path: Path, url: str | None) -> None:
    """Stop a command that only reads when its SQLite file is not there: one line naming
    the file and where its URL came from; nothing is created."""
    if path.exists():
        return
    where, command = _named_by(url)
    missing = "" if path.parent.is_dir() else f" (nor its directory {path.parent})"
    raise CliError(
        f"There is no store at {path}{missing} ({where}); `{command}` only reads, so it "
        "creates none: check the URL, or start the store with a command that writes "
        "(create, run, import)."
    )


def _make_store(url: str, *, creates: bool) -> Store:
    try:
        if not creates and url.split("://", 1)[0].lower() == "sqlite":
            return open_store(url, create=False)
        return open_store(url)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except ImportError as exc:
        # The one store with an extra, PostgresStore, says how to install it.
        raise CliError(
            f"The store {url.split('://', 1)[0]}:// cannot be opened, a package is missing: {exc}."
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
async def cli_store(
    url: str | None, output: Output, *, creates: bool = False
) -> AsyncIterator[Store]:
    """Open the store a command works on; close it when the command is done.

    ``creates``: the command writes, so a missing SQLite file (and its directory) is
    created; otherwise a missing file is a CliError and nothing is created. With no
    URL (neither ``--store`` nor the environment variable) the default SQLite database
    is used; its directory is created 0700 and, the first time, the original tool's
    JSON file is imported (by any command: see the module docstring).
    """
    given = url if url is not None and url.strip() else None
    legacy: list[Transaction] = []
    if given is None:
        database = default_database()
        is_new = not database.exists() or database.stat().st_size == 0
        if is_new and legacy_file().is_file():
            legacy = _read_legacy(legacy_file())
        elif not creates:
            _refuse_missing(database, None)
        try:
            database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"Cannot create the store directory {database.parent}: {exc}.") from None
        url = _sqlite_url(database)
    else:
        url = given
    creating = creates or bool(legacy)
    store = _make_store(_expand_user(url.strip()), creates=creating)
    try:
        await store.open()
    except StoreUnavailableError:
        # Opened with create=False: a missing file is refused by the store, race-free,
        # and said here in the CLI's words (which --store, which command).
        if not creating and isinstance(store, SqliteStore) and not store.path.exists():
            _refuse_missing(store.path.absolute(), given)
        raise
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
    matches = [tid for tid in known if tid.startswith(ident.lower())]
    if len(ident) < MIN_PREFIX and matches:
        hint = (
            f"; the one id that starts with it is {matches[0]}"
            if len(matches) == 1
            else f"; {len(matches)} ids start with it"
        )
        raise CliError(
            f"Transaction id prefix {ident!r} is too short: give at least {MIN_PREFIX} "
            f"characters of the id{hint}."
        )
    if len(ident) >= MIN_PREFIX:
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
