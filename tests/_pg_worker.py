"""A worker process for tests/test_multiprocess_postgres.py: many of these share one
PostgreSQL journal, and the test kills, pauses and restarts them.

Run as ``python -m tests._pg_worker '<spec as JSON>'`` from the repository root. Roles:

``commit``  runs three-step transactions (reserve/charge/ship, compensated by
            release/refund/cancel) until the journal holds ``count`` of this worker
            id's, so a restarted incarnation carries on where a killed one stopped;
            ``fail_rate`` of them fail at a random step.
``recover`` runs ``manager.recover()`` in a loop until killed.
``pause``   starts ``gated`` transactions whose handlers stop at a gate (a forward
            step, or a compensation) and print ``AT_GATE``; a ``go`` line on stdin
            opens the gate. It reports how many drivers got LeaseLostError.

Every handler call appends a row to the ledger table *before* it returns or raises
(transaction, step, kind forward/compensate, action, attempt, idempotency key, the
driving manager's owner id, and whether the side effect happened), so the test sees
every attempt, including the ones whose journal record a kill prevented.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from psycopg_pool import AsyncConnectionPool

from aumai_transactions import LeaseLostError, StepContext, TransactionManager
from aumai_transactions.stores.postgres import PostgresStore

STEPS = (("reserve", "release"), ("charge", "refund"), ("ship", "cancel"))
FORWARD = frozenset(f for f, _ in STEPS)
COMPENSATE = frozenset(c for _, c in STEPS)

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS {s}.ledger (
    id bigserial PRIMARY KEY,
    transaction_id text NOT NULL,
    step_id text NOT NULL,
    kind text NOT NULL,
    action text NOT NULL,
    attempt integer NOT NULL,
    idempotency_key text NOT NULL,
    owner text NOT NULL,
    ok boolean NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.workers (
    owner text PRIMARY KEY,
    role text NOT NULL,
    worker integer NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""


@dataclass
class Spec:
    url: str
    schema: str
    role: str
    worker: int = 0
    count: int = 0
    inflight: int = 16
    fail_rate: float = 0.2
    seed: int = 0
    lease_ttl: float = 30.0
    max_recovery_attempts: int = 100
    recover_limit: int = 100
    gated: int = 0


class Worker:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.store = PostgresStore(spec.url, schema=spec.schema, max_size=4)
        self.ledger = AsyncConnectionPool(
            spec.url,
            min_size=1,
            max_size=8,
            open=False,
            kwargs={"autocommit": True, "options": "-c synchronous_commit=off"},
        )
        handlers: dict[str, Any] = {name: self.handler for name in FORWARD | COMPENSATE}
        handlers.update(gate=self.gate, next=self.handler, undo_gate=self.handler)
        handlers.update(plain=self.handler, boom=self.handler, gate_comp=self.gate)
        self.manager = TransactionManager(
            handlers,
            store=self.store,
            lease_ttl=spec.lease_ttl,
            max_recovery_attempts=spec.max_recovery_attempts,
        )
        self.opened = anyio.Event()
        self.lease_lost = 0

    async def append(self, action: str, ctx: StepContext, ok: bool) -> None:
        kind = "compensate" if ctx.phase == "compensate" else "forward"
        async with self.ledger.connection() as conn:
            await conn.execute(
                f"INSERT INTO {self.spec.schema}.ledger (transaction_id, step_id, kind, action,"
                " attempt, idempotency_key, owner, ok) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    ctx.transaction_id,
                    ctx.step_id,
                    kind,
                    action,
                    ctx.attempt,
                    ctx.idempotency_key,
                    self.manager.owner,
                    ok,
                ),
            )

    async def handler(self, action: str, data: dict[str, Any], ctx: StepContext) -> Any:
        fails = ctx.phase == "forward" and (data.get("fail") or action == "boom")
        await self.append(action, ctx, ok=not fails)
        if fails:
            raise RuntimeError(f"{action} failed on purpose")
        return {"did": action, "by": self.manager.owner}

    async def gate(self, action: str, data: dict[str, Any], ctx: StepContext) -> Any:
        await self.append(action, ctx, ok=True)
        if self.spec.role == "pause":
            print("AT_GATE", ctx.transaction_id, flush=True)
            await self.opened.wait()
        return {"did": action}

    # ------------------------------------------------------------------ roles

    async def commit_role(self) -> dict[str, Any]:
        spec = self.spec
        agent = f"w{spec.worker}"
        async with self.ledger.connection() as conn:
            cur = await conn.execute(
                f"SELECT count(*) FROM {spec.schema}.steps WHERE agent_id = %s AND position = 0",
                (agent,),
            )
            row = await cur.fetchone()
        remaining = spec.count - (row[0] if row else 0)
        rng = random.Random(f"{spec.seed}:{spec.worker}:{os.getpid()}")
        outcomes: dict[str, int] = {}
        todo = iter(range(max(0, remaining)))

        async def lane() -> None:
            for _ in todo:
                tx = self.manager.begin(timeout_seconds=None)
                fail_at = rng.randrange(3) if rng.random() < spec.fail_rate else -1
                for index, (forward, compensate) in enumerate(STEPS):
                    self.manager.add_step(
                        tx, agent, forward, {"fail": index == fail_at, "n": index}, compensate
                    )
                result = await self.manager.commit(tx)
                outcomes[result.state.value] = outcomes.get(result.state.value, 0) + 1
                self.manager.forget(tx.transaction_id)

        async with anyio.create_task_group() as group:
            for _ in range(spec.inflight):
                group.start_soon(lane)
        return {"ran": max(0, remaining), "outcomes": outcomes}

    async def recover_role(self) -> dict[str, Any]:
        while True:
            results = await self.manager.recover(limit=self.spec.recover_limit)
            if not results:
                await anyio.sleep(0.05)  # idle poll, like recovery_worker(interval=...)

    async def pause_role(self) -> dict[str, Any]:
        async def drive(shape: str) -> None:
            tx = self.manager.begin(timeout_seconds=None)
            if shape == "forward":  # stopped inside a forward step
                self.manager.add_step(tx, "pauser", "gate", {}, "undo_gate")
                self.manager.add_step(tx, "pauser", "next", {}, "undo_gate")
            else:  # stopped inside a compensation
                self.manager.add_step(tx, "pauser", "plain", {}, "gate_comp")
                self.manager.add_step(tx, "pauser", "boom", {}, "undo_gate")
            try:
                await self.manager.commit(tx)
            except LeaseLostError:
                self.lease_lost += 1

        async def read_go() -> None:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if line.strip() == "go":
                self.opened.set()

        async with anyio.create_task_group() as group:
            group.start_soon(read_go)
            for index in range(self.spec.gated):
                group.start_soon(drive, "forward" if index % 2 == 0 else "compensate")
        return {"lease_lost": self.lease_lost}

    async def run(self) -> dict[str, Any]:
        await self.ledger.open(wait=True)
        async with self.manager:
            async with self.ledger.connection() as conn:
                await conn.execute(
                    f"INSERT INTO {self.spec.schema}.workers (owner, role, worker, pid)"
                    " VALUES (%s, %s, %s, %s)",
                    (self.manager.owner, self.spec.role, self.spec.worker, os.getpid()),
                )
            print("READY", self.manager.owner, flush=True)
            role = getattr(self, f"{self.spec.role}_role")
            outcome: dict[str, Any] = await role()
        await self.ledger.close()
        return outcome


def main() -> None:
    spec = Spec(**json.loads(sys.argv[1]))
    outcome = anyio.run(Worker(spec).run)
    print("DONE", json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
