"""A Store that hands every call to another: the base of the tests' store wrappers
(fault injection, kill points, counting)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from aumai_transactions import Lease, Store, Transaction, TransactionState, TransactionStep

__all__ = ["DelegatingStore"]


class DelegatingStore:
    """A Store that hands every call to ``inner``: the base of the test wrappers."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def durable(self) -> bool:
        return self.inner.durable

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> DelegatingStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def save(self, tx: Transaction) -> None:
        await self.inner.save(tx)

    async def acquire(
        self, tx: Transaction, owner: str, ttl: float, expected: Iterable[TransactionState]
    ) -> Lease:
        return await self.inner.acquire(tx, owner, ttl, expected)

    async def record(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
    ) -> None:
        await self.inner.record(lease, tx, step, durable=durable)

    async def renew(self, owner: str, ttl: float) -> int:
        return await self.inner.renew(owner, ttl)

    async def release(self, lease: Lease) -> None:
        await self.inner.release(lease)

    async def claim_expired(
        self, owner: str, ttl: float, limit: int
    ) -> Sequence[tuple[Transaction, Lease]]:
        return await self.inner.claim_expired(owner, ttl, limit)

    async def load(self, transaction_id: str) -> Transaction | None:
        return await self.inner.load(transaction_id)

    async def list(
        self,
        *,
        state: TransactionState | None = None,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[Transaction]:
        return await self.inner.list(
            state=state, agent_id=agent_id, since=since, until=until, limit=limit
        )

    async def count_by_state(self) -> dict[TransactionState, int]:
        return await self.inner.count_by_state()

    async def delete(self, transaction_id: str) -> bool:
        return await self.inner.delete(transaction_id)

    async def purge(self, *, states: Iterable[TransactionState], older_than: datetime) -> int:
        return await self.inner.purge(states=states, older_than=older_than)
