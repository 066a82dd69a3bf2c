"""Many worker processes on one PostgreSQL journal: plain load, chaos, and a paused driver.

(a) 4 worker processes each commit 2,000 three-step transactions, 20% failing.
(b) the same while a chaos loop SIGKILLs random workers (committers and recoverers)
    and restarts them, 40 times, and two recovery workers run ``recover`` continuously.
(c) a worker is SIGSTOPped with transactions in flight (some inside a forward step,
    some inside a compensation), its leases are expired in the database, a recovery
    worker takes them over and finishes them, and the worker is SIGCONTed: every one
    of its drivers is refused with LeaseLostError and stops.

Every handler call lands in a ledger table first (tests/_pg_worker.py), so the audit
compares what really ran with the journal. A lease "expires" because the test
rewrites ``lease_expires_at`` in the database (what the TTL would do, minus the
wait), and recovery "settles" when the journal says so: nothing sleeps on a race.

``AUMAI_PG_MP_SCALE`` (default 1) scales the 2,000 transactions per worker down for
quick local runs; CI runs the issue's numbers.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from aumai_transactions.stores.postgres import PostgresStore

from ._pg_worker import COMPENSATE, FORWARD, LEDGER_DDL
from .stores.conftest import postgres_url

pytestmark = [pytest.mark.postgres, pytest.mark.crash]

ROOT = Path(__file__).resolve().parent.parent
SCALE = float(os.environ.get("AUMAI_PG_MP_SCALE", "1"))
PER_WORKER = max(10, int(2000 * SCALE))
# The chaos loop's SIGKILLs, then it lets the workers finish: a fixed number rather than
# a kill every few tenths of a second for as long as the work lasts, which on a slow
# machine (each restart imports the package again) became hundreds of kills and minutes.
CHAOS_KILLS = 40
WORKERS = 4
SETTLE_SECONDS = 180.0


# ---------------------------------------------------------------------- processes


class Proc:
    """One worker process; its output goes to a file (no pipe to fill up)."""

    def __init__(self, spec: dict[str, Any], log: Path, stdin: bool = False) -> None:
        self.spec = spec
        self.log = log
        self._out = log.open("w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests._pg_worker", json.dumps(spec)],
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    async def wait(self, timeout: float) -> int:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(self.popen.wait)

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text()

    def done_line(self) -> dict[str, Any]:
        for line in self.output().splitlines():
            if line.startswith("DONE "):
                result: dict[str, Any] = json.loads(line[5:])
                return result
        raise AssertionError(f"worker {self.spec} did not finish:\n{self.output()}")

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        self._out.close()


@dataclass
class Cluster:
    url: str
    schema: str
    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    killed_owners: set[str] = field(default_factory=set)
    kills: int = 0

    def spawn(self, role: str, worker: int = 0, stdin: bool = False, **spec: Any) -> Proc:
        full = {"url": self.url, "schema": self.schema, "role": role, "worker": worker, **spec}
        proc = Proc(full, self.tmp / f"{role}-{worker}-{len(self.procs)}.log", stdin=stdin)
        self.procs.append(proc)
        return proc

    async def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            cur = await conn.execute(query.replace("{s}", self.schema), params or None)
            return await cur.fetchall() if cur.description else []

    async def owners_of(self, pid: int) -> list[str]:
        rows = await self.sql("SELECT owner FROM {s}.workers WHERE pid = %s", pid)
        return [owner for (owner,) in rows]

    async def kill(self, proc: Proc) -> None:
        """SIGKILL ``proc`` and expire its leases at once (the TTL, without the wait)."""
        proc.signal(signal.SIGKILL)
        await proc.wait(30)
        self.kills += 1
        for owner in await self.owners_of(proc.pid):
            self.killed_owners.add(owner)
            await self.expire(owner)

    async def expire(self, owner: str | None = None) -> None:
        where = "" if owner is None else " WHERE lease_owner = %s"
        await self.sql(
            "UPDATE {s}.transactions SET lease_expires_at = now() - interval '1 second'" + where,
            *(() if owner is None else (owner,)),
        )

    async def in_flight(self) -> int:
        rows = await self.sql(
            "SELECT count(*) FROM {s}.transactions WHERE state IN ('active', 'compensating')"
        )
        return int(rows[0][0])

    async def settle(self) -> None:
        """Wait until the journal shows nothing in flight (recovery workers running)."""
        with anyio.fail_after(SETTLE_SECONDS):
            while await self.in_flight():
                await anyio.sleep(0.1)

    def close(self) -> None:
        for proc in self.procs:
            proc.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    url = postgres_url()
    schema = f"aumai_mp_{uuid.uuid4().hex[:10]}"
    async with PostgresStore(url, schema=schema):  # creates the journal schema
        pass
    result = Cluster(url, schema, tmp_path)
    for statement in LEDGER_DDL.split(";"):
        if statement.strip():
            await result.sql(statement)
    try:
        yield result
    finally:
        result.close()
        await result.sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# ---------------------------------------------------------------------- the audit


@dataclass
class Audit:
    """What the ledger and the journal say, and every anomaly found (must be none)."""

    transactions: int = 0
    states: Counter[str] = field(default_factory=Counter)
    ledger_rows: int = 0
    takeovers: int = 0
    repeated_compensations: int = 0
    anomalies: list[str] = field(default_factory=list)

    def report(self) -> str:
        return (
            f"{self.transactions} transactions {dict(self.states)}, {self.ledger_rows} ledger "
            f"rows, {self.takeovers} takeovers, {self.repeated_compensations} compensations "
            f"repeated after a kill or takeover between effect and record, "
            f"{len(self.anomalies)} anomalies"
        )


async def audit(cluster: Cluster, interrupted: Iterable[str] = ()) -> Audit:
    """Check every invariant of issue 5 over the whole journal and ledger.

    ``interrupted``: owners whose drivers were cut short (killed, or paused and taken
    over). Only they may hand a transaction to another driver, and only a compensation
    they performed without recording it may run again.
    """
    interrupted = set(interrupted)
    result = Audit()
    journal = await cluster.sql(
        "SELECT t.transaction_id, t.state, s.step_id, s.position, s.doc->>'status' "
        "FROM {s}.transactions t JOIN {s}.steps s USING (transaction_id) "
        "ORDER BY t.transaction_id, s.position"
    )
    states: dict[str, str] = {}
    steps: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for tid, state, step_id, _position, status in journal:
        states[tid] = state
        steps[tid].append((step_id, status))
    ledger = await cluster.sql(
        "SELECT id, transaction_id, step_id, kind, action, owner, ok, idempotency_key "
        "FROM {s}.ledger ORDER BY id"
    )
    result.transactions = len(states)
    result.states = Counter(states.values())
    result.ledger_rows = len(ledger)
    by_tx: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in ledger:
        by_tx[row[1]].append(row)
    bad = result.anomalies.append
    for tid, state in states.items():
        if state not in ("committed", "rolled_back"):
            bad(f"{tid}: ended {state}")
        rows = by_tx.get(tid, [])
        # Double driving: once a transaction passes from one owner to the next, the
        # first never acts on it again, and it passed on only because its owner was cut.
        owners: list[str] = []
        for row in rows:
            if not owners or owners[-1] != row[5]:
                if row[5] in owners:
                    bad(f"{tid}: driven by {row[5]} again after {owners[-1]} took over")
                elif owners and owners[-1] not in interrupted:
                    bad(f"{tid}: taken from {owners[-1]}, which was not interrupted")
                owners.append(row[5])
        result.takeovers += max(0, len(owners) - 1)
        forward = Counter(r[2] for r in rows if r[3] == "forward")
        effects = {r[2] for r in rows if r[3] == "forward" and r[6]}
        compensations: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for row in rows:
            if row[3] == "compensate":
                compensations[row[2]].append(row)
            if row[7] != f"{tid}:{row[2]}":
                bad(f"{tid}: idempotency key {row[7]} is not stable")
        for step_id, count in forward.items():
            if count > 1:
                bad(f"{tid}: forward step {step_id} ran {count} times")
        for step_id, runs in compensations.items():
            for earlier in runs[:-1]:
                if earlier[5] in interrupted:
                    result.repeated_compensations += 1
                else:
                    bad(f"{tid}: compensation of {step_id} repeated without an interruption")
        if state == "committed":
            if len(effects) != len(steps[tid]) or compensations:
                bad(f"{tid}: committed with effects {len(effects)} and {len(compensations)} undone")
            if any(status != "completed" for _, status in steps[tid]):
                bad(f"{tid}: committed with steps {steps[tid]}")
        elif state == "rolled_back":
            for step_id in effects:
                if step_id not in compensations:
                    bad(f"{tid}: effect of {step_id} was never compensated")
            for step_id, status in steps[tid]:
                if step_id in effects and status != "compensated":
                    bad(f"{tid}: step {step_id} happened but ended {status}")
    for tid in by_tx:
        if tid not in states:
            bad(f"ledger names {tid}, which the journal does not hold")
    return result


# ---------------------------------------------------------------------- (a) plain load


async def test_four_workers_commit_thousands_with_failures(cluster: Cluster) -> None:
    started = time.monotonic()
    workers = [
        cluster.spawn("commit", worker=w, count=PER_WORKER, inflight=32, fail_rate=0.2, seed=1)
        for w in range(WORKERS)
    ]
    for proc in workers:
        assert await proc.wait(600) == 0, proc.output()
    outcomes: Counter[str] = Counter()
    for proc in workers:
        outcomes.update(proc.done_line()["outcomes"])
    assert sum(outcomes.values()) == WORKERS * PER_WORKER
    assert 0.15 < outcomes["rolled_back"] / (WORKERS * PER_WORKER) < 0.25
    result = await audit(cluster)
    print(f"\n(a) {time.monotonic() - started:.1f}s: {result.report()}")
    assert result.anomalies == []
    assert result.transactions == WORKERS * PER_WORKER
    assert result.takeovers == 0 and result.repeated_compensations == 0
    actions = {a for (a,) in await cluster.sql("SELECT DISTINCT action FROM {s}.ledger")}
    # "cancel" undoes the last step, which nothing runs after: it never has to run.
    assert actions == set(FORWARD) | set(COMPENSATE) - {"cancel"}


# ---------------------------------------------------------------------- (b) chaos


async def test_chaos_kills_and_restarts_workers_while_recovery_runs(cluster: Cluster) -> None:
    started = time.monotonic()
    rng = random.Random(5)
    spec = {"count": PER_WORKER, "inflight": 32, "fail_rate": 0.2, "seed": 2}
    committers: dict[int, Proc] = {w: cluster.spawn("commit", worker=w, **spec) for w in range(4)}
    recoverers: dict[int, Proc] = {r: cluster.spawn("recover", worker=r) for r in range(2)}
    finished: set[int] = set()
    while len(finished) < len(committers):
        await anyio.sleep(rng.uniform(0.1, 0.4))  # the chaos loop's pace, not a race
        for w, proc in committers.items():
            code = proc.poll()
            if w not in finished and code is not None:
                assert code == 0, proc.output()
                finished.add(w)
        if cluster.kills >= CHAOS_KILLS:
            continue  # the chaos is over: the workers finish what is left
        alive = [("commit", w) for w in committers if w not in finished]
        alive += [("recover", r) for r in recoverers]
        role, index = rng.choice(alive)
        victim = committers[index] if role == "commit" else recoverers[index]
        if victim.poll() is not None:
            continue
        await cluster.kill(victim)
        if role == "commit":
            committers[index] = cluster.spawn("commit", worker=index, **spec)
        else:
            recoverers[index] = cluster.spawn("recover", worker=index)
    await cluster.settle()
    for proc in recoverers.values():
        proc.signal(signal.SIGTERM)
        await proc.wait(30)
    counts = await cluster.sql(
        "SELECT agent_id, count(*) FROM {s}.steps WHERE position = 0 GROUP BY agent_id"
    )
    assert dict(counts) == {f"w{w}": PER_WORKER for w in range(4)}
    result = await audit(cluster, cluster.killed_owners)
    print(f"\n(b) {time.monotonic() - started:.1f}s, {cluster.kills} SIGKILLs: {result.report()}")
    assert result.anomalies == []
    assert result.transactions == 4 * PER_WORKER
    assert cluster.kills >= (5 if SCALE >= 1 else 1)
    assert result.takeovers > 0  # recovery really took transactions over


# ---------------------------------------------------------------------- (c) paused driver


async def test_a_sigstopped_worker_is_fenced_off_after_a_takeover(cluster: Cluster) -> None:
    gated = 8
    pauser = cluster.spawn("pause", worker=9, gated=gated, stdin=True)
    with anyio.fail_after(60):  # every driver is inside a gated handler
        while pauser.output().count("AT_GATE") < gated:
            assert pauser.poll() is None, pauser.output()
            await anyio.sleep(0.05)
    [owner] = await cluster.owners_of(pauser.pid)
    pauser.signal(signal.SIGSTOP)
    try:
        await cluster.expire(owner)  # its leases lapse while it is stopped
        recoverer = cluster.spawn("recover", worker=0)
        await cluster.settle()
        recoverer.signal(signal.SIGTERM)
        await recoverer.wait(30)
        lease = (
            "SELECT state, lease_owner, lease_epoch, lease_expires_at = '-infinity'"
            " FROM {s}.transactions ORDER BY transaction_id"
        )
        taken = await cluster.sql(lease)
        # Finished by the successor (epoch 2), whose lease ended with the transaction.
        assert [(s, o != owner, e, ended) for s, o, e, ended in taken] == [
            ("rolled_back", True, 2, True)
        ] * gated
    finally:
        pauser.signal(signal.SIGCONT)
    assert pauser.popen.stdin is not None
    pauser.popen.stdin.write("go\n")
    pauser.popen.stdin.flush()
    assert await pauser.wait(60) == 0, pauser.output()
    assert pauser.done_line() == {"lease_lost": gated}
    assert await cluster.sql(lease) == taken  # nothing the woken worker tried was written
    ran = await cluster.sql("SELECT action, owner FROM {s}.ledger WHERE action = 'next'")
    assert ran == []  # no handler ran after the gate
    result = await audit(cluster, {owner})
    print(f"\n(c) {result.report()}")
    assert result.anomalies == []
    assert result.takeovers == gated
    # Each compensation stopped at the gate had run, unrecorded: the successor
    # repeats it once, with the same idempotency key.
    assert result.repeated_compensations == gated // 2
