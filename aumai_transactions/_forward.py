"""The forward pass: a transaction's steps run in order, a parallel group's at once."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import anyio

from ._driver import DriverCore, StepFailed, message_of
from .events import GroupEnded, GroupStarted, StepCompleted, StepRetrying, StepStarted
from .events import StepFailed as StepFailedEvent
from .models import StepAttempt, StepStatus, TransactionStep, json_problem, storable, utcnow

__all__ = ["ForwardPass", "seconds_since", "spoiled_data", "step_log_fields", "storable_result"]

logger = logging.getLogger("aumai_transactions.engine")

_RUNNING = StepStatus.RUNNING
_COMPLETED = StepStatus.COMPLETED
_FAILED = StepStatus.FAILED


def spoiled_data(step: TransactionStep) -> str | None:
    """If a handler left its step's data unstorable (it mutated the dict it was given),
    make the data storable again and say what happened; None when the data is fine.

    A durable journal writes the step's data with every record: left as it is, the
    next write would fail and leave the transaction to recovery.
    """
    problem = json_problem(step.data)
    if problem is None:
        return None
    step.data = json.loads(json.dumps(step.data, default=repr, skipkeys=True))
    return (
        "the handler left the step's data unstorable (it put a value JSON cannot hold "
        f"into the dict it was given: {problem}); such values are stored as their repr"
    )


def step_log_fields(step: TransactionStep, transaction_id: str | None = None) -> dict[str, Any]:
    """The ``extra`` of a log record about ``step`` (never its data or result)."""
    return {
        "transaction_id": transaction_id,
        "step_id": step.step_id,
        "action": step.action,
        "attempt": step.attempts,
    }


def seconds_since(moment: datetime | None) -> float | None:
    """Seconds from ``moment`` to now, or None without one."""
    return None if moment is None else (utcnow() - moment).total_seconds()


def storable_result(step: TransactionStep, result: Any, transaction_id: str | None = None) -> Any:
    """What to record as ``step``'s result: JSON as it is, or converted as pydantic
    converts; only what still cannot be stored becomes its repr, with a warning."""
    try:
        return storable(result)
    except TypeError as exc:
        logger.warning(
            "step %s (%s) returned a value of type %s, which cannot be stored as JSON (%s); its "
            "repr is recorded as the result",
            step.step_id,
            step.action,
            type(result).__name__,
            exc,
            extra=step_log_fields(step, transaction_id),
        )
        return repr(result)


class ForwardPass(DriverCore):
    """Runs steps: intent journaled first, handler called, outcome recorded."""

    __slots__ = ()

    async def _forward(
        self, steps: Sequence[TransactionStep], deadline: float | None = None
    ) -> None:
        """Run ``steps`` in order, a parallel group's steps at once; raises StepFailed
        when one fails for good. Steps already completed (a resumed group) are skipped.

        ``deadline`` (``time.monotonic()``), when given, is checked before each step.
        """
        index = 0
        count = len(steps)
        while index < count:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError
            step = steps[index]
            group = step.group
            if group is None:
                if step.status is not _COMPLETED:
                    await self.run_step(step)
                index += 1
                continue
            end = index + 1
            while end < count and steps[end].group == group:
                end += 1
            await self.run_group(steps[index:end])
            index = end

    async def run_group(self, steps: Sequence[TransactionStep]) -> None:
        """Run the steps of one parallel group at the same time.

        The first step to fail for good cancels its running siblings, which are then in
        doubt (marked interrupted, compensated with the rest); StepFailed is raised for
        it once every sibling has stopped. A store error stops the group the same way.
        """
        limits = [s.group_concurrency for s in steps if s.group_concurrency is not None]
        limiter = anyio.CapacityLimiter(min(limits)) if limits else None
        failures: list[BaseException] = []
        cancelled = anyio.get_cancelled_exc_class()

        async def run(step: TransactionStep) -> None:
            try:
                if limiter is None:
                    await self.run_step(step)
                else:
                    async with limiter:
                        await self.run_step(step)
            except cancelled:
                raise
            except BaseException as exc:  # re-raised below, never as an ExceptionGroup
                failures.append(exc)
                tasks.cancel_scope.cancel()

        emit = self._emit
        group = steps[0].group
        if emit is not None:
            ids = tuple(s.step_id for s in steps if s.status is not _COMPLETED)
            self._tx_event(GroupStarted, group=group, step_ids=ids)
        async with anyio.create_task_group() as tasks:
            for step in steps:
                if step.status is not _COMPLETED:
                    tasks.start_soon(run, step)
        if emit is not None:
            failing = getattr(failures[0], "step", None) if failures else None
            self._tx_event(
                GroupEnded,
                group=group,
                failed_step=None if failing is None else failing.step_id,
                error=message_of(failures[0]) if failures else None,
                error_type=type(failures[0].__cause__ or failures[0]).__name__
                if failures
                else None,
            )
        if failures:
            first = failures[0]
            for step in steps:
                if step.status is _RUNNING:
                    step.interrupted = True
                    step.error = (
                        f"interrupted: step {getattr(first, 'step', step).step_id} of its "
                        "parallel group failed while this one ran; it may have had its "
                        "effect, so it is compensated"
                    )
            raise first

    async def run_step(self, step: TransactionStep) -> None:
        """Run one step with its retries; raises StepFailed when it fails for good."""
        handlers = self._handlers
        handler = handlers.get(step.action)
        policy = step.retry
        # Plain dictionary writes: the fields are simple values and the models are not
        # validated on assignment, so this skips pydantic's __setattr__ on the hot path.
        fields = step.__dict__
        emit = self._emit
        while True:
            if self._prewritten is step:  # the lease carried this attempt's intent
                self._prewritten = None
                attempt = fields["attempts"]
            else:
                attempt = fields["attempts"] = fields["attempts"] + 1
                fields["status"] = _RUNNING
                fields["started_at"] = utcnow()
                await self._journal(step)  # intent first: nothing runs unrecorded
            if emit is not None:
                self._step_event(StepStarted, step)
            if handler is None:
                result = None
                fields["recorded_only"] = True
            else:
                try:
                    if handler.is_async and not handler.wants_context:
                        # The common cases, without the extra frame of handlers.call.
                        result = await handler.func(step.action, step.data)
                    elif handlers.inline and not handler.wants_context:
                        result = handler.func(step.action, step.data)
                        if result is not None and inspect.isawaitable(result):
                            result = await result
                    else:
                        result = await handlers.call(
                            handler,
                            step.action,
                            step.data,
                            self._context(step, "forward") if handler.wants_context else None,
                            None
                            if handler.is_async or handlers.inline
                            else functools.partial(self._worker_calls.__setitem__, step.step_id),
                        )
                except Exception as exc:
                    fields["error"] = message_of(exc)
                    if policy is not None and policy.should_retry(exc, attempt):
                        delay = policy.delay_before(attempt + 1)
                        logger.info(
                            "step %s (%s) attempt %d failed, retrying in %.3gs: %s",
                            step.step_id,
                            step.action,
                            attempt,
                            delay,
                            step.error,
                            extra=step_log_fields(step, self.tx.transaction_id),
                        )
                        if emit is not None:
                            self._step_event(
                                StepRetrying,
                                step,
                                error=step.error,
                                error_type=type(exc).__name__,
                                delay_seconds=delay,
                                duration_seconds=seconds_since(step.started_at),
                            )
                        earlier = fields["earlier_attempts"] or []
                        earlier.append(
                            StepAttempt(
                                started_at=step.started_at, finished_at=utcnow(), error=step.error
                            )
                        )
                        fields["earlier_attempts"] = earlier  # journaled with the next intent
                        await anyio.sleep(delay)
                        continue
                    fields["status"] = _FAILED
                    fields["finished_at"] = utcnow()
                    await self._journal(step)
                    self._step_failed(step, type(exc).__name__)
                    raise StepFailed(step) from exc
            if self._durable and (spoiled := spoiled_data(step)) is not None:
                fields["error"] = spoiled
                fields["status"] = _FAILED
                fields["finished_at"] = utcnow()
                await self._journal(step)
                self._step_failed(step, "UnstorableData")
                raise StepFailed(step)
            fields["status"] = _COMPLETED
            if fields["error"] is not None:
                fields["error"] = None
            if result is not None:
                fields["result"] = storable_result(step, result, self.tx.transaction_id)
            fields["finished_at"] = utcnow()
            # The completion rides with the next durable write: nothing happens in between.
            if (pending := self._record_lazily(step)) is not None:
                await pending
            if emit is not None:
                self._step_event(
                    StepCompleted,
                    step,
                    duration_seconds=(fields["finished_at"] - fields["started_at"]).total_seconds(),
                    recorded_only=step.recorded_only,
                )
            break

    def _step_failed(self, step: TransactionStep, error_type: str) -> None:
        """``step`` failed for good (journaled): log it and tell the listeners."""
        # INFO, not WARNING: undoing what ran is the engine doing its job, and the result
        # says so (in an open transaction the code may even catch it and carry on); a
        # WARNING would print on the stderr of every script without logging set up.
        # The message is the handler's, never the step's data.
        logger.info(
            "step %s (%s) failed after %d attempt(s): %s",
            step.step_id,
            step.action,
            step.attempts,
            step.error,
            extra=step_log_fields(step, self.tx.transaction_id),
        )
        if self._emit is not None:
            self._step_event(
                StepFailedEvent,
                step,
                error=step.error or error_type,
                error_type=error_type,
                duration_seconds=seconds_since(step.started_at),
            )

    def _cannot_suspend(self, steps: Sequence[TransactionStep]) -> bool:
        """True when running ``steps`` never yields to the event loop: a store that
        never suspends, and only inline sync handlers (or none) without retries."""
        if not getattr(self._store, "never_suspends", False):
            return False
        if any(s.group is not None for s in steps):
            return False  # a parallel group runs in a task group
        handlers = self._handlers
        if not handlers.inline:
            return not any(handlers.get(s.action) for s in steps)
        for step in steps:
            handler = handlers.get(step.action)
            if step.retry is not None or (handler is not None and handler.is_async):
                return False
        return True
