"""One ``TransactionManager.recover()``: claiming the transactions whose driver died,
in batches, and driving each to an end with a ``RecoveryDriver``.

A transaction claimed before and still unfinished may be what killed its previous
recoverer, so such *suspects* are driven alone, after the others, one at a time.
"""

from __future__ import annotations

import logging

import anyio

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
        """Claim expired leases ``limit`` at a time and drive each claimed transaction to
        an end, until none is left; one result per transaction driven."""
        results: list[TransactionResult] = []
        while True:
            claimed = await self._store.claim_expired(
                self._options.owner, self._options.lease_ttl, limit
            )
            if not claimed:
                return results
            # A transaction claimed before and still unfinished may be what killed its
            # recoverer. Driving it next to others would charge them an attempt each
            # time it kills this process too, so such suspects are handed back at once
            # and driven alone, one after another, after the first-timers.
            fresh = [(tx, lease) for tx, lease in claimed if tx.recovery_attempts <= 1]
            suspects = [(tx, lease) for tx, lease in claimed if tx.recovery_attempts > 1]
            for tx, lease in suspects:
                tx.recovery_attempts -= 1
                await self._store.record(lease, tx)
                await self._store.release(lease)
            batch: list[TransactionResult | None] = [None] * len(fresh)
            async with anyio.create_task_group() as group:
                for index, (tx, lease) in enumerate(fresh):
                    group.start_soon(self._recover_one, batch, index, tx, lease, policy)
            for suspect, _ in suspects:
                alone = await self._claim_alone(suspect.transaction_id)
                if alone is not None:
                    batch.append(None)
                    await self._recover_one(batch, len(batch) - 1, *alone, policy)
            results.extend(r for r in batch if r is not None)

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
        self,
        batch: list[TransactionResult | None],
        index: int,
        tx: Transaction,
        lease: Lease,
        policy: RecoveryPolicy,
    ) -> None:
        if self._retained is not None:
            self._retained[tx.transaction_id] = tx
        try:
            driver = RecoveryDriver(tx, self._handlers, self._store, self._options)
            batch[index] = await driver.recover(lease, policy)
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
