"""Stores: the journal behind a TransactionManager, chosen by URL.

``open_store("memory://")`` (default, not durable), ``open_store("sqlite:///path.db")``
(embedded, durable) or ``open_store("postgresql://user@host/db")`` (shared by many
workers; needs the ``postgres`` extra). The returned store is not opened yet: use
``async with store:`` or ``await store.open()``.
"""

from __future__ import annotations

from typing import Any

from ._base import Lease, ListPosition, OperatorStore, RecordsNowait, Store
from .memory import MemoryStore

__all__ = [
    "Lease",
    "ListPosition",
    "MemoryStore",
    "OperatorStore",
    "RecordsNowait",
    "Store",
    "open_store",
]

_SCHEMES = ("memory://", "sqlite:///path/to/file.db", "postgresql://user@host:port/database")


def open_store(url: str, **options: Any) -> Store:
    """Build the store named by ``url``; ``options`` go to the backend's constructor.

    Raises ``ValueError`` naming the accepted schemes when the scheme is unknown.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"Store URL {url!r} is not a URL; accepted: {', '.join(_SCHEMES)}.")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore.from_url(url, **options)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore.from_url(url, **options)
    raise ValueError(
        f"Unknown store scheme {scheme!r} in {url!r}; accepted: {', '.join(_SCHEMES)}."
    )
