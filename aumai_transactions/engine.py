"""The engine: drives one transaction through its forward and compensation passes.

It knows the journal only through the Store protocol. Rules it keeps:

* a step's (or compensation's) intent is durably recorded before its handler runs;
  its completion is recorded after, folded into the next durable write;
* every transaction state change is recorded before the next action;
* compensation is finalization: it runs shielded from cancellation, under its own
  time bound, and an outer cancellation is re-raised once it is done;
* a step cut short while running (the deadline, a cancellation) is in doubt: it may
  have had its effect, so it is compensated like a completed one, but never while its
  handler may still be running (a sync handler's thread is waited for first);
* a write rejected for a stale lease stops the driver at once: no further handler runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import anyio

from .errors import StoreError
from .handlers import HandlerRegistry, StepContext, WorkerCall
from .models import (
    RetryPolicy,
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
    json_problem,
    storable,
    utcnow,
)
from .stores import Lease, Store

__all__ = ["EngineOptions", "LeaseRenewal", "StepFailed", "TransactionDriver", "clock"]

logger = logging.getLogger("aumai_transactions")

_RUNNING = StepStatus.RUNNING
_COMPLETED = StepStatus.COMPLETED
_FAILED = StepStatus.FAILED


class LeaseRenewal:
    """When the leases of one owner are next due for renewal.

    Shared by every driver of a manager (and its heartbeat): ``Store.renew`` extends
    all of an owner's leases at once, so one renewal per period is enough, however
    many transactions are in flight.
    """

    __slots__ = ("due", "period")

    def __init__(self, lease_ttl: float) -> None:
        self.period = lease_ttl / 3
        self.due = time.monotonic() + self.period

    def claim(self) -> bool:
        """True (once per period) when the caller should renew now."""
        now = time.monotonic()
        if now < self.due:
            return False
        self.due = now + self.period  # before any await: the others see it is taken
        return True


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Settings a manager hands to every driver it starts."""

    owner: str
    renewal: LeaseRenewal
    lease_ttl: float = 30.0
    compensation_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(max_attempts=3, initial_delay=0.1)
    )
    compensation_timeout: float = 60.0
    max_recovery_attempts: int = 3


class StepFailed(Exception):
    """A step's handler failed for good (after its retries)."""

    def __init__(self, step: TransactionStep) -> None:
        super().__init__(step.error)
        self.step = step


async def _finalize(coro: Coroutine[Any, Any, None]) -> BaseException | None:
    """Run ``coro`` to its end; return a native cancellation that arrived meanwhile.

    anyio's shield stops anyio cancellation, but on asyncio a plain ``task.cancel()``
    still lands at the next await. So on asyncio the work runs in a task of its own,
    awaited through ``asyncio.shield``: a cancellation of the caller is caught, held
    and handed back once the work is done. Elsewhere the caller's shield suffices.
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
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():  # the work itself was cancelled: nothing to hold back
                raise
            held = exc
        else:
            return held


def clock() -> float:
    """``anyio.current_time()``, cheaply where the loop is asyncio's."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return anyio.current_time()


def _spoiled_data(step: TransactionStep) -> str | None:
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


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _storable_result(step: TransactionStep, result: Any) -> Any:
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
        )
        return repr(result)


class TransactionDriver:
    """Runs one transaction: commit, rollback or recovery. One driver, one run."""

    __slots__ = (
        "_compensation_errors",
        "_handlers",
        "_lease",
        "_options",
        "_durable",
        "_started_at",
        "_store",
        "_undone",
        "_worker_calls",
        "tx",
    )

    def __init__(
        self,
        tx: Transaction,
        handlers: HandlerRegistry,
        store: Store,
        options: EngineOptions,
    ) -> None:
        self.tx = tx
        self._handlers = handlers
        self._store = store
        self._options = options
        self._lease: Lease | None = None
        self._durable = store.durable
        self._undone: list[str] = []
        self._compensation_errors: dict[str, str] = {}
        self._worker_calls: dict[str, WorkerCall] = {}
        self._started_at = utcnow()

    # ------------------------------------------------------------------ journal

    async def _journal(self, step: TransactionStep | None = None, durable: bool = True) -> None:
        lease = self._lease
        assert lease is not None
        if self._durable and self._options.renewal.claim():
            await self._store.renew(lease.owner, self._options.lease_ttl)
        await self._store.record(lease, self.tx, step, durable=durable)

    @property
    def started_at(self) -> datetime:
        """When this driver started."""
        return self._started_at

    async def take_lease(self, expected: Iterable[TransactionState]) -> None:
        """Write the transaction in full and take its lease (it must be in ``expected``)."""
        store = self._store
        self._lease = await store.acquire(
            self.tx, self._options.owner, self._options.lease_ttl, expected
        )

    @property
    def lease(self) -> Lease | None:
        """The lease this driver holds, or None until it took (or adopted) one."""
        return self._lease

    def adopt_lease(self, lease: Lease) -> None:
        """Drive under a lease claimed elsewhere (recovery)."""
        self._lease = lease

    async def _finish(self, state: TransactionState) -> None:
        fields = self.tx.__dict__
        fields["state"] = state
        fields["finished_at"] = fields["updated_at"] = utcnow()
        await self._journal()
        assert self._lease is not None
        try:
            await self._store.release(self._lease)
        except StoreError as exc:
            # The outcome is durable: the caller must get it, not an error that reads as
            # "it failed" (and invites a retry). The lease lapses by itself, and a
            # transaction in a terminal state is never claimed.
            logger.warning(
                "transaction %s is %s, but its lease could not be released: %s",
                self.tx.transaction_id,
                state.value,
                exc,
            )

    # ------------------------------------------------------------------ steps

    def _context(
        self, step: TransactionStep, phase: Literal["forward", "compensate"]
    ) -> StepContext:
        tx = self.tx
        compensating = phase == "compensate"
        # A compensation also sees the result of the step it undoes (a refund needs the
        # charge id); a forward step sees the steps completed before it.
        done = [
            s
            for s in tx.steps
            if (s.status is _COMPLETED and s is not step) or (compensating and s is step)
        ]
        return StepContext(
            transaction_id=tx.transaction_id,
            step_id=step.step_id,
            agent_id=step.agent_id,
            action=(step.compensating_action or step.action) if compensating else step.action,
            attempt=step.compensation_attempts if compensating else step.attempts,
            idempotency_key=step.idempotency_key(tx.transaction_id),
            phase=phase,
            results={s.step_id: s.result for s in done},
            results_by_action={s.action: s.result for s in done},
            actions={s.step_id: s.action for s in done},
        )

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

        async with anyio.create_task_group() as tasks:
            for step in steps:
                if step.status is not _COMPLETED:
                    tasks.start_soon(run, step)
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
        while True:
            attempt = fields["attempts"] = fields["attempts"] + 1
            fields["status"] = _RUNNING
            fields["started_at"] = utcnow()
            await self._journal(step)  # intent first: nothing runs unrecorded
            if handler is None:
                result = None
                fields["recorded_only"] = True
            else:
                try:
                    if handler.is_async and not handler.wants_context:
                        # The common case, without the extra frame of handlers.call.
                        result = await handler.func(step.action, step.data)
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
                    fields["error"] = _message(exc)
                    if policy is not None and policy.should_retry(exc, attempt):
                        logger.info(
                            "step %s (%s) attempt %d failed, retrying: %s",
                            step.step_id,
                            step.action,
                            attempt,
                            step.error,
                        )
                        await anyio.sleep(policy.delay_before(attempt + 1))
                        continue
                    fields["status"] = _FAILED
                    fields["finished_at"] = utcnow()
                    await self._journal(step)
                    raise StepFailed(step) from exc
            if self._durable and (spoiled := _spoiled_data(step)) is not None:
                fields["error"] = spoiled
                fields["status"] = _FAILED
                fields["finished_at"] = utcnow()
                await self._journal(step)
                raise StepFailed(step)
            fields["status"] = _COMPLETED
            if fields["error"] is not None:
                fields["error"] = None
            if result is not None:
                fields["result"] = _storable_result(step, result)
            fields["finished_at"] = utcnow()
            # The completion rides with the next durable write: nothing happens in between.
            await self._journal(step, durable=False)
            break

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
            step.error = f"{step.error}; its handler then raised: {_message(call.error)}"
            step.finished_at = utcnow()
            await self._journal(step, durable=False)
            return False
        if call.result is not None and step.result is None:
            step.result = _storable_result(step, call.result)
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
            )
            return
        while True:
            attempt = step.compensation_attempts = step.compensation_attempts + 1
            step.status = StepStatus.COMPENSATING
            await self._journal(step)
            if handler is None:  # a dry run (no handlers at all): recorded only
                break
            try:
                await self._handlers.call(
                    handler,
                    action,
                    step.data,
                    self._context(step, "compensate") if handler.wants_context else None,
                )
            except Exception as exc:
                step.compensation_error = _message(exc)
                if policy.should_retry(exc, attempt):
                    await anyio.sleep(policy.delay_before(attempt + 1))
                    continue
                await self._compensation_failed(step, step.compensation_error)
                return
            break
        if self._durable and (spoiled := _spoiled_data(step)) is not None:
            await self._compensation_failed(step, spoiled)
            return
        step.status = StepStatus.COMPENSATED
        step.compensation_error = None
        step.compensated_at = utcnow()
        await self._journal(step, durable=False)

    async def _compensation_failed(self, step: TransactionStep, message: str) -> None:
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
        )
        await self._journal(step)

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
        with anyio.CancelScope(shield=True):
            held = await _finalize(self._compensate_and_finish(steps, goal, interrupted))
        if held is not None:
            raise held

    async def _compensate_and_finish(
        self,
        steps: Sequence[TransactionStep],
        goal: TransactionState,
        interrupted: Sequence[TransactionStep],
    ) -> None:
        tx = self.tx
        for step in interrupted:
            await self._journal(step, durable=False)
        if tx.state is not TransactionState.COMPENSATING:
            tx.state = TransactionState.COMPENSATING
            tx.updated_at = utcnow()
            # Without an interrupted step, the journal already tells recovery to
            # compensate (a failed step, or the recovery's own decision): the state
            # change may ride with the first compensation's intent.
            await self._journal(durable=bool(interrupted))
        await self._compensate_within_bound(steps)
        await self._finish(
            TransactionState.COMPENSATION_FAILED if self._compensation_errors else goal
        )

    async def _compensate_within_bound(self, steps: Sequence[TransactionStep]) -> None:
        """Compensate ``steps`` under the compensation time bound; what it cuts short
        is recorded as a compensation error."""
        bound_seconds = self._options.compensation_timeout
        with anyio.move_on_after(bound_seconds) as bound:
            await self._compensate(steps)
        if bound.cancelled_caught:
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
                elif step.status is StepStatus.COMPENSATING:
                    step.status = StepStatus.COMPENSATION_FAILED
                    step.compensation_error = f"compensation timed out after {bound_seconds}s"
                    errors[step.step_id] = step.compensation_error
                    await self._journal(step)
                elif (
                    step.compensating_action is not None
                    and step.status is not StepStatus.COMPENSATED
                    and step.step_id not in errors
                ):
                    errors[step.step_id] = (
                        "not compensated: the compensation time bound "
                        f"({bound_seconds}s) ran out first"
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

    # ------------------------------------------------------------------ passes

    async def commit(self) -> TransactionResult:
        """Run every step; on failure, timeout or cancellation, undo the completed ones.

        The caller has already moved the transaction to ``active`` (before any await,
        which is what makes a second concurrent commit fail).
        """
        tx = self.tx
        tx.__dict__["updated_at"] = started = self._started_at
        timeout = tx.timeout_seconds
        remaining = None if timeout is None else timeout - (started - tx.created_at).total_seconds()
        if remaining is not None and remaining <= 0:
            tx.error = (
                f"Transaction {tx.transaction_id} timed out before commit: its deadline "
                f"({timeout}s after {tx.created_at.isoformat()}) had passed; no step ran."
            )
            await self.take_lease((TransactionState.PENDING,))
            await self._finish(TransactionState.FAILED)
            return self.result()
        await self.take_lease((TransactionState.PENDING,))
        steps = tx.steps
        failed: TransactionStep | None = None
        try:
            if remaining is None:
                await self._forward(steps)
            elif self._cannot_suspend(steps):
                # Nothing in this pass yields to the event loop, so no cancel scope could
                # interrupt it; the deadline is checked between steps instead, sparing the
                # scope, the costliest object of a commit.
                await self._forward(steps, time.monotonic() + remaining)
            else:
                # anyio.fail_after, without its two extra backend look-ups on asyncio
                # (where the loop's clock is the one cancel scopes use).
                deadline = clock() + remaining
                with anyio.CancelScope(deadline=deadline) as scope:
                    await self._forward(steps)
                if scope.cancelled_caught and clock() >= deadline:
                    raise TimeoutError
        except StepFailed as failure:
            failed = failure.step
            tx.error = failed.error
            await self._compensate_shielded(
                self._completed(), TransactionState.ROLLED_BACK, self._in_doubt()
            )
            return self.result(failed)
        except StoreError:
            raise
        except TimeoutError:
            stopped = self._interrupted(
                "interrupted: the transaction timed out while this step ran; it may have "
                "had its effect, so it is compensated"
            )
            tx.error = (
                f"Transaction {tx.transaction_id} timed out after {tx.timeout_seconds}s "
                "while running; completed"
                + (" and interrupted" if any(s.compensating_action for s in stopped) else "")
                + " steps were compensated."
            )
            await self._compensate_shielded(self._completed(), TransactionState.FAILED, stopped)
            return self.result(stopped[0] if stopped else None)
        except BaseException as exc:
            tx.error = f"Transaction {tx.transaction_id} was interrupted: {_message(exc)}"
            stopped = self._interrupted(
                f"interrupted ({type(exc).__name__}) while this step ran; it may have had "
                "its effect, so it is compensated"
            )
            await self._compensate_shielded(self._completed(), TransactionState.FAILED, stopped)
            raise
        await self._finish(TransactionState.COMMITTED)
        return self.result()

    # ------------------------------------------------------------------ open transactions

    async def finish_commit(self) -> None:
        """End an open transaction: ``committed`` (``compensation_failed`` if undoing a
        step left in doubt failed)."""
        await self._finish(
            TransactionState.COMPENSATION_FAILED
            if self._compensation_errors
            else TransactionState.COMMITTED
        )

    async def compensate_in_doubt(self, steps: Sequence[TransactionStep]) -> None:
        """Undo steps left in doubt by a group whose failure the code caught, shielded,
        before the open transaction commits."""
        with anyio.CancelScope(shield=True):
            held = await _finalize(self._compensate_within_bound(steps))
        if held is not None:
            raise held

    async def abort(self, goal: TransactionState) -> None:
        """End an open transaction by compensating every step that ran or may have run
        (a step still running is in doubt), newest first; ``goal`` when all succeed."""
        stopped = self._interrupted(
            "interrupted: the open transaction ended while this step ran; it may have had "
            "its effect, so it is compensated"
        )
        await self._compensate_shielded(self._completed(), goal, stopped)

    async def rollback(self, expected: Iterable[TransactionState]) -> TransactionResult:
        """Compensate every step in reverse order (the caller set ``compensating``)."""
        await self.take_lease(expected)
        await self._compensate_shielded(self.tx.steps[::-1], TransactionState.ROLLED_BACK)
        return self.result()

    # ------------------------------------------------------------------ result

    def result(self, failed: TransactionStep | None = None) -> TransactionResult:
        """The outcome of this run, in the original tool's terms."""
        tx = self.tx
        finished = tx.finished_at
        state = tx.state
        if state is TransactionState.COMMITTED:
            completed = [s.step_id for s in tx.steps if s.status is _COMPLETED]
        else:
            completed = list(self._undone)
        started: datetime = self._started_at
        return TransactionResult.new(
            tx.transaction_id,
            state,
            completed,
            failed.step_id if failed is not None else None,
            tx.error,
            dict(self._compensation_errors),
            started,
            finished,
            [s.step_id for s in tx.steps if s.interrupted],
            [s.step_id for s in tx.steps if s.recorded_only],
        )
