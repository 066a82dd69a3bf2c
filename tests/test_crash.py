"""Crash tests with real processes: SIGKILL at every journal point, then recovery.

A child process (tests/_crash_child.py) runs several 3-step transactions at once on a
SQLite journal and sends itself SIGKILL the n-th time it reaches a chosen point:
before a step's intent record, between the intent and the side effect, between the
side effect and its completion record, in the middle of compensation (after a
compensation's intent, after its side effect), before and after the committed record,
before the rolled-back record. Handlers log every side effect, fsynced, to a ledger
file. Then this process (sometimes after a recovery process that is itself killed)
runs ``manager.recover()`` and ``audit`` compares the journal with the ledger.

Leases expire by rewriting ``lease_expires`` in the file, never by sleeping.
"""

from __future__ import annotations

import ast
import json
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import pytest

from aumai_transactions import (
    CorruptRecordError,
    StepStatus,
    Transaction,
    TransactionManager,
    TransactionState,
)
from aumai_transactions.stores.sqlite import SqliteStore

from ._crash_child import POINTS, Handlers, Spec
from ._journal_audit import IN_FLIGHT, Journal, Tally, audit, expire_leases, integrity
from ._ledger import Effect, Ledger

pytestmark = pytest.mark.crash

ROOT = Path(__file__).resolve().parent.parent
SEEDS = 16  # per kill point; a quarter of them recover with policy "resume"
TXS_PER_CHILD = 3
KILLED = -signal.SIGKILL


# ---------------------------------------------------------------------- plumbing


async def spawn(spec: Spec) -> tuple[int, list[dict[str, Any]] | None]:
    """Run a child to its end (or its death); its exit code and printed results."""
    done = await anyio.run_process(
        [sys.executable, "-m", "tests._crash_child", json.dumps(asdict(spec))],
        cwd=ROOT,
        check=False,
    )
    out = done.stdout.decode().strip()
    if done.returncode not in (0, KILLED):
        raise AssertionError(f"child failed ({done.returncode}):\n{done.stderr.decode()}")
    return done.returncode, (json.loads(out) if out else None)


async def killed(spec: Spec, limiter: Any, tally: Tally, label: str) -> bool:
    """Run a child that must die at its kill point; an anomaly in ``tally`` if it did not."""
    async with limiter:
        code, _ = await spawn(spec)
    if code != KILLED:
        who = "recovering child" if spec.mode == "recover" else "child"
        tally.anomalies.append(f"[{label}] the {who} was not killed (exit code {code})")
    return code == KILLED


async def read_journal(db: Path) -> dict[str, Transaction]:
    """Every transaction in the journal at ``db``, read by a fresh store."""
    async with SqliteStore(db) as store:
        return {tx.transaction_id: tx for tx in await store.list()}


def in_flight(journal: Journal) -> set[str]:
    return {tid for tid, tx in journal.items() if tx.state in IN_FLIGHT}


async def recover_here(db: Path, ledger: Path, stage: int, policy: str) -> list[Any]:
    """One recovery round in this process, with the same handlers as the children."""
    handlers = Handlers(Ledger(ledger, stage))
    manager = TransactionManager(handlers.mapping(), store=SqliteStore(db))
    async with manager:
        return await manager.recover(policy)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the plan


def plan_case(point: str, seed: int) -> tuple[list[dict[str, Any]], int]:
    """The transactions a child runs for ``(point, seed)`` and which hit of the point kills.

    Each transaction fails at a random step or commits; the mix is adjusted so the
    point is certainly reached, and the kill lands on a random one of its hits.
    """
    rng = random.Random(f"{point}:{seed}")
    fail_at = [rng.choice([None, None, 1, 2, 3]) for _ in range(TXS_PER_CHILD)]
    if point.startswith("comp_") or point == "before_rolled_back":
        if not any(f in (2, 3) for f in fail_at):
            fail_at[0] = rng.choice([2, 3])
    if point in ("before_commit", "after_commit", "after_effect") and None not in fail_at:
        fail_at[-1] = None
    hits = {
        "before_intent": sum(f or 3 for f in fail_at),
        "after_intent": sum(f or 3 for f in fail_at),
        "after_effect": sum(3 if f is None else f - 1 for f in fail_at),
        "comp_after_intent": sum(f - 1 for f in fail_at if f is not None),
        "comp_after_effect": sum(f - 1 for f in fail_at if f is not None),
        "before_commit": fail_at.count(None),
        "after_commit": fail_at.count(None),
        "before_rolled_back": sum(f is not None for f in fail_at),
    }[point]
    return [{"fail_at": f} for f in fail_at], rng.randint(1, hits)


def compensations_pending(journal: Journal) -> int:
    """How many compensations a "compensate" recovery of ``journal`` will run."""
    return sum(
        1
        for tx in journal.values()
        if tx.state in IN_FLIGHT
        for step in tx.steps
        if step.compensating_action is not None
        and step.status in (StepStatus.RUNNING, StepStatus.COMPLETED, StepStatus.COMPENSATING)
    )


async def crash_and_recover(
    point: str, seed: int, tmp: Path, limiter: Any, nowait: bool = False
) -> Tally:
    """Kill a child at ``point``, recover (maybe through a second crash), audit.

    ``nowait``: the children journal as the engine does with a built-in store
    (``KillingNowaitStore``), not through ``record`` alone."""
    db, ledger = tmp / "journal.db", tmp / "ledger.jsonl"
    txs, occurrence = plan_case(point, seed)
    rng = random.Random(f"recovery:{point}:{seed}")
    policy = "resume" if seed % 4 == 3 else "compensate"
    label = f"{point} seed {seed} ({policy}{', nowait' if nowait else ''})"
    tally = Tally()
    spec = Spec(str(db), str(ledger), point=point, occurrence=occurrence, txs=txs, nowait=nowait)
    if not await killed(spec, limiter, tally, label):
        return tally
    snapshots: dict[int, Journal] = {1: await read_journal(db)}
    policies = {1: policy}
    # Every lease is still live (the child took them for an hour): nothing is claimed.
    if await recover_here(db, ledger, stage=1, policy=policy):
        tally.anomalies.append(f"[{label}] recovery claimed a transaction under a live lease")
    expire_leases(db)
    pending = compensations_pending(snapshots[1])
    if policy == "compensate" and seed % 4 == 1 and pending:
        # The recovering process dies too, in the middle of a compensation.
        second = rng.choice(["comp_after_intent", "comp_after_effect"])
        spec = Spec(
            str(db),
            str(ledger),
            stage=1,
            mode="recover",
            point=second,
            occurrence=rng.randint(1, pending),
            nowait=nowait,
        )
        await killed(spec, limiter, tally, label)
        tally.recoveries_killed += 1
        snapshots[2] = await read_journal(db)
        policies[2] = policy
        expire_leases(db)
    tally.add(await recover_and_audit(db, ledger, snapshots, policies, label))
    return tally


async def recover_and_audit(
    db: Path, ledger: Path, snapshots: dict[int, Journal], policies: dict[int, str], label: str
) -> Tally:
    """The last recovery of a case (its stage is the last snapshot's), then every check."""
    stage = max(snapshots)
    results = await recover_here(db, ledger, stage=stage, policy=policies[stage])
    final = await read_journal(db)
    tally = Tally()
    if {r.transaction_id for r in results} != in_flight(snapshots[stage]):
        tally.anomalies.append(f"[{label}] recovery did not claim exactly the in-flight ones")
    if (check := integrity(db)) != "ok":
        tally.anomalies.append(f"[{label}] integrity_check: {check}")
    tally.add(audit(Ledger.read(ledger), snapshots, final, policies, label=label))
    return tally


async def run_matrix(
    tmp_path: Path,
    cases: list[tuple[Any, ...]],
    case: Callable[..., Awaitable[Tally]],
) -> Tally:
    """``await case(*args, tmp, limiter)`` for every ``args`` in ``cases``, two children
    at a time, each in a directory of its own; the sum of their tallies."""
    limiter = anyio.CapacityLimiter(2)
    total = Tally()

    async def one(args: tuple[Any, ...]) -> None:
        tmp = tmp_path / "-".join(map(str, args))
        tmp.mkdir()
        total.add(await case(*args, tmp, limiter))

    async with anyio.create_task_group() as group:
        for args in cases:
            group.start_soon(one, args)
    return total


async def test_sigkill_at_every_journal_point_then_recover(tmp_path: Path) -> None:
    """Every point x every seed: the journal and the ledger agree after recovery."""
    started = time.monotonic()
    cases = [(point, seed) for point in POINTS for seed in range(SEEDS)]
    total = await run_matrix(tmp_path, cases, crash_and_recover)
    print(
        f"\ncrash matrix: {len(POINTS)} points x {SEEDS} seeds = {len(cases)} SIGKILLed "
        f"children (+{total.recoveries_killed} recovering children SIGKILLed mid-"
        f"compensation), {total.transactions} transactions ({total.committed} committed, "
        f"{total.rolled_back} rolled back), {total.repeated_compensations} compensations "
        f"repeated after a kill between effect and record, {total.resumed_in_doubt} in-doubt "
        f"steps resumed, anomalies: {len(total.anomalies)} "
        f"({time.monotonic() - started:.1f}s)"
    )
    assert total.anomalies == []
    assert total.transactions >= len(cases)
    assert total.committed and total.rolled_back and total.repeated_compensations
    assert total.resumed_in_doubt and total.recoveries_killed


NOWAIT_SEEDS = 4  # per kill point: the path of a built-in store, on top of the above


async def test_sigkill_at_every_journal_point_on_the_built_in_stores_path(
    tmp_path: Path,
) -> None:
    """The same matrix, journaled as the engine journals to a built-in store: each
    completion folded into the next record, the first intent carried by the lease."""
    cases = [(point, seed) for point in POINTS for seed in range(NOWAIT_SEEDS)]

    async def case(point: str, seed: int, tmp: Path, limiter: Any) -> Tally:
        return await crash_and_recover(point, seed, tmp, limiter, nowait=True)

    total = await run_matrix(tmp_path, cases, case)
    assert total.anomalies == []
    assert total.transactions >= len(cases)
    assert total.committed and total.rolled_back and total.repeated_compensations


# ---------------------------------------------------------------------- poison


@pytest.mark.parametrize(
    ("poison", "policy"),
    [("poison_compensation_at", "compensate"), ("poison_at", "resume")],
    ids=["compensation-kills", "forward-kills-under-resume"],
)
async def test_a_transaction_that_kills_every_recoverer_is_dead_lettered(
    tmp_path: Path, poison: str, policy: str
) -> None:
    db, ledger = tmp_path / "journal.db", tmp_path / "ledger.jsonl"
    # The compensation of step 1 (or step 2's forward action) kills its process, always.
    plan = {"fail_at": 2, poison: 1} if poison == "poison_compensation_at" else {poison: 2}
    code, _ = await spawn(Spec(str(db), str(ledger), txs=[plan]))
    assert code == KILLED
    (poisoned,) = (await read_journal(db)).keys()
    attempts = 2
    snapshots: dict[int, Journal] = {}
    for stage in range(1, attempts + 1):
        expire_leases(db)
        snapshots[stage] = await read_journal(db)
        spec = Spec(
            str(db),
            str(ledger),
            stage=stage,
            mode="recover",
            policy=policy,
            max_recovery_attempts=attempts,
        )
        code, _ = await spawn(spec)
        assert code == KILLED, f"recovery {stage} survived the poison"
    assert (await read_journal(db))[poisoned].recovery_attempts == attempts
    # Meanwhile another worker crashed with two healthy transactions in flight.
    code, _ = await spawn(
        Spec(str(db), str(ledger), point="after_effect", occurrence=3, txs=[{}, {}])
    )
    assert code == KILLED
    last = attempts + 1
    expire_leases(db)
    snapshots[last] = await read_journal(db)
    assert len(in_flight(snapshots[last])) == 3
    spec = Spec(
        str(db),
        str(ledger),
        stage=last,
        mode="recover",
        policy=policy,
        max_recovery_attempts=attempts,
    )
    code, results = await spawn(spec)
    assert code == 0 and results is not None
    states = {r["tx"]: r["state"] for r in results}
    assert states.pop(poisoned) == "dead_letter"
    outcome = "committed" if policy == "resume" else "rolled_back"
    assert list(states.values()) == [outcome, outcome]  # the loop moved on
    final = await read_journal(db)
    tx = final[poisoned]
    assert tx.state is TransactionState.DEAD_LETTER
    assert tx.error is not None
    assert f"dead-lettered after {attempts} recovery attempts" in tx.error
    effects = Ledger.read(ledger)
    # The poison ran once in the original run and once per recovery attempt; the
    # run that dead-lettered it ran nothing of it.
    poison_runs = [e for e in effects if e.tx == poisoned and e.stage == last]
    assert poison_runs == []
    assert len([e for e in effects if e.tx == poisoned and e.stage > 0]) == attempts
    assert await recover_here(db, ledger, stage=last + 1, policy=policy) == []
    # Every other guarantee holds for the poisoned transaction and its neighbours.
    healthy = {tid: t for tid, t in final.items() if tid != poisoned}
    # (They were born after the earlier recoveries: only the last one saw them.)
    tally = audit(
        [e for e in effects if e.tx != poisoned],
        {last: {k: v for k, v in snapshots[last].items() if k != poisoned}},
        healthy,
        {last: policy},
    )
    assert tally.anomalies == []
    assert integrity(db) == "ok"


async def test_a_poison_transaction_does_not_dead_letter_its_healthy_neighbours(
    tmp_path: Path,
) -> None:
    db, ledger = tmp_path / "journal.db", tmp_path / "ledger.jsonl"
    poison = {"fail_at": 2, "poison_compensation_at": 1}
    slow = {"fail_at": 3, "gated": True}  # healthy: its compensations are just slow
    code, _ = await spawn(Spec(str(db), str(ledger), txs=[poison, slow], gate=True))
    assert code == KILLED
    assert len(in_flight(await read_journal(db))) == 2
    attempts = 2
    for stage in range(1, attempts + 1):
        expire_leases(db)
        spec = Spec(
            str(db),
            str(ledger),
            stage=stage,
            mode="recover",
            max_recovery_attempts=attempts,
            gate=True,
        )
        code, _ = await spawn(spec)
        assert code == KILLED
    expire_leases(db)
    spec = Spec(
        str(db), str(ledger), stage=attempts + 1, mode="recover", max_recovery_attempts=attempts
    )
    code, results = await spawn(spec)
    assert code == 0 and results is not None
    assert sorted(r["state"] for r in results) == ["dead_letter", "rolled_back"]


# ---------------------------------------------------------------------- drift


@pytest.mark.parametrize(
    ("policy", "missing"),
    [("compensate", "refund"), ("resume", "ship")],
)
async def test_a_missing_handler_blocks_recovery_visibly_and_runs_nothing(
    tmp_path: Path, policy: str, missing: str
) -> None:
    db, ledger = tmp_path / "journal.db", tmp_path / "ledger.jsonl"
    # Killed after the side effect of step 2 ("charge"): step 1 done, step 2 in doubt.
    code, _ = await spawn(Spec(str(db), str(ledger), point="after_effect", occurrence=2, txs=[{}]))
    assert code == KILLED
    expire_leases(db)
    before = await read_journal(db)
    (tid,) = before
    spec = Spec(str(db), str(ledger), stage=1, mode="recover", policy=policy, missing=[missing])
    code, results = await spawn(spec)
    assert code == 0
    assert results is not None and [r["state"] for r in results] == ["active"]
    blocked = (await read_journal(db))[tid]
    assert blocked.state is TransactionState.ACTIVE
    assert blocked.blocked_reason is not None and repr(missing) in blocked.blocked_reason
    assert blocked.recovery_attempts == before[tid].recovery_attempts  # not a failed attempt
    # Nothing was guessed: not even the compensations this process does have ran.
    assert [e for e in Ledger.read(ledger) if e.stage == 1] == []
    assert [s.model_dump() for s in blocked.steps] == [s.model_dump() for s in before[tid].steps]
    # The blocked transaction keeps its lease until it expires: no busy loop on it.
    assert await recover_here(db, ledger, stage=2, policy=policy) == []
    # A process that has the handler recovers it.
    expire_leases(db)
    snapshot = await read_journal(db)
    results = await recover_here(db, ledger, stage=2, policy=policy)
    assert len(results) == 1
    final = await read_journal(db)
    assert final[tid].state.is_terminal and final[tid].blocked_reason is None
    tally = audit(Ledger.read(ledger), {2: snapshot}, final, {2: policy})
    assert tally.anomalies == []


# ---------------------------------------------------------------------- tampering


def _steps_of(conn: sqlite3.Connection) -> str:
    """The SQL condition selecting the step rows of one transaction id (the ``?``)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(steps)")}
    if "transaction_id" in columns:
        return "transaction_id = ?"
    return "tx = (SELECT id FROM transactions WHERE transaction_id = ?)"


def _step_rows(db: Path, tid: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            f"SELECT * FROM steps WHERE {_steps_of(conn)} ORDER BY position", (tid,)
        ).fetchall()


def _tamper(db: Path, tid: str, how: str) -> None:
    """Edit the journal behind the store's back, as a disk fault or an intruder might."""
    with sqlite3.connect(db) as conn:
        if how == "state":
            conn.execute(
                "UPDATE transactions SET state = 'exploded' WHERE transaction_id = ?", (tid,)
            )
            return
        where = _steps_of(conn)
        step_id, body = conn.execute(
            f"SELECT step_id, body FROM steps WHERE {where} ORDER BY position", (tid,)
        ).fetchone()
        doc = json.loads(body)
        new = {
            "garbage": "{not json at all",
            "not-an-object": "[1, 2, 3]",
            "wrong-type": json.dumps({**doc, "attempts": "many"}),
            "unknown-status": json.dumps({**doc, "status": "exploded"}),
            "data-not-an-object": json.dumps({**doc, "data": "not a dict"}),
            "another-step": json.dumps({**doc, "step_id": "someone-else"}),
        }[how]
        conn.execute(
            f"UPDATE steps SET body = ? WHERE {where} AND step_id = ?", (new, tid, step_id)
        )


@pytest.mark.parametrize(
    "how",
    [
        "garbage",
        "not-an-object",
        "wrong-type",
        "unknown-status",
        "data-not-an-object",
        "another-step",
        "state",
    ],
)
async def test_a_tampered_row_is_rejected_on_load_and_nothing_runs(
    tmp_path: Path, how: str
) -> None:
    db, ledger = tmp_path / "journal.db", tmp_path / "ledger.jsonl"
    # Two transactions in flight, each with effects to undo.
    code, _ = await spawn(
        Spec(str(db), str(ledger), point="after_effect", occurrence=3, txs=[{}, {}])
    )
    assert code == KILLED
    expire_leases(db)
    snapshot = await read_journal(db)
    tampered, healthy = sorted(snapshot)
    _tamper(db, tampered, how)
    with sqlite3.connect(db) as conn:
        header_before = conn.execute(
            "SELECT * FROM transactions WHERE transaction_id = ?", (tampered,)
        ).fetchall()
    steps_before = _step_rows(db, tampered)
    async with SqliteStore(db) as store:
        with pytest.raises(CorruptRecordError, match=tampered):
            await store.load(tampered)
    effects_before = Ledger.read(ledger)
    results = await recover_here(db, ledger, stage=1, policy="compensate")
    # The corrupt transaction is skipped, untouched, with nothing run; the loop moves
    # on to the healthy one.
    assert [(r.transaction_id, r.state) for r in results] == [
        (healthy, TransactionState.ROLLED_BACK)
    ]
    assert [e for e in Ledger.read(ledger) if e.tx == tampered] == [
        e for e in effects_before if e.tx == tampered
    ]
    with sqlite3.connect(db) as conn:
        header_after = conn.execute(
            "SELECT * FROM transactions WHERE transaction_id = ?", (tampered,)
        ).fetchall()
    assert header_after == header_before  # rejected, not rewritten
    assert _step_rows(db, tampered) == steps_before
    assert integrity(db) == "ok"
    async with SqliteStore(db) as store:
        recovered = await store.load(healthy)
    assert recovered is not None
    final = {healthy: recovered}
    effects = [e for e in Ledger.read(ledger) if e.tx == healthy]
    tally = audit(effects, {1: {healthy: snapshot[healthy]}}, final, {1: "compensate"})
    assert tally.anomalies == []


def test_no_pickle_anywhere_in_the_package() -> None:
    """Step data and results are JSON only: no module of the package can unpickle.

    (Checked on the syntax tree, not the text: a docstring may say "never unpickled".)
    """
    banned = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal"}
    offenders: list[str] = []
    for path in sorted((ROOT / "aumai_transactions").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "__import__":
                    names = [getattr(a, "value", "") for a in node.args[:1]]
            for name in names:
                if name.split(".")[0] in banned or "pickle" in str(name).lower():
                    line = getattr(node, "lineno", "?")
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert offenders == []


def test_effect_lines_round_trip(tmp_path: Path) -> None:
    """The ledger the crash tests rely on reads back exactly what was appended."""
    from aumai_transactions import StepContext

    ledger = Ledger(tmp_path / "l.jsonl", stage=2)
    ctx = StepContext("t", "s", "a", "charge", 1, "t:s")
    ledger.append(ctx, "forward")
    ledger.append(ctx, "compensate")
    assert Ledger.read(ledger.path) == [
        Effect(0, 2, "t", "s", "forward", "charge", "t:s", 1),
        Effect(1, 2, "t", "s", "compensate", "charge", "t:s", 1),
    ]


async def test_a_manager_with_no_handlers_at_all_blocks_instead_of_guessing(
    tmp_path: Path,
) -> None:
    """Regression: a manager with no handlers (a dry run for its own commits) recovered
    a crashed transaction by recording every compensation as done without running
    any: the journal said "rolled back" while the charge was never refunded."""
    db, ledger = tmp_path / "journal.db", tmp_path / "ledger.jsonl"
    code, _ = await spawn(Spec(str(db), str(ledger), point="after_effect", occurrence=2, txs=[{}]))
    assert code == KILLED
    expire_leases(db)
    before = await read_journal(db)
    (tid,) = before
    async with TransactionManager(store=SqliteStore(db)) as manager:
        results = await manager.recover()
    assert [r.state for r in results] == [TransactionState.ACTIVE]
    tx = (await read_journal(db))[tid]
    assert tx.state is TransactionState.ACTIVE
    assert tx.blocked_reason is not None
    assert "'refund'" in tx.blocked_reason and "'release'" in tx.blocked_reason
    assert [s.model_dump() for s in tx.steps] == [s.model_dump() for s in before[tid].steps]
    assert all(e.stage == 0 for e in Ledger.read(ledger))


async def test_a_blocked_transaction_lease_lapses_although_its_manager_heartbeats(
    tmp_path: Path,
) -> None:
    db, ledger = tmp_path / "journal.db", tmp_path / "ledger.jsonl"
    code, _ = await spawn(Spec(str(db), str(ledger), point="after_effect", occurrence=2, txs=[{}]))
    assert code == KILLED
    expire_leases(db)
    handlers = Handlers(Ledger(ledger, 1))
    blocked = TransactionManager(handlers.mapping(["refund"]), store=SqliteStore(db))
    async with blocked:  # a long-lived worker: its heartbeat renews its leases
        assert [r.state for r in await blocked.recover()] == [TransactionState.ACTIVE]
        expire_leases(db)  # the blocked transaction's lease has run out...
        await blocked.store.renew(blocked.owner, 30.0)  # ...and the heartbeat ticks
        # A worker deployed with the missing handler must be able to take it over.
        assert len(await recover_here(db, ledger, stage=1, policy="compensate")) == 1
