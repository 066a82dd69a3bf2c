"""The blocking facade: the same classes, methods and arguments, without ``await``.

Every call runs on one event loop that lives in a background thread for the life of
the process (an anyio blocking portal), so stores and their connections stay bound to
one loop. Calling the facade from inside a running event loop would deadlock or block
that loop, so it refuses with a RuntimeError.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from contextlib import ExitStack
from typing import Any, ParamSpec, Self, TypeVar

import anyio.from_thread

from . import manager as _manager
from . import saga as _saga
from .handlers import ActionHandler, SyncHandlerMode
from .models import RecoveryPolicy, RetryPolicy, Transaction, TransactionResult, TransactionStep
from .stores import Store

__all__ = ["SagaOrchestrator", "TransactionManager"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_portal_lock = threading.Lock()
_portal: anyio.from_thread.BlockingPortal | None = None
_portal_stack = ExitStack()


def _close_portal() -> None:
    global _portal
    with _portal_lock:
        _portal = None
        _portal_stack.close()


def _blocking_portal() -> anyio.from_thread.BlockingPortal:
    """The portal of the facade's event loop, started on first use."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "aumai_transactions.sync blocks, and this code runs inside an event loop; "
            "use aumai_transactions.TransactionManager there and `await` its methods."
        )
    global _portal
    with _portal_lock:
        if _portal is None:
            _portal = _portal_stack.enter_context(anyio.from_thread.start_blocking_portal())
            atexit.register(_close_portal)
        return _portal


def _run(func: Callable[_P, Awaitable[_T]], *args: Any) -> _T:
    return _blocking_portal().call(func, *args)


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
        )
        self._renewing: Future[None] | None = None

    @property
    def store(self) -> Store:
        """The store behind the manager."""
        return self.manager.store

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
        )

    def commit(self, transaction: Transaction) -> TransactionResult:
        """See :meth:`aumai_transactions.TransactionManager.commit`."""
        return _run(self.manager.commit, transaction)

    def rollback(self, transaction: Transaction) -> TransactionResult:
        """See :meth:`aumai_transactions.TransactionManager.rollback`."""
        return _run(self.manager.rollback, transaction)

    def recover(
        self, policy: RecoveryPolicy = "compensate", *, limit: int = 1000
    ) -> list[TransactionResult]:
        """See :meth:`aumai_transactions.TransactionManager.recover`."""
        return _run(functools.partial(self.manager.recover, policy, limit=limit))

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

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SagaOrchestrator:
    """Blocking twin of :class:`aumai_transactions.SagaOrchestrator`."""

    def __init__(self, manager: TransactionManager) -> None:
        if not isinstance(manager, TransactionManager):
            raise TypeError(
                "aumai_transactions.sync.SagaOrchestrator needs an "
                f"aumai_transactions.sync.TransactionManager, not {type(manager).__name__}."
            )
        self._saga = _saga.SagaOrchestrator(manager.manager)

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

    def execute(self, timeout_seconds: float | None = 60.0) -> TransactionResult:
        """See :meth:`aumai_transactions.SagaOrchestrator.execute`."""
        return _run(self._saga.execute, timeout_seconds)
