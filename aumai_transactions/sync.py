"""The blocking facade: the same classes, methods and arguments, without ``await``.

Every call runs on one event loop that lives in a background thread for the life of
the process (an anyio blocking portal), so stores and their connections stay bound to
one loop; except a commit or rollback that cannot yield before its handlers ran (the
in-memory store, inline sync handlers: see ``_here``), which runs in the calling thread,
sparing the hop. Calling the facade from inside a running event loop would deadlock or
block that loop, so it refuses with a RuntimeError.

Ctrl-C (KeyboardInterrupt in the main thread) during a blocking call is a cancellation
of that call, exactly as in the async API: the running step is cut short, the engine
compensates (shielded, bounded by ``compensation_timeout``), the call waits for that
to finish, and then KeyboardInterrupt is raised from the caller's line. A rollback,
being compensation itself, runs to its end first. Further Ctrl-Cs while compensation
runs are ignored (logged): the promise is that nothing completed is left undone. To
stop harder, kill the process; with a durable store, ``recover`` finishes the job.

Open transactions work the same way: ``with manager.transaction() as tx:`` and
``tx.run(...)``, ``with tx.parallel() as group:`` and ``group.run(...)``. Ctrl-C in a
``tx.run`` cancels that step; the exception then ends the block, which compensates
(the transaction ends ``failed``) before KeyboardInterrupt goes on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Self

from . import manager as _manager
from . import saga as _saga
from ._actions import Actions
from ._blocking_open import OpenTransaction, ParallelGroup
from ._listeners import EventListener
from ._portal import _blocking_portal, _drive, _run
from .handlers import ActionHandler, SyncHandlerMode
from .models import (
    LeaseSummary,
    RecoveryPolicy,
    RetryPolicy,
    Transaction,
    TransactionResult,
    TransactionStep,
)
from .stores import Store

__all__ = ["Actions", "OpenTransaction", "ParallelGroup", "SagaOrchestrator", "TransactionManager"]


class TransactionManager:
    """Blocking twin of :class:`aumai_transactions.TransactionManager`."""

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
        self.manager = _manager.TransactionManager(
            action_handlers,
            strict=strict,
            sync_handlers=sync_handlers,
            store=store,
            compensation_retry=compensation_retry,
            compensation_timeout=compensation_timeout,
            lease_ttl=lease_ttl,
            max_recovery_attempts=max_recovery_attempts,
            retain_finished=retain_finished,
            owner=owner,
            listeners=listeners,
            event_queue_size=event_queue_size,
        )
        self._renewing: Future[None] | None = None

    @property
    def store(self) -> Store:
        """The store behind the manager."""
        return self.manager.store

    @property
    def _transactions(self) -> dict[str, Transaction]:
        # The original tool's own tests put a backdated copy of a transaction here.
        return self.manager._transactions

    def begin(self, timeout_seconds: float | None = 60.0) -> Transaction:
        """See :meth:`aumai_transactions.TransactionManager.begin`."""
        return self.manager.begin(timeout_seconds)

    def add_step(
        self,
        transaction: Transaction,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
        group: str | None = None,
        max_concurrency: int | None = None,
    ) -> TransactionStep:
        """See :meth:`aumai_transactions.TransactionManager.add_step`."""
        return self.manager.add_step(
            transaction,
            agent_id,
            action,
            data,
            compensating_action,
            retry=retry,
            recovery=recovery,
            group=group,
            max_concurrency=max_concurrency,
        )

    def new_step(
        self,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
        group: str | None = None,
        max_concurrency: int | None = None,
        live: bool = False,
    ) -> TransactionStep:
        """See :meth:`aumai_transactions.TransactionManager.new_step`."""
        return self.manager.new_step(
            agent_id,
            action,
            data,
            compensating_action,
            retry=retry,
            recovery=recovery,
            group=group,
            max_concurrency=max_concurrency,
            live=live,
        )

    def transaction(self, timeout_seconds: float | None = 60.0) -> OpenTransaction:
        """An open transaction, for ``with``: ``tx.run(...)`` runs each step as the code
        decides it. See :meth:`aumai_transactions.TransactionManager.transaction`."""
        return OpenTransaction(self.manager.transaction(timeout_seconds))

    def commit(self, transaction: Transaction) -> TransactionResult:
        """See :meth:`aumai_transactions.TransactionManager.commit`."""
        return _drive(self.manager, transaction, self.manager.commit)

    def rollback(self, transaction: Transaction) -> TransactionResult:
        """See :meth:`aumai_transactions.TransactionManager.rollback`."""
        return _drive(self.manager, transaction, self.manager.rollback)

    def recover(
        self, policy: RecoveryPolicy = "compensate", *, limit: int = 1000
    ) -> list[TransactionResult]:
        """See :meth:`aumai_transactions.TransactionManager.recover`."""
        return _run(functools.partial(self.manager.recover, policy, limit=limit))

    def waiting_on_leases(self) -> LeaseSummary:
        """See :meth:`aumai_transactions.TransactionManager.waiting_on_leases`."""
        return _run(self.manager.waiting_on_leases)

    def retry_compensations(self, transaction: Transaction | str) -> TransactionResult:
        """See :meth:`aumai_transactions.TransactionManager.retry_compensations`."""
        return _run(self.manager.retry_compensations, transaction)

    def resolve(
        self, transaction: Transaction | str, note: str, *, by: str | None = None
    ) -> Transaction:
        """See :meth:`aumai_transactions.TransactionManager.resolve`."""
        return _run(functools.partial(self.manager.resolve, transaction, note, by=by))

    def save(self, transaction: Transaction) -> None:
        """See :meth:`aumai_transactions.TransactionManager.save`."""
        _run(self.manager.save, transaction)

    def get_transaction(self, transaction_id: str) -> Transaction | None:
        """See :meth:`aumai_transactions.TransactionManager.get_transaction`."""
        return self.manager.get_transaction(transaction_id)

    def get_all_transactions(self) -> list[Transaction]:
        """See :meth:`aumai_transactions.TransactionManager.get_all_transactions`."""
        return self.manager.get_all_transactions()

    def register_transaction(self, transaction: Transaction) -> None:
        """See :meth:`aumai_transactions.TransactionManager.register_transaction`."""
        self.manager.register_transaction(transaction)

    def close(self) -> None:
        """Stop renewing leases and close the store (flushing a durable one)."""
        if self._renewing is not None:
            self._renewing.cancel()
            self._renewing = None
        _run(self.manager.close)

    def open(self) -> None:
        """Open the store and, for a durable one, keep this manager's leases renewed
        in the background (as ``async with`` does for the async manager) until
        ``close``. ``with manager:`` calls both."""
        _run(self.manager.open)
        if self.manager.store.durable and self._renewing is None:
            self._renewing = _blocking_portal().start_task_soon(self.manager.keep_leases_renewed)

    def forget(self, transaction_id: str) -> None:
        """See :meth:`aumai_transactions.TransactionManager.forget`."""
        self.manager.forget(transaction_id)

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """See :meth:`aumai_transactions.TransactionManager.subscribe` (an async listener
        runs on the facade's event loop thread)."""
        return self.manager.subscribe(listener)

    @property
    def events_dropped(self) -> int:
        """See :attr:`aumai_transactions.TransactionManager.events_dropped`."""
        return self.manager.events_dropped

    def drain_events(self) -> None:
        """See :meth:`aumai_transactions.TransactionManager.drain_events`."""
        _run(self.manager.drain_events)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SagaOrchestrator:
    """Blocking twin of :class:`aumai_transactions.SagaOrchestrator`.

    Without a ``manager`` it makes its own ``TransactionManager()`` (a dry run), as the
    original tool did.
    """

    def __init__(self, manager: TransactionManager | None = None) -> None:
        if manager is None:
            manager = TransactionManager()
        elif not isinstance(manager, TransactionManager):
            raise TypeError(
                "aumai_transactions.sync.SagaOrchestrator needs an "
                f"aumai_transactions.sync.TransactionManager, not {type(manager).__name__}."
            )
        self._manager = manager
        self._saga = _saga.SagaOrchestrator(manager.manager)

    @property
    def manager(self) -> TransactionManager:
        """The manager the saga's transactions run on."""
        return self._manager

    @property
    def steps(self) -> list[tuple[str, str]]:
        """The registered steps as (agent_id, action) pairs, in order."""
        return self._saga.steps

    @property
    def _steps(self) -> list[Any]:
        # The original tool's own tests counted registered steps here.
        return self._saga._steps

    def register(
        self,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
    ) -> SagaOrchestrator:
        """See :meth:`aumai_transactions.SagaOrchestrator.register`."""
        self._saga.register(
            agent_id, action, data, compensating_action, retry=retry, recovery=recovery
        )
        return self

    def register_parallel(
        self,
        steps: Sequence[Mapping[str, Any] | tuple[Any, ...]],
        *,
        max_concurrency: int | None = None,
    ) -> SagaOrchestrator:
        """See :meth:`aumai_transactions.SagaOrchestrator.register_parallel`."""
        self._saga.register_parallel(steps, max_concurrency=max_concurrency)
        return self

    def execute(self, timeout_seconds: float | None = 60.0) -> TransactionResult:
        """See :meth:`aumai_transactions.SagaOrchestrator.execute`."""
        return _run(self._saga.execute, timeout_seconds)
