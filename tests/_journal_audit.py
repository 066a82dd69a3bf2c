"""Checks a journal against the ledger of what handlers really did.

A *history* is the side-effect ledger of a set of transactions, the journal as it
stood before each recovery *stage* (stage 0 is the original run; 1, 2, ... are the
recoveries after it) and the journal at the end. ``audit`` returns every anomaly it
finds as a sentence; the crash and fault tests assert it returns none.

What it checks, for every transaction: the outcome a caller was told stands; every
effect had its intent durably recorded first and nothing is recorded as done that did
not happen; each recovery went the way the journal it found dictates (see
``recovery_direction``: resume only where every step in doubt allows it, never for an
open transaction) and resumed only what was not completed, with the same idempotency
key; every effect ends compensated unless the transaction committed; a compensation
runs again only where the journal showed it cut short (a kill between its effect and
its record); compensations go in reverse declaration order, within each run and across
the runs; no compensation starts while its step's forward call still runs in the same
process; an open transaction that was recovered was compensated and says so.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aumai_transactions import StepStatus, Transaction, TransactionState, TransactionStep

from ._crash_child import AGENT_FORWARD
from ._ledger import Effect

IN_FLIGHT = (TransactionState.ACTIVE, TransactionState.COMPENSATING)
ROLLED_BACK_STATES = (TransactionState.ROLLED_BACK, TransactionState.FAILED)
# Statuses that say a compensation's intent was recorded.
_COMPENSATION_RECORDED = (
    StepStatus.COMPENSATING,
    StepStatus.COMPENSATED,
    StepStatus.COMPENSATION_FAILED,
)
# Statuses from which recovery may compensate a step: its action may have happened.
_MAY_HAVE_RUN = (
    StepStatus.RUNNING,
    StepStatus.COMPLETED,
    StepStatus.COMPENSATING,
    StepStatus.COMPENSATION_FAILED,
)

Journal = Mapping[str, Transaction]
# Forward actions whose handlers mark the end of each call in the ledger ("returned").
_MARKS_RETURN = frozenset(AGENT_FORWARD)


def recovery_direction(seen: Transaction, policy: str, is_open: bool = False) -> str:
    """Which way a recovery that found ``seen`` must drive it: "compensate" or "resume".

    Compensate when it was compensating already, was an open transaction (the code
    that chose its next step died with it), or has a failed step; otherwise every step
    in doubt must allow resume (its own ``recovery`` setting, else the policy); with
    none in doubt, the policy decides.
    """
    if seen.state is TransactionState.COMPENSATING or is_open or seen.is_open:
        return "compensate"
    if any(step.status is StepStatus.FAILED for step in seen.steps):
        return "compensate"
    in_doubt = [s.recovery or policy for s in seen.steps if s.status is StepStatus.RUNNING]
    if "compensate" in in_doubt:
        return "compensate"
    return "resume" if in_doubt else policy


@dataclass
class Tally:
    """What a set of audited histories contained."""

    transactions: int = 0
    committed: int = 0
    rolled_back: int = 0
    dead_lettered: int = 0
    repeated_compensations: int = 0  # legitimate: killed between effect and record
    resumed_in_doubt: int = 0  # legitimate under "resume": same idempotency key
    recoveries_killed: int = 0  # recovering processes that were killed in turn
    grouped: int = 0  # transactions with a parallel group
    open_recovered: int = 0  # open transactions a recovery found in flight
    siblings_in_doubt: int = 0  # group steps a recovery found running
    anomalies: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name in (
            "transactions",
            "committed",
            "rolled_back",
            "dead_lettered",
            "repeated_compensations",
            "resumed_in_doubt",
            "recoveries_killed",
            "grouped",
            "open_recovered",
            "siblings_in_doubt",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.anomalies.extend(other.anomalies)


def audit(
    effects: list[Effect],
    snapshots: Mapping[int, Journal],
    final: Journal,
    policies: Mapping[int, str],
    *,
    terminal: Collection[TransactionState] = (
        TransactionState.COMMITTED,
        TransactionState.ROLLED_BACK,
    ),
    label: str = "",
) -> Tally:
    """Every way ``final`` and the ledger disagree with the guarantees of issue 3.

    ``snapshots[s]`` is the journal before recovery stage ``s`` ran with policy
    ``policies[s]``; the effects of each stage are told apart by ``Effect.stage``.
    """
    tally = Tally()
    problems = tally.anomalies
    prefix = f"[{label}] " if label else ""

    def problem(tx: str, step: TransactionStep | None, text: str) -> None:
        where = f"tx {tx[:8]}" + (f" step {step.action}" if step is not None else "")
        problems.append(f"{prefix}{where}: {text}")

    # A commit or rollback acknowledged to its caller is never contradicted later.
    for told in (e for e in effects if e.kind == "outcome"):
        ended = final.get(told.tx)
        if ended is None or ended.state.value != told.action:
            where = "gone" if ended is None else ended.state.value
            problems.append(
                f"{prefix}tx {told.tx[:8]}: its caller was told {told.action!r}, "
                f"the journal ends {where!r}"
            )
    opened = {e.tx for e in effects if e.kind == "open"}
    effects = [e for e in effects if e.kind not in ("outcome", "open")]
    by_step: dict[tuple[str, str], list[Effect]] = defaultdict(list)
    for effect in effects:
        by_step[(effect.tx, effect.step)].append(effect)
        if effect.key != f"{effect.tx}:{effect.step}":
            problems.append(f"{prefix}effect {effect} carries a foreign idempotency key")
        if effect.tx not in final:
            problems.append(f"{prefix}effect {effect} of a transaction the journal lacks")

    stages = sorted(snapshots)
    for tid, tx in final.items():
        tally.transactions += 1
        is_open = tid in opened or tx.is_open
        tally.grouped += any(step.group is not None for step in tx.steps)
        directions = {
            stage: recovery_direction(seen, policies[stage], is_open)
            for stage in stages
            if (seen := snapshots[stage].get(tid)) is not None and seen.state in IN_FLIGHT
        }
        if is_open and directions:
            tally.open_recovered += 1
            if tx.state is not TransactionState.ROLLED_BACK:
                problem(tid, None, f"an open transaction recovered ended {tx.state.value!r}")
            # Found active with a step journaled (an open transaction's steps are stored
            # as live), it is compensated because it was open, and says so; found
            # compensating, it keeps the reason its own run gave. Found before its first
            # step was journaled (the process died between entering the block and the
            # first intent's commit), nothing in the journal tells it from any other
            # transaction without a step: recovery rolls it back as one.
            first = snapshots[min(directions)][tid]
            if (
                first.state is TransactionState.ACTIVE
                and first.is_open
                and "open transaction" not in (tx.error or "")
            ):
                problem(tid, None, f"recovered open transaction; its error says {tx.error!r}")
        if tx.state not in terminal:
            problem(tid, None, f"ended in state {tx.state.value!r}")
        if tx.state is TransactionState.COMMITTED:
            tally.committed += 1
        elif tx.state in ROLLED_BACK_STATES:
            tally.rolled_back += 1
        elif tx.state is TransactionState.DEAD_LETTER:
            tally.dead_lettered += 1
        resumed = False
        for step in tx.steps:
            mine = by_step.get((tid, step.step_id), [])
            forward = [e for e in mine if e.kind == "forward"]
            undo = [e for e in mine if e.kind == "compensate"]
            if step.action in _MARKS_RETURN:
                for text in _overlaps(mine):
                    problem(tid, step, text)
            if sum(e.stage == 0 for e in forward) > 1:
                problem(tid, step, "ran twice in the original run (no retries were allowed)")
            if sum(e.stage == 0 for e in undo) > 1:
                problem(tid, step, "compensated twice in the original run")
            # Journal rules, checked at every point where a process had died (or
            # stopped) and at the end: every effect before that point had its intent
            # durably recorded; nothing is recorded as done that did not happen.
            checkpoints = [(s, snapshots[s].get(tid)) for s in stages] + [(None, tx)]
            for stage, seen in checkpoints:
                before = [e for e in mine if stage is None or e.stage < stage]
                when = "at the end" if stage is None else f"before recovery {stage}"
                seen_step = _step(seen, step.step_id)
                status = seen_step.status if seen_step is not None else None
                if any(e.kind == "forward" for e in before) and status in (
                    None,
                    StepStatus.PENDING,
                ):
                    problem(tid, step, f"ran with no durable intent record ({when})")
                if any(e.kind == "compensate" for e in before) and (
                    status not in _COMPENSATION_RECORDED
                ):
                    problem(tid, step, f"was compensated with no durable intent record ({when})")
                if status is StepStatus.COMPLETED and not any(e.kind == "forward" for e in before):
                    problem(tid, step, f"recorded completed but never ran ({when})")
                if status is StepStatus.COMPENSATED and not any(
                    e.kind == "compensate" for e in before
                ):
                    problem(tid, step, f"recorded compensated but never compensated ({when})")
            # What each recovery did to the step, given what the journal said it found.
            for stage in stages:
                seen = snapshots[stage].get(tid)
                seen_step = _step(seen, step.step_id)
                status = seen_step.status if seen_step is not None else None
                earlier = [e for e in mine if e.stage < stage]
                ran = [e for e in forward if e.stage == stage]
                undid = [e for e in undo if e.stage == stage]
                if status is StepStatus.RUNNING and step.group is not None and stage in directions:
                    tally.siblings_in_doubt += 1
                may_resume = directions.get(stage) == "resume" and status in (
                    StepStatus.PENDING,
                    StepStatus.RUNNING,
                )
                if ran and not may_resume:
                    problem(
                        tid,
                        step,
                        f"recovery {stage} (policy {policies[stage]}) ran the forward action "
                        f"of a step the journal showed as {status}",
                    )
                if len(ran) > 1:
                    problem(tid, step, f"recovery {stage} ran it {len(ran)} times")
                if ran and any(e.kind == "forward" for e in earlier):
                    resumed = True
                    tally.resumed_in_doubt += 1
                if (
                    may_resume
                    and not ran
                    and stage == stages[-1]
                    and tx.state is TransactionState.COMMITTED
                ):
                    problem(
                        tid,
                        step,
                        f"recovery {stage} committed without running again a step the "
                        f"journal showed as {status}",
                    )
                if undid:
                    if status is StepStatus.COMPENSATED:
                        problem(
                            tid,
                            step,
                            f"recovery {stage} compensated it again after its compensation "
                            "was recorded",
                        )
                    elif any(e.kind == "compensate" for e in earlier) and (
                        status is not StepStatus.COMPENSATING
                    ):
                        problem(
                            tid,
                            step,
                            f"recovery {stage} compensated it again although the journal "
                            f"showed it {status}, not cut short mid-compensation",
                        )
                    elif status not in _MAY_HAVE_RUN and not (
                        ran and ran[0].index < undid[0].index
                    ):
                        problem(
                            tid,
                            step,
                            f"recovery {stage} compensated a step the journal showed as "
                            f"{status} (its action never started)",
                        )
                    if len(undid) > 1:
                        problem(tid, step, f"recovery {stage} compensated it {len(undid)} times")
                    if any(e.kind == "compensate" for e in earlier):
                        tally.repeated_compensations += 1
            # The outcome.
            if tx.state is TransactionState.COMMITTED:
                if undo:
                    problem(tid, step, "was compensated although the transaction committed")
                if step.status is not StepStatus.COMPLETED:
                    problem(tid, step, f"is {step.status.value} in a committed transaction")
                if not forward:
                    problem(tid, step, "never ran in a committed transaction")
                if len(forward) > 1 and not resumed:
                    problem(tid, step, f"ran {len(forward)} times in a committed transaction")
            elif tx.state in ROLLED_BACK_STATES:
                if step.status is StepStatus.FAILED and undo:
                    problem(tid, step, "the failing step was compensated")
                if forward and step.compensating_action is not None:
                    if not undo:
                        problem(tid, step, "its side effect was never compensated")
                    elif undo[-1].index < forward[-1].index:
                        problem(tid, step, "ran again after its compensation")
                    if step.status is not StepStatus.COMPENSATED:
                        problem(tid, step, f"is {step.status.value} after the rollback")
        # Compensations of one run go in reverse step order.
        positions = {s.step_id: i for i, s in enumerate(tx.steps)}
        for stage in {e.stage for e in effects if e.tx == tid}:
            order = [
                positions[e.step]
                for e in effects
                if e.tx == tid and e.stage == stage and e.kind == "compensate"
            ]
            distinct = [p for i, p in enumerate(order) if i == 0 or order[i - 1] != p]
            if distinct != sorted(distinct, reverse=True) or len(set(distinct)) != len(distinct):
                problem(tid, None, f"stage {stage} compensated steps in the order {distinct}")
        # ...and across the runs: a recovery carries on where the killed one stopped.
        firsts = list(
            dict.fromkeys(
                positions[e.step] for e in effects if e.tx == tid and e.kind == "compensate"
            )
        )
        if firsts != sorted(firsts, reverse=True):
            problem(tid, None, f"the runs together first compensated steps in the order {firsts}")
    return tally


def _overlaps(mine: list[Effect]) -> list[str]:
    """Where a compensation of a step started while one of its forward calls still ran
    in the same process (its handler marks the end of every call: "returned")."""
    found: list[str] = []
    running: dict[int, int] = defaultdict(int)  # stage -> forward calls not yet over
    for effect in mine:
        if effect.kind == "forward":
            running[effect.stage] += 1
        elif effect.kind == "returned":
            running[effect.stage] -= 1
        elif effect.kind == "compensate" and running[effect.stage] > 0:
            found.append(
                f"compensated (ledger line {effect.index}) while its forward call still ran "
                f"in the same process (stage {effect.stage})"
            )
    return found


def _step(tx: Transaction | None, step_id: str) -> TransactionStep | None:
    if tx is None:
        return None
    return next((s for s in tx.steps if s.step_id == step_id), None)


# ---------------------------------------------------------------------- the SQLite file


def expire_leases(db: Path) -> int:
    """Make every lease in the journal at ``db`` expired (instead of waiting for it)."""
    with sqlite3.connect(db, timeout=30) as conn:
        cursor = conn.execute(
            "UPDATE transactions SET lease_expires = 0 WHERE lease_expires IS NOT NULL"
        )
        return cursor.rowcount


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of the file at ``db`` ("ok" when sound)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()
