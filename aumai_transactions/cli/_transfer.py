"""Reading and writing transactions as JSON files: ``export``, ``import`` and the
original tool's ``transactions.json``.

The format is the original tool's: a JSON list of ``tx.model_dump(mode="json")``.
A JSON object keyed by transaction id is accepted too. Every entry is validated before
anything is written, so a bad file imports nothing.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..models import Transaction
from ._errors import CliError

__all__ = [
    "dump_transactions",
    "json_error",
    "parse_transactions",
    "validation_error",
    "write_private_file",
]


def json_error(exc: json.JSONDecodeError, what: str) -> CliError:
    """A one-line error naming where the JSON went wrong (line, column), and saying so
    when the text simply stops there (a truncated file, an empty one)."""
    where = f"line {exc.lineno}, column {exc.colno}"
    # "Unterminated string starting at" already ends with its preposition.
    message = f"{exc.msg} {where}" if exc.msg.endswith(" at") else f"{exc.msg} at {where}"
    if not exc.doc.strip():
        return CliError(f"{what} is empty: expected JSON.")
    if exc.msg.startswith("Unterminated"):
        message += ": the text ends inside it (is it truncated?)"
    elif exc.pos >= len(exc.doc.rstrip()):
        message += ", where the text ends (is it truncated?)"
    return CliError(f"{what} is not valid JSON: {message}.")


def validation_error(exc: ValidationError, what: str) -> CliError:
    """A one-line error from a Pydantic validation failure: the first problem and its place."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return CliError(f"{what}: {where}: {first['msg']}{more}.")


def parse_transactions(text: str, source: str) -> list[Transaction]:
    """The transactions in a JSON document: a list of dumps or an object keyed by id.

    Raises CliError naming the source, the entry and the field at fault.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise json_error(exc, source) from None
    entries: list[tuple[str, Any]]
    if isinstance(document, list):
        entries = [(f"entry {index}", item) for index, item in enumerate(document)]
    elif isinstance(document, dict):
        entries = []
        for key, item in document.items():
            if isinstance(item, dict) and "transaction_id" not in item:
                item = {**item, "transaction_id": key}
            entries.append((f"entry {key!r}", item))
    else:
        raise CliError(
            f"{source} holds a JSON {type(document).__name__}; expected a list of "
            "transactions (as `export` writes) or an object keyed by transaction id."
        )
    transactions: list[Transaction] = []
    seen: set[str] = set()
    for label, item in entries:
        if not isinstance(item, dict):
            raise CliError(f"{source}, {label}: expected a transaction object, not {item!r:.40}.")
        try:
            tx = Transaction.model_validate(item)
        except ValidationError as exc:
            raise validation_error(exc, f"{source}, {label}") from None
        if tx.transaction_id in seen:
            raise CliError(f"{source}, {label}: transaction {tx.transaction_id} appears twice.")
        seen.add(tx.transaction_id)
        transactions.append(tx)
    return transactions


def dump_transactions(transactions: Sequence[Transaction]) -> str:
    """The export format: ``[tx.model_dump(mode="json"), ...]`` as indented JSON."""
    payload = [tx.model_dump(mode="json") for tx in transactions]
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


_CREATE_EXCLUSIVE = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_NAME_TRIES = 100


def _temporary_name(target: Path) -> Path:
    """A fresh, unguessable name for the temporary file, next to ``target``."""
    return target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")


def _create_temporary(target: Path) -> tuple[int, Path]:
    """A new file next to ``target``, created exclusively (never an existing file, never
    through a symlink: ``O_EXCL`` refuses both), mode 0600; its descriptor and path."""
    for _ in range(_NAME_TRIES):
        temporary = _temporary_name(target)
        try:
            fd = os.open(temporary, _CREATE_EXCLUSIVE, 0o600)
        except FileExistsError:
            continue  # something is there, maybe planted: never touch it, pick another
        os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        return fd, temporary
    raise FileExistsError(f"no free temporary name next to {target} after {_NAME_TRIES} tries")


def _sync_directory(directory: Path) -> None:
    """Make the rename durable; best effort (not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only (mode 0600).

    Exports hold unmasked step data: a partly written or world-readable file would be
    worse than none. The text goes to a temporary file created exclusively in the
    target's directory, which then replaces ``path`` with ``os.replace``: a symlink at
    ``path`` is replaced itself, never written through.
    """
    temporary: Path | None = None
    try:
        fd, temporary = _create_temporary(path)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        temporary = None
        _sync_directory(path.parent)
    except OSError as exc:
        raise CliError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
