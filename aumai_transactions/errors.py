"""Exceptions of aumai-transactions.

::

    TransactionError
    ├── StepFailedError             a step of an open transaction failed for good
    └── StoreError                  the journal could not do what was asked
        ├── LeaseLostError          another driver holds the transaction now; stop
        ├── LeaseConflictError      the transaction is being driven elsewhere
        ├── CorruptRecordError      a stored record does not validate; nothing ran
        ├── SchemaVersionError      the store was written by a newer version
        └── StoreUnavailableError   the store cannot be opened or reached

Misuse of the API (bad arguments, wrong state) raises plain ``ValueError`` or
``TypeError``, as the original tool did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import TransactionResult, TransactionStep

__all__ = [
    "CorruptRecordError",
    "LeaseConflictError",
    "LeaseLostError",
    "SchemaVersionError",
    "StepFailedError",
    "StoreError",
    "StoreUnavailableError",
    "TransactionError",
]


class TransactionError(Exception):
    """Base class of every error raised by aumai-transactions itself."""


class StepFailedError(TransactionError):
    """A step run by an open transaction (``tx.run``, a parallel group) failed for good.

    ``step`` is the failing step (its ``error`` says why). ``result`` is the
    transaction's outcome once the exception has left the ``async with`` block (the
    steps that ran compensated); None while it is still inside.
    """

    def __init__(self, step: TransactionStep) -> None:
        super().__init__(f"step {step.step_id} ({step.action}) failed: {step.error}")
        self.step = step
        self.result: TransactionResult | None = None


class StoreError(TransactionError):
    """The journal could not do what was asked."""


class LeaseLostError(StoreError):
    """A write carried a stale lease epoch: another driver owns the transaction now.

    The driver that receives it must stop at once and run no further handlers.
    """


class LeaseConflictError(StoreError, ValueError):
    """The transaction is in a state, or held by a driver, that forbids the request."""


class CorruptRecordError(StoreError):
    """A stored record failed validation; it was rejected before anything ran."""


class SchemaVersionError(StoreError):
    """The store's schema is newer than this version of aumai-transactions knows."""


class StoreUnavailableError(StoreError):
    """The store cannot be opened, created or reached."""
