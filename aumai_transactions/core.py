"""The original tool's module path, kept as an alias of the blocking facade.

aumai-transactions 0.1 was synchronous and its classes lived here
(``from aumai_transactions.core import TransactionManager, SagaOrchestrator``). Code
written for it keeps running unchanged: these are the blocking classes of
:mod:`aumai_transactions.sync`, and the other names 0.1 offered from this module (its
models and the ``ActionHandler`` alias) come with them. New code imports the async
classes from ``aumai_transactions``, or the blocking ones from ``aumai_transactions.sync``.
"""

from .handlers import ActionHandler
from .models import Transaction, TransactionResult, TransactionState, TransactionStep
from .sync import SagaOrchestrator, TransactionManager

__all__ = [
    "ActionHandler",
    "SagaOrchestrator",
    "Transaction",
    "TransactionManager",
    "TransactionResult",
    "TransactionState",
    "TransactionStep",
]
