"""One ``TransactionManager.recover()``: claiming the transactions whose driver died,
a window of them at a time, and driving each to an end with a ``RecoveryDriver``.

A transaction claimed before and still unfinished may be what killed its previous
recoverer, so such *suspects* are driven alone, after the others, one at a time.
"""

from __future__ import annotations

import logging

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
        compensation holds up no one but its own transaction.
        """
        results: list[TransactionResult] = []
        window = _Window()
        failure: StoreError | None = None
        async with anyio.create_task_group() as group:
            while True:
                await window.at_most(limit // 2)
                try:
                    if not await self._top_up(window, group, results, policy, limit):
                        break
                except StoreError as exc:
                    # Raised once the transactions being driven have finished: a failed
                    # claim must not cut short what an earlier one started.
                    failure = exc
                    break
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
        """Claim up to what the window has room for and start driving each claimed
        transaction; False when there was nothing left to claim."""
        claimed = await self._store.claim_expired(
            self._options.owner, self._options.lease_ttl, limit - window.taken
        )
        if not claimed:
            return False
        suspects: list[str] = []
        for tx, lease in claimed:
            if tx.recovery_attempts > 1:
                # Claimed before and still unfinished, it may be what killed its
                # recoverer. Driving it next to others would charge them an attempt
                # each time it kills this process too, so it is handed back at once
                # and driven alone, once the others are done.
                tx.recovery_attempts -= 1
                await self._store.record(lease, tx)
                await self._store.release(lease)
                suspects.append(tx.transaction_id)
                continue
            window.taken += 1
            group.start_soon(self._recover_in_window, window, results, tx, lease, policy)
        if suspects:
            await window.at_most(0)
            for transaction_id in suspects:
                alone = await self._claim_alone(transaction_id)
                if alone is not None:
                    result = await self._recover_one(*alone, policy)
                    if result is not None:
                        results.append(result)
        return True

    async def _recover_in_window(
        self,
        window: _Window,
        results: list[TransactionResult],
        tx: Transaction,
        lease: Lease,
        policy: RecoveryPolicy,
    ) -> None:
        try:
            result = await self._recover_one(tx, lease, policy, in_group=True)
            if result is not None:
                results.append(result)
        finally:
            window.release()

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
        self, tx: Transaction, lease: Lease, policy: RecoveryPolicy, in_group: bool = False
    ) -> TransactionResult | None:
        """Drive ``tx`` to an end; None when this process lost it or its journal."""
        if self._retained is not None:
            self._retained[tx.transaction_id] = tx
        try:
            driver = RecoveryDriver(tx, self._handlers, self._store, self._options)
            if in_group:
                driver.in_engine_task()
            return await driver.recover(lease, policy)
        except LeaseLostError:
            logger.warning(
                "transaction %s was taken over mid-recovery",
                tx.transaction_id,
                extra={"transaction_id": tx.transaction_id},
            )
        except StoreError:
            # The lease runs out and a later round tries again.
            logger.exception(
                "recovery of transaction %s failed",
                tx.transaction_id,
                extra={"transaction_id": tx.transaction_id},
            )
        return None


class _Window:
    """How many claimed transactions are being driven (``taken``), and a way to wait
    until few enough are."""

    __slots__ = ("_wake", "_wanted", "taken")

    def __init__(self) -> None:
        self.taken = 0
        self._wake: anyio.Event | None = None
        self._wanted = 0

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
