"""Every store backend, listed once; the conformance suite runs against each.

PostgreSQL: set AUMAI_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test
is tried). Without a reachable server the PostgreSQL cases are skipped locally and
fail in CI (CI=true).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aumai_transactions.stores import MemoryStore, Store

BACKENDS = ["memory", "sqlite", "postgres"]

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    """The server the PostgreSQL tests use, or skip/fail as the environment demands."""
    url = os.environ.get("AUMAI_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "no server"
        message = (
            f"PostgreSQL at {url} is not reachable ({exc.__class__.__name__}: {exc}); "
            "start a server and set AUMAI_TEST_POSTGRES_URL to run these tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


def postgres_store_class() -> Any:
    """``PostgresStore``, or a clean skip while that backend cannot be imported."""
    try:
        from aumai_transactions.stores.postgres import PostgresStore
    except ImportError as exc:
        pytest.skip(f"the PostgreSQL store cannot be imported ({exc})")
    return PostgresStore


def make_store(kind: str, tmp_path: Path) -> Store:
    """A fresh, unopened store of ``kind`` that no other test sees."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        from aumai_transactions.stores.sqlite import SqliteStore

        return SqliteStore(tmp_path / "journal.db")
    if kind == "postgres":
        url = postgres_url()
        schema = f"aumai_test_{uuid.uuid4().hex[:12]}"
        store: Store = postgres_store_class()(url, schema=schema, drop_schema_on_close=True)
        return store
    raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(store_kind: str, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Builds unopened stores of the current backend sharing one location.

    A PostgreSQL schema made for the test is dropped after it.
    """
    made: dict[str, Any] = {}

    def factory() -> Store:
        if store_kind == "memory":
            return made.setdefault("memory", MemoryStore())
        if store_kind == "postgres":
            url = postgres_url()
            schema = made.setdefault("schema", f"aumai_test_{uuid.uuid4().hex[:12]}")
            store: Store = postgres_store_class()(url, schema=schema)
            return store
        return make_store(store_kind, tmp_path)

    yield factory
    if "schema" in made:
        import psycopg
        from psycopg import sql

        with psycopg.connect(postgres_url(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(made["schema"]))
            )


@pytest.fixture
async def store(store_kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store of each backend, closed after the test."""
    s = make_store(store_kind, tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
