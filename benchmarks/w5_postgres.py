"""W5 on PostgreSQL: recovery of 10,000 abandoned transactions, by 1 and by 4 workers.

Each transaction is left as a killed driver leaves it: ``active``, two steps completed
and the third in doubt (running), its lease expired. The journal is written straight
into the store's tables (COPY) before each repetition, so seeding is not timed. Then
1 or 4 worker processes, started beforehand, run ``manager.recover()`` at the same
moment: they divide the transactions between them with ``FOR UPDATE SKIP LOCKED``
claims and compensate three steps of each (async no-op handlers). Figure: transactions
recovered per second over the slowest worker's time. No baseline (BENCHMARKS.md).
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ._common import emit
from ._postgres import Children, child_loop, drop_schema, fresh_schema, server_url

WORKLOADS = ("W5",)

N = 10_000
WORKER_COUNTS = (1, 4)
# Each repetition recovers 10,000 transactions (seconds on a 2-core machine): three
# timed ones, after a warm-up of 1,000, keep the whole suite inside its five minutes.
TIMED = 3
WARM_UP = 1_000
UNDO = ("release", "refund", "cancel")


def _seed(url: str, schema: str, count: int) -> None:
    """Write ``count`` abandoned transactions into the journal, as a dead driver would."""
    import psycopg

    from aumai_transactions import TransactionManager
    from aumai_transactions.models import StepStatus, TransactionState
    from aumai_transactions.stores._postgres_writer import header_json, step_json

    builder = TransactionManager()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {schema}.transactions, {schema}.steps")
        with conn.transaction(), conn.cursor() as cur:
            transactions, steps = [], []
            for _ in range(count):
                tx = builder.begin(timeout_seconds=None)
                for forward, undo in zip(("reserve", "charge", "ship"), UNDO, strict=True):
                    builder.add_step(tx, "agent", forward, {"user_id": "u-001"}, undo)
                builder.forget(tx.transaction_id)
                tx.state = TransactionState.ACTIVE
                for index, step in enumerate(tx.steps):
                    step.attempts = 1
                    step.status = StepStatus.COMPLETED if index < 2 else StepStatus.RUNNING
                    steps.append(
                        (tx.transaction_id, step.step_id, index, step.agent_id)
                        + (step_json(step, tx.transaction_id),)
                    )
                transactions.append(
                    (tx.transaction_id, tx.state.value, tx.created_at, header_json(tx))
                )
            with cur.copy(
                f"COPY {schema}.transactions (transaction_id, state, created_at, header, "
                "lease_owner, lease_expires_at, lease_epoch) FROM STDIN"
            ) as copy:
                expired = datetime.now(UTC) - timedelta(hours=1)
                for tid, state, created, header in transactions:
                    copy.write_row((tid, state, created, header, "dead-worker", expired, 1))
            with cur.copy(
                f"COPY {schema}.steps (transaction_id, step_id, position, agent_id, doc) FROM STDIN"
            ) as copy:
                for row in steps:
                    copy.write_row(row)
        conn.execute(f"ANALYZE {schema}.transactions")
        conn.execute(f"ANALYZE {schema}.steps")


async def _recover(url: str, schema: str) -> dict[str, Any]:
    from aumai_transactions import TransactionManager
    from aumai_transactions.stores.postgres import PostgresStore

    async def noop(action: str, data: dict[str, Any]) -> None:
        return None

    store = PostgresStore(url, schema=schema, max_size=4)
    async with TransactionManager(dict.fromkeys(UNDO, noop), store=store) as manager:
        start = time.perf_counter()
        results = await manager.recover()
        elapsed = time.perf_counter() - start
    states = {r.state.value for r in results}
    assert states <= {"rolled_back"}, states
    return {"elapsed": elapsed, "recovered": len(results)}


def _job(job: dict[str, Any]) -> dict[str, Any]:
    import anyio

    return anyio.run(_recover, job["url"], job["schema"])


def _prepare(url: str, schema: str) -> None:
    import anyio

    from aumai_transactions.stores.postgres import PostgresStore

    async def create() -> None:
        async with PostgresStore(url, schema=schema):
            pass

    anyio.run(create)


def main() -> None:
    url, problem = server_url()
    if problem is not None:
        emit("W5", "postgres", 0, "tx/s", 0, f"skipped: no PostgreSQL at {url} ({problem})")
        return
    schema = fresh_schema("bench_w5")
    _prepare(url, schema)
    try:
        for workers in WORKER_COUNTS:
            children = Children("benchmarks.w5_postgres", [{}] * workers)
            try:
                rates = []
                for size in [WARM_UP] + [N] * TIMED:
                    _seed(url, schema, size)
                    replies = children.run({"url": url, "schema": schema})
                    recovered = sum(r["recovered"] for r in replies)
                    assert recovered == size, (recovered, replies)
                    if size == N:
                        rates.append(N / max(r["elapsed"] for r in replies))
            finally:
                children.close()
            rate = statistics.median(rates)
            emit(
                "W5",
                "postgres",
                rate,
                "tx/s",
                N,
                f"{N:,} expired transactions (2 steps completed, 1 in doubt: 3 compensations "
                f"each) recovered by {workers} worker process(es) at once: {rate:,.0f} "
                f"transactions/s, median of {TIMED}",
                workers=workers,
            )
    finally:
        drop_schema(url, schema)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_loop(_job)
    else:
        main()
