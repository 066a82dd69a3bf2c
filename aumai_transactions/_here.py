"""Blocking calls that can run in the calling thread: the facade's shortcut.

The blocking facade (``sync.py``) runs each call as a task on its portal's event loop
in a background thread. The hop there and back costs several times what a whole
in-memory transaction costs. A commit or rollback whose every step is handled inline
by a sync handler, on a store that never suspends (the in-memory store), cannot be
cancelled part-way anyway: its task never yields before its handlers have run (a
Ctrl-C during it takes effect only when it is done, or at the compensation's shield,
which holds it until the compensation is done). So the facade runs such a call to its
end in the calling thread instead, on a private event loop, and raises
KeyboardInterrupt after it when a Ctrl-C came meanwhile: the same outcome, without
the hop.

Calls through the portal and calls run here exclude each other (one lock, and a count
of the portal's calls in flight), so a manager is still driven by one call at a time
where the portal serialized them.
"""

from __future__ import annotations

# signal's C core, for the calls made on every blocking call: signal.signal and
# signal.getsignal wrap each in enum conversions that cost ~4 µs, more than the rest
# of a guard. Same functions, same objects (signal.default_int_handler is its own).
import _signal as raw_signal  # type: ignore[import-not-found]
import asyncio
import atexit
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .manager import TransactionManager
    from .models import Transaction

__all__ = ["close_loop", "on_portal", "raw_signal", "run_here", "runs_here"]

_T = TypeVar("_T")

_lock = threading.Lock()
_portal_calls = 0  # facade calls (and open blocks) in flight on the portal's loop
_loop: asyncio.AbstractEventLoop | None = None  # the private loop; used under _lock


@contextmanager
def on_portal() -> Iterator[None]:
    """Count a facade call (or an open block) running on the portal's loop meanwhile."""
    global _portal_calls
    with _lock:  # waits for a call running here to end first
        _portal_calls += 1
    try:
        yield
    finally:
        with _lock:
            _portal_calls -= 1


def runs_here(manager: TransactionManager, tx: Transaction) -> bool:
    """True when driving ``tx`` cannot yield to the event loop before its handlers ran:
    a store that never suspends, opened, with nothing of the manager's running in the
    background (no lease renewal, no async listener); handlers all sync and inline;
    steps without groups or retries. (What runs then may not be cut short part-way, in
    the portal or here.)"""
    if (
        not getattr(manager.store, "never_suspends", False)
        or not manager._store_opened
        or manager._renewers
        or manager._listeners.any_async  # their queues are drained on the portal's loop
    ):
        return False
    handlers = manager._handlers
    if not handlers.inline or not handlers.all_sync:
        return False
    for step in tx.steps:
        if step.group is not None or step.retry is not None:
            return False
    # Only the main thread gets SIGINT; there the facade must hold it (Python's own
    # handler, replaced while the call runs), never have it raise inside the engine.
    # Ignored (a program started in the background by a shell) or left to the system,
    # it raises nothing; a handler of the program's own might: that goes to the portal.
    if threading.current_thread() is not threading.main_thread():
        return True
    handler = raw_signal.getsignal(signal.SIGINT)
    return handler is signal.default_int_handler or not callable(handler)


def run_here(call: Callable[[], Coroutine[Any, Any, _T]]) -> _T | None:
    """``await call()`` to its end in this thread, on the private loop; None, without
    calling it, when a call is in flight on the portal's loop (the caller then goes
    through the portal). ``call`` must not return None."""
    global _loop
    with _lock:
        if _portal_calls:
            return None
        loop = _loop
        if loop is None:
            loop = _loop = asyncio.new_event_loop()
            atexit.register(close_loop)  # also when the portal never started
        task = loop.create_task(call())
        # One turn of the loop (stop() before run_forever() runs what is ready, once):
        # the task's first step, which is all of it for a call that cannot yield. A
        # call that yields after all (a retry's pause) is run on to its end.
        # (run_until_complete takes two turns, the second only to stop the loop.)
        loop.stop()
        try:
            loop.run_forever()
            if not task.done():
                loop.run_until_complete(task)
        except BaseException:
            if task.done() and not task.cancelled():
                task.exception()  # raised here: not "never retrieved" later
            raise
        return task.result()


def close_loop() -> None:
    """At exit: close the private loop."""
    global _loop
    with _lock:
        loop, _loop = _loop, None
    if loop is not None:
        loop.close()
