"""aumai-transactions: ACID-like transactions for multi-agent operations.

Steps run in order; when one fails, the completed ones are undone by their
compensating actions, in reverse order, exactly once, with a durable journal and
crash recovery when a durable store is used.
"""

from ._actions import Action, Actions
from ._version import __version__
from .errors import (
    CorruptRecordError,
    LeaseConflictError,
    LeaseLostError,
    SchemaVersionError,
    StepFailedError,
    StoreError,
    StoreUnavailableError,
    TransactionError,
)
from .events import Event
from .handlers import ActionHandler, StepContext
from .manager import TransactionManager
from .models import (
    RetryPolicy,
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
)
from .open_transaction import OpenTransaction, ParallelGroup, current_transaction
from .saga import SagaOrchestrator
from .stores import Lease, MemoryStore, Store, open_store

__all__ = [
    "Action",
    "ActionHandler",
    "Actions",
    "CorruptRecordError",
    "Event",
    "Lease",
    "LeaseConflictError",
    "LeaseLostError",
    "MemoryStore",
    "OpenTransaction",
    "ParallelGroup",
    "RetryPolicy",
    "SagaOrchestrator",
    "SchemaVersionError",
    "StepContext",
    "StepFailedError",
    "StepStatus",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "Transaction",
    "TransactionError",
    "TransactionManager",
    "TransactionResult",
    "TransactionState",
    "TransactionStep",
    "__version__",
    "current_transaction",
    "open_store",
]
