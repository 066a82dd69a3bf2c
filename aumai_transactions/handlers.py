"""The action registry and the calling convention of handlers.

A handler is ``handler(action, data)`` or ``handler(action, data, ctx)``, a plain
function or an ``async def``. How a handler is called is worked out once, when it is
registered, so the per-step path is a dictionary lookup and a call.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread

__all__ = ["ActionHandler", "HandlerRegistry", "StepContext", "SyncHandlerMode"]

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
    the same results keyed by action name.
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
        self.wants_context = _accepts_three_arguments(func)


def _accepts_three_arguments(func: ActionHandler) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    positional = 0
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            positional += 1
    return positional >= 3


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
        self._handlers[action] = _Handler(action, func)

    def __contains__(self, action: object) -> bool:
        return action in self._handlers

    def __bool__(self) -> bool:
        return bool(self._handlers)

    @property
    def actions(self) -> list[str]:
        """The registered action names, sorted."""
        return sorted(self._handlers)

    def get(self, action: str) -> _Handler | None:
        """The handler of ``action``, or None."""
        return self._handlers.get(action)

    async def call(
        self,
        handler: _Handler,
        action: str,
        data: dict[str, Any],
        context: StepContext | None,
    ) -> Any:
        """Invoke ``handler`` for ``action``, with ``context`` if it takes a third argument."""
        func = handler.func
        if handler.is_async:
            if handler.wants_context:
                return await func(action, data, context)
            return await func(action, data)
        args: tuple[Any, ...] = (action, data, context) if handler.wants_context else (action, data)
        if self.inline:
            result = func(*args)
        else:
            result = await anyio.to_thread.run_sync(
                functools.partial(func, *args), abandon_on_cancel=True
            )
        if inspect.isawaitable(result):
            result = await result
        return result
