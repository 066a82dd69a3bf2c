"""The Store protocol: the journal every backend implements.

A store keeps transactions (header + steps) and the *lease* of each transaction that a
driver is running: owner id, expiry and epoch. The epoch is a fencing token: it grows
by one each time a driver takes the lease, and every write carries the epoch its
driver was given, so a driver that lost its lease (paused, partitioned) can never
overwrite the work of the driver that took over.

Writes come in two strengths. ``durable=True`` returns only once the record survives a
crash of this process (and, for file and server backends, of the machine). With
``durable=False`` the store may hold the record back and make it durable together with
the next write; the engine uses it for a step's completion, which is always followed
by another write before any further side effect.

A store may also offer ``record_nowait`` (``RecordsNowait``; every built-in store
does): the same write as ``record``, handed over without a coroutine of its own. The
engine journals two or three records a step, so it uses it wherever a store class
defines it beside its ``record`` (``RecordThroughNowait`` makes ``record`` of it); a
subclass that overrides ``record`` alone is still called through its ``record``.

``OperatorStore`` adds what operators and workers with a stable identity need (every
built-in backend has it): reading leases, handing a dead worker's leases back to
recovery, and taking one stored transaction for an operator action. It is a protocol
of its own, so a store written against ``Store`` alone keeps working for everything
else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from datetime import datetime
from typing import NamedTuple, Protocol, runtime_checkable

from ..models import LeaseInfo, LeaseSummary, Transaction, TransactionState, TransactionStep

__all__ = [
    "Lease",
    "ListPosition",
    "OperatorStore",
    "RecordThroughNowait",
    "RecordsNowait",
    "Store",
]


class Lease(NamedTuple):
    """The right to drive one transaction, until ``expires_at``, as of ``epoch``.

    (A named tuple: leases are made once per transaction run, on the hot path.)
    """

    transaction_id: str
    owner: str
    epoch: int
    expires_at: datetime


class ListPosition(NamedTuple):
    """Where a page of ``Store.list`` ended: the last transaction's creation time and id.

    Listings are ordered newest ``created_at`` first, ties by ``transaction_id``
    (descending), the same on every backend; ``list(before=position)`` continues just
    after this transaction. A page boundary given by a position, not by an offset,
    stays put while new transactions arrive at the top, and costs one index seek
    however deep the page is.
    """

    created_at: datetime
    transaction_id: str

    @classmethod
    def of(cls, tx: Transaction) -> ListPosition:
        """The position just after ``tx`` (the last transaction of a page)."""
        return cls(tx.created_at, tx.transaction_id)


@runtime_checkable
class Store(Protocol):
    """An async journal of transactions; every backend passes one conformance suite.

    Stores open with ``await store.open()`` or ``async with store:`` (no I/O in
    constructors) and are safe to use from many tasks of one event loop at once.
    """

    @property
    def url(self) -> str:
        """Where the store lives, secrets masked (``memory://``, ``sqlite:///...``)."""
        ...

    @property
    def durable(self) -> bool:
        """True when records survive the process; leases only matter then."""
        ...

    async def open(self) -> None:
        """Connect, create or migrate the schema. Idempotent."""
        ...

    async def close(self) -> None:
        """Flush pending writes and release resources. Idempotent."""
        ...

    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def save(
        self, tx: Transaction, *, expected: Iterable[TransactionState] | None = None
    ) -> None:
        """Insert ``tx``, or replace the stored copy when no driver holds it.

        Raises ``LeaseConflictError`` when the stored copy is active or compensating
        under a lease that has not expired, or, with ``expected``, when a stored copy
        exists in a state not among them (so that a read-modify-save of a pending
        transaction cannot undo a commit that happened in between). Nothing is written
        then.
        """
        ...

    async def acquire(
        self,
        tx: Transaction,
        owner: str,
        ttl: float,
        expected: Iterable[TransactionState],
    ) -> Lease:
        """Write ``tx`` in full (header and every step) and take its lease, atomically.

        Succeeds only if the stored copy is absent or in one of the ``expected``
        states and not held under a live lease; otherwise raises
        ``LeaseConflictError`` and writes nothing. The returned lease has an epoch
        greater than any given out before for this transaction.

        The acquire itself need not be durable when it returns: nothing happens
        under the lease before the driver's next durable record. A store whose class
        says ``acquire_carries_intent = True`` (every built-in durable store) makes
        the acquire of a transaction with a step ``running`` durable before it
        returns: the lease then carries that step's intent, and the engine writes no
        intent of its own for the step's first attempt (one write a commit fewer).
        """
        ...

    async def record(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
    ) -> None:
        """Write the header of ``tx`` and, if given, the full row of ``step``.

        ``step`` must be one of ``tx.steps``, but need not have been there at
        ``acquire``: a step appended since (an open transaction's next step, a
        parallel group's) is stored at its position in ``tx.steps``, together with
        every other step appended before it that the store has not seen yet, and its
        agent counts for ``list(agent_id=...)``. A store never holds a gap in a
        transaction's steps.

        Records of one transaction may come from many tasks at once under one lease
        (the steps of a parallel group), durable or not: the store applies them in
        call order, so each step keeps its latest record and the header the latest
        snapshot, and a durable store lets concurrent durable records share a commit.

        Raises ``LeaseLostError`` when the stored epoch is no longer ``lease.epoch``;
        nothing is written then (no step either, appended or not). A non-durable write
        that turns out stale is dropped and the next write for the same lease raises.
        """
        ...

    async def renew(self, owner: str, ttl: float) -> int:
        """Push the expiry of every in-flight lease held by ``owner`` to now + ttl.

        Returns how many leases were renewed. Leases taken over by another owner are
        not touched, nor those of transactions whose recovery is blocked (a
        ``blocked_reason`` is set): theirs lapse, so a worker that has the missing
        handler can take them over.
        """
        ...

    async def release(self, lease: Lease) -> None:
        """Give up a lease (the epoch stays, so the next one is greater)."""
        ...

    async def claim_expired(
        self, owner: str, ttl: float, limit: int
    ) -> Sequence[tuple[Transaction, Lease]]:
        """Take the lease of up to ``limit`` active/compensating transactions whose
        lease expired (or that have none), adding one to their ``recovery_attempts``.

        Concurrent claimers never receive the same transaction.
        """
        ...

    async def load(self, transaction_id: str) -> Transaction | None:
        """The stored transaction, or None. Raises ``CorruptRecordError`` if invalid."""
        ...

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
        """Transactions matching every filter given, newest ``created_at`` first (ties:
        greater ``transaction_id`` first).

        ``agent_id`` and ``action``: with at least one step by that agent, of that
        action. ``since`` is inclusive, ``until`` exclusive. ``before``: only those
        after that position in this order (the next page; see ``ListPosition``).
        """
        ...

    async def count_by_state(self) -> dict[TransactionState, int]:
        """How many transactions are stored in each state (absent states omitted)."""
        ...

    async def delete(self, transaction_id: str) -> bool:
        """Remove one transaction; True if it existed. Refuses a live-leased one."""
        ...

    async def purge(self, *, states: Iterable[TransactionState], older_than: datetime) -> int:
        """Remove terminal transactions in ``states`` created before ``older_than``.

        In-flight states are never purged. Returns how many were removed.
        """
        ...


@runtime_checkable
class RecordsNowait(Protocol):
    """A store that can hand a record over without suspending (optional)."""

    def record_nowait(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
        previous: TransactionStep | None = None,
    ) -> Awaitable[object] | None:
        """Start ``record(lease, tx, step, durable=durable)`` now; return None when
        nothing is left to wait for (a non-durable record, or one written already),
        else what to await: it completes, or raises, as ``record`` would.

        ``previous``, when given, is another step of ``tx`` whose row this record
        writes too, before ``step``'s: what ``record(lease, tx, previous,
        durable=False)`` just before would write, in the same fenced write. The engine
        folds a step's completion into the record that follows it at once (the next
        step's intent, the transaction's end) this way: one record where there were two.

        The record is handed over before this returns, so records keep the order of
        these calls. An error found at once (a closed store; a stale epoch, where the
        store knows it already) is raised here, any other by what it returns, which
        must be awaited.
        """
        ...


class RecordThroughNowait:
    """``record`` for a store whose ``record_nowait`` does the writing (a mixin of the
    built-in stores, so that the two cannot drift apart)."""

    __slots__ = ()

    def record_nowait(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
        previous: TransactionStep | None = None,
    ) -> Awaitable[object] | None:
        raise NotImplementedError

    async def record(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
    ) -> None:
        written = self.record_nowait(lease, tx, step, durable=durable)
        if written is not None:
            await written


@runtime_checkable
class OperatorStore(Store, Protocol):
    """A Store that shows its leases and hands transactions to operators and to a
    worker's next incarnation."""

    async def leases(self, transaction_ids: Iterable[str]) -> dict[str, LeaseInfo]:
        """The lease of each stored transaction among ``transaction_ids``, whatever its
        state; ids not stored are left out."""
        ...

    async def lease_summary(self, *, exclude_owner: str | None = None) -> LeaseSummary:
        """How many in-flight transactions wait on a live lease held by anyone but
        ``exclude_owner``, when the first of those expires, and how many recovery may
        claim now."""
        ...

    async def release_all(self, owner: str) -> int:
        """End at once every lease ``owner`` holds on an in-flight transaction.

        For a worker with a stable identity whose previous incarnation died: its
        transactions become claimable by ``claim_expired`` now instead of when their
        leases expire. The epochs stay, so whoever claims one next gets a greater
        epoch, which fences off the old incarnation should it still be running.
        Returns how many leases were released.
        """
        ...

    async def claim(
        self,
        transaction_id: str,
        owner: str,
        ttl: float,
        expected: Iterable[TransactionState],
    ) -> tuple[Transaction, Lease] | None:
        """Take the lease of one stored transaction, and return it as stored.

        Unlike ``acquire``, nothing of the caller's is written: a copy read earlier can
        never overwrite what another driver wrote since. Returns None when the
        transaction is not stored; raises ``LeaseConflictError`` (writing nothing)
        when it is in a state not among ``expected`` or held under a live lease.
        ``recovery_attempts`` is left as it is (this is not a recovery).
        """
        ...


def driven_elsewhere(transaction_id: str, owner: object, expires_at: object) -> str:
    """The ``LeaseConflictError`` text for a transaction another worker holds: what
    will happen to it, rather than an invitation to try again (its holder finishes it;
    recovery takes it over only if that worker dies and the lease lapses)."""
    return (
        f"Transaction {transaction_id} is being driven by {owner}, whose lease runs until "
        f"{expires_at}: that worker finishes it; should it die, recovery takes the "
        "transaction over once the lease has expired."
    )
