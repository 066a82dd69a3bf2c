"""The design floor of W3 on PostgreSQL: the floor plus what the design asks, timed.

``_postgres_floor`` writes the least the journal rules ask, into tables of its own. This
writes the same four fenced, group-committed durable writes a transaction, with what
the design and the public API ask of any engine on top, as W1's design floor adds them
(``_floors``):

* the transaction as the package's models, built the cheapest way, and a
  ``TransactionResult`` model a transaction;
* the engine's own tables (``stores/_postgres_sql.py``), whose indexes serve the
  operator's listings (by state, newest first, by agent, the leases by owner) and
  recovery's claims; with the plan durable with the lease, as ``resume`` recovery needs
  it: the transaction's row (state ``active``, its header, the lease) and a row per
  step (the first with its intent) in the first write;
* each later write rewriting, in full, the rows of the steps it changes (an intent and
  the previous step's completion) as the models' JSON (pydantic's serializer of
  ``TransactionStep``), fenced by the lease's epoch under a share lock; the last one
  the final state and header in the transaction's row, the lease given up;
* the forward pass under the timeout's anyio cancel scope.

Each batch is one statement of arrays (binary ``unnest``), one implicit transaction.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from ._postgres_floor import GroupCommitter, LeaseLost, _noop, timed

DESIGN_BATCH = """
WITH a AS (
    INSERT INTO {s}.transactions AS t
        (transaction_id, state, created_at, recovery_attempts, header,
         lease_owner, lease_expires_at, lease_epoch)
    SELECT v.tid, 'active', v.created, 0, v.header::jsonb,
           %(owner)s, now() + interval '30 seconds', 1
    FROM unnest(%(a_tid)b::text[], %(a_created)b::timestamptz[], %(a_header)b::text[])
        AS v (tid, created, header)
    ON CONFLICT (transaction_id) DO NOTHING
    RETURNING t.transaction_id AS tid
), s AS (
    INSERT INTO {s}.steps (transaction_id, step_id, position, agent_id, doc)
    SELECT v.tid, v.step_id, v.position, v.agent_id, v.doc::jsonb
    FROM unnest(%(s_tid)b::text[], %(s_step)b::text[], %(s_position)b::integer[],
                %(s_agent)b::text[], %(s_doc)b::text[])
        AS v (tid, step_id, position, agent_id, doc)
    JOIN a ON a.tid = v.tid
), k AS (
    SELECT t.transaction_id AS tid FROM {s}.transactions AS t
    JOIN unnest(%(k_tid)b::text[], %(k_epoch)b::bigint[]) AS k (tid, epoch)
        ON t.transaction_id = k.tid
    WHERE t.lease_epoch = k.epoch AND t.transaction_id = ANY (%(k_tid)b::text[])
    FOR SHARE OF t
), f AS (
    UPDATE {s}.transactions AS t
    SET state = 'committed', header = f.header::jsonb, lease_expires_at = '-infinity'
    FROM unnest(%(f_tid)b::text[], %(f_epoch)b::bigint[], %(f_header)b::text[])
        AS f (tid, epoch, header)
    WHERE t.transaction_id = f.tid AND t.lease_epoch = f.epoch
      AND t.transaction_id = ANY (%(f_tid)b::text[])
    RETURNING t.transaction_id AS tid
), ok AS (
    SELECT tid FROM k UNION ALL SELECT tid FROM f
), u AS (
    UPDATE {s}.steps AS x SET doc = v.doc::jsonb
    FROM unnest(%(u_tid)b::text[], %(u_step)b::text[], %(u_doc)b::text[]) AS v (tid, step_id, doc)
    JOIN ok ON ok.tid = v.tid
    WHERE x.transaction_id = v.tid AND x.step_id = v.step_id
)
SELECT v.tid FROM unnest(%(k_tid)b::text[] || %(f_tid)b::text[]) AS v (tid)
WHERE v.tid NOT IN (SELECT tid FROM ok)
UNION ALL
SELECT v.tid FROM unnest(%(a_tid)b::text[]) AS v (tid) WHERE v.tid NOT IN (SELECT tid FROM a)
"""

_COLUMNS = (
    "a_tid",
    "a_created",
    "a_header",
    "s_tid",
    "s_step",
    "s_position",
    "s_agent",
    "s_doc",
    "k_tid",
    "k_epoch",
    "f_tid",
    "f_epoch",
    "f_header",
    "u_tid",
    "u_step",
    "u_doc",
)


class _DesignBatch:
    """The writes queued for the next round trip, as the design statement's arrays."""

    __slots__ = ("columns", "done")

    def __init__(self, done: asyncio.Future[frozenset[str]]) -> None:
        self.done = done
        self.columns: dict[str, list[Any]] = {name: [] for name in _COLUMNS}

    def empty(self) -> bool:
        columns = self.columns
        return not (columns["a_tid"] or columns["k_tid"] or columns["f_tid"])

    def params(self, owner: str) -> dict[str, Any]:
        return {"owner": owner, **self.columns}


class DesignWriter(GroupCommitter):
    """The floor's group commit, for the design statement."""

    batch_class = _DesignBatch

    def _steps(self, tid: str, rows: list[tuple[str, str]]) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = self.pending.columns
        for step_id, doc in rows:
            columns["u_tid"].append(tid)
            columns["u_step"].append(step_id)
            columns["u_doc"].append(doc)
        self.wake.set()
        return columns

    def acquire(
        self, tid: str, created: datetime, header: str, rows: list[tuple[str, int, str, str]]
    ) -> asyncio.Future[frozenset[str]]:
        columns: dict[str, list[Any]] = self.pending.columns
        columns["a_tid"].append(tid)
        columns["a_created"].append(created)
        columns["a_header"].append(header)
        for step_id, position, agent_id, doc in rows:
            columns["s_tid"].append(tid)
            columns["s_step"].append(step_id)
            columns["s_position"].append(position)
            columns["s_agent"].append(agent_id)
            columns["s_doc"].append(doc)
        self.wake.set()
        done: asyncio.Future[frozenset[str]] = self.pending.done
        return done

    def record(
        self, tid: str, epoch: int, rows: list[tuple[str, str]]
    ) -> asyncio.Future[frozenset[str]]:
        columns = self._steps(tid, rows)
        columns["k_tid"].append(tid)
        columns["k_epoch"].append(epoch)
        done: asyncio.Future[frozenset[str]] = self.pending.done
        return done

    def finish(
        self, tid: str, epoch: int, header: str, rows: list[tuple[str, str]]
    ) -> asyncio.Future[frozenset[str]]:
        columns = self._steps(tid, rows)
        columns["f_tid"].append(tid)
        columns["f_epoch"].append(epoch)
        columns["f_header"].append(header)
        done: asyncio.Future[frozenset[str]] = self.pending.done
        return done


def _transaction_of() -> Callable[[DesignWriter, Any], Awaitable[None]]:
    """One transaction of the design floor (three steps, four fenced durable writes,
    the models kept), with what it uses looked up once."""
    import anyio

    from aumai_transactions import StepStatus, Transaction, TransactionState, TransactionStep
    from aumai_transactions.stores._postgres_sql import HEADER_EXCLUDE

    from ._floors import active_models, result_model, start

    # The models' own JSON: a step in full (its None fields left out, as the engine
    # stores it), and the header the engine keeps beside the transaction's columns.
    step_json = functools.partial(
        TransactionStep.__pydantic_serializer__.to_json, exclude_none=True
    )
    header_json = functools.partial(
        Transaction.__pydantic_serializer__.to_json, exclude=set(HEADER_EXCLUDE)
    )
    completed = StepStatus.COMPLETED

    async def transaction(writer: DesignWriter, bits: Any) -> None:
        loop_time = asyncio.get_running_loop().time
        tx = active_models(f"{bits(128):032x}", bits)
        tid = tx.transaction_id
        fields = tx.__dict__
        steps = tx.steps
        epoch = 1
        done = ("", "")
        with anyio.CancelScope(deadline=loop_time() + 60.0):  # the timeout
            for position, step in enumerate(steps):
                values = start(step)
                if position == 0:  # the lease, every step's row, the first intent
                    rows = [
                        (s.step_id, i, s.agent_id, step_json(s).decode())
                        for i, s in enumerate(steps)
                    ]
                    header = header_json(tx).decode()
                    refused = await writer.acquire(tid, tx.created_at, header, rows)
                else:  # the intent, with the previous step's completion
                    changed = [(step.step_id, step_json(step).decode()), done]
                    refused = await writer.record(tid, epoch, changed)
                if tid in refused:
                    raise LeaseLost(tid)
                values["result"] = await _noop(values["action"], values["data"])
                values["status"] = completed
                values["finished_at"] = datetime.now(UTC)
                done = (step.step_id, step_json(step).decode())
        fields["state"] = TransactionState.COMMITTED
        fields["updated_at"] = fields["finished_at"] = datetime.now(UTC)
        if tid in await writer.finish(tid, epoch, header_json(tx).decode(), [done]):
            raise LeaseLost(tid)
        result_model(tx, [s.step_id for s in steps], None)

    return transaction


async def design_floor(url: str, schema: str, transactions: int, inflight: int) -> dict[str, Any]:
    """One timed run of the design floor (in ``schema``, whose engine tables exist):
    elapsed seconds, batches, client and server CPU."""
    transaction = _transaction_of()
    return await timed(url, schema, transactions, inflight, DESIGN_BATCH, DesignWriter, transaction)
