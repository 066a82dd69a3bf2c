"""Recovery: driving a transaction whose driver died to a terminal state.

The policy decides the direction: ``compensate`` (a crash aborts, as in a database)
undoes completed and in-doubt steps in reverse order; ``resume`` re-runs the in-doubt
step with the same idempotency key and carries on. The in-doubt step's own
``recovery`` setting wins over the policy, and a transaction that was already
compensating is always compensated.
"""

from __future__ import annotations

import logging

from .engine import StepFailed, TransactionDriver
from .events import TransactionBlocked, TransactionRecovered
from .models import (
    RecoveryPolicy,
    StepStatus,
    TransactionResult,
    TransactionState,
    TransactionStep,
    ends_failed,
)
from .stores import Lease

__all__ = ["RecoveryDriver"]

logger = logging.getLogger("aumai_transactions.recovery")

_RUNNING = StepStatus.RUNNING
_FAILED = StepStatus.FAILED

# Steps whose forward action may have happened: what recovery must undo.
_MAY_HAVE_RUN = frozenset(
    {
        StepStatus.RUNNING,
        StepStatus.COMPLETED,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATION_FAILED,
    }
)


class RecoveryDriver(TransactionDriver):
    """A driver that takes over an abandoned transaction under a claimed lease."""

    __slots__ = ()

    def _recovery_plan(self, policy: RecoveryPolicy) -> tuple[RecoveryPolicy, int]:
        """Which way to drive, and (for resume) the index of the first step to run."""
        tx = self.tx
        if tx.state is TransactionState.COMPENSATING or tx.is_open:
            # An open transaction's next step was chosen by code that died with it.
            return "compensate", 0
        steps = tx.steps
        if any(step.status is _FAILED for step in steps):
            return "compensate", 0
        start = next(
            (i for i, step in enumerate(steps) if step.status is not StepStatus.COMPLETED),
            len(steps),
        )
        # Every step in doubt (several, when a parallel group was running) must agree to
        # resume; one that must not run twice makes the whole transaction compensate.
        in_doubt = [step.recovery or policy for step in steps if step.status is _RUNNING]
        if "compensate" in in_doubt:
            return "compensate", 0
        return ("resume" if in_doubt else policy), start

    def _missing_handlers(self, direction: RecoveryPolicy, start: int) -> list[str]:
        # No exception for a manager without any handler (a dry run of its own commits):
        # recording another process's compensations as done without running them would
        # leave a journal that says "rolled back" over effects that were never undone.
        steps = self.tx.steps
        needed: list[str] = []
        if direction == "resume":
            needed += [s.action for s in steps[start:]]
            needed += [s.compensating_action for s in steps if s.compensating_action]
        else:
            needed += [
                s.compensating_action
                for s in steps
                if s.compensating_action and s.status in _MAY_HAVE_RUN
            ]
        return sorted({a for a in needed if a not in self._handlers})

    async def recover(self, lease: Lease, policy: RecoveryPolicy) -> TransactionResult:
        """Drive a transaction whose driver died to a terminal state.

        (One coroutine for the whole run, bar the resume path's: recovery keeps a
        window of them in flight, and each one is an object the cyclic garbage
        collector traces for as long as the transaction is driven.)
        """
        self.adopt_lease(lease)
        self.carry_completions()  # every way through ends with a record
        tx = self.tx
        logger.info(
            "transaction %s: recovering it (attempt %d, policy %s)",
            tx.transaction_id,
            tx.recovery_attempts,
            policy,
            extra={"transaction_id": tx.transaction_id},
        )
        direction: RecoveryPolicy | None = None
        if tx.recovery_attempts > self._options.max_recovery_attempts:
            self._dead_letter()
            await self._finish(TransactionState.DEAD_LETTER)
            result = self.result()
        else:
            direction, start = self._recovery_plan(policy)
            missing = self._block_on_missing_handlers(direction, start)
            if missing:
                await self._journal()  # the lease is kept until it expires: no busy retry
                if self._emit is not None:
                    self._tx_event(
                        TransactionBlocked, missing_actions=missing, reason=tx.blocked_reason
                    )
                return self.result()
            if direction == "resume":
                result = await self._resume(start)
            else:
                goal = self._goal()  # read before the plan rewrites the error
                await self._compensate_shielded(self._undo_plan(), goal)
                result = self.result()
        if self._emit is not None and result.state.is_terminal:
            self._tx_event(TransactionRecovered, state=result.state, direction=direction)
        return result

    def _dead_letter(self) -> None:
        """Say why ``tx`` ends dead-lettered, in its error and in the log."""
        tx = self.tx
        tx.error = (
            f"dead-lettered after {tx.recovery_attempts - 1} recovery attempts "
            "that did not finish (a handler may be killing its process); "
            f"last error: {tx.error or 'none recorded'}"
        )
        logger.error(
            "transaction %s: %s",
            tx.transaction_id,
            tx.error,
            extra={"transaction_id": tx.transaction_id},
        )

    def _block_on_missing_handlers(self, direction: RecoveryPolicy, start: int) -> tuple[str, ...]:
        """The actions this process has no handler for (sorted), having marked ``tx`` as
        blocked by them; () (its block lifted) when there is none."""
        tx = self.tx
        missing = self._missing_handlers(direction, start)
        if not missing:
            tx.blocked_reason = None
            return ()
        tx.blocked_reason = (
            "recovery blocked: this process has no handler for action(s) "
            + ", ".join(repr(a) for a in missing)
            + "; register them and recover again"
        )
        tx.recovery_attempts -= 1  # a missing handler is not a failed attempt
        logger.error(
            "transaction %s: %s",
            tx.transaction_id,
            tx.blocked_reason,
            extra={"transaction_id": tx.transaction_id},
        )
        return tuple(missing)

    async def _resume(self, start: int) -> TransactionResult:
        """Re-run the steps from ``start`` on (the in-doubt one first) and commit, or
        compensate if one fails."""
        tx = self.tx
        try:
            await self._forward(tx.steps[start:])
        except StepFailed as failure:
            tx.error = failure.step.error
            await self._compensate_shielded(
                self._completed(), TransactionState.ROLLED_BACK, self._in_doubt()
            )
            return self.result(failure.step)
        await self._finish(TransactionState.COMMITTED)
        return self.result()

    def _goal(self) -> TransactionState:
        """Where compensating ``tx`` ends: a transaction that timed out or was
        interrupted ends failed, as it would have had its compensation finished where
        it started; one whose process died ends rolled back."""
        return TransactionState.FAILED if ends_failed(self.tx) else TransactionState.ROLLED_BACK

    def _undo_plan(self) -> list[TransactionStep]:
        """The steps recovery compensates, newest first (those that may have run), with
        the transaction's error and each in-doubt step's marks set as a live run would."""
        tx = self.tx
        if tx.is_open and tx.state is TransactionState.ACTIVE:
            tx.error = (
                "the open transaction's driver stopped: the code that chose its next step "
                "is gone, so recovery compensated the steps it ran instead of resuming"
            )
        elif tx.error is None:
            tx.error = "the driver stopped mid-transaction; rolled back by recovery"
        undo = [s for s in reversed(tx.steps) if s.status in _MAY_HAVE_RUN]
        for step in undo:
            if step.status is _RUNNING:  # in doubt, as a step cut short in a live run
                step.interrupted = True
                step.error = (
                    "interrupted: its driver stopped while this step ran; it may have had "
                    "its effect, so recovery compensates it"
                )
        return undo
