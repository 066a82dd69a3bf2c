"""The blocking facade: the same classes, methods and arguments, without ``await``.

Every call runs on one event loop that lives in a background thread for the life of
the process (an anyio blocking portal), so stores and their connections stay bound to
one loop. Calling the facade from inside a running event loop would deadlock or block
that loop, so it refuses with a RuntimeError.

Ctrl-C (KeyboardInterrupt in the main thread) during a blocking call is a cancellation
of that call, exactly as in the async API: the running step is cut short, the engine
compensates (shielded, bounded by ``compensation_timeout``), the call waits for that
to finish, and then KeyboardInterrupt is raised from the caller's line. A rollback,
being compensation itself, runs to its end first. Further Ctrl-Cs while compensation
runs are ignored (logged): the promise is that nothing completed is left undone. To
stop harder, kill the process; with a durable store, ``recover`` finishes the job.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from contextlib import ExitStack
from types import FrameType
from typing import Any, Generic, Self, TypeVar

import anyio
import anyio.from_thread

from . import manager as _manager
from . import saga as _saga
from .handlers import ActionHandler, SyncHandlerMode
from .models import RecoveryPolicy, RetryPolicy, Transaction, TransactionResult, TransactionStep
from .stores import Store

__all__ = ["SagaOrchestrator", "TransactionManager"]

_T = TypeVar("_T")

logger = logging.getLogger("aumai_transactions")

_portal_lock = threading.Lock()
_portal: anyio.from_thread.BlockingPortal | None = None
_portal_stack = ExitStack()


def _close_portal() -> None:
    """At exit: cancel what still runs in the loop (the lease renewal of a manager that
    was opened and never closed would otherwise keep the process from ending), then
    stop it. A transaction cancelled here compensates, shielded, before the loop ends."""
    global _portal
    with _portal_lock:
        portal, _portal = _portal, None
        if portal is not None:
            try:
                portal.call(portal.stop, True)
            except RuntimeError:  # the loop has already stopped
                pass
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


class _Call(Generic[_T]):
    """One blocking call: a task in the portal's loop that the calling thread waits for.

    In the main thread, while the call runs, SIGINT is handled here (when Python's
    default handler is in place; a handler of the program's own is left alone): the
    first one raises KeyboardInterrupt only where the wait can take it, so a Ctrl-C at
    any moment has one effect. The task is cancelled (the engine compensates, shielded),
    the caller waits until it has ended, then KeyboardInterrupt is raised here, with no
    traceback through the portal's internals. Later SIGINTs are counted and ignored.
    """

    def __init__(self, func: Callable[..., Awaitable[_T]], args: tuple[Any, ...]) -> None:
        self._func = func
        self._args = args
        self._ended = threading.Event()
        self._error: BaseException | None = None
        self._armed = False  # whether the next SIGINT raises KeyboardInterrupt
        self._interrupts = 0

    async def _task(self) -> _T:
        try:
            return await self._func(*self._args)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            self._error = exc  # the future drops it once cancelled; wind-down reports it
            raise
        finally:
            self._ended.set()

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._interrupts += 1
        if self._armed:
            self._armed = False  # one KeyboardInterrupt per call; later SIGINTs are held
            raise KeyboardInterrupt

    def run(self, portal: anyio.from_thread.BlockingPortal) -> _T:
        guarded = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        if guarded:
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            future = portal.start_task_soon(self._task)  # a SIGINT meanwhile is held
            try:
                self._armed = guarded
                if self._interrupts:  # it came while the task was being handed over
                    self._armed = False
                    raise KeyboardInterrupt
                result = future.result()
                self._armed = False
            except KeyboardInterrupt:
                self._armed = False
                self._wind_down(future)
                error, self._error = self._error, None
                raise KeyboardInterrupt from error
        finally:
            if guarded:
                signal.signal(signal.SIGINT, previous)
            self._error = None  # it holds this call's frames
        if self._interrupts:  # Ctrl-C came as the call returned: it still stops the program
            raise KeyboardInterrupt
        return result

    def _wind_down(self, future: Future[_T]) -> None:
        """Cancel the task and wait for it to end, whatever further SIGINTs arrive."""
        if self._ended.is_set():
            return
        seen = self._interrupts  # before saying so: a Ctrl-C from now on is a further one
        logger.warning(
            "Interrupted: stopping; what had completed is being compensated first (bounded "
            "by compensation_timeout), then KeyboardInterrupt is raised. Ctrl-C again is ignored."
        )
        while True:
            try:
                future.cancel()
                # A short wait in a loop, only to say so when another Ctrl-C comes.
                if self._ended.wait(0.1):
                    return
                if self._interrupts > seen:
                    seen = self._interrupts
                    logger.warning("Ctrl-C ignored: still compensating.")
            except KeyboardInterrupt:  # raised by a SIGINT handler of the program's own
                self._interrupts += 1


def _run(func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    return _Call(func, args).run(_blocking_portal())


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

    def execute(self, timeout_seconds: float | None = 60.0) -> TransactionResult:
        """See :meth:`aumai_transactions.SagaOrchestrator.execute`."""
        return _run(self._saga.execute, timeout_seconds)
