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

import time
from collections.abc import Iterable, Sequence

import anyio

from ._compensation import CompensationPass, finalize
from ._driver import (
    EngineOptions,
    LeaseRenewal,
    StepFailed,
    clock,
    interrupted_error,
    timed_out_error,
    what_stopped,
)
from ._forward import ForwardPass
from .errors import StoreError
from .models import StepStatus, TransactionResult, TransactionState, TransactionStep

__all__ = ["EngineOptions", "LeaseRenewal", "StepFailed", "TransactionDriver", "clock"]


class TransactionDriver(ForwardPass, CompensationPass):
    """Runs one transaction: commit, rollback or recovery. One driver, one run."""

    __slots__ = ()

    # ------------------------------------------------------------------ passes

    async def commit(self) -> TransactionResult:
        """Run every step; on failure, timeout or cancellation, undo the completed ones.

        The caller has already moved the transaction to ``active`` (before any await,
        which is what makes a second concurrent commit fail).
        """
        tx = self.tx
        self.carry_completions()  # every step's completion is followed by a record
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
        steps = tx.steps
        carried = self.carry_first_intent(steps)
        try:
            await self.take_lease((TransactionState.PENDING,))
        except StoreError:
            if carried is not None:
                self.uncarry(carried)
            raise
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
            tx.__dict__["error"] = failed.error
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
            tx.error = timed_out_error(
                tx,
                "while running; completed"
                + (" and interrupted" if any(s.compensating_action for s in stopped) else "")
                + " steps were compensated.",
            )
            await self._compensate_shielded(self._completed(), TransactionState.FAILED, stopped)
            return self.result(stopped[0] if stopped else None)
        except BaseException as exc:
            tx.error = interrupted_error(tx, exc)
            stopped = self._interrupted(
                f"interrupted by {what_stopped(exc)} while this step ran; it may have had "
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
            held = await finalize(self._record_and_compensate(steps))
        if held is not None:
            raise held

    async def _record_and_compensate(self, steps: Sequence[TransactionStep]) -> None:
        await self._record_interrupted(
            [s for s in steps if s.interrupted and s.status is StepStatus.RUNNING]
        )
        await self._compensate_within_bound(steps)

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
        self.carry_completions()
        await self.take_lease(expected, "rollback")
        await self._compensate_shielded(self.tx.steps[::-1], TransactionState.ROLLED_BACK)
        return self.result()
