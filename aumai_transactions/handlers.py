"""The action registry and the calling convention of handlers.

A handler is ``handler(action, data)`` or ``handler(action, data, ctx)``, a plain
function or an ``async def``. It gets the :class:`StepContext` only when it asks for
it: its third positional parameter has no default, or is annotated ``StepContext``
(so ``def handler(action, data, retries=3)`` keeps its default). How a handler is
called is worked out once, when it is registered, so the per-step path is a
dictionary lookup and a call.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread

__all__ = ["ActionHandler", "HandlerRegistry", "StepContext", "SyncHandlerMode", "WorkerCall"]

logger = logging.getLogger("aumai_transactions")

ActionHandler = Callable[..., Any]
"""``handler(action: str, data: dict) -> Any`` or with a third ``StepContext``; sync or async."""

SyncHandlerMode = Literal["thread", "inline"]


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a handler may want to know about the step it runs.

    ``idempotency_key`` is the same on every attempt, retry and recovery of the step
    (and of its compensation, which gets the key of the step it undoes), so a handler
    can make its side effect happen at most once. ``results`` holds the recorded
    results of the steps completed before this one, keyed by step id (for a
    compensation, also the result of the step it undoes); ``results_by_action`` holds
    the same results keyed by action name: when several steps share an action it holds
    the latest one's, and :meth:`results_of` gives every one, oldest first.
    """

    transaction_id: str
    step_id: str
    agent_id: str
    action: str
    attempt: int
    idempotency_key: str
    phase: Literal["forward", "compensate"] = "forward"
    results: Mapping[str, Any] = field(default_factory=dict)
    results_by_action: Mapping[str, Any] = field(default_factory=dict)
    actions: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The action of each step in ``results``, by step id."""

    def results_of(self, action: str) -> list[Any]:
        """The results of every earlier step whose action is ``action``, in step order."""
        return [self.results[sid] for sid, name in self.actions.items() if name == action]


class _Handler:
    __slots__ = ("func", "is_async", "name", "wants_context")

    def __init__(self, name: str, func: ActionHandler) -> None:
        self.name = name
        self.func = func
        target = func.func if isinstance(func, functools.partial) else func
        call = getattr(target, "__call__", None)  # noqa: B004 - callable objects
        self.is_async = inspect.iscoroutinefunction(target) or (
            not inspect.isfunction(target)
            and not inspect.ismethod(target)
            and call is not None
            and inspect.iscoroutinefunction(call)
        )
        self.wants_context = _asks_for_context(func)


_CONTEXT_ANNOTATION = re.compile(r"\bStepContext\b")


def _asks_for_context(func: ActionHandler) -> bool:
    """True when ``func``'s third positional parameter has no default or is annotated
    ``StepContext`` (also as a string, as ``from __future__ import annotations`` leaves
    it, and in unions such as ``StepContext | None``)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 3:
        return False
    third = positional[2]
    if third.default is inspect.Parameter.empty:
        return True
    annotation = third.annotation
    if annotation is StepContext:
        return True
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return annotation is not inspect.Parameter.empty and bool(_CONTEXT_ANNOTATION.search(text))


class WorkerCall:
    """A sync handler's call in a worker thread, which can outlive its cancellation.

    A thread cannot be stopped: when the step is cancelled (the deadline, an outer
    cancellation), the engine stops waiting but the handler carries on and may still
    have its effect. The engine keeps this object to wait for the thread to return
    before it compensates the step, and to learn what the handler returned. A call
    cancelled before its thread started it never starts (:meth:`abandon` says which).
    """

    __slots__ = ("_args", "_func", "_lock", "_state", "error", "result", "returned")

    def __init__(self, func: ActionHandler, args: tuple[Any, ...]) -> None:
        self._func = func
        self._args = args
        self._lock = threading.Lock()
        self._state = "waiting"  # -> "started" (in the thread) or "abandoned" (cancelled)
        self.returned = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def __call__(self) -> Any:
        with self._lock:
            if self._state == "abandoned":
                return None
            self._state = "started"
        try:
            self.result = self._func(*self._args)
            return self.result
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.returned.set()

    def abandon(self) -> bool:
        """After a cancellation: True when the handler runs (or ran) anyway, False when
        it had not started and now never will."""
        with self._lock:
            if self._state == "waiting":
                self._state = "abandoned"
                return False
            return True

    async def wait(self) -> None:
        """Wait (in another worker thread, abandoned on cancellation) until it returned."""
        if not self.returned.is_set():
            await anyio.to_thread.run_sync(self.returned.wait, abandon_on_cancel=True)


class HandlerRegistry:
    """Maps action names to handlers and calls them by the calling convention."""

    def __init__(
        self,
        handlers: Mapping[str, ActionHandler] | None = None,
        *,
        sync_handlers: SyncHandlerMode = "thread",
    ) -> None:
        if sync_handlers not in ("thread", "inline"):
            raise ValueError(
                f"sync_handlers={sync_handlers!r} is not accepted; use 'thread' or 'inline'."
            )
        if handlers is not None and not isinstance(handlers, Mapping):
            raise TypeError(
                f"action_handlers must be a mapping of action name to callable, "
                f"not {type(handlers).__name__}."
            )
        self.inline = sync_handlers == "inline"
        self._handlers: dict[str, _Handler] = {}
        self._async = 0  # how many of them are async (``all_sync`` runs every blocking call)
        self.names = self._handlers.keys()
        """A live view of the registered action names."""
        for name, func in (handlers or {}).items():
            self.register(name, func)

    def register(self, action: str, func: ActionHandler) -> None:
        """Register ``func`` as the handler of ``action`` (replacing any earlier one)."""
        if not isinstance(action, str) or not action:
            raise ValueError(f"Action names must be non-empty strings, not {action!r}.")
        if not callable(func):
            raise TypeError(
                f"The handler for action {action!r} must be callable, not {type(func).__name__}."
            )
        handler = _Handler(action, func)
        replaced = self._handlers.get(action)
        if replaced is not None and replaced.is_async:
            self._async -= 1
        if handler.is_async:
            self._async += 1
        self._handlers[action] = handler

    def __contains__(self, action: object) -> bool:
        return action in self._handlers

    @property
    def all_sync(self) -> bool:
        """True when no registered handler is async."""
        return not self._async

    def __bool__(self) -> bool:
        return bool(self._handlers)

    @property
    def actions(self) -> list[str]:
        """The registered action names, sorted."""
        return sorted(self._handlers)

    def get(self, action: str) -> _Handler | None:
        """The handler of ``action``, or None."""
        return self._handlers.get(action)

    @staticmethod
    def call_inline(
        handler: _Handler, action: str, data: dict[str, Any], context: StepContext | None
    ) -> Any:
        """Call a sync ``handler`` right here, with ``context`` if it asks for one, and
        return what it returned (an awaitable it returned is the caller's to await)."""
        if handler.wants_context:
            return handler.func(action, data, context)
        return handler.func(action, data)

    async def call(
        self,
        handler: _Handler,
        action: str,
        data: dict[str, Any],
        context: StepContext | None,
        abandoned: Callable[[WorkerCall], object] | None = None,
    ) -> Any:
        """Invoke ``handler`` for ``action``, with ``context`` if it asks for one.

        A sync handler runs in a worker thread (unless ``sync_handlers="inline"``). If
        the call is cancelled while the thread still runs, ``abandoned`` (when given)
        receives the :class:`WorkerCall`, so the caller can wait for it later.
        """
        func = handler.func
        if handler.is_async:
            if handler.wants_context:
                return await func(action, data, context)
            return await func(action, data)
        args: tuple[Any, ...] = (action, data, context) if handler.wants_context else (action, data)
        if self.inline:
            result = self.call_inline(handler, action, data, context)
        elif abandoned is None:
            result = await anyio.to_thread.run_sync(
                functools.partial(func, *args), abandon_on_cancel=True
            )
        else:
            call = WorkerCall(func, args)
            try:
                result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
            except BaseException:
                if call.abandon() and not call.returned.is_set():
                    abandoned(call)
                raise
        if result is not None and inspect.isawaitable(result):
            result = await result
        return result
