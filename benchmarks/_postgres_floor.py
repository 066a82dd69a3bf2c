"""The floor of W3 on PostgreSQL: the least any write-ahead engine writes, timed.

Plain asyncio and psycopg 3, no project code: lanes of three-step transactions with
async no-op steps, each keeping the design's journal rules at the least they cost:

1. ``acquire``: the transaction row (state ``active``, lease owner, epoch 1, expiry
   from the server's clock) and a journal row with the transaction's header and step
   1's intent (status ``running``, attempt 1, start time), before step 1's handler
   runs (rule 1, rule 3: the lease);
2. ``record``: step 2's intent carrying step 1's completion (status, finish time,
   result), one journal row, before step 2 runs: the completion is folded into the
   next durable write, as rules 1 and 2 allow;
3. ``record``: step 3's intent with step 2's completion, one journal row;
4. ``finish``: the final header (``committed``) with step 3's completion, one journal
   row, and the transaction row set ``committed`` with its lease ended (rule 2).

Four durable writes a transaction, each a journal row made with one JSON serialization
(pydantic-core's ``to_json``, the fastest the dependencies offer) of the current
fields of each step it changes (all of a step's fields, as the design's steps have
them, not only those that changed: a reader of the last row of a step needs no
earlier one) and, in the first and last, the transaction's header.

Every write after the acquire is fenced (rule 3): records take a share lock on the
transaction row where it still has the writer's epoch (a claim that raises the epoch
waits for the batch's commit, or has committed first and the record is refused); the
finish is an update conditioned on the epoch. A fresh transaction row needs no fence:
no other driver can see it before it commits.

Group commit: one connection per process and one writer task; whatever writes are
queued when the previous batch returns go in one statement (arrays of values, one
implicit transaction: one COMMIT and one WAL flush under ``synchronous_commit`` as the
server has it), and every lane waiting on that batch is woken by one future when it
commits.

What it leaves out, because the rules do not ask for it: rows of steps not yet
started (the plan lives in the caller until a step's intent is written), foreign
keys, indexes beyond the two primary keys (recovery scans the transaction rows), a row
per step rewritten in place (a journal row holds both steps a write changes), and
lease renewal (a run lasts a second; the lease is 30 s).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json

TABLES = (
    "CREATE TABLE {s}.floor_tx (tid text PRIMARY KEY, state text NOT NULL, "
    "owner text NOT NULL, epoch bigint NOT NULL, expires timestamptz NOT NULL) "
    "WITH (fillfactor = 80)",
    "CREATE TABLE {s}.floor_journal (tid text NOT NULL, seq integer NOT NULL, "
    "doc jsonb NOT NULL, PRIMARY KEY (tid, seq))",
)

# One batch: acquires (a), fenced records (k), finishes (f), and a journal row for
# each write whose fence held. Returns the writes refused (none, in this benchmark).
BATCH = """
WITH a AS (
    INSERT INTO {s}.floor_tx (tid, state, owner, epoch, expires)
    SELECT tid, 'active', %(owner)s, 1, now() + interval '30 seconds'
    FROM unnest(%(a_tid)b::text[]) AS tid
    ON CONFLICT (tid) DO NOTHING
    RETURNING tid
), k AS (
    SELECT t.tid FROM {s}.floor_tx AS t
    JOIN unnest(%(k_tid)b::text[], %(k_epoch)b::bigint[]) AS k (tid, epoch) ON t.tid = k.tid
    WHERE t.epoch = k.epoch AND t.tid = ANY (%(k_tid)b::text[])
    FOR SHARE OF t
), f AS (
    UPDATE {s}.floor_tx AS t SET state = 'committed', expires = '-infinity'
    FROM unnest(%(f_tid)b::text[], %(f_epoch)b::bigint[]) AS f (tid, epoch)
    WHERE t.tid = f.tid AND t.epoch = f.epoch AND t.tid = ANY (%(f_tid)b::text[])
    RETURNING t.tid
), ok AS (
    SELECT tid FROM a UNION ALL SELECT tid FROM k UNION ALL SELECT tid FROM f
), j AS (
    INSERT INTO {s}.floor_journal (tid, seq, doc)
    SELECT v.tid, v.seq, v.doc::jsonb
    FROM unnest(%(j_tid)b::text[], %(j_seq)b::integer[], %(j_doc)b::text[]) AS v (tid, seq, doc)
    JOIN ok ON ok.tid = v.tid
)
SELECT v.tid FROM unnest(%(j_tid)b::text[]) AS v (tid) WHERE v.tid NOT IN (SELECT tid FROM ok)
"""

ACTIONS = (("reserve", "release"), ("charge", "refund"), ("ship", "cancel"))
DATA: dict[str, Any] = {"user_id": "u-001"}


def _dumps(value: Any) -> str:
    return to_json(value).decode()


class LeaseLost(Exception):
    """A write was refused: the transaction's lease has a newer epoch."""


class _Batch:
    """The writes queued for the next round trip, as the statement's arrays."""

    __slots__ = ("a_tid", "done", "f_epoch", "f_tid", "j_doc", "j_seq", "j_tid", "k_epoch", "k_tid")

    def __init__(self, done: asyncio.Future[frozenset[str]]) -> None:
        self.done = done
        self.a_tid: list[str] = []
        self.k_tid: list[str] = []
        self.k_epoch: list[int] = []
        self.f_tid: list[str] = []
        self.f_epoch: list[int] = []
        self.j_tid: list[str] = []
        self.j_seq: list[int] = []
        self.j_doc: list[str] = []

    def empty(self) -> bool:
        return not self.j_tid

    def params(self, owner: str) -> dict[str, Any]:
        """The statement's parameters for this batch."""
        return {
            "owner": owner,
            "a_tid": self.a_tid,
            "k_tid": self.k_tid,
            "k_epoch": self.k_epoch,
            "f_tid": self.f_tid,
            "f_epoch": self.f_epoch,
            "j_tid": self.j_tid,
            "j_seq": self.j_seq,
            "j_doc": self.j_doc,
        }


class GroupCommitter:
    """Group commit over one connection: a task sends each batch when the last returns.

    ``batch_class(done)`` makes the batch writes are queued in (``empty()``, and
    ``params(owner)`` for the statement); ``done`` is resolved with the ids of the
    transactions whose writes the statement refused.
    """

    batch_class: Any = _Batch

    def __init__(self, conn: Any, statement: bytes, owner: str) -> None:
        self.conn = conn
        self.statement = statement
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.pending: Any = self.batch_class(self.loop.create_future())
        self.wake = asyncio.Event()
        self.batches = 0

    async def run(self) -> None:
        while True:
            if self.pending.empty():
                self.wake.clear()
                await self.wake.wait()
                continue
            batch = self.pending
            self.pending = self.batch_class(self.loop.create_future())
            try:
                cur = await self.conn.execute(self.statement, batch.params(self.owner))
                refused = frozenset(row[0] for row in await cur.fetchall())
            except BaseException as exc:
                batch.done.set_exception(exc)
                raise
            self.batches += 1
            batch.done.set_result(refused)


class Writer(GroupCommitter):
    """The floor's writes: an acquire, a record and a finish, each a journal row."""

    def _journal(self, tid: str, seq: int, doc: str) -> _Batch:
        batch: _Batch = self.pending
        batch.j_tid.append(tid)
        batch.j_seq.append(seq)
        batch.j_doc.append(doc)
        self.wake.set()
        return batch

    def acquire(self, tid: str, doc: str) -> asyncio.Future[frozenset[str]]:
        batch = self._journal(tid, 1, doc)
        batch.a_tid.append(tid)
        return batch.done

    def record(self, tid: str, epoch: int, seq: int, doc: str) -> asyncio.Future[frozenset[str]]:
        batch = self._journal(tid, seq, doc)
        batch.k_tid.append(tid)
        batch.k_epoch.append(epoch)
        return batch.done

    def finish(self, tid: str, epoch: int, seq: int, doc: str) -> asyncio.Future[frozenset[str]]:
        batch = self._journal(tid, seq, doc)
        batch.f_tid.append(tid)
        batch.f_epoch.append(epoch)
        return batch.done


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def _noop(action: str, data: dict[str, Any]) -> Any:
    return None


def _step(step_id: str, action: str, undo: str) -> dict[str, Any]:
    """A step as the design describes one: every field a journaled step carries."""
    return {
        "step_id": step_id,
        "agent_id": "agent",
        "action": action,
        "data": DATA,
        "compensating_action": undo,
        "status": "pending",
        "attempts": 0,
        "compensation_attempts": 0,
        "result": None,
        "error": None,
        "compensation_error": None,
        "started_at": None,
        "finished_at": None,
        "compensated_at": None,
        "retry": None,
        "recovery": None,
        "interrupted": False,
        "recorded_only": False,
        "group": None,
        "group_concurrency": None,
        "live": False,
        "key": None,
        "earlier_attempts": None,
    }


async def _transaction(writer: Writer, bits: Any) -> None:
    """One transaction: three steps, four fenced durable writes."""
    tid = f"{bits(128):032x}"
    epoch = 1
    header: dict[str, Any] = {
        "transaction_id": tid,
        "state": "active",
        "created_at": _now(),
        "timeout_seconds": 60.0,
        "updated_at": None,
        "finished_at": None,
        "error": None,
        "recovery_attempts": 0,
        "blocked_reason": None,
        "resolution": None,
    }
    done: dict[str, Any] | None = None
    for position, (action, undo) in enumerate(ACTIONS):
        step = _step(f"{bits(128):032x}", action, undo)
        step["status"] = "running"
        step["attempts"] = 1
        step["started_at"] = _now()
        if done is None:
            refused = await writer.acquire(tid, _dumps({"header": header, "step": step}))
        else:
            doc = _dumps({"done": done, "step": step})
            refused = await writer.record(tid, epoch, position + 1, doc)
        if tid in refused:
            raise LeaseLost(tid)
        step["result"] = await _noop(action, DATA)
        step["status"] = "completed"
        step["finished_at"] = _now()
        done = step
    header["state"] = "committed"
    header["updated_at"] = header["finished_at"] = _now()
    doc = _dumps({"header": header, "done": done})
    if tid in await writer.finish(tid, epoch, len(ACTIONS) + 1, doc):
        raise LeaseLost(tid)


async def floor(url: str, schema: str, transactions: int, inflight: int) -> dict[str, Any]:
    """One timed run of the floor: elapsed seconds, batches, client and server CPU."""
    return await timed(url, schema, transactions, inflight, BATCH, Writer, _transaction)


async def timed(
    url: str,
    schema: str,
    transactions: int,
    inflight: int,
    statement_text: str,
    writer_class: type[GroupCommitter],
    transaction: Callable[[Any, Callable[[int], int]], Awaitable[None]],
) -> dict[str, Any]:
    """One timed run of ``transaction(writer, bits)`` in lanes over one group-committing
    ``writer_class`` sending ``statement_text``: elapsed seconds, batches, client and
    server CPU."""
    import psycopg
    from psycopg import sql

    from ._postgres import backend_cpu

    text = " ".join(statement_text.split())
    statement = sql.SQL(text).format(s=sql.Identifier(schema)).as_bytes(None)
    bits = random.Random(os.getpid() ^ time.time_ns()).getrandbits
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        writer = writer_class(conn, statement, f"floor-{os.getpid()}")
        task = asyncio.ensure_future(writer.run())

        async def run(count: int) -> None:
            todo = iter(range(count))

            async def lane() -> None:
                for _ in todo:
                    await transaction(writer, bits)

            await asyncio.gather(*(lane() for _ in range(min(inflight, count))))

        await run(max(inflight, 20))  # warm-up: connection, prepared statement
        pid = conn.info.backend_pid
        batches = writer.batches
        server = backend_cpu([pid])
        cpu = time.process_time()
        start = time.perf_counter()
        await run(transactions)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        server = backend_cpu([pid]) - server
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return {
        "elapsed": elapsed,
        "steps": transactions * len(ACTIONS),
        "durable": writer.batches - batches,
        "batches": writer.batches - batches,
        "cpu": cpu,
        "server_cpu": server,
    }


def prepare(url: str, schema: str) -> None:
    """Create the floor's two tables in ``schema``."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in TABLES:
            conn.execute(sql.SQL(statement).format(s=sql.Identifier(schema)))
