"""A regression alarm for the engine's own cost, not a timed test of absolute speed.

Ratios to baselines measured in the same process (CPU time, best of 5 after a
warm-up), with bounds about three times the ratios measured on the project's CI
machine kind (see benchmarks/RESULTS.md), so that a 3x regression is caught and the
noise of a shared machine is not: W1 (sync handlers inline, in-memory store) against
the plain loop awaiting the same handlers, the blocking facade against the async path,
and the durable path (W3 on SQLite) against its design floor. The floors themselves are
checked to leave the journal the engine would.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from aumai_transactions import TransactionManager
from aumai_transactions import sync as blocking

N = 500
STEPS = (("reserve", "release"), ("charge", "refund"), ("notify", "unnotify"))


def _ok(action: str, data: dict[str, Any]) -> None:
    return None


HANDLERS = {name: _ok for pair in STEPS for name in pair}


def _best_cpu_seconds(run: Callable[[], object]) -> float:
    run()  # warm-up
    times = []
    for _ in range(5):
        gc.collect()
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


async def _through_the_engine(manager: TransactionManager) -> None:
    for _ in range(N):
        tx = manager.begin()
        for action, undo in STEPS:
            manager.add_step(tx, "agent", action, {"user_id": "u-001"}, undo)
        await manager.commit(tx)


async def _plain_loop() -> None:
    for _ in range(N):
        undo: list[str] = []
        try:
            for action, compensation in STEPS:
                HANDLERS[action](action, {"user_id": "u-001"})
                undo.append(compensation)
        except Exception:
            for compensation in reversed(undo):
                HANDLERS[compensation](compensation, {})


def _engine_run() -> None:
    asyncio.run(_through_the_engine(TransactionManager(HANDLERS, sync_handlers="inline")))


async def _best_cpu_seconds_in_loop(run: Callable[[], Awaitable[object]]) -> float:
    await run()  # warm-up
    times = []
    for _ in range(5):
        gc.collect()
        start = time.process_time()
        await run()
        times.append(time.process_time() - start)
    return min(times)


def test_w1_engine_cost_stays_within_a_generous_multiple_of_the_plain_loop() -> None:
    async def both() -> tuple[float, float]:
        engine = await _best_cpu_seconds_in_loop(
            lambda: _through_the_engine(TransactionManager(HANDLERS, sync_handlers="inline"))
        )
        return engine, await _best_cpu_seconds_in_loop(_plain_loop)

    engine, loop = asyncio.run(both())
    # Measured: about 150x on a loaded 2-core machine (the loop is 0.08 us a step).
    assert engine / loop < 450, (engine, loop)


def test_the_blocking_facade_costs_little_more_than_the_async_path() -> None:
    def facade_run() -> None:
        manager = blocking.TransactionManager(HANDLERS, sync_handlers="inline")
        for _ in range(N):
            tx = manager.begin()
            for action, undo in STEPS:
                manager.add_step(tx, "agent", action, {"user_id": "u-001"}, undo)
            manager.commit(tx)

    facade = _best_cpu_seconds(facade_run)
    async_path = _best_cpu_seconds(_engine_run)
    # Measured: about 1.5x (4-5x when every call hopped to the portal's thread).
    assert facade / async_path < 3, (facade, async_path)


def test_the_durable_path_costs_a_generous_multiple_of_its_design_floor(tmp_path: Any) -> None:
    """W3 on SQLite, 64 in flight: the CPU the engine's event loop and writer thread
    spend a step, against W3's design floor in the same process (what keeping the design
    costs at the least; CPU, not wall time, so the disk's fsyncs do not count)."""
    from benchmarks import w3_sqlite

    def best_cpu(run: Callable[..., Awaitable[tuple[float, int, float, float]]]) -> float:
        spent = []
        for attempt in range(4):  # the first is a warm-up
            gc.collect()
            _, _, loop_cpu, writer_cpu = asyncio.run(run(tmp_path / f"{attempt}.db", 256, 64))
            (tmp_path / f"{attempt}.db").unlink()
            if attempt:
                spent.append(loop_cpu + writer_cpu)
        return min(spent)

    engine = best_cpu(w3_sqlite._engine_run)
    floor = best_cpu(w3_sqlite._design_floor)
    # Measured: about 1.7x (benchmarks/RESULTS.md, W3 at 16 and 256 in flight).
    assert engine / floor < 4, (engine, floor)


def test_the_design_floor_builds_the_package_models_whole() -> None:
    """The floor the W1, W2 and W4 benchmarks compare the engine with builds the
    package's models with every field (a field it left out would make it cheaper than
    any engine could be) and with values the models accept."""
    import random
    from datetime import UTC, datetime

    from aumai_transactions import Transaction, TransactionResult, TransactionStep
    from benchmarks._floors import pending_models, result_model

    tx = pending_models("t-1", random.Random(1).getrandbits)
    assert set(tx.__dict__) == set(Transaction.model_fields)
    assert len(tx.steps) == 3
    for step in tx.steps:
        assert set(step.__dict__) == set(TransactionStep.model_fields)
    assert Transaction.model_validate(tx.model_dump()).model_dump() == tx.model_dump()
    tx.finished_at = datetime.now(UTC)
    result = result_model(tx, [s.step_id for s in tx.steps], None)
    assert set(result.__dict__) == set(TransactionResult.model_fields)
    assert TransactionResult.model_validate(result.model_dump()) == result


def test_the_recovery_floors_leave_a_journal_the_engine_reads_back(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """W5's floor and design floor recover a journal of abandoned transactions into
    the one the engine's own recovery leaves: each rolled back, its completed and its
    in-doubt step compensated, the pending one untouched, the lease given up (a floor
    that skipped a write would be cheaper than any engine could be)."""
    from aumai_transactions.models import StepStatus, TransactionState
    from aumai_transactions.stores.sqlite import SqliteStore
    from benchmarks import w5_sqlite

    monkeypatch.setattr(w5_sqlite, "TRANSACTIONS", 30)
    template = tmp_path / "abandoned.db"
    asyncio.run(w5_sqlite._abandon(template, 30))

    async def recovered(path: Any) -> list[Any]:
        async with SqliteStore(path) as store:
            txs = await store.list(state=None, limit=None)
            leases = await store.leases([tx.transaction_id for tx in txs])
        assert all(lease.expires_at is None for lease in leases.values())
        return txs

    for floor in (w5_sqlite._floor, w5_sqlite._design_floor):
        path = tmp_path / f"{floor.__name__}.db"
        path.write_bytes(template.read_bytes())
        assert asyncio.run(floor(path))[1] == 30
        txs = asyncio.run(recovered(path))
        assert len(txs) == 30
        for tx in txs:
            assert tx.state is TransactionState.ROLLED_BACK
            statuses = [step.status for step in tx.steps]
            assert statuses == [StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.PENDING]
            assert tx.steps[1].interrupted and tx.steps[1].compensation_attempts == 1


def test_the_commit_design_floor_leaves_a_journal_the_engine_reads_back(tmp_path: Any) -> None:
    """W3's design floor writes the engine's own tables as a commit of the engine
    leaves them: each transaction committed with every step completed, listed by its
    agent, its lease given up."""
    from aumai_transactions.models import StepStatus, TransactionState
    from aumai_transactions.stores.sqlite import SqliteStore
    from benchmarks import w3_sqlite

    path = tmp_path / "design.db"
    _, commits, _, _ = asyncio.run(w3_sqlite._design_floor(path, 20, 4))
    assert commits >= 4 * 20 // 4  # four durable writes a transaction, four lanes at once

    async def stored() -> tuple[list[Any], int, dict[str, Any]]:
        async with SqliteStore(path) as store:
            txs = await store.list(state=None, limit=None)
            by_agent = await store.list(agent_id="agent", state=None, limit=None)
            leases = await store.leases([tx.transaction_id for tx in txs])
        return txs, len(by_agent), leases

    txs, by_agent, leases = asyncio.run(stored())
    assert len(txs) == by_agent == 20
    for tx in txs:
        assert tx.state is TransactionState.COMMITTED and tx.finished_at is not None
        assert [step.status for step in tx.steps] == [StepStatus.COMPLETED] * 3
        assert all(step.attempts == 1 and step.finished_at for step in tx.steps)
    assert all(lease.expires_at is None for lease in leases.values())


@pytest.mark.postgres
def test_the_postgres_design_floor_leaves_a_journal_the_engine_reads_back() -> None:
    """W3's design floor on PostgreSQL writes the engine's own tables as a commit of the
    engine leaves them: committed, every step completed, listed by its agent, the lease
    given up."""
    import uuid

    from aumai_transactions.models import StepStatus, TransactionState
    from aumai_transactions.stores.postgres import PostgresStore
    from benchmarks._postgres_design_floor import design_floor
    from tests.stores.conftest import postgres_url

    url = postgres_url()
    schema = f"aumai_test_{uuid.uuid4().hex[:12]}"

    async def run() -> tuple[dict[str, Any], list[Any], int, dict[str, Any]]:
        async with PostgresStore(url, schema=schema, drop_schema_on_close=True) as store:
            measured = await design_floor(url, schema, 10, 4)
            txs = await store.list(state=None, limit=None)
            by_agent = await store.list(agent_id="agent", state=None, limit=None)
            leases = await store.leases([tx.transaction_id for tx in txs])
        return measured, txs, len(by_agent), leases

    measured, txs, by_agent, leases = asyncio.run(run())
    assert measured["steps"] == 30
    assert len(txs) == by_agent == 30  # with the 20 of the warm-up
    for tx in txs:
        assert tx.state is TransactionState.COMMITTED and tx.finished_at is not None
        assert [step.status for step in tx.steps] == [StepStatus.COMPLETED] * 3
    assert not any(lease.live for lease in leases.values())
