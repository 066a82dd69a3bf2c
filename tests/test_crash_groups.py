"""Crash tests of the agent shape: SIGKILL inside a parallel group, then recovery.

The crash matrix of tests/test_crash.py, for transactions of issue 9's shape (one step,
a parallel group of four siblings, one step; see ``AGENT_STEPS``), declared with
``add_step(..., group=)`` or run as open transactions (``manager.transaction()``).
A child dies the n-th time it reaches a point inside the group: a sibling's intent
recorded, a sibling's effect done but not recorded, siblings held mid-handler (some
before, some after their effect) while the others have returned, the group's
compensation (intent, effect), or, for an open transaction, its code between two
steps. Siblings are a mix of async handlers (cancellation stops them) and sync ones
in worker threads (it cannot), some slow, so a failure leaves siblings in doubt whose
calls are still running. Recovery runs under "compensate" and under "resume" (where
a sibling's own ``recovery="compensate"`` may veto it), sometimes through a
recovering child that is killed in turn; ``audit`` then compares journal and ledger.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from aumai_transactions import StepStatus, TransactionState

from ._crash_child import AGENT_STEPS, GROUP_POSITIONS, Spec
from ._journal_audit import IN_FLIGHT, Journal, Tally, audit, expire_leases
from ._journal_audit import recovery_direction as direction
from ._ledger import Ledger
from .test_crash import (
    KILLED,
    killed,
    read_journal,
    recover_and_audit,
    recover_here,
    run_matrix,
    spawn,
)

pytestmark = pytest.mark.crash

SEEDS = 8  # per case; odd seeds recover with policy "resume"
TXS_PER_CHILD = 3
CASES = (
    ("agent", "group_after_intent"),
    ("agent", "group_after_effect"),
    ("agent", "group_held"),
    ("agent", "group_comp_after_intent"),
    ("agent", "group_comp_after_effect"),
    ("open", "open_between"),
    ("open", "group_after_effect"),
    ("open", "group_held"),
    ("open", "group_comp_after_effect"),
)
LAST = len(AGENT_STEPS)


# ---------------------------------------------------------------------- the plan


def sure_hits(point: str, plan: dict[str, Any]) -> int:
    """How many times the original run of ``plan`` certainly reaches ``point``.

    A planned failure in the group cancels its siblings at unknown moments, so only
    what happens whatever the timing counts: the failing sibling's intent; without a
    concurrency limit, the compensation of the three others (all started, so
    completed or in doubt).
    """
    fail = plan.get("fail_at")
    in_group = fail in GROUP_POSITIONS
    if point == "group_held":
        return len(GROUP_POSITIONS) if plan.get("watch") else 0
    if point == "open_between":
        if plan["shape"] != "open":
            return 0
        return {None: 3, 1: 0, LAST: 2}.get(fail, 1)
    if fail == 1:
        return 0  # the group never starts
    if point == "group_after_intent":
        return 1 if in_group else len(GROUP_POSITIONS)
    if point == "group_after_effect":
        return 0 if in_group else len(GROUP_POSITIONS)
    # group_comp_after_intent, group_comp_after_effect
    if fail == LAST:
        return len(GROUP_POSITIONS)
    if in_group and plan.get("max_concurrency") is None:
        return len(GROUP_POSITIONS) - 1
    return 0


def random_plan(rng: random.Random, shape: str, resume: bool) -> dict[str, Any]:
    """A transaction of the agent shape: where it fails (if it does), which siblings
    are slow, a concurrency limit, and sometimes per-step recovery settings."""
    plan: dict[str, Any] = {
        "shape": shape,
        "fail_at": rng.choice([None, None, 1, rng.choice(GROUP_POSITIONS), LAST]),
        "slow": {
            str(p): rng.choice([0.02, 0.05, 0.1]) for p in GROUP_POSITIONS if rng.random() < 0.5
        },
    }
    if rng.random() < 0.25:
        plan["max_concurrency"] = 2
    if resume and rng.random() < 0.3:
        plan["recovery"] = {str(rng.choice(GROUP_POSITIONS)): "compensate"}  # a veto
    elif not resume and rng.random() < 0.3:
        plan["recovery"] = {str(p): "resume" for p in range(1, LAST + 1)}  # all agree
    return plan


def plan_case(shape: str, point: str, seed: int) -> tuple[list[dict[str, Any]], int]:
    """The transactions a child runs for the case, and which hit of the point kills.

    The first transaction has the case's shape and is adjusted so that the point is
    certainly reached; the others, of either shape, run alongside.
    """
    rng = random.Random(f"group:{shape}:{point}:{seed}")
    resume = seed % 2 == 1
    plans = [random_plan(rng, shape, resume)]
    plans += [
        random_plan(rng, rng.choice(["agent", "open"]), resume) for _ in range(1, TXS_PER_CHILD)
    ]
    first = plans[0]
    if point == "group_held":
        # Some siblings of the first transaction never return (before or after their
        # effect); the others return (their completions durable at once, or riding
        # with the next durable write); the kill comes when all have got there. Under
        # a limit of 2 only the last ones hold: the others must get a turn.
        if rng.random() < 0.5:
            first["max_concurrency"] = 2
            held = list(GROUP_POSITIONS[-rng.randint(1, 2) :])
        else:
            first.pop("max_concurrency", None)
            held = rng.sample(GROUP_POSITIONS, rng.randint(1, len(GROUP_POSITIONS) - 1))
        first.update(
            watch=True,
            hold={str(p): rng.choice(["before", "after"]) for p in held},
            fail_at=rng.choice([None, LAST]),
            flush=rng.random() < 0.5,
        )
    if sum(sure_hits(point, plan) for plan in plans) == 0:
        if point.startswith("group_comp_"):
            first["fail_at"] = rng.choice([*GROUP_POSITIONS, LAST])
            first.pop("max_concurrency", None)
        else:
            first["fail_at"] = None
    hits = sum(sure_hits(point, plan) for plan in plans)
    return plans, rng.randint(1, hits)


def second_kill(journal: Journal, policy: str) -> tuple[str, int] | None:
    """Where to kill a recovering child of ``journal``: a sibling's compensation under
    "compensate", a resumed sibling's effect under "resume"; None if neither is sure."""
    compensations = effects = 0
    for tx in journal.values():
        if tx.state not in IN_FLIGHT:
            continue
        siblings = [s for s in tx.steps if s.group is not None]
        if direction(tx, policy) == "compensate":
            compensations += sum(
                s.status in (StepStatus.RUNNING, StepStatus.COMPLETED, StepStatus.COMPENSATING)
                for s in siblings
            )
        elif not any(s.data.get("fail") for s in siblings):
            effects += sum(s.status is not StepStatus.COMPLETED for s in siblings)
    if policy == "compensate" and compensations:
        return "group_comp_after_effect", compensations
    if policy == "resume" and effects:
        return "group_after_effect", effects
    return None


async def crash_and_recover(shape: str, point: str, seed: int, tmp: Path, limiter: Any) -> Tally:
    """Kill a child inside a group, recover (maybe through a second kill), audit."""
    db, ledger = tmp / "journal.db", tmp / "ledger.jsonl"
    plans, occurrence = plan_case(shape, point, seed)
    policy = "resume" if seed % 2 == 1 else "compensate"
    label = f"{shape} {point} seed {seed} ({policy})"
    rng = random.Random(f"recovery:{label}")
    tally = Tally()
    spec = Spec(str(db), str(ledger), point=point, occurrence=occurrence, txs=plans)
    if not await killed(spec, limiter, tally, label):
        return tally
    expire_leases(db)
    snapshots: dict[int, Journal] = {1: await read_journal(db)}
    policies = {1: policy}
    again = second_kill(snapshots[1], policy) if seed % 4 >= 2 else None
    if again is not None:
        kill_at, hits = again
        spec = Spec(
            str(db),
            str(ledger),
            stage=1,
            mode="recover",
            policy=policy,
            point=kill_at,
            occurrence=rng.randint(1, hits),
        )
        await killed(spec, limiter, tally, label)
        tally.recoveries_killed += 1
        expire_leases(db)
        snapshots[2] = await read_journal(db)
        policies[2] = policy
    tally.add(await recover_and_audit(db, ledger, snapshots, policies, label))
    return tally


async def test_sigkill_inside_parallel_groups_then_recover(tmp_path: Path) -> None:
    """Every case x every seed: the journal and the ledger agree after recovery."""
    started = time.monotonic()
    cases = [(shape, point, seed) for shape, point in CASES for seed in range(SEEDS)]
    total = await run_matrix(tmp_path, cases, crash_and_recover)
    print(
        f"\ngroup crash matrix: {len(CASES)} kill points x {SEEDS} seeds = {len(cases)} "
        f"SIGKILLed children (+{total.recoveries_killed} recovering children SIGKILLed), "
        f"{total.transactions} transactions ({total.grouped} with a group, "
        f"{total.open_recovered} open ones recovered; {total.committed} committed, "
        f"{total.rolled_back} rolled back), {total.siblings_in_doubt} siblings found in "
        f"doubt, {total.resumed_in_doubt} in-doubt steps resumed, "
        f"{total.repeated_compensations} compensations repeated after a kill between "
        f"effect and record, anomalies: {len(total.anomalies)} "
        f"({time.monotonic() - started:.1f}s)"
    )
    assert total.anomalies == []
    assert total.transactions >= len(cases)
    assert total.committed and total.rolled_back and total.open_recovered
    assert total.siblings_in_doubt and total.resumed_in_doubt and total.recoveries_killed


# ---------------------------------------------------------------------- one case each


async def test_resume_runs_again_only_the_siblings_not_completed(tmp_path: Path) -> None:
    """Killed mid-group with two siblings held (one after its effect, one before it)
    and the two declared after them durably completed: resume runs the held two (again,
    for the one that had its effect) with the same idempotency key and the last step,
    never the completed two."""
    db, ledger = tmp_path / "journal.db", tmp_path / "ledger.jsonl"
    plan = {
        "shape": "agent",
        "watch": True,
        "flush": True,
        "hold": {"2": "after", "3": "before"},
        "slow": {"5": 0.05},
    }
    spec = Spec(str(db), str(ledger), point="group_held", occurrence=4, txs=[plan])
    code, _ = await spawn(spec)
    assert code == KILLED
    expire_leases(db)
    snapshot = await read_journal(db)
    ((tid, before),) = snapshot.items()
    assert {s.action: s.status.value for s in before.steps} == {
        "hold_flight": "completed",
        "book_hotel": "running",
        "rent_car": "running",
        "buy_tickets": "completed",
        "insure": "completed",
        "charge_card": "pending",
    }
    results = await recover_here(db, ledger, stage=1, policy="resume")
    assert [r.state for r in results] == [TransactionState.COMMITTED]
    effects = Ledger.read(ledger)
    runs = [(e.stage, e.action) for e in effects if e.kind == "forward"]
    assert sorted(runs) == sorted(
        [(0, a) for a in ("hold_flight", "book_hotel", "buy_tickets", "insure")]
        + [(1, a) for a in ("book_hotel", "rent_car", "charge_card")]
    )
    assert all(e.key == f"{tid}:{e.step}" for e in effects if e.kind == "forward")
    assert [e for e in effects if e.kind == "compensate"] == []
    final = await read_journal(db)
    assert audit(effects, {1: snapshot}, final, {1: "resume"}).anomalies == []


async def test_a_sibling_that_must_not_run_twice_makes_the_whole_group_compensate(
    tmp_path: Path,
) -> None:
    """One in-doubt sibling with recovery="compensate" vetoes resume for the whole
    transaction: everything that ran or may have run is undone, in reverse order."""
    db, ledger = tmp_path / "journal.db", tmp_path / "ledger.jsonl"
    plan = {
        "shape": "agent",
        "watch": True,
        "hold": {"2": "after", "5": "after"},
        "recovery": {"5": "compensate"},
    }
    code, _ = await spawn(
        Spec(str(db), str(ledger), point="group_held", occurrence=len(GROUP_POSITIONS), txs=[plan])
    )
    assert code == KILLED
    expire_leases(db)
    snapshot = await read_journal(db)
    results = await recover_here(db, ledger, stage=1, policy="resume")
    assert [r.state for r in results] == [TransactionState.ROLLED_BACK]
    effects = Ledger.read(ledger)
    assert [e for e in effects if e.stage == 1 and e.kind == "forward"] == []
    undone = [e.action for e in effects if e.kind == "compensate"]
    assert undone == [
        "cancel_insurance",
        "refund_tickets",
        "return_car",
        "cancel_hotel",
        "release_flight",
    ]
    final = await read_journal(db)
    assert audit(effects, {1: snapshot}, final, {1: "resume"}).anomalies == []


@pytest.mark.parametrize("policy", ["compensate", "resume"])
async def test_an_open_transaction_killed_between_steps_is_compensated(
    tmp_path: Path, policy: str
) -> None:
    """Killed after its group returned, before its code chose the last step: recovery
    compensates what it ran, newest first, under either policy, and says why."""
    db, ledger = tmp_path / "journal.db", tmp_path / "ledger.jsonl"
    code, _ = await spawn(
        Spec(str(db), str(ledger), point="open_between", occurrence=2, txs=[{"shape": "open"}])
    )
    assert code == KILLED
    expire_leases(db)
    snapshot = await read_journal(db)
    ((tid, before),) = snapshot.items()
    assert before.state is TransactionState.ACTIVE
    assert [s.action for s in before.steps] == [a for a, _, _ in AGENT_STEPS[:-1]]
    results = await recover_here(db, ledger, stage=1, policy=policy)
    assert [r.state for r in results] == [TransactionState.ROLLED_BACK]
    final = await read_journal(db)
    assert final[tid].error is not None and "open transaction" in final[tid].error
    effects = Ledger.read(ledger)
    assert [e for e in effects if e.stage == 1 and e.kind == "forward"] == []
    undone = [e.action for e in effects if e.kind == "compensate"]
    assert undone == [c for _, c, _ in AGENT_STEPS[-2::-1]]
    assert audit(effects, {1: snapshot}, final, {1: policy}).anomalies == []
