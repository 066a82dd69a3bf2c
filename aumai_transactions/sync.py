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

import asyncio
import atexit
import functools
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from types import FrameType, TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
import anyio.from_thread

from . import manager as _manager
from . import open_transaction as _open
from . import saga as _saga
from ._actions import Actions
from ._here import close_loop, on_portal, run_here, runs_here
from ._here import raw_signal as _raw_signal
from ._listeners import EventListener
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

_T = TypeVar("_T")

logger = logging.getLogger("aumai_transactions")

_portal_lock = threading.Lock()
_portal: anyio.from_thread.BlockingPortal | None = None
_portal_stack = ExitStack()
_open_blocks: set[OpenTransaction] = set()  # entered and not yet left


def _close_portal() -> None:
    """At exit: cancel what still runs in the loop (the lease renewal of a manager that
    was opened and never closed would otherwise keep the process from ending), then
    stop it. A transaction cancelled here compensates, shielded, before the loop ends;
    so does an open transaction whose ``with`` block was never left."""
    global _portal
    with _portal_lock:
        portal, _portal = _portal, None
        if portal is not None:
            try:
                for block in list(_open_blocks):
                    block._abandon(portal)
                portal.call(portal.stop, True)
            except RuntimeError:  # the loop has already stopped
                pass
        _portal_stack.close()
    close_loop()


def _refuse_in_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "aumai_transactions.sync blocks, and this code runs inside an event loop; "
            "use aumai_transactions.TransactionManager there and `await` its methods."
        )


def _blocking_portal() -> anyio.from_thread.BlockingPortal:
    """The portal of the facade's event loop, started on first use."""
    _refuse_in_event_loop()
    global _portal
    with _portal_lock:
        if _portal is None:
            _portal = _portal_stack.enter_context(anyio.from_thread.start_blocking_portal())
            atexit.register(_close_portal)
        return _portal


class _SigintGuard:
    """SIGINT while the main thread waits for the loop, as a context manager.

    It is handled here only in the main thread, and only while Python's default
    handler is in place (a handler of the program's own is left alone). While
    ``armed``, the next SIGINT raises KeyboardInterrupt, once, where the wait can take
    it; any other is counted in ``interrupts`` and nothing more.
    """

    def __init__(self) -> None:
        self.interrupts = 0
        self.armed = False
        self.installed = False
        self._previous: Any = None
        self._own: Any = None  # a program's own handler, once a hand-over is over
        self._held = 0  # SIGINTs held for it meanwhile

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1
        if self.armed:
            self.armed = False  # one KeyboardInterrupt per wait; later SIGINTs are held
            raise KeyboardInterrupt

    def __enter__(self) -> Self:
        self.installed = (
            threading.current_thread() is threading.main_thread()
            and _raw_signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        if self.installed:
            self._previous = _raw_signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.installed:
            _raw_signal.signal(signal.SIGINT, self._previous)

    @contextmanager
    def handing_over(self) -> Iterator[None]:
        """While a task is handed to the portal, hold a SIGINT for a program's own
        handler too (it would raise between the hand-over and the wait, leaving the
        task running uncancelled); :meth:`deliver_held` calls it afterwards."""
        own = None
        if not self.installed and threading.current_thread() is threading.main_thread():
            handler = _raw_signal.getsignal(signal.SIGINT)
            if callable(handler):
                own = handler
                _raw_signal.signal(signal.SIGINT, self._hold)
        try:
            yield
        finally:
            if own is not None:
                _raw_signal.signal(signal.SIGINT, own)
                self._own = own

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self._held += 1

    def deliver_held(self) -> None:
        """Call the program's own handler with a SIGINT held while handing over."""
        own, self._own = self._own, None
        if own is not None and self._held:
            self._held = 0
            own(signal.SIGINT, None)

    def wait_out(
        self,
        ended: threading.Event,
        notice: str | None = None,
        each: Callable[[], object] = bool,
        *,
        now: str | None = None,
    ) -> None:
        """Wait until ``ended`` is set, whatever SIGINTs arrive, calling ``each`` every
        round. ``now`` is logged at once; ``notice`` at the first SIGINT (None: one came
        before, and has been answered); each later one is logged as ignored."""
        seen = self.interrupts  # before saying so: a Ctrl-C from now on is a further one
        if now is not None:
            logger.warning(now)
        while True:
            try:
                each()
                # A short wait in a loop, only to say so when another Ctrl-C comes.
                done = ended.wait(0.1)
                if self.interrupts > seen:
                    seen = self.interrupts
                    logger.warning(notice or "Ctrl-C ignored: still compensating.")
                    notice = None
                if done:
                    return
            except KeyboardInterrupt:  # raised by a SIGINT handler of the program's own
                self.interrupts += 1


class _Call(Generic[_T]):
    """One blocking call: a task in the portal's loop that the calling thread waits for.

    In the main thread, while the call runs, a Ctrl-C at any moment has one effect
    (see :class:`_SigintGuard`): the task is cancelled (the engine compensates,
    shielded), the caller waits until it has ended, then KeyboardInterrupt is raised
    here, with no traceback through the portal's internals. Later SIGINTs are ignored.
    """

    def __init__(self, func: Callable[..., Awaitable[_T]], args: tuple[Any, ...]) -> None:
        self._func = func
        self._args = args
        self._ended = threading.Event()
        self._error: BaseException | None = None

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

    def run(self, portal: anyio.from_thread.BlockingPortal) -> _T:
        with _SigintGuard() as guard:
            with guard.handing_over():
                future = portal.start_task_soon(self._task)  # a SIGINT meanwhile is held
            try:
                guard.armed = guard.installed
                guard.deliver_held()
                if guard.interrupts:  # it came while the task was being handed over
                    guard.armed = False
                    raise KeyboardInterrupt
                result = future.result()
                guard.armed = False
            except KeyboardInterrupt:
                guard.armed = False
                self._wind_down(future, guard)
                error, self._error = self._error, None
                raise KeyboardInterrupt from error
            finally:
                self._error = None  # it holds this call's frames
        if guard.interrupts:  # Ctrl-C came as the call returned: it still stops the program
            raise KeyboardInterrupt
        return result

    def _wind_down(self, future: Future[_T], guard: _SigintGuard) -> None:
        """Cancel the task and wait for it to end, whatever further SIGINTs arrive."""
        if self._ended.is_set():
            return
        guard.wait_out(
            self._ended,
            each=future.cancel,
            now="Interrupted: stopping; what had completed is being compensated first (bounded "
            "by compensation_timeout), then KeyboardInterrupt is raised. Ctrl-C again is ignored.",
        )


def _run(func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    portal = _blocking_portal()
    with on_portal():
        return _Call(func, args).run(portal)


def _drive(
    manager: _manager.TransactionManager,
    tx: Transaction,
    func: Callable[[Transaction], Coroutine[Any, Any, TransactionResult]],
) -> TransactionResult:
    """``func(tx)`` (a commit or rollback) as a blocking call: in this thread when it
    cannot yield before its handlers ran (see ``_here``), else through the portal."""
    if isinstance(tx, Transaction) and runs_here(manager, tx):
        _refuse_in_event_loop()
        with _SigintGuard() as guard:  # not armed: a Ctrl-C is held until the end
            result = run_here(functools.partial(func, tx))
        if result is not None:
            if guard.interrupts:  # as through the portal: the call ends, then it stops
                raise KeyboardInterrupt
            return result
    portal = _blocking_portal()  # as _run does, without its frame in a traceback
    with on_portal():
        return _Call(func, (tx,)).run(portal)


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


class OpenTransaction:
    """Blocking twin of :class:`aumai_transactions.OpenTransaction`:
    ``with manager.transaction() as tx:``, then ``tx.run(...)`` for each step.

    The async block is held open by one task in the facade's loop, which enters and
    leaves it (its deadline's cancel scope and its lease renewal's task group belong to
    one task); each ``tx.run`` and each group is a blocking call of its own in between.
    The exception that ends the ``with`` block, KeyboardInterrupt included, is handed
    to the async block's exit, which compensates before it propagates. Ctrl-C during
    ``tx.run`` cancels that step (in doubt, so compensated with the rest); Ctrl-C
    while the block ends is held until it has committed or compensated, and then
    raised. Code between the steps runs in the calling thread, so the deadline cannot
    cut it short: the next ``tx.run``, or the end of the block, raises TimeoutError.
    """

    def __init__(self, open_transaction: _open.OpenTransaction) -> None:
        self._open = open_transaction
        self._holder: Future[bool] | None = None
        self._entered = threading.Event()  # entering is over, either way
        self._inside = False  # the async block was entered
        self._left = threading.Event()  # the holder has ended
        self._exc_info: tuple[Any, Any, Any] = (None, None, None)
        # Made in the loop (they belong to it) by _prepare.
        self._entering: anyio.CancelScope | None = None
        self._leave: anyio.Event | None = None

    @property
    def transaction(self) -> Transaction:
        """The underlying transaction (its steps, state and id)."""
        return self._open.transaction

    @property
    def transaction_id(self) -> str:
        """The transaction's id."""
        return self._open.transaction_id

    @property
    def result(self) -> TransactionResult | None:
        """The outcome, once the block has ended (or :meth:`rollback` ran)."""
        return self._open.result

    # ------------------------------------------------------------------ the block

    async def _prepare(self) -> None:
        self._entering = anyio.CancelScope()
        self._leave = anyio.Event()

    async def _hold(self) -> bool:
        """The whole async block, in this one task: enter, wait to be told to leave,
        leave with the exception that ended the ``with`` block (or none)."""
        assert self._entering is not None and self._leave is not None
        with on_portal():  # the block drives its transaction in this task
            return await self._hold_block()

    async def _hold_block(self) -> bool:
        assert self._entering is not None and self._leave is not None
        try:
            with self._entering:  # cancelled (by Ctrl-C) only while entering
                try:
                    await self._open.__aenter__()
                    self._inside = True
                finally:
                    self._entered.set()
                # The code of the block runs elsewhere; the deadline's scope, which
                # this task is inside, must not cut this wait short: the block's exit
                # tells a deadline that passed meanwhile by the clock.
                with anyio.CancelScope(shield=True):
                    await self._leave.wait()
                return await self._open.__aexit__(*self._exc_info)
            return False  # entering was cancelled
        finally:
            self._left.set()

    def _stop_entering(self) -> None:
        """(In the loop.) Cancel the entering, unless the block is entered already."""
        assert self._entering is not None
        if not self._inside:
            self._entering.cancel()

    def _tell_holder_to_leave(self, portal: anyio.from_thread.BlockingPortal) -> None:
        assert self._leave is not None
        _open_blocks.discard(self)
        portal.call(self._leave.set)

    def _abandon(self, portal: anyio.from_thread.BlockingPortal) -> None:
        """At exit, a block never left: end it as interrupted (compensated)."""
        self._exc_info = (SystemExit, SystemExit(), None)
        self._tell_holder_to_leave(portal)

    def _wait_for_holder(self, guard: _SigintGuard, interrupted: bool) -> None:
        """Wait until the block has ended; ``interrupted``: by a Ctrl-C already told."""
        if not self._left.is_set():
            guard.wait_out(
                self._left,
                None
                if interrupted
                else "Interrupted: the open transaction ends first (it commits, or "
                "compensates what ran), then KeyboardInterrupt is raised. Ctrl-C again "
                "is ignored.",
            )

    def __enter__(self) -> Self:
        portal = _blocking_portal()
        portal.call(self._prepare)
        with _SigintGuard() as guard:  # as in _Call.run: one Ctrl-C, one effect
            self._holder = holder = portal.start_task_soon(self._hold)  # a SIGINT is held
            try:
                guard.armed = guard.installed
                if guard.interrupts:  # it came while the holder was being handed over
                    raise KeyboardInterrupt
                self._entered.wait()
                guard.armed = False
            except KeyboardInterrupt:
                guard.armed = False
                portal.call(self._stop_entering)
                if not self._inside:
                    self._wait_for_holder(guard, interrupted=True)
        if guard.interrupts:
            stop = KeyboardInterrupt()
            if self._inside:  # it came just as the block was entered: leave it so
                self.__exit__(KeyboardInterrupt, stop, None)
            raise stop
        if not self._inside:
            holder.result()  # raises what kept the block from being entered
            raise RuntimeError("the open transaction's block could not be entered")
        _open_blocks.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        with _SigintGuard() as guard:  # first: a Ctrl-C now must not skip the compensation
            holder = self._holder
            assert holder is not None
            self._exc_info = (exc_type, exc, tb)
            self._tell_holder_to_leave(_blocking_portal())
            self._wait_for_holder(guard, isinstance(exc, KeyboardInterrupt))
        interrupted = guard.interrupts and not isinstance(exc, KeyboardInterrupt)
        try:
            swallowed = holder.result()
        except BaseException as error:
            if interrupted:  # it ended as it had to; now the program stops
                raise KeyboardInterrupt from error
            raise
        finally:
            self._exc_info = (None, None, None)  # it holds the block's frames
        if interrupted:
            raise KeyboardInterrupt
        return swallowed

    # ------------------------------------------------------------------ steps

    def run(
        self,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """See :meth:`aumai_transactions.OpenTransaction.run`."""
        return _run(
            functools.partial(
                self._open.run,
                agent_id,
                action,
                data,
                compensating_action,
                retry=retry,
                recovery=recovery,
                idempotency_key=idempotency_key,
            )
        )

    def parallel(
        self, name: str | None = None, *, max_concurrency: int | None = None
    ) -> ParallelGroup:
        """See :meth:`aumai_transactions.OpenTransaction.parallel`; use it with ``with``."""
        return ParallelGroup(self._open.parallel(name, max_concurrency=max_concurrency))

    def rollback(self) -> TransactionResult:
        """See :meth:`aumai_transactions.OpenTransaction.rollback`."""
        return _run(self._open.rollback)


class ParallelGroup:
    """Blocking twin of :class:`aumai_transactions.ParallelGroup`: ``with tx.parallel()
    as group:``, ``group.run(...)`` for each step; they start together as the block ends."""

    def __init__(self, group: _open.ParallelGroup) -> None:
        self._group = group

    @property
    def name(self) -> str:
        """The group's name (unique in its transaction)."""
        return self._group.name

    @property
    def steps(self) -> list[TransactionStep]:
        """The group's steps, in the order they were added."""
        return self._group.steps

    @property
    def results(self) -> list[Any]:
        """Each step's result, in the order the steps were added."""
        return self._group.results

    def run(
        self,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
        idempotency_key: str | None = None,
    ) -> TransactionStep:
        """See :meth:`aumai_transactions.ParallelGroup.run`."""
        return self._group.run(
            agent_id,
            action,
            data,
            compensating_action,
            retry=retry,
            recovery=recovery,
            idempotency_key=idempotency_key,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _run(self._group.__aexit__, exc_type, exc, tb)


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
