"""W3 on PostgreSQL: durable steps per second with 1, 16 and 256 transactions in flight,
from one process and from 4 processes side by side.

Three async no-op steps per transaction, PostgresStore on a fresh schema, the server's
own durability settings (``synchronous_commit`` as configured: on by default). Figures:
steps per second, and WAL-flushing commits per step (batches the store sent that
waited for the flush, counted by the store). Baselines in the same run, with the same
driver (psycopg 3 async) and a step-sized JSONB row: one INSERT + COMMIT per step on one
connection (the round-trip-and-flush limit), and 256 rows per COMMIT (the batching
limit); from 4 processes, 4 connections each committing one row per step.

At 4 processes x 256 in flight, the row whose target is a multiple of that baseline,
the same rounds also time a *floor* (``_postgres_floor``): the least any engine keeping
the design's journal rules must write, in plain asyncio and psycopg with no project
code (four fenced, group-committed durable writes a transaction; see that module for
what each holds and why nothing less would do); and a *design floor*
(``_postgres_design_floor``): the same writes with what the design and the public API
ask on top (the package's models, the engine's own tables with the plan durable with
the lease, each changed step row rewritten in full as the models' JSON, the timeout's
anyio scope). Every run of the engine or the floor
also reports the CPU its client processes used (``cpu``) and that of the server
backends serving its connections (``server_cpu``, read from ``/proc``, so 0 for a
server on another machine), in µs a step: on two cores shared by the clients and the
server, that is what bounds a rate.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from typing import Any

from . import _postgres_design_floor, _postgres_floor
from ._common import REPEATS, emit
from ._postgres import (
    Children,
    backend_cpu,
    child_loop,
    drop_schema,
    fresh_schema,
    server_url,
)

WORKLOADS = ("W3",)

LEVELS = (1, 16, 256)
# Transactions per timed run (per process), sized so a run takes about a second.
TX_PER_RUN = {1: 100, 16: 400, 256: 1024}
TX_PER_RUN_EACH_OF_4 = {1: 40, 16: 160, 256: 512}
RAW_ROWS = 600
RAW_BATCH = 256
# The levels that also time the floor (``_postgres_floor``): the row W3's target is on.
FLOOR_AT = frozenset({(4, 256)})
ACTIONS = ("reserve", "charge", "ship", "release", "refund", "cancel")


# ---------------------------------------------------------------------- the timed jobs


async def _engine(url: str, schema: str, transactions: int, inflight: int) -> dict[str, Any]:
    """One timed run of the engine; returns elapsed seconds and store counters."""
    import anyio
    import psycopg
    from psycopg.conninfo import make_conninfo

    from aumai_transactions import TransactionManager
    from aumai_transactions.stores.postgres import PostgresStore

    async def noop(action: str, data: dict[str, Any]) -> None:
        return None

    tag = f"w3-engine-{os.getpid()}"
    store = PostgresStore(make_conninfo(url, application_name=tag), schema=schema, max_size=4)
    manager = TransactionManager(dict.fromkeys(ACTIONS, noop), store=store)
    async with manager, await psycopg.AsyncConnection.connect(url, autocommit=True) as side:

        async def server_cpu() -> float:
            cur = await side.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (tag,)
            )
            return backend_cpu([row[0] for row in await cur.fetchall()])

        async def run(count: int) -> None:
            todo = iter(range(count))

            async def lane() -> None:
                for _ in todo:
                    tx = manager.begin()
                    for forward, undo in (ACTIONS[0:4:3], ACTIONS[1:5:3], ACTIONS[2:6:3]):
                        manager.add_step(tx, "agent", forward, {"user_id": "u-001"}, undo)
                    result = await manager.commit(tx)
                    assert result.state.value == "committed"
                    manager.forget(tx.transaction_id)

            async with anyio.create_task_group() as group:
                for _ in range(min(inflight, count)):
                    group.start_soon(lane)

        await run(max(inflight, 20))  # warm-up: connections, prepared statements
        before = store.stats
        server = await server_cpu()
        cpu = time.process_time()
        start = time.perf_counter()
        await run(transactions)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        server = await server_cpu() - server
        after = store.stats
    return {
        "elapsed": elapsed,
        "steps": transactions * 3,
        "durable": after["durable_batches"] - before["durable_batches"],
        "batches": after["batches"] - before["batches"],
        "cpu": cpu,
        "server_cpu": server,
    }


async def _raw(url: str, schema: str, rows: int, batch: int) -> dict[str, Any]:
    """Raw psycopg: ``rows`` step-sized rows, ``batch`` rows per COMMIT."""
    import psycopg

    from aumai_transactions import TransactionManager

    builder = TransactionManager()
    tx = builder.begin()
    step = builder.add_step(tx, "agent", "reserve", {"user_id": "u-001"}, "release")
    doc = step.model_dump_json()
    insert = f"INSERT INTO {schema}.raw_steps (transaction_id, step_id, doc) VALUES (%s, %s, %s)"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(insert, (tx.transaction_id, "warm", doc))
        start = time.perf_counter()
        if batch == 1:
            for index in range(rows):
                await conn.execute(insert, (tx.transaction_id, str(index), doc))
        else:
            for first in range(0, rows, batch):
                async with conn.transaction():
                    cur = conn.cursor()
                    await cur.executemany(
                        insert,
                        [(tx.transaction_id, str(i), doc) for i in range(first, first + batch)],
                    )
        elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "steps": rows}


def _job(job: dict[str, Any]) -> dict[str, Any]:
    import anyio

    if job["kind"] == "engine":
        return anyio.run(_engine, job["url"], job["schema"], job["transactions"], job["inflight"])
    if job["kind"] == "floor":
        return asyncio.run(
            _postgres_floor.floor(job["url"], job["schema"], job["transactions"], job["inflight"])
        )
    if job["kind"] == "design floor":
        return asyncio.run(
            _postgres_design_floor.design_floor(
                job["url"], job["schema"], job["transactions"], job["inflight"]
            )
        )
    return anyio.run(_raw, job["url"], job["schema"], job["rows"], job["batch"])


# ---------------------------------------------------------------------- the workload


def _rate(replies: list[dict[str, Any]]) -> tuple[float, float]:
    """(steps/s, WAL-flushing commits per step) of one repetition.

    A repetition of several processes counts all their steps over the slowest one's
    time: the fleet's throughput.
    """
    steps = sum(r["steps"] for r in replies)
    flushes = sum(r.get("durable", r["steps"]) for r in replies) / steps
    return steps / max(r["elapsed"] for r in replies), flushes


def _cpu(replies: list[dict[str, Any]], key: str) -> float:
    """CPU µs per step of one repetition, summed over its processes (client ``cpu`` or
    their server backends' ``server_cpu``)."""
    used = sum(float(r.get(key, 0.0)) for r in replies)
    return used / float(sum(r["steps"] for r in replies)) * 1e6


def _rounds(children: Children, jobs: list[dict[str, Any]]) -> list[list[list[dict[str, Any]]]]:
    """The replies to each of ``jobs`` for each repetition, run in turn within it.

    Interleaving keeps a baseline and the runs compared with it under the same
    conditions: on a shared machine the disk's flush latency drifts within seconds.
    One warm-up round first.
    """
    rounds = []
    for repetition in range(REPEATS + 1):
        replies = [children.run(job) for job in jobs]
        if repetition:
            rounds.append(replies)
    return rounds


def _paired(
    children: Children, baseline: dict[str, Any], job: dict[str, Any]
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """(job, baseline) rates for each repetition, each job run just after its baseline."""
    return [(_rate(run), _rate(base)) for base, run in _rounds(children, [baseline, job])]


def _level(
    children: Children, raw_job: dict[str, Any], job: dict[str, Any], floor: bool
) -> dict[str, float]:
    """Medians over the repetitions of one level: the engine, the raw baseline, and
    the floor (when ``floor``), run in turn in each repetition; ratios are medians of
    each repetition's own ratio."""
    floors = [{**job, "kind": "floor"}, {**job, "kind": "design floor"}] if floor else []
    jobs = [raw_job, job, *floors]
    rounds = _rounds(children, jobs)
    med = statistics.median
    raw = [_rate(r[0])[0] for r in rounds]
    rate = [_rate(r[1])[0] for r in rounds]
    out = {
        "rate": med(rate),
        "flushes": med(_rate(r[1])[1] for r in rounds),
        "raw": med(raw),
        "ratio": med(e / b for e, b in zip(rate, raw, strict=True)),
        "cpu": med(_cpu(r[1], "cpu") for r in rounds),
        "server_cpu": med(_cpu(r[1], "server_cpu") for r in rounds),
    }
    if floor:
        for index, name in ((2, "floor"), (3, "design_floor")):
            low = [_rate(r[index])[0] for r in rounds]
            out |= {
                name: med(low),
                f"{name}_flushes": med(_rate(r[index])[1] for r in rounds),
                f"{name}_ratio": med(f / b for f, b in zip(low, raw, strict=True)),
                f"of_{name}": med(e / f for e, f in zip(rate, low, strict=True)),
                f"cpu_{name}": med(_cpu(r[index], "cpu") for r in rounds),
                f"server_cpu_{name}": med(_cpu(r[index], "server_cpu") for r in rounds),
            }
    return out


def _prepare(url: str, schema: str) -> None:
    import anyio
    import psycopg

    from aumai_transactions.stores.postgres import PostgresStore

    async def create() -> None:
        async with PostgresStore(url, schema=schema):
            pass

    anyio.run(create)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {schema}.raw_steps (id bigserial PRIMARY KEY, "
            "transaction_id text NOT NULL, step_id text NOT NULL, doc jsonb NOT NULL)"
        )
    _postgres_floor.prepare(url, schema)


def main() -> None:
    url, problem = server_url()
    if problem is not None:
        emit("W3", "postgres", 0, "steps/s", 0, f"skipped: no PostgreSQL at {url} ({problem})")
        return
    schema = fresh_schema("bench_w3")
    _prepare(url, schema)
    module = "benchmarks.w3_postgres"
    try:
        one = Children(module, [{}])
        four = Children(module, [{}] * 4)
        base = {"url": url, "schema": schema}
        try:
            for processes, children, sizes in (
                (1, one, TX_PER_RUN),
                (4, four, TX_PER_RUN_EACH_OF_4),
            ):
                rows = RAW_ROWS if processes == 1 else RAW_ROWS // 2
                raw_job = {**base, "kind": "raw", "rows": rows, "batch": 1}
                if processes == 1:
                    batched_job = {**raw_job, "rows": RAW_ROWS * 4, "batch": RAW_BATCH}
                    batched = _paired(children, raw_job, batched_job)
                    raw_batched = statistics.median(rate for (rate, _), _ in batched)
                for inflight in LEVELS:
                    job = {
                        **base,
                        "kind": "engine",
                        "inflight": inflight,
                        "transactions": sizes[inflight],
                    }
                    floor = (processes, inflight) in FLOOR_AT
                    got = _level(children, raw_job, job, floor)
                    rate, raw, ratio = got["rate"], got["raw"], got["ratio"]
                    cpu = {
                        "cpu": round(got["cpu"], 1),
                        "server_cpu": round(got["server_cpu"], 1),
                    }
                    note = ""
                    if floor:
                        note = (
                            f"; same-run floor (4 fenced durable writes a transaction, "
                            f"group-committed): {got['floor']:,.0f} steps/s, "
                            f"{got['floor_ratio']:.2f}x the raw baseline, the engine at "
                            f"{got['of_floor']:.2f} of it; CPU us/step client / server: "
                            f"engine {got['cpu']:.0f} / {got['server_cpu']:.0f}, "
                            f"floor {got['cpu_floor']:.0f} / {got['server_cpu_floor']:.0f}; "
                            f"same-run design floor (the engine's tables, the package's "
                            f"models and scope): {got['design_floor']:,.0f} steps/s, "
                            f"{got['design_floor_ratio']:.2f}x the raw baseline, the engine "
                            f"at {got['of_design_floor']:.2f} of it; CPU us/step "
                            f"{got['cpu_design_floor']:.0f} / "
                            f"{got['server_cpu_design_floor']:.0f}"
                        )
                        for name in ("floor", "design_floor"):
                            cpu |= {
                                name: round(got[name], 1),
                                f"{name}_commits_per_step": round(got[f"{name}_flushes"], 4),
                                f"{name}_ratio": round(got[f"{name}_ratio"], 3),
                                f"of_{name}": round(got[f"of_{name}"], 3),
                                f"cpu_{name}": round(got[f"cpu_{name}"], 1),
                                f"server_cpu_{name}": round(got[f"server_cpu_{name}"], 1),
                            }
                    emit(
                        "W3",
                        "postgres",
                        rate,
                        "steps/s",
                        sizes[inflight] * 3 * processes,
                        f"{processes} process(es) x {inflight} in flight: {rate:,.0f} steps/s, "
                        f"{got['flushes']:.3f} WAL-flushing commits per step; same-run raw "
                        f"psycopg baselines: {raw:,.0f} steps/s at one INSERT+COMMIT per step"
                        f"{' on each of 4 connections' if processes == 4 else ''} "
                        f"(median of paired ratios {ratio:.2f}), {raw_batched:,.0f} steps/s at "
                        f"{RAW_BATCH} rows per COMMIT" + note,
                        processes=processes,
                        inflight=inflight,
                        commits_per_step=round(got["flushes"], 4),
                        baseline_commit_per_step=round(raw, 1),
                        baseline_batched=round(raw_batched, 1),
                        ratio=round(ratio, 3),
                        **cpu,
                    )
        finally:
            one.close()
            four.close()
    finally:
        drop_schema(url, schema)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_loop(_job)
    else:
        main()
