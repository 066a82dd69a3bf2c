"""One ``TransactionManager.recover()``: claiming the transactions whose driver died,
a window of them at a time, and driving each to an end with a ``RecoveryDriver``.

A transaction claimed before and still unfinished may be what killed its previous
recoverer, so such *suspects* are driven alone, after the others, one at a time.
"""

from __future__ import annotations

import logging
from collections import deque

import anyio
import anyio.abc

from ._driver import EngineOptions
from .errors import LeaseConflictError, LeaseLostError, StoreError
from .handlers import HandlerRegistry
from .models import RecoveryPolicy, Transaction, TransactionResult, TransactionState
from .recovery import RecoveryDriver
from .stores import Lease, Store

__all__ = ["RecoveryRounds"]

logger = logging.getLogger("aumai_transactions.recovery")

_IN_FLIGHT_STATES = (TransactionState.ACTIVE, TransactionState.COMPENSATING)


class RecoveryRounds:
    """The rounds of one recovery, for a manager's store, handlers and options;
    ``retained`` (the manager's registry, None when it keeps no finished transaction)
    learns each transaction driven."""

    def __init__(
        self,
        store: Store,
        handlers: HandlerRegistry,
        options: EngineOptions,
        retained: dict[str, Transaction] | None,
    ) -> None:
        self._store = store
        self._handlers = handlers
        self._options = options
        self._retained = retained

    async def run(self, policy: RecoveryPolicy, limit: int) -> list[TransactionResult]:
        """Drive every transaction with an expired lease to an end, at most ``limit`` at
        a time, until none is left; one result per transaction driven.

        Claims are a sliding window, not batches: once half of ``limit`` has finished,
        the next claim tops the window up while the rest still run, so a slow
        compensation holds up no one but its own transaction. Workers drive them: one
        whose transaction is done takes the next one claimed (idle until the next
        claim), so a task is started per place in the window, not per transaction.
        """
        results: list[TransactionResult] = []
        window = _Window()
        failure: StoreError | None = None
        async with anyio.create_task_group() as group:
            try:
                while True:
                    await window.at_most(limit // 2)
                    try:
                        if not await self._top_up(window, group, results, policy, limit):
                            break
                    except StoreError as exc:
                        # Raised once the transactions being driven have finished: a
                        # failed claim must not cut short what an earlier one started.
                        failure = exc
                        break
            finally:
                # The idle workers end. A claimed transaction no worker took (the
                # cancellation of this task group reached the idle workers first)
                # gets a worker of its own, as every claimed transaction got a task.
                window.close()
                for _ in range(len(window.queued)):
                    group.start_soon(self._work, window, results, policy)
        if failure is not None:
            raise failure
        return results

    async def _top_up(
        self,
        window: _Window,
        group: anyio.abc.TaskGroup,
        results: list[TransactionResult],
        policy: RecoveryPolicy,
        limit: int,
    ) -> bool:
        """Claim up to what the window has room for and hand each claimed transaction
        to a worker (an idle one, else a new one); False when there was nothing left to
        claim."""
        claimed = await self._store.claim_expired(
            self._options.owner, self._options.lease_ttl, limit - window.taken
        )
        if not claimed:
            return False
        queued = window.queued
        suspects: list[tuple[Transaction, Lease]] = []
        for claim in claimed:
            # Claimed before and still unfinished, a suspect may be what killed its
            # recoverer. Driving it next to others would charge them an attempt each
            # time it kills this process too, so it is handed back at once and driven
            # alone, once the others are done.
            (suspects if claim[0].recovery_attempts > 1 else queued).append(claim)
        # Before any await: each queued transaction has a worker free to take it.
        waiting = len(queued)
        window.taken += waiting
        for _ in range(waiting - window.idle):
            group.start_soon(self._work, window, results, policy)
        window.wake()
        if suspects:
            for tx, lease in suspects:
                tx.recovery_attempts -= 1
                await self._store.record(lease, tx)
                await self._store.release(lease)
            await window.at_most(0)
            for tx, _ in suspects:
                alone = await self._claim_alone(tx.transaction_id)
                if alone is not None:
                    result = await self._recover_one(*alone, policy)
                    if result is not None:
                        results.append(result)
        return True

    async def _work(
        self, window: _Window, results: list[TransactionResult], policy: RecoveryPolicy
    ) -> None:
        """One worker: drive the queued transactions one at a time, idle while none is
        queued, until the window closes."""
        queued = window.queued
        while True:
            while queued:
                tx, lease = queued.popleft()
                try:
                    # Awaited here, not through _recover_one: a coroutine fewer in
                    # flight for each transaction of the window.
                    result = await self._driver(tx, in_group=True).recover(lease, policy)
                except StoreError as exc:
                    self._not_recovered(tx, exc)
                else:
                    results.append(result)
                finally:
                    window.release()
            if window.closed:
                return
            await window.idle_until_woken()

    async def _claim_alone(self, transaction_id: str) -> tuple[Transaction, Lease] | None:
        """Take the lease of one in-flight transaction, charging it one recovery attempt.

        Reloaded first, so that what the lease is taken with is the latest journal.
        """
        tx = await self._store.load(transaction_id)
        if tx is None or tx.state not in _IN_FLIGHT_STATES:
            return None
        tx.recovery_attempts += 1
        try:
            lease = await self._store.acquire(
                tx, self._options.owner, self._options.lease_ttl, _IN_FLIGHT_STATES
            )
        except LeaseConflictError:  # another recoverer took it meanwhile
            return None
        return tx, lease

    async def _recover_one(
        self, tx: Transaction, lease: Lease, policy: RecoveryPolicy
    ) -> TransactionResult | None:
        """Drive ``tx`` alone to an end; None when this process lost it or its journal."""
        try:
            return await self._driver(tx).recover(lease, policy)
        except StoreError as exc:
            self._not_recovered(tx, exc)
            return None

    def _driver(self, tx: Transaction, in_group: bool = False) -> RecoveryDriver:
        """A driver for ``tx`` (which the manager's registry learns); ``in_group``: it
        runs in a worker of the recovery's task group."""
        if self._retained is not None:
            self._retained[tx.transaction_id] = tx
        driver = RecoveryDriver(tx, self._handlers, self._store, self._options)
        if in_group:
            driver.in_engine_task()
        return driver

    @staticmethod
    def _not_recovered(tx: Transaction, exc: StoreError) -> None:
        """Say why this process stopped driving ``tx`` (called while handling ``exc``):
        its lease was taken over, or its journal failed (the lease runs out and a later
        round tries again)."""
        if isinstance(exc, LeaseLostError):
            logger.warning(
                "transaction %s was taken over mid-recovery",
                tx.transaction_id,
                extra={"transaction_id": tx.transaction_id},
            )
        else:
            logger.exception(
                "recovery of transaction %s failed",
                tx.transaction_id,
                extra={"transaction_id": tx.transaction_id},
            )


class _Window:
    """The claimed transactions no worker has taken yet (``queued``), how many claimed
    ones are unfinished (``taken``), how many workers wait for more (``idle``), and the
    ways to wait until few enough are taken and, idle, until there is more."""

    __slots__ = ("_wake", "_wanted", "_work", "closed", "idle", "queued", "taken")

    def __init__(self) -> None:
        self.queued: deque[tuple[Transaction, Lease]] = deque()
        self.taken = 0
        self.idle = 0
        self.closed = False
        self._wake: anyio.Event | None = None
        self._wanted = 0
        self._work: anyio.Event | None = None

    async def at_most(self, count: int) -> None:
        """Wait until at most ``count`` are being driven (at once when they are)."""
        while self.taken > count:
            self._wanted = count
            self._wake = anyio.Event()
            await self._wake.wait()

    def release(self) -> None:
        """One claimed transaction has been driven."""
        self.taken -= 1
        if self._wake is not None and self.taken <= self._wanted:
            self._wake.set()
            self._wake = None

    async def idle_until_woken(self) -> None:
        """Wait, as an idle worker, until more is queued or the window closes."""
        work = self._work
        if work is None:
            work = self._work = anyio.Event()
        self.idle += 1
        try:
            await work.wait()
        finally:
            if not work.is_set():  # cancelled, not woken (``wake`` counts those out)
                self.idle -= 1

    def wake(self) -> None:
        """More was queued (or the window closed): every idle worker goes and looks (and
        no longer counts as idle, so that a claim before they run starts new ones)."""
        work = self._work
        if work is not None:
            self._work = None
            self.idle = 0
            work.set()

    def close(self) -> None:
        """Nothing more will be queued: the idle workers end."""
        self.closed = True
        self.wake()
