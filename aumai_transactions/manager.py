"""TransactionManager: the public async API over the engine and a store."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar

import anyio

from . import _operator
from ._actions import Actions
from ._building import StepBuilding, check_timeout
from ._listeners import EventListener, Listeners
from ._recovery_rounds import RecoveryRounds
from .engine import EngineOptions, LeaseRenewal, TransactionDriver
from .errors import StoreError
from .handlers import ActionHandler, HandlerRegistry, SyncHandlerMode
from .models import (
    LeaseSummary,
    RecoveryPolicy,
    RetryPolicy,
    Transaction,
    TransactionResult,
    TransactionState,
    new_id,
)
from .open_transaction import OpenTransaction
from .stores import MemoryStore, OperatorStore, Store, open_store

__all__ = ["TransactionManager"]

logger = logging.getLogger("aumai_transactions")

_T = TypeVar("_T")
_PENDING = TransactionState.PENDING
_ROLLBACK_FROM = (TransactionState.PENDING, TransactionState.COMMITTED)
_POLICIES = ("compensate", "resume")
_DRAIN_ON_EXIT = 5.0  # seconds ``async with manager:`` waits for async listeners at its end


def _checked_owner(owner: object, store: Store) -> str:
    checked = _operator.checked_name(owner, "owner")
    if not isinstance(store, OperatorStore):
        raise TypeError(
            f"owner= needs a store that can hand back a worker's leases "
            f"(an OperatorStore, as every built-in store is); {type(store).__name__} is not."
        )
    return checked


class TransactionManager(StepBuilding):
    """Begins, records and drives transactions.

    ``action_handlers`` maps action names to handlers (``handler(action, data)`` or
    ``handler(action, data, ctx)``, sync or async), or is an :class:`Actions`
    registry, whose compensations, retry policies and effects its steps then get by
    default (checked here: a compensation naming an unregistered action is refused,
    and in strict mode, so is a compensable step after an irreversible one). With no
    handlers at all the
    manager is a dry run: steps are sequenced and recorded, no code runs. An action
    with no handler is recorded only (logged at WARNING) unless ``strict=True``, which
    makes ``add_step`` refuse it.

    ``store`` is a Store or a store URL (default: in memory). A durable store is
    opened on first use; ``async with manager:`` opens it up front, keeps the leases
    of long-running handlers renewed, and closes it at the end.

    The manager remembers every transaction it began or drove, for
    ``get_transaction`` and ``get_all_transactions``. A long-lived service journaling
    to a durable store passes ``retain_finished=False``: a transaction is then
    forgotten once its commit, rollback or recovery returns (the store keeps it).

    ``owner`` gives the manager a stable identity (say ``"billing-worker-1"``), written
    as the owner of every lease it takes; by default it is a fresh ``manager-<uuid>``.
    When such a manager first opens its store (before it can start any driver of its
    own), it ends the leases its owner name still holds on in-flight transactions:
    its previous incarnation died, and what it left is recovered at once by the next
    ``recover()`` (of this or any manager) instead of after its leases expire. The
    claim raises each lease's epoch, which fences off the old incarnation should it
    still be running: one owner name belongs to one live manager.

    ``listeners`` are called with the typed events of ``aumai_transactions.events``
    (a transaction began, a step started, completed, failed, a compensation ran, ...);
    ``subscribe`` adds one later. A sync listener is called right after the journal
    write its event stands for; an ``async def`` one is fed through a queue of
    ``event_queue_size`` events that never holds the engine up (a full queue drops
    the event and counts it in ``events_dropped``). A listener that raises is logged
    and changes nothing. With no listener, no event is even built.
    """

    def __init__(
        self,
        action_handlers: Mapping[str, ActionHandler] | None = None,
        *,
        strict: bool = False,
        sync_handlers: SyncHandlerMode = "thread",
        store: Store | str | None = None,
        compensation_retry: RetryPolicy | None = None,
        compensation_timeout: float = 60.0,
        lease_ttl: float = 30.0,
        max_recovery_attempts: int = 3,
        retain_finished: bool = True,
        owner: str | None = None,
        listeners: Iterable[EventListener] = (),
        event_queue_size: int = 10_000,
    ) -> None:
        self._listeners = Listeners(listeners, event_queue_size)
        self._handlers = HandlerRegistry(action_handlers, sync_handlers=sync_handlers)
        self._actions = action_handlers if isinstance(action_handlers, Actions) else None
        if self._actions is not None:
            self._actions.check()
        self._retain_finished = retain_finished
        self.strict = strict
        if store is None:
            store = MemoryStore()
        elif isinstance(store, str):
            store = open_store(store)
        elif not isinstance(store, Store):
            raise TypeError(f"store must be a Store or a store URL, not {type(store).__name__}.")
        self.store: Store = store
        # A stable owner hands its previous incarnation's leases back on first use.
        self._store_opened = not store.durable and owner is None
        check_timeout(compensation_timeout, "compensation_timeout")
        check_timeout(lease_ttl, "lease_ttl")
        if compensation_retry is not None and not isinstance(compensation_retry, RetryPolicy):
            raise TypeError("compensation_retry must be a RetryPolicy.")
        if not isinstance(max_recovery_attempts, int) or max_recovery_attempts < 1:
            raise ValueError(
                f"max_recovery_attempts must be a positive integer, not {max_recovery_attempts!r}."
            )
        options: dict[str, Any] = {
            "owner": f"manager-{new_id()}" if owner is None else _checked_owner(owner, store),
            "lease_ttl": float(lease_ttl),
            "compensation_timeout": float(compensation_timeout),
            "max_recovery_attempts": max_recovery_attempts,
        }
        if compensation_retry is not None:
            options["compensation_retry"] = compensation_retry
        options["renewal"] = LeaseRenewal(float(lease_ttl))
        options["listeners"] = self._listeners
        self._options = EngineOptions(**options)
        self._transactions: dict[str, Transaction] = {}
        self._renewers = 0  # running keep_leases_renewed loops
        self._hands_back = owner is not None  # _hand_back_previous_leases has yet to run
        self._hand_back_lock: anyio.Lock | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def owner(self) -> str:
        """The lease owner id this manager writes with."""
        return self._options.owner

    async def _ensure_open(self) -> None:
        if not self._store_opened:
            await self.store.open()
            await self._hand_back_previous_leases()  # before this manager drives anything
            self._store_opened = True

    async def open(self) -> None:
        """Open the store (a durable one is otherwise opened on first use)."""
        await self._ensure_open()

    async def close(self) -> None:
        """Close the store, flushing a durable one."""
        await self.store.close()
        self._store_opened = not self.store.durable

    async def __aenter__(self) -> Self:
        await self.open()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        if self.store.durable:
            self._renewers += 1  # counted now: the task may start after the first driver
            self._task_group.start_soon(self.keep_leases_renewed)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(None, None, None)
        if self.store.durable:
            self._renewers -= 1
        with anyio.move_on_after(_DRAIN_ON_EXIT) as bound:  # a stuck listener must not hold it
            await self.drain_events()
        if bound.cancelled_caught:
            logger.warning(
                "%d event(s) not yet delivered to async listeners after %ss; they are "
                "delivered for as long as the event loop runs",
                self._listeners.queued,
                _DRAIN_ON_EXIT,
            )
        await self.close()

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Call ``listener`` with every event of the runs that start from now on.

        Returns a function that unsubscribes it. See the class docstring for how sync
        and async listeners are called.
        """
        return self._listeners.subscribe(listener)

    @property
    def events_dropped(self) -> int:
        """Events an async listener never got because its queue was full."""
        return self._listeners.dropped

    async def drain_events(self) -> None:
        """Wait until every async listener has been handed the events emitted so far.

        Leaving ``async with manager:`` does it, for at most 5 seconds; bound other
        calls with a cancel scope (``anyio.move_on_after``): a listener may never return.
        """
        await self._listeners.drain()

    async def keep_leases_renewed(self) -> None:
        """Renew this manager's leases every ``lease_ttl / 3`` seconds, until cancelled.

        ``async with manager:`` runs it in the background. Without it, leases are
        renewed only when a driver writes to the journal, so a handler that runs longer
        than ``lease_ttl`` could see its transaction taken over by a recovery worker.
        """
        renewal = self._options.renewal
        self._renewers += 1
        try:
            while True:
                await anyio.sleep(max(0.0, renewal.due - time.monotonic()))
                if not renewal.claim():  # a driver renewed meanwhile
                    continue
                try:
                    await self.store.renew(self.owner, self._options.lease_ttl)
                except Exception:  # the next journal write will tell the driver
                    logger.exception("lease renewal failed")
        finally:
            self._renewers -= 1

    async def _with_leases_renewed(self, run: Callable[[], Awaitable[_T]]) -> _T:
        """``await run()`` with this manager's leases renewed meanwhile.

        A durable store's lease must outlive the longest handler, or a recovery worker
        would take the transaction over while its step still runs. ``async with
        manager:`` renews in the background already; otherwise the renewal runs next
        to this one driver, for as long as it runs.
        """
        if self._renewers or not self.store.durable:
            return await run()
        outcome: _T
        error: BaseException | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self.keep_leases_renewed)
            try:
                outcome = await run()
            except anyio.get_cancelled_exc_class():
                raise  # through the task group, which passes it on as it is
            except BaseException as exc:  # raised below, not wrapped in an ExceptionGroup
                error = exc
            finally:
                group.cancel_scope.cancel()
        if error is not None:
            raise error
        return outcome

    # ------------------------------------------------------------------ driving

    def transaction(self, timeout_seconds: float | None = 60.0) -> OpenTransaction:
        """An open transaction, for ``async with``: its steps run one by one as the code
        decides them (``await tx.run(...)``), as an agent works.

        Leaving the block commits; an exception, the deadline (``TimeoutError``) or a
        cancellation compensates every step that ran or may have run, newest first,
        and carries on. ``tx.result`` holds the outcome afterwards.
        """
        return OpenTransaction(self, timeout_seconds)

    def _driver(self, tx: Transaction) -> TransactionDriver:
        return TransactionDriver(tx, self._handlers, self.store, self._options)

    async def commit(self, transaction: Transaction) -> TransactionResult:
        """Run the steps in order; undo the completed ones if a step fails.

        Raises ``ValueError`` if the transaction is not pending (including when
        another commit of it is already running).
        """
        if not isinstance(transaction, Transaction):
            raise TypeError(f"commit needs a Transaction, not {type(transaction).__name__}.")
        if transaction.state is not _PENDING:
            raise ValueError(
                f"Transaction {transaction.transaction_id} is in state "
                f"'{transaction.state.value}'; only 'pending' transactions can be committed."
            )
        # Claimed before the first await: a concurrent commit sees 'active' and refuses.
        # (A plain dictionary write: the model does not validate on assignment.)
        transaction.__dict__["state"] = TransactionState.ACTIVE
        self._transactions[transaction.transaction_id] = transaction
        driver: TransactionDriver | None = None
        try:
            if not self._store_opened:
                await self._ensure_open()
            driver = self._driver(transaction)
            if self._renewers or not self.store.durable:  # no renewal to run alongside
                result = await driver.commit()
            else:
                result = await self._with_leases_renewed(driver.commit)
        except StoreError:
            # No lease was taken (the store did not open, or refused or failed the
            # lease): nothing ran and nothing is in flight, so it may be committed again.
            if driver is None or driver.lease is None:
                transaction.state = _PENDING
            raise
        if not self._retain_finished:
            self._transactions.pop(transaction.transaction_id, None)
        return result

    async def rollback(self, transaction: Transaction) -> TransactionResult:
        """Compensate every step of a pending or committed transaction, in reverse."""
        if not isinstance(transaction, Transaction):
            raise TypeError(f"rollback needs a Transaction, not {type(transaction).__name__}.")
        previous = transaction.state
        if previous not in _ROLLBACK_FROM:
            raise ValueError(
                f"Transaction {transaction.transaction_id} is in state '{previous.value}'; "
                "only 'pending' or 'committed' transactions can be rolled back."
            )
        transaction.state = TransactionState.COMPENSATING
        self._transactions[transaction.transaction_id] = transaction
        driver: TransactionDriver | None = None
        try:
            await self._ensure_open()
            driver = self._driver(transaction)
            result = await self._with_leases_renewed(
                functools.partial(driver.rollback, (previous,))
            )
        except StoreError:
            if driver is None or driver.lease is None:  # nothing ran: as it was before
                transaction.state = previous
            raise
        if not self._retain_finished:
            self._transactions.pop(transaction.transaction_id, None)
        return result

    async def recover(
        self, policy: RecoveryPolicy = "compensate", *, limit: int = 1000
    ) -> list[TransactionResult]:
        """Drive every transaction whose driver died (its lease expired) to an end.

        ``policy="compensate"`` (default) aborts: completed and in-doubt steps are
        compensated in reverse order. ``"resume"`` re-runs the in-doubt step with the
        same idempotency key and carries on. A step's own ``recovery`` overrides the
        policy for that step. Returns one result per transaction claimed. At most
        ``limit`` are driven at once; as they finish, more are claimed, until none is
        left (a slow compensation holds up only its own transaction).
        """
        if policy not in _POLICIES:
            raise ValueError(f"policy must be 'compensate' or 'resume', not {policy!r}.")
        await self._ensure_open()
        return await self._with_leases_renewed(
            functools.partial(self._recovery_rounds().run, policy, limit)
        )

    def _recovery_rounds(self) -> RecoveryRounds:
        retained = self._transactions if self._retain_finished else None
        return RecoveryRounds(self.store, self._handlers, self._options, retained)

    @asynccontextmanager
    async def recovery_worker(
        self, policy: RecoveryPolicy = "compensate", *, interval: float = 1.0
    ) -> AsyncIterator[None]:
        """Recover abandoned transactions every ``interval`` seconds while the block runs."""
        if policy not in _POLICIES:
            raise ValueError(f"policy must be 'compensate' or 'resume', not {policy!r}.")
        check_timeout(interval, "interval")

        async def loop() -> None:
            while True:
                try:
                    await self.recover(policy)
                except Exception:
                    logger.exception("recovery round failed; retrying in %ss", interval)
                await anyio.sleep(interval)

        await self._ensure_open()
        async with anyio.create_task_group() as group:
            group.start_soon(loop)
            if self.store.durable:
                # Handlers run by recovery may outlast a lease: keep this owner's renewed.
                group.start_soon(self.keep_leases_renewed)
            try:
                yield
            finally:
                group.cancel_scope.cancel()

    # ------------------------------------------------------------------ registry

    def get_transaction(self, transaction_id: str) -> Transaction | None:
        """The transaction this manager knows by that id, or None."""
        return self._transactions.get(transaction_id)

    def get_all_transactions(self) -> list[Transaction]:
        """Every transaction this manager knows, oldest first."""
        return list(self._transactions.values())

    def register_transaction(self, transaction: Transaction) -> None:
        """Make a transaction (e.g. one loaded with ``model_validate``) known to this manager."""
        if not isinstance(transaction, Transaction):
            raise TypeError(
                f"register_transaction needs a Transaction, not {type(transaction).__name__}."
            )
        self._transactions[transaction.transaction_id] = transaction

    def forget(self, transaction_id: str) -> None:
        """Drop a transaction from this manager's registry (the store keeps it)."""
        self._transactions.pop(transaction_id, None)

    async def save(self, transaction: Transaction) -> None:
        """Write a transaction (typically pending) to the store.

        A pending transaction never overwrites a stored copy that has moved on (was
        committed or rolled back meanwhile, by this or another process):
        ``LeaseConflictError`` says so and nothing is written.
        """
        await self._ensure_open()
        if transaction.state is _PENDING:
            await self.store.save(transaction, expected=(_PENDING,))
        else:
            await self.store.save(transaction)
        self._transactions[transaction.transaction_id] = transaction

    # ------------------------------------------------------------------ operators
    # Leases made visible, a stable worker identity, and what an operator does with a
    # transaction that ended compensation_failed (or dead_letter).

    async def _hand_back_previous_leases(self) -> None:
        """With a stable owner, once: end the leases that owner still holds on in-flight
        transactions (its previous incarnation's), so recovery takes them now.

        Runs when the store is first opened, before ``_ensure_open`` lets any driver
        of this manager start: none of those leases can be this incarnation's own.
        Concurrent first callers wait for the one that does it.
        """
        if not self._hands_back:
            return
        lock = self._hand_back_lock
        if lock is None:
            lock = self._hand_back_lock = anyio.Lock()
        async with lock:
            if not self._hands_back:
                return
            store = self.store
            assert isinstance(store, OperatorStore)  # checked in __init__
            released = await store.release_all(self.owner)
            self._hands_back = False
        if released:
            logger.warning(
                "owner %s: %d in-flight transaction(s) left by a previous incarnation of "
                "this owner are handed to recovery now",
                self.owner,
                released,
            )

    async def waiting_on_leases(self) -> LeaseSummary:
        """How many in-flight transactions wait on a live lease held by another owner
        (recovery cannot take them yet), when the first of those leases expires, and
        how many recovery could take now.

        After ``recover()``: ``waiting`` transactions are being driven, or were left
        by a driver that died less than a lease ago; they become recoverable at
        ``first_expiry`` at the earliest.
        """
        store = _operator.operator_store(self.store, "waiting_on_leases")
        await self._ensure_open()
        return await store.lease_summary(exclude_owner=self.owner)

    async def retry_compensations(self, transaction: Transaction | str) -> TransactionResult:
        """Retry the compensations of a ``compensation_failed`` transaction with the
        registered handlers, newest first, each journaled as in any rollback.

        Re-runs every compensation that failed, and those the failed pass never reached
        (its time bound ran out); a compensation that succeeded is not run again.
        Returns the result: ``rolled_back`` when all succeed, else
        ``compensation_failed`` with the new errors in ``compensation_errors``. (An
        open transaction whose code committed after a caught group failure keeps its
        commit: only the compensations of the siblings left in doubt re-run, and it
        ends ``committed``.)

        ``transaction`` is a Transaction (updated in place, as by a commit) or its id.
        Raises ValueError for another state (naming it), for a transaction held under
        a live lease (``LeaseConflictError``), or when a compensating action has no
        handler here (nothing is run then).
        """
        return await _operator.retry_compensations(self, transaction)

    async def resolve(
        self, transaction: Transaction | str, note: str, *, by: str | None = None
    ) -> Transaction:
        """Close a ``compensation_failed`` or ``dead_letter`` transaction by hand.

        For when an operator has put things right outside the engine (refunded by hand
        in the payment provider's dashboard, say). The transaction ends ``resolved``,
        a terminal state that is not a problem; ``note`` (what was done) and ``by``
        (who did it) are kept in the journal as ``transaction.resolution``, with the
        time and the state it had. The steps keep the record of what failed.

        Returns the resolved transaction (the one given, updated in place, if one was).
        Raises ValueError for another state (naming it), a blank or over-long note, or
        a transaction held under a live lease (``LeaseConflictError``); nothing is
        written then.
        """
        return await _operator.resolve(self, transaction, note, by)
