"""The compensation pass: undoing steps, newest first, shielded and bounded."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any

import anyio

from ._driver import DriverCore, clock, message_of
from ._forward import seconds_since, spoiled_data, step_log_fields, storable_result
from .events import (
    CompensationCompleted,
    CompensationFailed,
    CompensationStarted,
    StepFailed,
    StepInterrupted,
    TransactionCompensating,
)
from .models import StepStatus, TransactionState, TransactionStep, utcnow

__all__ = ["CompensationPass", "finalize"]

logger = logging.getLogger("aumai_transactions.engine")

_RUNNING = StepStatus.RUNNING
_COMPLETED = StepStatus.COMPLETED
_FAILED = StepStatus.FAILED
_COMPENSATING = StepStatus.COMPENSATING
_COMPENSATED = StepStatus.COMPENSATED


async def finalize(coro: Coroutine[Any, Any, None]) -> BaseException | None:
    """Run ``coro`` to its end; return a native cancellation that arrived meanwhile.

    anyio's shield stops anyio cancellation, but on asyncio a plain ``task.cancel()``
    still lands at the next await. So on asyncio the work runs in a task of its own,
    awaited through ``_Unshakable``: a cancellation of the caller is held, raised in
    the caller once the work is done, and handed back. Elsewhere the caller's shield
    suffices.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        await coro
        return None
    task = asyncio.ensure_future(coro)
    held: BaseException | None = None
    while True:
        try:
            await _Unshakable(task)
        except asyncio.CancelledError as exc:
            if task.cancelled():  # the work itself was cancelled: nothing to hold back
                raise
            held = exc
        else:
            return held


class _Unshakable:
    """Awaits a task, as a future-like object whose ``cancel()`` refuses: a
    ``task.cancel()`` of the waiting task is then not passed on to the work; asyncio
    raises it in the waiting task once the work is done. (``asyncio.shield`` does the
    same through a future of its own, which costs a trip through the event loop more.)
    """

    __slots__ = ("_asyncio_future_blocking", "_task")

    def __init__(self, task: asyncio.Future[None]) -> None:
        self._task = task
        self._asyncio_future_blocking = False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._task.get_loop()

    def add_done_callback(self, fn: Callable[..., object], *, context: Any = None) -> None:
        self._task.add_done_callback(fn, context=context)  # fn is called with the task

    def remove_done_callback(self, fn: Callable[..., object]) -> int:
        return self._task.remove_done_callback(fn)

    def cancel(self, msg: Any = None) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return self._task.done()

    def result(self) -> None:
        return self._task.result()

    def exception(self) -> BaseException | None:
        return self._task.exception()

    def __await__(self) -> Generator[Any, None, None]:
        if not self._task.done():
            self._asyncio_future_blocking = True
            yield self
        return self._task.result()


class _BoundRanOut(BaseException):
    """The compensation time bound ran out while ``_guarded`` work ran (a
    BaseException: no handler's ``except Exception`` takes it for a failure)."""


class CompensationPass(DriverCore):
    """Undoes steps: completed ones and those in doubt, one at a time."""

    __slots__ = ()

    def _completed(self) -> list[TransactionStep]:
        """The completed and in-doubt steps, latest first: the order in which they are
        undone. (A step still ``running`` here was cut short: it may have had its effect.)
        """
        return [
            s for s in reversed(self.tx.steps) if s.status is _COMPLETED or s.status is _RUNNING
        ]

    async def _await_forward_call(self, step: TransactionStep) -> bool:
        """Wait until ``step``'s abandoned handler thread (if any) has returned.

        Returns False when the handler raised after all: then it is the failing step,
        not in doubt, and is not compensated. When it returned, its result is kept (a
        compensation may need it: a refund needs the charge id).
        """
        call = self._worker_calls.get(step.step_id)
        if call is None:
            return True
        await call.wait()
        del self._worker_calls[step.step_id]
        if call.error is not None:
            step.status = _FAILED
            step.error = f"{step.error}; its handler then raised: {message_of(call.error)}"
            step.finished_at = utcnow()
            await self._journal(step, durable=False)
            if self._emit is not None:
                self._step_event(
                    StepFailed,
                    step,
                    error=step.error,
                    error_type=type(call.error).__name__,
                    duration_seconds=seconds_since(step.started_at),
                )
            return False
        if call.result is not None and step.result is None:
            step.result = storable_result(step, call.result, self.tx.transaction_id)
        return True

    async def _compensate_step(self, step: TransactionStep) -> None:
        action = step.compensating_action
        assert action is not None
        handler = self._handlers.get(action)
        policy = self._options.compensation_retry
        if handler is None and self._handlers:
            # A manager with handlers that lacks this one: recording the compensation as
            # done would report an effect undone that nobody undid (a typo, usually).
            step.compensation_attempts += 1
            await self._compensation_failed(
                step,
                f"no handler for compensating action {action!r}; nothing was undone "
                f"(known actions: {', '.join(self._handlers.actions)})",
                "MissingHandler",
            )
            return
        emit = self._emit
        began = utcnow() if emit is not None else None
        # Plain dictionary writes, as in the forward pass: no validation on assignment
        # either way, and this skips pydantic's __setattr__ on the hot path.
        fields = step.__dict__
        while True:
            attempt = fields["compensation_attempts"] = fields["compensation_attempts"] + 1
            fields["status"] = _COMPENSATING
            await self._journal(step)
            if emit is not None:
                self._step_event(CompensationStarted, step, compensating_action=action)
            if handler is None:  # a dry run (no handlers at all): recorded only
                break
            context = self._context(step, "compensate") if handler.wants_context else None
            try:
                if self._guarding:  # an inline sync handler: what it returns may suspend
                    outcome = self._handlers.call_inline(handler, action, step.data, context)
                    if outcome is not None and inspect.isawaitable(outcome):
                        await self._guarded(outcome)
                elif handler.is_async and context is None:
                    await handler.func(action, step.data)  # without handlers.call's frame
                else:
                    await self._handlers.call(handler, action, step.data, context)
            except Exception as exc:
                fields["compensation_error"] = error = message_of(exc)
                if policy.should_retry(exc, attempt):
                    delay = policy.delay_before(attempt + 1)
                    logger.info(
                        "compensation %r of step %s attempt %d failed, retrying in %.3gs: %s",
                        action,
                        step.step_id,
                        attempt,
                        delay,
                        error,
                        extra=self._compensation_log_fields(step),
                    )
                    if self._guarding:
                        await self._guarded(anyio.sleep(delay))
                    else:
                        await anyio.sleep(delay)
                    continue
                await self._compensation_failed(step, error, type(exc).__name__)
                return
            break
        if self._durable and (spoiled := spoiled_data(step)) is not None:
            await self._compensation_failed(step, spoiled, "UnstorableData")
            return
        fields["status"] = _COMPENSATED
        fields["compensation_error"] = None
        fields["compensated_at"] = utcnow()
        if (pending := self._record_lazily(step)) is not None:
            await pending
        if emit is not None:
            self._step_event(
                CompensationCompleted,
                step,
                compensating_action=action,
                duration_seconds=seconds_since(began) or 0.0,
            )

    def _compensation_log_fields(self, step: TransactionStep) -> dict[str, object]:
        fields = step_log_fields(step, self.tx.transaction_id)
        fields["action"] = step.compensating_action
        fields["attempt"] = step.compensation_attempts
        return fields

    async def _compensation_failed(
        self, step: TransactionStep, message: str, error_type: str
    ) -> None:
        """Record that ``step``'s compensation failed for good (an operator must look)."""
        step.status = StepStatus.COMPENSATION_FAILED
        step.compensation_error = message
        self._compensation_errors[step.step_id] = message
        logger.error(
            "compensation %r of step %s failed after %d attempt(s): %s",
            step.compensating_action,
            step.step_id,
            step.compensation_attempts,
            message,
            extra=self._compensation_log_fields(step),
        )
        await self._journal(step)
        if self._emit is not None:
            assert step.compensating_action is not None
            self._step_event(
                CompensationFailed,
                step,
                compensating_action=step.compensating_action,
                error=message,
                error_type=error_type,
            )

    async def _compensate(self, steps: Sequence[TransactionStep]) -> None:
        """Undo ``steps`` in the order given; every one is tried whatever the others do."""
        undone = self._undone
        for step in steps:
            if step.status is StepStatus.COMPENSATED:
                continue
            if step.status is _RUNNING:  # in doubt
                if step.compensating_action is None:
                    # Nothing can undo it: it ends failed, still marked interrupted.
                    step.status = _FAILED
                    step.finished_at = utcnow()
                    await self._journal(step, durable=False)
                    continue
                if not await self._await_forward_call(step):
                    continue
            if step.compensating_action is not None:
                await self._compensate_step(step)
            undone.append(step.step_id)

    async def _compensate_shielded(
        self,
        steps: Sequence[TransactionStep],
        goal: TransactionState,
        interrupted: Sequence[TransactionStep] = (),
    ) -> None:
        """Compensate ``steps`` whatever cancellation arrives, then record the final state.

        ``interrupted`` are the steps cut short by a timeout or cancellation: they are
        recorded as such first (they are in doubt, and among ``steps``). A native
        asyncio cancellation (``task.cancel()``, as ``asyncio.timeout`` and
        ``wait_for`` do) that arrives meanwhile is held back and re-raised at the end.
        """
        work = self._compensate_and_finish(steps, goal, interrupted)
        if not self._native_cancel:
            with anyio.CancelScope(shield=True):
                await work
            return
        if self._cannot_suspend_compensating(steps):
            # Nothing in this pass suspends but a retry's pause or a handler's awaitable,
            # which ``_guarded`` runs shielded, in a task of its own: a cancellation
            # (anyio's or a plain ``task.cancel()``) reaches this task only at an await
            # that suspends, so the pass needs neither a task nor a cancel scope of its
            # own (for a failing transaction: three trips through the event loop fewer).
            self._guarding = True
            try:
                await work
            finally:
                self._guarding = False
            held, self._held = self._held, None
        else:
            with anyio.CancelScope(shield=True):
                held = await finalize(work)
        if held is not None:
            raise held

    def _cannot_suspend_compensating(self, steps: Sequence[TransactionStep]) -> bool:
        """True when compensating ``steps`` suspends nowhere but at a retry's pause or
        at an awaitable a sync handler returns: a store that never suspends, no handler
        thread to wait for, only inline sync compensations (or none)."""
        if self._worker_calls or not getattr(self._store, "never_suspends", False):
            return False
        handlers = self._handlers
        for step in steps:
            action = step.compensating_action
            handler = None if action is None else handlers.get(action)
            if handler is not None and (handler.is_async or not handlers.inline):
                return False
        return True

    async def _guarded(self, work: Awaitable[Any]) -> Any:
        """Await ``work`` where this pass runs without a task of its own: in a task of
        its own, under what is left of the compensation time bound (``_BoundRanOut``
        when it runs out), holding back a plain cancellation of this task until the
        pass is done (``_held``)."""
        left = self._bound_deadline - clock()
        outcome: list[Any] = []

        async def bounded() -> None:
            with anyio.move_on_after(left):
                outcome.append(await work)

        with anyio.CancelScope(shield=True):
            held = await finalize(bounded())
        if held is not None and self._held is None:
            self._held = held
        if not outcome:
            raise _BoundRanOut
        return outcome[0]

    async def _compensate_and_finish(
        self,
        steps: Sequence[TransactionStep],
        goal: TransactionState,
        interrupted: Sequence[TransactionStep],
    ) -> None:
        tx = self.tx
        await self._record_interrupted(interrupted)
        if tx.state is not TransactionState.COMPENSATING:
            fields = tx.__dict__
            fields["state"] = TransactionState.COMPENSATING
            fields["updated_at"] = utcnow()
            # Without an interrupted step, the journal already tells recovery to
            # compensate (a failed step, or the recovery's own decision): the state
            # change may ride with the first compensation's intent.
            if interrupted:
                await self._journal()
            elif (pending := self._record_lazily()) is not None:
                await pending
            if self._emit is not None:
                self._tx_event(TransactionCompensating, error=tx.error)
        await self._compensate_within_bound(steps)
        await self._finish(
            TransactionState.COMPENSATION_FAILED if self._compensation_errors else goal
        )

    async def _record_interrupted(self, steps: Sequence[TransactionStep]) -> None:
        """Journal ``steps`` as cut short (in doubt) before anything undoes them."""
        emit = self._emit
        for step in steps:
            await self._journal(step, durable=False)
            if emit is not None:
                self._step_event(StepInterrupted, step, error=step.error or "interrupted")

    async def _compensate_within_bound(self, steps: Sequence[TransactionStep]) -> None:
        """Compensate ``steps`` under the compensation time bound; what it cuts short
        is recorded as a compensation error."""
        bound_seconds = self._options.compensation_timeout
        if self._guarding:
            # Nothing suspends but what ``_guarded`` runs, under what is left of this.
            self._bound_deadline = clock() + bound_seconds
            try:
                await self._compensate(steps)
                ran_out = False
            except _BoundRanOut:
                ran_out = True
        else:
            with anyio.move_on_after(bound_seconds) as bound:
                await self._compensate(steps)
            ran_out = bound.cancelled_caught
        if ran_out:
            errors = self._compensation_errors
            for step in steps:
                if step.step_id in self._worker_calls:
                    step.status = StepStatus.COMPENSATION_FAILED
                    step.compensation_error = (
                        f"not compensated: its action was still running when the "
                        f"compensation time bound ({bound_seconds}s) ran out, so it may "
                        "still have its effect"
                    )
                    errors[step.step_id] = step.compensation_error
                    await self._journal(step)
                    self._compensation_timed_out(step)
                elif step.status is StepStatus.COMPENSATING:
                    step.status = StepStatus.COMPENSATION_FAILED
                    step.compensation_error = f"compensation timed out after {bound_seconds}s"
                    errors[step.step_id] = step.compensation_error
                    await self._journal(step)
                    self._compensation_timed_out(step)
                elif (
                    step.compensating_action is not None
                    and step.status is not StepStatus.COMPENSATED
                    and step.step_id not in errors
                ):
                    errors[step.step_id] = (
                        "not compensated: the compensation time bound "
                        f"({bound_seconds}s) ran out first"
                    )

    def _compensation_timed_out(self, step: TransactionStep) -> None:
        """``step``'s compensation was cut short by its time bound (journaled)."""
        logger.error(
            "compensation %r of step %s: %s",
            step.compensating_action,
            step.step_id,
            step.compensation_error,
            extra=self._compensation_log_fields(step),
        )
        if self._emit is not None and step.compensating_action is not None:
            self._step_event(
                CompensationFailed,
                step,
                compensating_action=step.compensating_action,
                error=step.compensation_error or "timed out",
                error_type="TimeoutError",
            )

    def _in_doubt(self) -> list[TransactionStep]:
        """The steps left running (a parallel group's siblings a failure cancelled)."""
        return [step for step in self.tx.steps if step.status is _RUNNING]

    def _interrupted(self, error: str) -> list[TransactionStep]:
        """Mark the steps that were running when the pass was cut short: in doubt, they
        stay ``running`` until their compensation, flagged ``interrupted`` (a step
        already flagged keeps the reason it was given)."""
        stopped = [step for step in self.tx.steps if step.status is _RUNNING]
        for step in stopped:
            if not step.interrupted:
                step.interrupted = True
                step.error = error
        return stopped
