"""The driver's state: its transaction, lease and journal writes, and its result.

The forward pass (``_forward.py``) and the compensation pass (``_compensation.py``)
are mixins over this core; ``engine.TransactionDriver`` combines them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

import anyio

from ._listeners import Listeners
from .errors import LeaseLostError, StoreError
from .events import (
    LeaseLost,
    RunKind,
    RunStopped,
    StepEvent,
    TransactionBegan,
    TransactionCommitted,
    TransactionCompensationFailed,
    TransactionDeadLettered,
    TransactionEnded,
    TransactionEvent,
    TransactionFailed,
    TransactionRolledBack,
)
from .handlers import HandlerRegistry, StepContext, WorkerCall
from .models import (
    RetryPolicy,
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
    utcnow,
)
from .stores import Lease, RecordsNowait, Store

__all__ = [
    "DriverCore",
    "EngineOptions",
    "LeaseRenewal",
    "StepFailed",
    "clock",
    "interrupted_error",
    "message_of",
    "timed_out_error",
]

logger = logging.getLogger("aumai_transactions.engine")

_ENDED: dict[TransactionState, type[TransactionEnded]] = {
    TransactionState.COMMITTED: TransactionCommitted,
    TransactionState.ROLLED_BACK: TransactionRolledBack,
    TransactionState.FAILED: TransactionFailed,
    TransactionState.COMPENSATION_FAILED: TransactionCompensationFailed,
    TransactionState.DEAD_LETTER: TransactionDeadLettered,
}

_COMPLETED = StepStatus.COMPLETED


_RECORDS_NOWAIT: dict[type, bool] = {}


def records_nowait(kind: type) -> bool:
    """Whether the engine may journal through ``record_nowait`` for stores of ``kind``:
    it has one, defined beside the ``record`` it has. A subclass that overrides
    ``record`` alone (to watch or change the writes) is then still called through
    its ``record``."""
    known = _RECORDS_NOWAIT.get(kind)
    if known is None:
        owner = next((c for c in kind.__mro__ if "record" in c.__dict__), None)
        known = _RECORDS_NOWAIT[kind] = owner is not None and "record_nowait" in owner.__dict__
    return known


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
    listeners: Listeners | None = None
    """The manager's listeners (see ``_listeners``); None: events are never built."""


class StepFailed(Exception):
    """A step's handler failed for good (after its retries)."""

    def __init__(self, step: TransactionStep) -> None:
        super().__init__(step.error)
        self.step = step


def clock() -> float:
    """``anyio.current_time()``, cheaply where the loop is asyncio's."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return anyio.current_time()


def timed_out_error(tx: Transaction, detail: str) -> str:
    """``tx.error`` for a transaction that ran out of time while it ran."""
    return f"Transaction {tx.transaction_id} timed out after {tx.timeout_seconds}s {detail}"


def interrupted_error(tx: Transaction, cause: BaseException) -> str:
    """``tx.error`` for a transaction cut short by a cancellation (or Ctrl-C), in words:
    what stopped it, and that it did not finish. (Recovery and ``ends_failed`` read its
    first words, "Transaction <id> was interrupted".)"""
    why = what_stopped(cause)
    return f"Transaction {tx.transaction_id} was interrupted by {why} before it finished."


def what_stopped(cause: BaseException) -> str:
    """What interrupted a run, in words: Ctrl-C, a cancellation, or the exception."""
    if isinstance(cause, KeyboardInterrupt):
        return "Ctrl-C (KeyboardInterrupt)"
    if isinstance(cause, asyncio.CancelledError | anyio.get_cancelled_exc_class()):
        return "a cancellation"
    return type(cause).__name__ + (f": {cause}" if str(cause) else "")


def message_of(exc: BaseException) -> str:
    """What a failure's message is: its text, or its type's name when it has none."""
    return str(exc) or type(exc).__name__


class DriverCore:
    """What every pass of a driver shares: the transaction, its lease and journal."""

    __slots__ = (
        "_bound_deadline",
        "_carried",
        "_carrying",
        "_compensation_errors",
        "_guarding",
        "_held",
        "_handlers",
        "_lease",
        "_native_cancel",
        "_options",
        "_prewritten",
        "_durable",
        "_nowait",
        "_emit",
        "_run",
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
        # The store again, when it has ``record_nowait`` (a reference, not a bound
        # method: no object more per transaction).
        self._nowait = cast(RecordsNowait, store) if records_nowait(type(store)) else None
        # While a pass whose every completion is followed at once by another record
        # runs (``carry_completions``): the completion not handed over yet, which the
        # next record carries (``record_nowait``'s ``previous``).
        self._carrying = False
        self._carried: TransactionStep | None = None
        # A step whose intent the lease carried (``carry_first_intent``): its first
        # attempt writes no intent of its own.
        self._prewritten: TransactionStep | None = None
        self._undone: list[str] = []
        self._compensation_errors: dict[str, str] = {}
        self._worker_calls: dict[str, WorkerCall] = {}
        self._started_at = utcnow()
        listeners = options.listeners
        # Fixed for this run: a listener subscribed meanwhile sees the next run.
        self._emit = None if listeners is None else listeners.emitter()
        self._run: RunKind = "commit"
        # Whether a plain asyncio ``task.cancel()`` may reach this driver's task (see
        # ``_compensation.finalize``); not in a task the engine's own task group spawned.
        self._native_cancel = True
        # A compensation pass run without a task of its own (see _compensation): the
        # cancellation it held back, and when its time bound runs out.
        self._guarding = False
        self._held: BaseException | None = None
        self._bound_deadline = 0.0

    # ------------------------------------------------------------------ events
    # Each call site tests ``self._emit is not None`` first: nothing is built unheard.

    def _tx_event(self, kind: type[TransactionEvent], **fields: Any) -> None:
        emit = self._emit
        assert emit is not None
        emit(kind(at=utcnow(), transaction_id=self.tx.transaction_id, run=self._run, **fields))

    def _step_event(self, kind: type[StepEvent], step: TransactionStep, **fields: Any) -> None:
        emit = self._emit
        assert emit is not None
        tx_id = self.tx.transaction_id
        compensation = "compensating_action" in fields  # the Compensation* events
        emit(
            kind(
                at=utcnow(),
                transaction_id=tx_id,
                run=self._run,
                step_id=step.step_id,
                agent_id=step.agent_id,
                action=step.action,
                attempt=step.compensation_attempts if compensation else step.attempts,
                group=step.group,
                idempotency_key=step.idempotency_key(tx_id),
                **fields,
            )
        )

    def _began(self, run: RunKind) -> None:
        """This run starts (its lease is taken): say so, when someone listens."""
        self._run = run
        if self._emit is not None:
            tx = self.tx
            self._tx_event(
                TransactionBegan,
                steps=len(tx.steps),
                timeout_seconds=tx.timeout_seconds,
                recovery_attempt=tx.recovery_attempts if run == "recovery" else 0,
            )

    def _stopped(self, exc: StoreError) -> None:
        """A journal write failed: this run ends here, its transaction left in flight."""
        # INFO: the caller gets the error itself; this says which run it ended.
        logger.info(
            "transaction %s: this process stops driving it, a journal write failed: %s",
            self.tx.transaction_id,
            exc,
            extra={"transaction_id": self.tx.transaction_id},
        )
        if self._emit is not None:
            kind = LeaseLost if isinstance(exc, LeaseLostError) else RunStopped
            self._tx_event(kind, error=message_of(exc), error_type=type(exc).__name__)

    # ------------------------------------------------------------------ journal

    # A store's ``record_nowait`` hands a record over without a coroutine of its own:
    # the engine journals two or three records a step, and every coroutine is an object
    # the garbage collector traces for as long as it waits.

    async def _journal(self, step: TransactionStep | None = None, durable: bool = True) -> None:
        """Journal the header and ``step`` (when given); a durable record, until the
        store says it is durable."""
        written = self._hand_over(step, durable)
        if written is not None:
            try:
                await written
            except StoreError as exc:
                self._stopped(exc)
                raise

    def carry_completions(self) -> None:
        """From now on, fold each completion into the record that follows it.

        For the passes that record again at once after every completion and end with
        a record: a closed transaction's commit, a rollback, a recovery (never an open
        transaction, whose next step waits on the caller's code). A completion is
        journaled non-durably anyway, riding with the next durable write; folded, the
        next record writes it (``record_nowait``'s ``previous``), one record fewer,
        and a header change alone (the move to ``compensating``) is left to the next
        record, which writes the header as it then is. Only with a durable store that
        has ``record_nowait``: the in-memory store holds the transaction itself, and
        finds a lost lease at each record, before anything changes it further.
        """
        self._carrying = self._durable and self._nowait is not None

    def _record_lazily(self, step: TransactionStep | None = None) -> Awaitable[object] | None:
        """Journal the header and ``step`` non-durably (a completion, which rides with
        the next durable record): None when the store took it at once, as every
        built-in store does, or when the next record carries it; else what to await
        first."""
        if self._carrying:
            if step is None:  # the header alone: the next record writes it as it is then
                return None
            carried = self._carried
            self._carried = step
            if carried is None or carried is step:
                return None
            step = carried  # two completions in a row (parallel siblings): hand one over
        written = self._hand_over(step, False)
        return None if written is None else self._reported(written)

    def _hand_over(self, step: TransactionStep | None, durable: bool) -> Awaitable[object] | None:
        """Hand the store a record (with the completion it carries, if any): what to
        await for it, or None when nothing."""
        lease = self._lease
        assert lease is not None
        carried = self._carried
        if carried is not None:
            self._carried = None
            if carried is step:
                carried = None  # this record writes the step as it is now
        try:
            if self._durable and self._options.renewal.claim():
                return self._renew_and_record(lease, step, durable, carried)
            nowait = self._nowait
            if nowait is None:
                return self._store.record(lease, self.tx, step, durable=durable)
            if carried is None:
                return nowait.record_nowait(lease, self.tx, step, durable=durable)
            return nowait.record_nowait(lease, self.tx, step, durable=durable, previous=carried)
        except StoreError as exc:
            self._stopped(exc)
            raise

    async def _renew_and_record(
        self,
        lease: Lease,
        step: TransactionStep | None,
        durable: bool,
        carried: TransactionStep | None,
    ) -> None:
        """The record that falls due for the owner's lease renewal: renew first."""
        store = self._store
        await store.renew(lease.owner, self._options.lease_ttl)
        if carried is not None:
            await store.record(lease, self.tx, carried, durable=False)
        await store.record(lease, self.tx, step, durable=durable)

    async def _reported(self, written: Awaitable[object]) -> None:
        """Await a record handed over; a journal error ends this run (``_stopped``)."""
        try:
            await written
        except StoreError as exc:
            self._stopped(exc)
            raise

    def carry_first_intent(self, steps: Sequence[TransactionStep]) -> TransactionStep | None:
        """Mark the first of ``steps`` running, for the acquire to carry its intent.

        With a store whose acquire of a transaction with a step running is durable
        when it returns (``acquire_carries_intent``), the lease and the first intent
        are one write instead of two. Only while completions are carried (a closed
        commit), and only for a step of its own (a parallel group's steps start in
        tasks of their own). Returns the step, or None when nothing is carried; on a
        refused acquire, ``uncarry`` puts it back as it was.
        """
        if not self._carrying or not steps:
            return None
        step = steps[0]
        if (
            step.group is not None
            or step.status is not StepStatus.PENDING
            or not getattr(self._store, "acquire_carries_intent", False)
        ):
            return None
        fields = step.__dict__
        fields["attempts"] += 1
        fields["status"] = StepStatus.RUNNING
        fields["started_at"] = utcnow()
        self._prewritten = step
        return step

    def uncarry(self, step: TransactionStep) -> None:
        """The acquire that was to carry ``step``'s intent was refused: nothing ran."""
        fields = step.__dict__
        fields["attempts"] -= 1
        fields["status"] = StepStatus.PENDING
        fields["started_at"] = None
        self._prewritten = None

    @property
    def started_at(self) -> datetime:
        """When this driver started."""
        return self._started_at

    async def take_lease(
        self, expected: Iterable[TransactionState], run: RunKind = "commit"
    ) -> None:
        """Write the transaction in full and take its lease (it must be in ``expected``);
        ``run`` is what this driver does with it (what its events say)."""
        store = self._store
        self._lease = await store.acquire(
            self.tx, self._options.owner, self._options.lease_ttl, expected
        )
        self._began(run)

    @property
    def lease(self) -> Lease | None:
        """The lease this driver holds, or None until it took (or adopted) one."""
        return self._lease

    def in_engine_task(self) -> None:
        """This driver runs in a task of an engine's anyio task group, which nothing
        cancels but through anyio (whose cancellation respects a shield): its
        compensations then need no task of their own to be safe from cancellation."""
        self._native_cancel = False

    def adopt_lease(self, lease: Lease, run: RunKind = "recovery") -> None:
        """Drive under a lease claimed elsewhere (recovery, an operator's retry)."""
        self._lease = lease
        self._began(run)

    async def _finish(self, state: TransactionState) -> None:
        fields = self.tx.__dict__
        fields["state"] = state
        fields["finished_at"] = fields["updated_at"] = utcnow()
        await self._journal()
        if self._emit is not None:
            self._tx_event(
                _ENDED[state],
                state=state,
                error=self.tx.error,
                duration_seconds=(fields["finished_at"] - self._started_at).total_seconds(),
                compensation_errors=len(self._compensation_errors),
            )
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
                extra={"transaction_id": self.tx.transaction_id},
            )

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

    # ------------------------------------------------------------------ result

    def result(self, failed: TransactionStep | None = None) -> TransactionResult:
        """The outcome of this run, in the original tool's terms."""
        tx = self.tx
        finished = tx.finished_at
        state = tx.state
        committed = state is TransactionState.COMMITTED
        completed = [] if committed else list(self._undone)
        interrupted: list[str] = []
        recorded_only: list[str] = []
        for step in tx.steps:  # one pass for the three lists (every commit makes them)
            fields = step.__dict__
            if committed and fields["status"] is _COMPLETED:
                completed.append(fields["step_id"])
            if fields["interrupted"]:
                interrupted.append(fields["step_id"])
            if fields["recorded_only"]:
                recorded_only.append(fields["step_id"])
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
            interrupted,
            recorded_only,
        )
