"""Delivering events to listeners without ever holding up the engine.

The engine calls one thing, ``Listeners.emit``, and only when ``Listeners.emitter()``
gave it a callable when its driver was made: with nobody listening that is None, and
the hot path pays one attribute test per event it would have emitted.

* A sync listener is called in line, right after the journal write the event stands
  for, so it sees events in journal order and may read ``contextvars`` of the code
  that drives the transaction (OpenTelemetry's current span does). It should be quick:
  it runs on the engine's path.
* An ``async def`` listener is never awaited by the engine. Each has a bounded queue
  (``queue_size`` events) drained, in order, by one task of the running event loop,
  started when an event arrives and ending when the queue is empty. The engine's
  journal writes never wait for it: when the queue is full, the event is dropped and
  counted (``Listeners.dropped``; the first drop of a run of drops is logged).
* A listener that raises is logged at ERROR, with its traceback, on
  ``aumai_transactions.events``; the transaction goes on as if nobody listened.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .events import Event, StepEvent, TransactionEvent

__all__ = ["EventListener", "Listeners"]

logger = logging.getLogger("aumai_transactions.events")

EventListener = Callable[[Event], Any]
"""``listener(event)``: a plain function, or an ``async def`` one."""

DEFAULT_QUEUE_SIZE = 10_000


def _is_async(listener: EventListener) -> bool:
    return inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(
        getattr(listener, "__call__", None)  # noqa: B004 - an object with async __call__
    )


def log_fields(event: Event) -> dict[str, Any]:
    """The ``extra`` of a log record about ``event``."""
    fields: dict[str, Any] = {}
    if isinstance(event, TransactionEvent):
        fields["transaction_id"] = event.transaction_id
    if isinstance(event, StepEvent):
        fields.update(step_id=event.step_id, action=event.action, attempt=event.attempt)
    return fields


def _listener_failed(listener: EventListener, event: Event) -> None:
    logger.exception(
        "event listener %r raised on %s; the transaction goes on as if nobody listened",
        listener,
        type(event).__name__,
        extra=log_fields(event),
    )


class _AsyncDelivery:
    """One async listener's bounded queue and the task that drains it."""

    __slots__ = ("dropped", "dropping", "limit", "listener", "queue", "task")

    def __init__(self, listener: Callable[[Event], Awaitable[Any]], limit: int) -> None:
        self.listener = listener
        self.limit = limit
        self.queue: deque[Event] = deque()
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.dropping = False

    def put(self, event: Event) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no asyncio loop (another anyio backend): cannot deliver
            self._drop(event, "async listeners are delivered on an asyncio event loop only")
            return
        task = self.task
        if task is not None and task.get_loop() is not loop:
            # Its loop is gone (asyncio.run ended) with events left: they are stale.
            self.queue.clear()
            task = self.task = None
        if len(self.queue) >= self.limit:
            self._drop(event, f"its queue holds {self.limit} events already")
            return
        self.dropping = False
        self.queue.append(event)
        if task is None:
            self.task = loop.create_task(self._drain())

    def _drop(self, event: Event, why: str) -> None:
        self.dropped += 1
        if not self.dropping:
            self.dropping = True
            logger.warning(
                "event listener %r is not keeping up: %s dropped (%s)",
                self.listener,
                type(event).__name__,
                why,
                extra=log_fields(event),
            )

    async def _drain(self) -> None:
        queue = self.queue
        try:
            while queue:
                event = queue.popleft()
                try:
                    await self.listener(event)
                except Exception:
                    _listener_failed(self.listener, event)
        finally:
            self.task = None


class Listeners:
    """A manager's listeners: ``emit`` hands an event to each of them."""

    __slots__ = ("_async", "_sync", "queue_size")

    def __init__(
        self, listeners: Iterable[EventListener] = (), queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> None:
        if type(queue_size) is not int or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, not {queue_size!r}.")
        self.queue_size = queue_size
        self._sync: tuple[EventListener, ...] = ()
        self._async: tuple[_AsyncDelivery, ...] = ()
        for listener in listeners:
            self.subscribe(listener)

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Add ``listener``; returns the function that removes it again."""
        if not callable(listener):
            raise TypeError(
                f"a listener must be a callable taking one event, not {type(listener).__name__}."
            )
        if _is_async(listener):
            delivery = _AsyncDelivery(listener, self.queue_size)
            self._async += (delivery,)

            def unsubscribe() -> None:
                self._async = tuple(d for d in self._async if d is not delivery)

        else:
            self._sync += (listener,)

            def unsubscribe() -> None:
                # Tuples are replaced, never changed, so an emit running meanwhile is unharmed.
                index = next((i for i, f in enumerate(self._sync) if f is listener), None)
                if index is not None:
                    self._sync = self._sync[:index] + self._sync[index + 1 :]

        return unsubscribe

    @property
    def any_async(self) -> bool:
        """True when an ``async def`` listener is subscribed (its queue is drained by a
        task of the event loop the events were emitted in)."""
        return bool(self._async)

    def emitter(self) -> Callable[[Event], None] | None:
        """What a driver calls with each event, or None while nobody listens."""
        return self.emit if self._sync or self._async else None

    def emit(self, event: Event) -> None:
        """Call the sync listeners; queue the event for the async ones. Never raises."""
        for listener in self._sync:
            try:
                listener(event)
            except Exception:
                _listener_failed(listener, event)
        for delivery in self._async:
            delivery.put(event)

    @property
    def dropped(self) -> int:
        """Events dropped so far because an async listener's queue was full."""
        return sum(d.dropped for d in self._async)

    @property
    def queued(self) -> int:
        """Events waiting in the async listeners' queues."""
        return sum(len(d.queue) for d in self._async)

    async def drain(self) -> None:
        """Wait until every async listener has been handed every event queued so far
        (bound it with a cancel scope: a listener may never return)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another anyio backend: nothing was queued (see _AsyncDelivery)
            return
        while True:
            pending = [d.task for d in self._async if d.task is not None]
            pending = [t for t in pending if t.get_loop() is loop]
            if not pending:
                return
            await asyncio.wait(pending)
