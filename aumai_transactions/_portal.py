"""The facade's event loop thread and its blocking calls (private to ``sync``).

One anyio blocking portal lives for the life of the process, so stores and their
connections stay bound to one loop. ``_run`` makes one blocking call through it;
``_drive`` runs a commit or rollback in the calling thread instead when it cannot yield
before its handlers ran (see ``_here``). ``_SigintGuard`` gives Ctrl-C in the main
thread its one effect: the call is cancelled, compensates (shielded), and then
KeyboardInterrupt is raised from the caller's line.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

import anyio
import anyio.from_thread

from ._here import close_loop, on_portal, run_here, runs_here
from ._here import raw_signal as _raw_signal
from .models import Transaction, TransactionResult

if TYPE_CHECKING:
    from . import manager as _manager


class _OpenBlock(Protocol):
    """An open transaction's ``with`` block, entered and not yet left."""

    def _abandon(self, portal: anyio.from_thread.BlockingPortal) -> None: ...


_T = TypeVar("_T")

logger = logging.getLogger("aumai_transactions")

_portal_lock = threading.Lock()
_portal: anyio.from_thread.BlockingPortal | None = None
_portal_stack = ExitStack()
_open_blocks: set[_OpenBlock] = set()  # entered and not yet left


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
    if asyncio._get_running_loop() is not None:  # the getter that returns None, not raises
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
