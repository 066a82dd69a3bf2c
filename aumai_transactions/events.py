"""Typed events: what the engine tells a listener about the transactions it drives.

A listener is any callable taking one event, sync or ``async def``, given to
``TransactionManager(listeners=[...])`` or ``manager.subscribe(fn)``. Every event is a
frozen dataclass; match on its type::

    Event
    ├── TransactionEvent                    (transaction_id, run, at)
    │   ├── TransactionBegan                a driver took the lease and starts its run
    │   ├── TransactionCompensating         the run turned to undoing steps
    │   ├── TransactionEnded                the run reached a terminal state
    │   │   ├── TransactionCommitted
    │   │   ├── TransactionRolledBack
    │   │   ├── TransactionFailed           timed out or interrupted, compensated
    │   │   ├── TransactionCompensationFailed   an operator must look
    │   │   └── TransactionDeadLettered     recovery gave up on it
    │   ├── TransactionRecovered            a recovery run finished it (after its end)
    │   ├── TransactionBlocked              recovery lacks a handler; nothing was run
    │   ├── RunStopped                      a journal write failed: this process stops
    │   │   └── LeaseLost                   another driver holds the transaction now
    │   ├── GroupStarted / GroupEnded       a parallel group's steps start / have stopped
    │   └── StepEvent                       (step_id, agent_id, action, attempt, group)
    │       ├── StepStarted                 an attempt starts (its intent is journaled)
    │       ├── StepCompleted
    │       ├── StepFailed                  for good: the transaction compensates
    │       ├── StepRetrying                an attempt failed; the next one follows a delay
    │       ├── StepInterrupted             cut short while running: in doubt
    │       ├── CompensationStarted         (compensating_action; attempt is its own)
    │       ├── CompensationCompleted
    │       └── CompensationFailed          for good, after its retries

Every event that stands for a journal record is emitted right after that record was
written, in the same order; ``StepRetrying``, ``GroupStarted``, ``GroupEnded``,
``TransactionRecovered`` and ``RunStopped`` stand for none. No event carries a step's
data or result: errors are the handler's message, as the journal keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .models import TransactionState

__all__ = [
    "CompensationCompleted",
    "CompensationFailed",
    "CompensationStarted",
    "Event",
    "GroupEnded",
    "GroupStarted",
    "LeaseLost",
    "RunKind",
    "RunStopped",
    "StepCompleted",
    "StepEvent",
    "StepFailed",
    "StepInterrupted",
    "StepRetrying",
    "StepStarted",
    "TransactionBegan",
    "TransactionBlocked",
    "TransactionCommitted",
    "TransactionCompensating",
    "TransactionCompensationFailed",
    "TransactionDeadLettered",
    "TransactionEnded",
    "TransactionEvent",
    "TransactionFailed",
    "TransactionRecovered",
    "TransactionRolledBack",
]

RunKind = Literal["commit", "rollback", "open", "recovery", "retry_compensations"]
"""Which run of a driver an event belongs to: ``manager.commit``, ``manager.rollback``,
an open transaction (``manager.transaction()``), ``manager.recover`` or
``manager.retry_compensations``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of every event."""

    at: datetime
    """When it happened (UTC)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionEvent(Event):
    """An event about one transaction, in one run of its driver."""

    transaction_id: str
    run: RunKind


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionBegan(TransactionEvent):
    """A driver took the transaction's lease and starts its run."""

    steps: int
    """How many steps the transaction has now (an open transaction adds more)."""
    timeout_seconds: float | None
    recovery_attempt: int
    """How many times recovery has claimed it (0 outside recovery)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionCompensating(TransactionEvent):
    """The run turned to undoing steps (its state is ``compensating`` now)."""

    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionEnded(TransactionEvent):
    """The run reached a terminal state (one subclass per state)."""

    state: TransactionState
    error: str | None
    duration_seconds: float
    """Seconds this run took (not since the transaction was begun)."""
    compensation_errors: int
    """How many steps this run could not undo."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionCommitted(TransactionEnded):
    """Every step ran (an open transaction: its code left the block)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionRolledBack(TransactionEnded):
    """A step failed (or a rollback was asked for) and every compensation succeeded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionFailed(TransactionEnded):
    """It timed out or was interrupted (or expired before commit); what ran was undone."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionCompensationFailed(TransactionEnded):
    """A compensation failed for good: an operator must look."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionDeadLettered(TransactionEnded):
    """Recovery gave up after too many attempts that did not finish."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionRecovered(TransactionEvent):
    """A recovery run drove the transaction to ``state`` (emitted after its end event)."""

    state: TransactionState
    direction: Literal["compensate", "resume"] | None
    """How it was driven; None when it was dead-lettered without being driven."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionBlocked(TransactionEvent):
    """Recovery cannot drive it: this process has no handler for ``missing_actions``."""

    missing_actions: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStopped(TransactionEvent):
    """A journal write failed, so this process stops driving the transaction (recovery
    finishes it once its lease expires)."""

    error: str
    error_type: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseLost(RunStopped):
    """The journal refused a write: another driver holds the transaction now."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupStarted(TransactionEvent):
    """A parallel group's steps start together."""

    group: str
    step_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupEnded(TransactionEvent):
    """Every step of a parallel group has stopped; ``failed_step`` is the one whose
    failure cancelled the others, if any."""

    group: str
    failed_step: str | None
    error: str | None
    error_type: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepEvent(TransactionEvent):
    """An event about one step (or its compensation)."""

    step_id: str
    agent_id: str
    action: str
    """The step's forward action (a compensation's own is ``compensating_action``)."""
    attempt: int
    """The attempt number: of the forward action, or of the compensation in
    ``Compensation*`` events."""
    group: str | None
    idempotency_key: str
    """Stable across retries and recoveries: what a handler's ``ctx.idempotency_key`` is."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted(StepEvent):
    """An attempt starts; its intent is in the journal already."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCompleted(StepEvent):
    """The attempt succeeded (``recorded_only``: there was no handler to run)."""

    duration_seconds: float
    recorded_only: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed(StepEvent):
    """The step failed for good: it is not compensated, the steps before it are."""

    error: str
    error_type: str
    duration_seconds: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRetrying(StepEvent):
    """Attempt ``attempt`` failed; attempt ``attempt + 1`` starts after ``delay_seconds``."""

    error: str
    error_type: str
    delay_seconds: float
    duration_seconds: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepInterrupted(StepEvent):
    """The step was cut short while running (the deadline, a cancellation, a sibling's
    failure): it may have had its effect, so it is compensated."""

    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CompensationStarted(StepEvent):
    """An attempt of the step's compensation starts."""

    compensating_action: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CompensationCompleted(StepEvent):
    """The compensation succeeded: the step is undone."""

    compensating_action: str
    duration_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CompensationFailed(StepEvent):
    """The compensation failed for good (``attempt`` attempts): an operator must look."""

    compensating_action: str
    error: str
    error_type: str
