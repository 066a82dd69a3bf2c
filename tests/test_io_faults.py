"""I/O faults: the N-th journal write of a transaction fails, for every N.

A store wrapper fails one journal write (*transient*) or every write from the N-th on
(*persistent*), either before the write reaches the file or after it did (a lost
acknowledgement). Handlers check, each time they are called, that a second,
independent connection to the file sees their intent record: the engine must never run
a handler without a durable record, and must run nothing after a write failed. The
commit raises the StoreError (unless only the lease release after the durable outcome
failed: then it returns that outcome, which the journal holds). Recovery afterwards
(the same manager once a transient fault has passed, a fresh one after a persistent
fault) reaches a terminal state that agrees with what the handlers did, and
``PRAGMA integrity_check`` stays "ok".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aumai_transactions import (
    Lease,
    StepContext,
    StepStatus,
    Store,
    StoreError,
    StoreUnavailableError,
    Transaction,
    TransactionManager,
    TransactionState,
    TransactionStep,
)
from aumai_transactions.stores.sqlite import SqliteStore

from ._crash_child import COMPENSATE, FORWARD, build
from ._delegating_store import DelegatingStore
from ._journal_audit import IN_FLIGHT, Tally, audit, expire_leases, integrity
from ._ledger import Ledger

T = TypeVar("T")

SCENARIOS = {"commit": {}, "rollback": {"fail_at": 3}}


class FaultyStore(DelegatingStore):
    """Fails the ``fail_at``-th write (and, if ``persistent``, every later one).

    ``after``: the write reaches the store first and only its acknowledgement fails.
    """

    def __init__(self, inner: Store, fail_at: int | None, *, persistent: bool, after: bool) -> None:
        super().__init__(inner)
        self.fail_at = fail_at
        self.persistent = persistent
        self.after = after
        self.writes: list[str] = []
        self.injected: list[StoreError] = []

    @property
    def faulted(self) -> bool:
        return bool(self.injected)

    async def _write(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        self.writes.append(what)
        n = len(self.writes)
        failing = self.fail_at is not None and (
            n == self.fail_at or (self.persistent and n > self.fail_at)
        )
        if not failing:
            return await call()
        error = StoreUnavailableError(f"injected I/O fault: journal write {n} ({what}) failed")
        self.injected.append(error)
        if self.after:
            await call()
        raise error

    async def acquire(
        self, tx: Transaction, owner: str, ttl: float, expected: Iterable[TransactionState]
    ) -> Lease:
        return await self._write("acquire", lambda: self.inner.acquire(tx, owner, ttl, expected))

    async def record(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
    ) -> None:
        what = f"record {tx.state.value}" + (
            f" {step.action} {step.status.value}" if step is not None else ""
        )
        await self._write(what, lambda: self.inner.record(lease, tx, step, durable=durable))

    async def release(self, lease: Lease) -> None:
        await self._write("release", lambda: self.inner.release(lease))

    async def renew(self, owner: str, ttl: float) -> int:
        return await self._write("renew", lambda: self.inner.renew(owner, ttl))

    async def claim_expired(
        self, owner: str, ttl: float, limit: int
    ) -> Sequence[tuple[Transaction, Lease]]:
        return await self._write("claim", lambda: self.inner.claim_expired(owner, ttl, limit))


class CheckingHandlers:
    """Handlers that log their effects and check the journal holds their intent."""

    def __init__(self, ledger: Ledger, reader: Store, faulty: FaultyStore | None) -> None:
        self.ledger = ledger
        self.reader = reader
        self.faulty = faulty
        self.problems: list[str] = []

    async def _check(self, ctx: StepContext) -> None:
        if self.faulty is not None and self.faulty.faulted:
            self.problems.append(
                f"{ctx.action} ran after journal write {self.faulty.fail_at} failed"
            )
        stored = await self.reader.load(ctx.transaction_id)
        steps = {s.step_id: s for s in stored.steps} if stored is not None else {}
        step = steps.get(ctx.step_id)
        if ctx.phase == "forward":
            ok = (
                step is not None
                and step.status is StepStatus.RUNNING
                and step.attempts == ctx.attempt
            )
            if ok and stored is not None:
                ids = [s.step_id for s in stored.steps]
                earlier = stored.steps[: ids.index(ctx.step_id)]
                if any(s.status is not StepStatus.COMPLETED for s in earlier):
                    self.problems.append(f"{ctx.action}: an earlier completion is not durable")
        else:
            ok = (
                step is not None
                and step.status is StepStatus.COMPENSATING
                and step.compensation_attempts == ctx.attempt
            )
        if not ok:
            self.problems.append(
                f"{ctx.action} ({ctx.phase}, attempt {ctx.attempt}) ran while the journal "
                f"showed {None if step is None else step.status}"
            )

    async def forward(self, action: str, data: dict[str, Any], ctx: StepContext) -> Any:
        await self._check(ctx)
        if data.get("fail"):
            raise RuntimeError(f"{action} refused (planned failure)")
        self.ledger.append(ctx, "forward")
        return {"done": action}

    async def compensate(self, action: str, data: dict[str, Any], ctx: StepContext) -> None:
        await self._check(ctx)
        self.ledger.append(ctx, "compensate")

    def mapping(self) -> dict[str, Any]:
        handlers: dict[str, Any] = dict.fromkeys(FORWARD, self.forward)
        handlers.update(dict.fromkeys(COMPENSATE, self.compensate))
        return handlers


async def run_with_fault(
    tmp: Path, plan: dict[str, Any], fail_at: int | None, *, persistent: bool, after: bool
) -> tuple[Tally, FaultyStore]:
    """Commit one transaction with a fault at write ``fail_at``; recover; audit."""
    db, ledger_path = tmp / "journal.db", tmp / "ledger.jsonl"
    tally = Tally()
    label = f"write {fail_at} {'persistent' if persistent else 'transient'} " + (
        "after" if after else "before"
    )
    async with SqliteStore(db) as reader:
        faulty = FaultyStore(SqliteStore(db), fail_at, persistent=persistent, after=after)
        handlers = CheckingHandlers(Ledger(ledger_path, 0), reader, faulty)
        manager = TransactionManager(handlers.mapping(), store=faulty)
        tx = build(manager, plan)
        try:
            result = await manager.commit(tx)
        except StoreError as exc:
            if exc not in faulty.injected:
                tally.anomalies.append(f"[{label}] commit raised {exc!r}, not the fault")
        else:
            handlers.ledger.outcome(result)
            # Only a failed lease release, after the outcome is durable, is not an error.
            if fail_at is not None and faulty.faulted and faulty.writes[fail_at - 1] != "release":
                tally.anomalies.append(
                    f"[{label}] commit returned {result.state.value} despite {faulty.injected}"
                )
        # Closing flushes what the store accepted before the fault (an acquire waiting
        # for the next durable write to join its commit, a lazy completion): the
        # snapshot is then exactly what a recoverer will find.
        await faulty.close()
        snapshot = {t.transaction_id: t for t in await reader.list()}
        expire_leases(db)
        handlers.faulty = None
        if persistent or not faulty.faulted:
            recoverer = TransactionManager(handlers.mapping(), store=SqliteStore(db))
        else:  # the fault has passed: the same manager carries on
            await faulty.open()
            recoverer = manager
        handlers.ledger = Ledger(ledger_path, 1)
        try:
            results = await recoverer.recover()
        finally:
            await recoverer.store.close()
        final = {t.transaction_id: t for t in await reader.list()}
    if {r.transaction_id for r in results} != {
        tid for tid, t in snapshot.items() if t.state in IN_FLIGHT
    }:
        tally.anomalies.append(f"[{label}] recovery did not claim exactly the in-flight ones")
    if (check := integrity(db)) != "ok":
        tally.anomalies.append(f"[{label}] integrity_check: {check}")
    tally.anomalies.extend(f"[{label}] {p}" for p in handlers.problems)
    tally.add(audit(Ledger.read(ledger_path), {1: snapshot}, final, {1: "compensate"}, label=label))
    return tally, faulty


@pytest.mark.parametrize("after", [False, True], ids=["write-lost", "ack-lost"])
@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_every_failed_journal_write_stops_the_engine_and_recovery_repairs_it(
    tmp_path: Path, scenario: str, persistent: bool, after: bool
) -> None:
    plan = SCENARIOS[scenario]
    clean, counted = await run_with_fault(
        tmp_path / "clean", plan, None, persistent=persistent, after=after
    )
    assert clean.anomalies == []
    writes = len(counted.writes)
    total = Tally()
    for n in range(1, writes + 1):
        tally, faulty = await run_with_fault(
            tmp_path / str(n), plan, n, persistent=persistent, after=after
        )
        assert faulty.injected, f"write {n} was never attempted"
        total.add(tally)
    print(
        f"\nI/O faults ({scenario}, {'persistent' if persistent else 'transient'}, "
        f"{'ack lost' if after else 'write lost'}): a fault at each of {writes} journal "
        f"writes, {total.transactions} transactions audited after recovery, "
        f"anomalies: {len(total.anomalies)}"
    )
    assert total.anomalies == []
    assert total.transactions >= writes - 1  # a lost acquire leaves nothing behind


async def test_a_failed_acquire_leaves_nothing_behind(tmp_path: Path) -> None:
    """The first write takes the lease: when it fails, nothing is stored and nothing ran."""
    tally, faulty = await run_with_fault(
        tmp_path, SCENARIOS["commit"], 1, persistent=False, after=False
    )
    assert tally.anomalies == []
    assert faulty.writes[0] == "acquire"
    async with SqliteStore(tmp_path / "journal.db") as store:
        assert await store.list() == []
    assert Ledger.read(tmp_path / "ledger.jsonl") == []


async def test_recovery_reaches_a_terminal_state_after_each_fault(tmp_path: Path) -> None:
    """Spot check of the sweep: a fault on step 2's intent leaves step 1 to undo."""
    tally, faulty = await run_with_fault(
        tmp_path, SCENARIOS["commit"], 4, persistent=True, after=False
    )
    assert tally.anomalies == []
    assert faulty.writes[3] == "record active charge running"
    async with SqliteStore(tmp_path / "journal.db") as store:
        (tx,) = await store.list()
    assert tx.state is TransactionState.ROLLED_BACK
    assert [s.status for s in tx.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.PENDING,
        StepStatus.PENDING,
    ]
    effects = Ledger.read(tmp_path / "ledger.jsonl")
    assert [(e.stage, e.action) for e in effects] == [(0, "reserve"), (1, "release")]


async def test_a_commit_whose_lease_was_never_taken_can_be_retried(tmp_path: Path) -> None:
    """Regression: a StoreError before the lease was taken (the first journal write, or
    opening the store) left the transaction 'active' in memory with nothing in flight,
    so it could never be committed again."""
    db, ledger = tmp_path / "journal.db", Ledger(tmp_path / "ledger.jsonl", 0)
    async with SqliteStore(db) as reader:
        faulty = FaultyStore(SqliteStore(db), 1, persistent=False, after=False)
        handlers = CheckingHandlers(ledger, reader, None)
        async with TransactionManager(handlers.mapping(), store=faulty) as manager:
            tx = build(manager, {})
            with pytest.raises(StoreError, match="journal write 1"):
                await manager.commit(tx)
            assert tx.state is TransactionState.PENDING
            assert await reader.list() == []
            result = await manager.commit(tx)  # the fault has passed
        assert result.state is TransactionState.COMMITTED
    assert handlers.problems == []
    assert [e.action for e in Ledger.read(ledger.path)] == list(FORWARD)


async def test_a_commit_on_a_store_that_cannot_open_can_be_retried(tmp_path: Path) -> None:
    """Regression: the same, when the journal cannot even be opened."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    manager = TransactionManager(
        {"a": lambda action, data: None}, store=SqliteStore(blocker / "j.db")
    )
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    with pytest.raises(StoreError):
        await manager.commit(tx)
    assert tx.state is TransactionState.PENDING


async def test_a_lease_release_that_fails_after_the_outcome_is_durable_is_not_a_failure(
    tmp_path: Path,
) -> None:
    """Regression: when only the lease release after the committed record failed,
    commit raised, telling the caller the transaction failed although the journal
    holds it committed (a caller that retries would run every step twice)."""
    db, ledger = tmp_path / "journal.db", Ledger(tmp_path / "ledger.jsonl", 0)
    async with SqliteStore(db) as reader:
        faulty = FaultyStore(SqliteStore(db), 9, persistent=False, after=False)
        handlers = CheckingHandlers(ledger, reader, None)
        manager = TransactionManager(handlers.mapping(), store=faulty)
        tx = build(manager, {})
        result = await manager.commit(tx)
        await faulty.close()
        assert faulty.writes[-1] == "release" and faulty.injected
        assert result.state is TransactionState.COMMITTED
        stored = await reader.load(tx.transaction_id)
        assert stored is not None and stored.state is TransactionState.COMMITTED
