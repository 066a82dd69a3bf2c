"""The process tests/test_crash.py kills: runs transactions on a SQLite journal and
SIGKILLs itself at a chosen journal point.

Besides the original 3-step transactions it runs the agent shape of issue 9 (one step,
a parallel group of four, one step; see ``AGENT_STEPS``), declared with ``add_step``
or as an open transaction (``manager.transaction()``), with kill points inside the
group (``GROUP_POINTS``).

Run as ``python -m tests._crash_child '<spec as JSON>'`` from the repository root.
The spec (see :class:`Spec`) names the journal, the ledger, what to run (``commit``:
fresh transactions; ``recover``: one ``manager.recover()`` round) and where to die:
the ``occurrence``-th time the run reaches ``point``, the process sends itself a
real SIGKILL, so nothing is flushed, no ``finally`` runs and no atexit hook fires.

Handlers record each side effect as one line of a separate *ledger* file (appended,
flushed and fsynced before the handler returns), so the parent can compare what
really happened with what the journal says. The same handlers, store wrapper and
ledger reader (``_ledger``, ``_delegating_store``) are imported by the tests themselves.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

from aumai_transactions import (
    Lease,
    StepContext,
    StepFailedError,
    Store,
    Transaction,
    TransactionManager,
    TransactionResult,
    TransactionState,
    TransactionStep,
)
from aumai_transactions.models import StepStatus
from aumai_transactions.stores import RecordsNowait

from ._delegating_store import DelegatingStore
from ._ledger import Ledger

# Forward action -> compensating action, in step order.
STEPS = (("reserve", "release"), ("charge", "refund"), ("ship", "cancel"))
FORWARD = tuple(f for f, _ in STEPS)
COMPENSATE = tuple(c for _, c in STEPS)

# Where a run can be killed. The first five are the journal points of issue 3; the
# others cover the two ends of a rollback and a committed-but-still-leased transaction.
POINTS = (
    "before_intent",  # a step's intent (running) record is about to be written
    "after_intent",  # the intent is durable; the handler has not run
    "after_effect",  # the handler's side effect happened; its completion is not recorded
    "comp_after_intent",  # a compensation's intent is durable; it has not run
    "comp_after_effect",  # a compensation happened; its completion is not recorded
    "before_commit",  # every step ran; the committed record is about to be written
    "after_commit",  # the committed record is durable; the lease is not released
    "before_rolled_back",  # every compensation ran; the final record is about to be written
)

# The agent shape: a step, a parallel group of four siblings, a step. Forward action,
# compensating action, group; handlers are async or sync (run in a worker thread) by
# name, so a group mixes siblings that cancellation stops with some it cannot stop.
AGENT_STEPS = (
    ("hold_flight", "release_flight", None),
    ("book_hotel", "cancel_hotel", "lodging"),
    ("rent_car", "return_car", "lodging"),
    ("buy_tickets", "refund_tickets", "lodging"),
    ("insure", "cancel_insurance", "lodging"),
    ("charge_card", "refund_card", None),
)
AGENT_FORWARD = tuple(f for f, _, _ in AGENT_STEPS)
AGENT_COMPENSATE = tuple(c for _, c, _ in AGENT_STEPS)
SYNC_AGENT_ACTIONS = frozenset({"buy_tickets", "insure", "release_flight", "return_car"})
GROUP_POSITIONS = tuple(p for p, (_, _, g) in enumerate(AGENT_STEPS, start=1) if g)

# Kill points of the agent shape (only group siblings count, except open_between).
GROUP_POINTS = (
    "group_after_intent",  # a sibling's intent is durable; its handler has not run
    "group_after_effect",  # a sibling's effect happened; its completion is not recorded
    "group_held",  # the watched siblings are mid-handler (some past their effect), the
    # others have returned and their completion was handed to the store
    "group_comp_after_intent",  # a sibling's compensation intent is durable; it has not run
    "group_comp_after_effect",  # a sibling's compensation happened; not recorded
    "open_between",  # an open transaction's code, after a step (or group) returned
)


# ---------------------------------------------------------------------- killing


class KillSwitch:
    """SIGKILLs this process the ``occurrence``-th time ``point`` is reached."""

    def __init__(self, point: str | None = None, occurrence: int = 1) -> None:
        if point is not None and point not in POINTS + GROUP_POINTS:
            known = ", ".join(POINTS + GROUP_POINTS)
            raise ValueError(f"unknown kill point {point!r}; known: {known}")
        self.point = point
        self.remaining = occurrence
        self._lock = threading.Lock()  # handlers run in worker threads

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        with self._lock:
            self.remaining -= 1
            if self.remaining == 0:
                os.kill(os.getpid(), signal.SIGKILL)


class KillingStore(DelegatingStore):
    """Dies at the journal points that sit around store writes."""

    def __init__(self, inner: Store, kill: KillSwitch) -> None:
        super().__init__(inner)
        self.kill = kill

    def _before(self, tx: Transaction, step: TransactionStep | None) -> None:
        """Reach the points that sit before the record of ``step`` (or the header)."""
        reached = self.kill.reached
        if step is not None and step.status is StepStatus.RUNNING:
            reached("before_intent")
        if step is None and tx.state is TransactionState.COMMITTED:
            reached("before_commit")
        if step is None and tx.state is TransactionState.ROLLED_BACK:
            reached("before_rolled_back")

    @staticmethod
    def _after(tx: Transaction, step: TransactionStep | None) -> list[str]:
        """The points that sit after that record is durable, in the order reached."""
        if step is None:
            return ["after_commit"] if tx.state is TransactionState.COMMITTED else []
        grouped = step.group is not None
        if step.status is StepStatus.RUNNING:
            return ["after_intent", "group_after_intent"] if grouped else ["after_intent"]
        if step.status is StepStatus.COMPENSATING:
            return (
                ["comp_after_intent", "group_comp_after_intent"]
                if grouped
                else ["comp_after_intent"]
            )
        return []

    async def record(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
    ) -> None:
        self._before(tx, step)
        after = self._after(tx, step)
        await self.inner.record(lease, tx, step, durable=durable)
        for point in after:
            self.kill.reached(point)
        if step is not None and step.status is StepStatus.COMPLETED and step.data.get("watch"):
            if step.data.get("flush"):
                # As when another transaction's durable write shares the batch: the
                # completion, which rides with the next durable write, is on disk now.
                await self.inner.record(lease, tx)
            self.kill.reached("group_held")


class KillingNowaitStore(KillingStore):
    """``KillingStore`` on the path the engine takes with a built-in durable store:
    records handed over through ``record_nowait`` (each completion folded into the
    next record) and the first intent carried by the acquire."""

    acquire_carries_intent = True
    # Beside record_nowait, so that the engine takes it (see _driver.records_nowait).
    record = KillingStore.record

    async def acquire(
        self, tx: Transaction, owner: str, ttl: float, expected: Iterable[TransactionState]
    ) -> Lease:
        intent = any(step.status is StepStatus.RUNNING for step in tx.steps)
        if intent:
            self.kill.reached("before_intent")
        lease = await self.inner.acquire(tx, owner, ttl, expected)
        if intent:
            self.kill.reached("after_intent")
        return lease

    def record_nowait(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
        previous: TransactionStep | None = None,
    ) -> Awaitable[object] | None:
        self._before(tx, step)
        after = self._after(tx, step)  # read now: the caller changes tx and step after
        inner = self.inner
        assert isinstance(inner, RecordsNowait)
        written = inner.record_nowait(lease, tx, step, durable=durable, previous=previous)
        if not after:
            return written

        async def then() -> None:
            if written is not None:
                await written
            for point in after:
                self.kill.reached(point)

        return then()


# ---------------------------------------------------------------------- handlers


class Handlers:
    """The actions of the crash tests, recording into a ledger and dying on cue.

    Step data may carry ``fail`` (the forward action raises, before any side effect),
    ``poison`` (the forward action records its effect, then kills the process, every
    time) or ``poison_compensation`` (the same, for the compensation). With ``gate``,
    a compensation whose step carries ``gated`` (a slow one) returns only once a poison
    has struck, i.e. never: it is still running when the process dies.
    """

    def __init__(self, ledger: Ledger, kill: KillSwitch | None = None, gate: bool = False) -> None:
        self.ledger = ledger
        self.kill = kill or KillSwitch()
        self.gate = gate
        self._poisoned = threading.Event()

    def _poison(self) -> None:
        self._poisoned.set()
        os.kill(os.getpid(), signal.SIGKILL)

    def forward(self, action: str, data: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        if data.get("fail"):
            raise RuntimeError(f"{action} refused (planned failure)")
        self.ledger.append(ctx, "forward")
        if data.get("poison"):
            self._poison()
        self.kill.reached("after_effect")
        return {"done": action, "key": ctx.idempotency_key}

    def compensate(self, action: str, data: dict[str, Any], ctx: StepContext) -> None:
        if self.gate and data.get("gated"):
            self._poisoned.wait()
        self.ledger.append(ctx, "compensate")
        if data.get("poison_compensation"):
            self._poison()
        self.kill.reached("comp_after_effect")

    # The agent shape's handlers. Step data may also carry ``sibling`` (a group step),
    # ``slow`` (seconds the forward call lasts after its effect), ``hold`` ("before" or
    # "after" its effect: the original run's call then never returns) and ``watch``
    # (the step counts towards the "group_held" kill point, its completion made durable
    # at once with ``flush``).

    def _agent_effect(self, data: dict[str, Any], ctx: StepContext) -> float | None:
        """The forward effect, and how long the call then lasts (-1: for ever); None
        when the call must block for ever before its effect."""
        if data.get("fail"):
            raise RuntimeError(f"{ctx.action} refused (planned failure)")
        held = data.get("hold") if self.ledger.stage == 0 else None
        if held == "before":
            self.kill.reached("group_held")
            return None
        self.ledger.append(ctx, "forward")
        if data.get("sibling"):
            self.kill.reached("group_after_effect")
        if held == "after":
            self.kill.reached("group_held")
            return -1.0
        return float(data.get("slow", 0.0))

    async def agent_forward(
        self, action: str, data: dict[str, Any], ctx: StepContext
    ) -> dict[str, Any]:
        wait = self._agent_effect(data, ctx)
        if wait is None:
            await anyio.sleep_forever()
        try:
            if wait == -1:
                await anyio.sleep_forever()
            elif wait:
                await anyio.sleep(wait)
        finally:  # also when cancelled: the call is over
            self.ledger.append(ctx, "returned")
        return {"done": action, "key": ctx.idempotency_key}

    def agent_forward_sync(
        self, action: str, data: dict[str, Any], ctx: StepContext
    ) -> dict[str, Any]:
        wait = self._agent_effect(data, ctx)
        if wait is None:
            threading.Event().wait()
        try:
            if wait == -1:
                threading.Event().wait()
            elif wait:
                time.sleep(wait)  # a thread cannot be cancelled: this always runs out
        finally:
            self.ledger.append(ctx, "returned")
        return {"done": action, "key": ctx.idempotency_key}

    def agent_compensate_sync(self, action: str, data: dict[str, Any], ctx: StepContext) -> None:
        self.ledger.append(ctx, "compensate")
        if data.get("sibling"):
            self.kill.reached("group_comp_after_effect")

    async def agent_compensate(self, action: str, data: dict[str, Any], ctx: StepContext) -> None:
        self.agent_compensate_sync(action, data, ctx)

    def mapping(self, missing: Iterable[str] = ()) -> dict[str, Any]:
        handlers: dict[str, Any] = dict.fromkeys(FORWARD, self.forward)
        handlers.update(dict.fromkeys(COMPENSATE, self.compensate))
        for action in AGENT_FORWARD:
            sync = action in SYNC_AGENT_ACTIONS
            handlers[action] = self.agent_forward_sync if sync else self.agent_forward
        for action in AGENT_COMPENSATE:
            sync = action in SYNC_AGENT_ACTIONS
            handlers[action] = self.agent_compensate_sync if sync else self.agent_compensate
        for action in missing:
            handlers.pop(action, None)
        return handlers


def build(manager: TransactionManager, plan: dict[str, Any]) -> Transaction:
    """A 3-step transaction; ``plan`` may name a failing or poisoned step (1-based)."""
    tx = manager.begin(timeout_seconds=None)
    for position, (action, compensation) in enumerate(STEPS, start=1):
        data: dict[str, Any] = {"position": position}
        if plan.get("fail_at") == position:
            data["fail"] = True
        if plan.get("poison_at") == position:
            data["poison"] = True
        if plan.get("poison_compensation_at") == position:
            data["poison_compensation"] = True
        if plan.get("gated"):
            data["gated"] = True
        manager.add_step(tx, f"agent-{position}", action, data, compensation)
    return tx


def agent_data(plan: dict[str, Any], position: int) -> dict[str, Any]:
    """The data of the agent-shape step at ``position`` (1-based) under ``plan``.

    ``plan`` (JSON, so its keys are strings): ``fail_at`` (a position), ``hold``,
    ``slow`` and ``recovery`` (position -> value), ``watch`` and ``flush`` (the held
    transaction), ``max_concurrency`` (of the group).
    """
    key = str(position)
    data: dict[str, Any] = {"position": position}
    if position in GROUP_POSITIONS:
        data["sibling"] = True
    if plan.get("fail_at") == position:
        data["fail"] = True
    if key in plan.get("hold", {}):
        data["hold"] = plan["hold"][key]
    if key in plan.get("slow", {}):
        data["slow"] = plan["slow"][key]
    if plan.get("watch") and position in GROUP_POSITIONS:
        data["watch"] = True
        if plan.get("flush"):
            data["flush"] = True
    return data


def build_agent(manager: TransactionManager, plan: dict[str, Any]) -> Transaction:
    """The agent shape declared with ``add_step``: a step, a group of four, a step."""
    tx = manager.begin(timeout_seconds=None)
    for position, (action, compensation, group) in enumerate(AGENT_STEPS, start=1):
        manager.add_step(
            tx,
            f"agent-{position}",
            action,
            agent_data(plan, position),
            compensation,
            recovery=plan.get("recovery", {}).get(str(position)),
            group=group,
            max_concurrency=plan.get("max_concurrency") if group else None,
        )
    return tx


async def run_open(
    manager: TransactionManager, handlers: Handlers, plan: dict[str, Any]
) -> TransactionResult:
    """The agent shape as an open transaction: each step chosen once the last returned."""
    recovery = plan.get("recovery", {})
    tx = manager.transaction(timeout_seconds=None)
    try:
        async with tx:
            handlers.ledger.opened(tx.transaction_id)
            last: Any = None
            for position, (action, compensation, group) in enumerate(AGENT_STEPS, start=1):
                if group is None:
                    data = {**agent_data(plan, position), "after": last}
                    agent = f"agent-{position}"
                    last = await tx.run(
                        agent, action, data, compensation, recovery=recovery.get(str(position))
                    )
                elif position == GROUP_POSITIONS[0]:
                    limit = plan.get("max_concurrency")
                    async with tx.parallel(group, max_concurrency=limit) as siblings:
                        for p in GROUP_POSITIONS:
                            sibling, undo, _ = AGENT_STEPS[p - 1]
                            data = {**agent_data(plan, p), "after": last}
                            siblings.run(
                                f"agent-{p}", sibling, data, undo, recovery=recovery.get(str(p))
                            )
                    last = [result["done"] for result in siblings.results]
                else:
                    continue  # started with the group's first sibling
                handlers.kill.reached("open_between")
    except StepFailedError:
        pass  # the planned failure: leaving the block compensated what ran
    assert tx.result is not None
    return tx.result


# ---------------------------------------------------------------------- the run


@dataclass
class Spec:
    """What one child process does."""

    db: str
    ledger: str
    stage: int = 0
    mode: str = "commit"  # "commit" or "recover"
    point: str | None = None
    occurrence: int = 1
    # commit: one plan per tx; "shape" "agent" or "open" picks the agent shape
    txs: list[dict[str, Any]] = field(default_factory=list)
    policy: str = "compensate"  # recover
    missing: list[str] = field(default_factory=list)  # recover: handlers left out
    max_recovery_attempts: int = 3
    lease_ttl: float = 3600.0
    gate: bool = False  # gated compensations wait for a poison (see Handlers)
    nowait: bool = False  # the engine's path with a built-in store (KillingNowaitStore)


def _summary(result: TransactionResult) -> dict[str, Any]:
    return {"tx": result.transaction_id, "state": result.state.value, "error": result.error}


async def run(spec: Spec) -> list[dict[str, Any]]:
    from aumai_transactions.stores.sqlite import SqliteStore

    kill = KillSwitch(spec.point, spec.occurrence)
    handlers = Handlers(Ledger(spec.ledger, spec.stage), kill, gate=spec.gate)
    store = (KillingNowaitStore if spec.nowait else KillingStore)(SqliteStore(spec.db), kill)
    manager = TransactionManager(
        handlers.mapping(spec.missing),
        store=store,
        lease_ttl=spec.lease_ttl,
        max_recovery_attempts=spec.max_recovery_attempts,
    )
    async with manager:
        if spec.mode == "recover":
            results = await manager.recover(spec.policy)  # type: ignore[arg-type]
            return [_summary(r) for r in results]
        outcomes: list[dict[str, Any]] = []

        async def commit(plan: dict[str, Any]) -> None:
            shape = plan.get("shape")
            if shape == "open":
                result = await run_open(manager, handlers, plan)
            else:
                tx = (build_agent if shape == "agent" else build)(manager, plan)
                result = await manager.commit(tx)
            handlers.ledger.outcome(result)
            outcomes.append(_summary(result))

        async with anyio.create_task_group() as group:
            for plan in spec.txs:
                group.start_soon(commit, plan)
        return outcomes


def main(argv: list[str]) -> int:
    spec = Spec(**json.loads(argv[1]))
    print(json.dumps(anyio.run(run, spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
