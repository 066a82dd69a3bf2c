"""Operator actions: what a person does with a transaction that needs one.

``retry_compensations`` re-runs, with the registered handlers, the compensations that
did not undo their step of a ``compensation_failed`` transaction; ``resolve`` closes
one (or a ``dead_letter`` one) by hand, with a note. Both take the transaction's lease
with ``OperatorStore.claim``, which hands over the stored copy: what another driver
wrote since the operator looked is never overwritten. Which steps a retry re-runs is
read from the journal alone:

* a compensation that failed (``compensation_failed``) or was cut short while it ran
  (``compensating``), and a step left in doubt (``running``);
* a completed step the compensation pass never reached (its time bound ran out), and,
  for a transaction rolled back while still pending (a compensation log of steps run
  elsewhere, none of them run here), a pending one; steps are retried newest first,
  as the pass that failed would have run them.

One transaction is told apart: an open transaction whose code carried on past a
parallel group's failure and committed, when undoing a sibling left in doubt failed.
Its completed steps are committed work, not compensated by a retry: only the
siblings' compensations re-run, and it ends ``committed`` when they succeed. (It is
recognised as an open transaction with no error recorded whose only compensated or
compensation-failed steps are such interrupted siblings: every pass that rolls a
transaction back records an error, or compensates a step that was not interrupted.)
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from .engine import TransactionDriver
from .handlers import HandlerRegistry
from .models import (
    Resolution,
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
    utcnow,
)
from .stores import Lease, OperatorStore, Store

if TYPE_CHECKING:
    from .manager import TransactionManager

__all__ = [
    "OperatorDriver",
    "checked_name",
    "missing_handlers",
    "operator_store",
    "resolve",
    "retry_compensations",
    "retry_plan",
]

logger = logging.getLogger("aumai_transactions.engine")

_COMPENSATION_STATUSES = frozenset(
    {StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED, StepStatus.COMPENSATING}
)
# Left not undone by the pass that failed, whichever transaction it was.
_NOT_UNDONE = frozenset(
    {StepStatus.COMPENSATION_FAILED, StepStatus.COMPENSATING, StepStatus.RUNNING}
)


def kept_its_commit(tx: Transaction) -> bool:
    """True for an open transaction that committed although undoing a sibling left in
    doubt by a caught group failure failed (see the module docstring)."""
    return (
        tx.is_open
        and tx.error is None
        and all(step.interrupted for step in tx.steps if step.status in _COMPENSATION_STATUSES)
    )


def retry_plan(tx: Transaction) -> tuple[list[TransactionStep], bool]:
    """The steps a retry compensates, newest first, and whether the transaction keeps its
    commit (then it ends ``committed``, else ``rolled_back``, when they all succeed)."""
    if kept_its_commit(tx):
        return [s for s in reversed(tx.steps) if s.status in _NOT_UNDONE], True
    never_ran_here = all(step.attempts == 0 for step in tx.steps)
    steps = []
    for step in reversed(tx.steps):
        status = step.status
        if status in _NOT_UNDONE:
            steps.append(step)
        elif step.compensating_action is not None and (
            status is StepStatus.COMPLETED or (status is StepStatus.PENDING and never_ran_here)
        ):
            steps.append(step)
    return steps, False


def missing_handlers(steps: list[TransactionStep], handlers: HandlerRegistry) -> list[str]:
    """The compensating actions of ``steps`` that ``handlers`` cannot run, sorted."""
    return sorted(
        {
            step.compensating_action
            for step in steps
            if step.compensating_action is not None and step.compensating_action not in handlers
        }
    )


class OperatorDriver(TransactionDriver):
    """Drives an operator's retry under a lease the manager claimed for it."""

    __slots__ = ()

    async def retry_compensations(self, lease: Lease) -> TransactionResult:
        """Re-run the compensations of ``retry_plan``; the journal records each one.

        A rolled-back transaction goes ``compensating`` while they run (a crash then
        leaves it to recovery, which compensates what may still have its effect) and
        ends ``rolled_back``, or ``compensation_failed`` again with the new errors. A
        transaction that kept its commit goes ``active`` while they run, as when its
        code committed (a crash then compensates it, as for any open transaction whose
        driver died), and ends ``committed`` or ``compensation_failed``.
        """
        self.adopt_lease(lease, "retry_compensations")
        self.carry_completions()  # both ways end with a record
        tx = self.tx
        steps, keeps_commit = retry_plan(tx)
        if not keeps_commit:
            await self._compensate_shielded(steps, TransactionState.ROLLED_BACK)
            return self.result()
        fields = tx.__dict__
        fields["state"] = TransactionState.ACTIVE
        fields["finished_at"] = None
        # Recorded before any compensation runs; and while the journal says active, the
        # lease stays live (a store ends the lease of a transaction it sees terminal).
        await self._journal()
        await self.compensate_in_doubt(steps)
        await self.finish_commit()
        return self.result()


# ---------------------------------------------------------------------- the actions
# TransactionManager.retry_compensations and .resolve, which hand over to these.

MAX_NAME_LENGTH = 128
MAX_NOTE_LENGTH = 4000
RETRY_FROM = (TransactionState.COMPENSATION_FAILED,)
RESOLVE_FROM = (TransactionState.COMPENSATION_FAILED, TransactionState.DEAD_LETTER)


def checked_name(value: object, name: str, limit: int = MAX_NAME_LENGTH) -> str:
    """``value`` if it is a printable, non-blank string of at most ``limit`` characters
    with no white space at its ends; else ValueError naming what is accepted."""
    if (
        type(value) is not str
        or not value
        or len(value) > limit
        or not value.isprintable()
        or value != value.strip()
    ):
        raise ValueError(
            f"{name} must be a non-empty printable string of at most {limit} characters, "
            f"without white space at either end; not {value!r}."
        )
    return value


def operator_store(store: Store, doing: str) -> OperatorStore:
    """``store``, if it serves operators; else TypeError saying what ``doing`` needs."""
    if not isinstance(store, OperatorStore):
        raise TypeError(
            f"{doing} needs a store that serves operators (an OperatorStore, as every "
            f"built-in store is); {type(store).__name__} is not."
        )
    return store


async def _stored(
    manager: TransactionManager,
    transaction: Transaction | str,
    accepted: tuple[TransactionState, ...],
    doing: str,
) -> tuple[OperatorStore, str, Transaction]:
    """The store, id and stored copy of ``transaction``, refused (ValueError) unless
    it is in an ``accepted`` state."""
    store = operator_store(manager.store, doing)
    if isinstance(transaction, Transaction):
        tid = transaction.transaction_id
    elif type(transaction) is str and transaction:
        tid = transaction
    else:
        raise TypeError(f"{doing} needs a Transaction or a transaction id, not {transaction!r}.")
    await manager._ensure_open()
    stored = await store.load(tid)
    if stored is None:
        raise ValueError(f"No transaction {tid} in the store {store.url}.")
    if stored.state not in accepted:
        raise ValueError(
            f"Transaction {tid} is in state '{stored.state.value}'; only "
            + " or ".join(f"'{s.value}'" for s in accepted)
            + f" transactions can {doing}."
        )
    return store, tid, stored


async def _claim(
    manager: TransactionManager,
    store: OperatorStore,
    tid: str,
    accepted: tuple[TransactionState, ...],
) -> tuple[Transaction, Lease]:
    claimed = await store.claim(tid, manager.owner, manager._options.lease_ttl, accepted)
    if claimed is None:  # deleted meanwhile
        raise ValueError(f"No transaction {tid} in the store {store.url}.")
    return claimed


def _operated_on(
    manager: TransactionManager, transaction: Transaction | str, claimed: Transaction
) -> Transaction:
    """The object an operator action drives: the caller's (or the manager's known) copy,
    brought up to the claimed journal copy so that it shows the outcome, as a commit's
    does; else the claimed copy itself."""
    target = transaction if isinstance(transaction, Transaction) else None
    if target is None:
        target = manager._transactions.get(claimed.transaction_id)
    if target is None or target is claimed:
        target = claimed
    else:
        for name in Transaction.model_fields:
            setattr(target, name, getattr(claimed, name))
    if manager._retain_finished:
        manager._transactions[target.transaction_id] = target
    return target


def _check_retry_handlers(tx: Transaction, handlers: HandlerRegistry) -> None:
    if not handlers:
        raise ValueError(
            f"Cannot retry the compensations of transaction {tx.transaction_id}: this "
            "manager has no handlers (a dry run would record them as done without "
            "undoing anything); make it with the handlers of the compensating actions."
        )
    missing = missing_handlers(retry_plan(tx)[0], handlers)
    if missing:
        raise ValueError(
            f"Cannot retry the compensations of transaction {tx.transaction_id}: no "
            f"handler for {', '.join(repr(a) for a in missing)}; register "
            + ("it" if len(missing) == 1 else "them")
            + " and retry (nothing was run)."
        )


async def retry_compensations(
    manager: TransactionManager, transaction: Transaction | str
) -> TransactionResult:
    """See ``TransactionManager.retry_compensations``."""
    doing = "have their compensations retried"
    store, tid, stored = await _stored(manager, transaction, RETRY_FROM, doing)
    handlers = manager._handlers
    _check_retry_handlers(stored, handlers)
    tx, lease = await _claim(manager, store, tid, RETRY_FROM)
    try:
        _check_retry_handlers(tx, handlers)  # the stored copy may have changed meanwhile
    except ValueError:
        await store.release(lease)
        raise
    target = _operated_on(manager, transaction, tx)
    driver = OperatorDriver(target, handlers, store, manager._options)
    logger.info(
        "transaction %s: retrying its failed compensations", tid, extra={"transaction_id": tid}
    )
    result = await manager._with_leases_renewed(
        functools.partial(driver.retry_compensations, lease)
    )
    if not manager._retain_finished:
        manager._transactions.pop(tid, None)
    return result


async def resolve(
    manager: TransactionManager, transaction: Transaction | str, note: str, by: str | None
) -> Transaction:
    """See ``TransactionManager.resolve``."""
    note = note.strip() if type(note) is str else note
    if type(note) is not str or not note or len(note) > MAX_NOTE_LENGTH:
        raise ValueError(
            f"note must say what was done, in 1 to {MAX_NOTE_LENGTH} characters, not {note!r}."
        )
    if by is not None:
        checked_name(by, "by")
    store, tid, _ = await _stored(manager, transaction, RESOLVE_FROM, "be resolved")
    tx, lease = await _claim(manager, store, tid, RESOLVE_FROM)
    now = utcnow()
    tx.resolution = Resolution(note=note, by=by, at=now, previous_state=tx.state)
    tx.state = TransactionState.RESOLVED
    tx.updated_at = now
    await store.record(lease, tx)
    await store.release(lease)
    logger.info(
        "transaction %s resolved by %s: %s",
        tid,
        by or "an operator",
        note,
        extra={"transaction_id": tid},
    )
    target = _operated_on(manager, transaction, tx)
    if not manager._retain_finished:
        manager._transactions.pop(tid, None)
    return target
