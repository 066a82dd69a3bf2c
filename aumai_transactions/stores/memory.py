"""MemoryStore: the library's default store, and the test aid users reach for.

It keeps the transaction objects it is given (no copies: the manager drives the very
objects the store holds, which keeps the hot path free of serialization), enforces
leases and epochs exactly like the durable backends, and forgets everything when the
process ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from ..errors import LeaseConflictError, LeaseLostError
from ..models import (
    IN_FLIGHT_STATES,
    TERMINAL_STATES,
    LeaseInfo,
    LeaseSummary,
    Transaction,
    TransactionState,
    TransactionStep,
    utcnow,
)
from ._base import Lease, ListPosition, RecordThroughNowait, driven_elsewhere

__all__ = ["MemoryStore"]


class _LeaseRecord:
    __slots__ = ("epoch", "expires_at", "owner")

    def __init__(self) -> None:
        self.owner: str | None = None
        self.expires_at: datetime | None = None
        self.epoch = 0

    def live(self, now: datetime) -> bool:
        return self.owner is not None and self.expires_at is not None and self.expires_at > now


def _check_expected(
    transaction_id: str, state: TransactionState, expected: Iterable[TransactionState]
) -> None:
    wanted = [TransactionState(s) for s in expected]
    if state not in wanted:
        raise LeaseConflictError(
            f"Transaction {transaction_id} is stored in state '{state.value}'; expected "
            + " or ".join(f"'{s.value}'" for s in wanted)
            + "."
        )


class MemoryStore(RecordThroughNowait):
    """A non-durable store in this process's memory."""

    never_suspends = True
    """None of its methods yields to the event loop (the engine may skip cancel scopes)."""

    def __init__(self) -> None:
        self._transactions: dict[str, Transaction] = {}
        self._leases: dict[str, _LeaseRecord] = {}

    @property
    def url(self) -> str:
        return "memory://"

    @property
    def durable(self) -> bool:
        return False

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_not_driven(self, transaction_id: str, now: datetime) -> None:
        stored = self._transactions.get(transaction_id)
        lease = self._leases.get(transaction_id)
        if (
            stored is not None
            and stored.state in IN_FLIGHT_STATES
            and lease is not None
            and lease.live(now)
        ):
            raise LeaseConflictError(
                f"Transaction {transaction_id} is {stored.state.value} under a live lease "
                f"held by {lease.owner}; it cannot be replaced."
            )

    async def save(
        self, tx: Transaction, *, expected: Iterable[TransactionState] | None = None
    ) -> None:
        self._check_not_driven(tx.transaction_id, utcnow())
        stored = self._transactions.get(tx.transaction_id)
        if expected is not None and stored is not None and stored is not tx:
            _check_expected(tx.transaction_id, stored.state, expected)
        self._transactions[tx.transaction_id] = tx

    async def acquire(
        self,
        tx: Transaction,
        owner: str,
        ttl: float,
        expected: Iterable[TransactionState],
    ) -> Lease:
        tid = tx.transaction_id
        now = utcnow()
        stored = self._transactions.get(tid)
        lease = self._leases.get(tid)
        if lease is None:
            lease = self._leases[tid] = _LeaseRecord()
        elif lease.owner is not None and lease.live(now):
            raise LeaseConflictError(driven_elsewhere(tid, lease.owner, lease.expires_at))
        if stored is not None and stored is not tx:
            _check_expected(tid, stored.state, expected)
        lease.owner = owner
        lease.expires_at = now + timedelta(seconds=ttl)
        lease.epoch += 1
        self._transactions[tid] = tx
        return Lease(tid, owner, lease.epoch, lease.expires_at)

    def record_nowait(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
        previous: TransactionStep | None = None,
    ) -> None:
        """``record``, done before it returns: nothing is ever left to wait for (the
        store holds ``tx`` itself, ``previous`` and ``step`` with it)."""
        held = self._leases.get(lease.transaction_id)
        if held is None or held.epoch != lease.epoch:
            raise LeaseLostError(
                f"Transaction {lease.transaction_id}: lease epoch {lease.epoch} is stale "
                f"(now {held.epoch if held else 'none'}); this driver must stop."
            )
        self._transactions[tx.transaction_id] = tx

    async def renew(self, owner: str, ttl: float) -> int:
        now = utcnow()
        expires = now + timedelta(seconds=ttl)
        renewed = 0
        for tid, lease in self._leases.items():
            tx = self._transactions.get(tid)
            if (
                lease.owner == owner
                and tx is not None
                and tx.state in IN_FLIGHT_STATES
                and tx.blocked_reason is None
            ):
                lease.expires_at = expires
                renewed += 1
        return renewed

    async def release(self, lease: Lease) -> None:
        held = self._leases.get(lease.transaction_id)
        if held is not None and held.epoch == lease.epoch:
            held.owner = None
            held.expires_at = None

    async def claim_expired(
        self, owner: str, ttl: float, limit: int
    ) -> Sequence[tuple[Transaction, Lease]]:
        now = utcnow()
        claimed: list[tuple[Transaction, Lease]] = []
        for tid, tx in self._transactions.items():
            if len(claimed) >= limit:
                break
            if tx.state not in IN_FLIGHT_STATES:
                continue
            lease = self._leases.setdefault(tid, _LeaseRecord())
            if lease.live(now):
                continue
            lease.owner = owner
            lease.expires_at = now + timedelta(seconds=ttl)
            lease.epoch += 1
            tx.recovery_attempts += 1
            claimed.append((tx, Lease(tid, owner, lease.epoch, lease.expires_at)))
        return claimed

    async def claim(
        self,
        transaction_id: str,
        owner: str,
        ttl: float,
        expected: Iterable[TransactionState],
    ) -> tuple[Transaction, Lease] | None:
        tx = self._transactions.get(transaction_id)
        if tx is None:
            return None
        now = utcnow()
        lease = self._leases.setdefault(transaction_id, _LeaseRecord())
        if lease.live(now):
            raise LeaseConflictError(
                f"Transaction {transaction_id} is held by {lease.owner} under a lease that "
                f"expires at {lease.expires_at}; it cannot be taken before then."
            )
        _check_expected(transaction_id, tx.state, expected)
        lease.owner = owner
        lease.expires_at = now + timedelta(seconds=ttl)
        lease.epoch += 1
        return tx, Lease(transaction_id, owner, lease.epoch, lease.expires_at)

    async def release_all(self, owner: str) -> int:
        released = 0
        for tid, lease in self._leases.items():
            tx = self._transactions.get(tid)
            if lease.owner == owner and tx is not None and tx.state in IN_FLIGHT_STATES:
                lease.owner = None
                lease.expires_at = None
                released += 1
        return released

    # ------------------------------------------------------------------ reads

    async def leases(self, transaction_ids: Iterable[str]) -> dict[str, LeaseInfo]:
        now = utcnow()
        found: dict[str, LeaseInfo] = {}
        for tid in transaction_ids:
            if tid not in self._transactions:
                continue
            lease = self._leases.get(tid)
            if lease is None:
                found[tid] = LeaseInfo(transaction_id=tid)
            else:
                found[tid] = LeaseInfo(
                    transaction_id=tid,
                    owner=lease.owner,
                    expires_at=lease.expires_at,
                    epoch=lease.epoch,
                    live=lease.live(now),
                )
        return found

    async def lease_summary(self, *, exclude_owner: str | None = None) -> LeaseSummary:
        now = utcnow()
        waiting: list[datetime] = []
        claimable = blocked = 0
        for tid, tx in self._transactions.items():
            if tx.state not in IN_FLIGHT_STATES:
                continue
            blocked += tx.blocked_reason is not None
            lease = self._leases.get(tid)
            if lease is None or not lease.live(now):
                claimable += 1
            elif lease.owner != exclude_owner and lease.expires_at is not None:
                waiting.append(lease.expires_at)
        return LeaseSummary(
            waiting=len(waiting),
            first_expiry=min(waiting, default=None),
            claimable=claimable,
            blocked=blocked,
        )

    async def load(self, transaction_id: str) -> Transaction | None:
        return self._transactions.get(transaction_id)

    async def list(
        self,
        *,
        state: TransactionState | None = None,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        action: str | None = None,
        before: ListPosition | None = None,
    ) -> list[Transaction]:
        found = [
            tx
            for tx in self._transactions.values()
            if (state is None or tx.state is state)
            and (since is None or tx.created_at >= since)
            and (until is None or tx.created_at < until)
            and (agent_id is None or any(s.agent_id == agent_id for s in tx.steps))
            and (action is None or any(s.action == action for s in tx.steps))
            and (before is None or (tx.created_at, tx.transaction_id) < before)
        ]
        found.sort(key=lambda tx: (tx.created_at, tx.transaction_id), reverse=True)
        return found if limit is None else found[:limit]

    async def count_by_state(self) -> dict[TransactionState, int]:
        counts: dict[TransactionState, int] = {}
        for tx in self._transactions.values():
            counts[tx.state] = counts.get(tx.state, 0) + 1
        return counts

    async def delete(self, transaction_id: str) -> bool:
        self._check_not_driven(transaction_id, utcnow())
        self._leases.pop(transaction_id, None)
        return self._transactions.pop(transaction_id, None) is not None

    async def purge(self, *, states: Iterable[TransactionState], older_than: datetime) -> int:
        wanted = frozenset(states) & TERMINAL_STATES
        doomed = [
            tid
            for tid, tx in self._transactions.items()
            if tx.state in wanted and tx.created_at < older_than
        ]
        for tid in doomed:
            del self._transactions[tid]
            self._leases.pop(tid, None)
        return len(doomed)
