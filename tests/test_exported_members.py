"""The public surface: what ``aumai_transactions`` and its facade modules export."""

from __future__ import annotations

import inspect
import re

import aumai_transactions
from aumai_transactions import stores, sync

EXPORTED = [
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


def test_all_is_pinned_and_sorted() -> None:
    assert aumai_transactions.__all__ == EXPORTED
    assert sorted(aumai_transactions.__all__) == aumai_transactions.__all__


def _classes_and_functions() -> list[tuple[str, object]]:
    members = [(name, getattr(aumai_transactions, name)) for name in aumai_transactions.__all__]
    return [(n, m) for n, m in members if inspect.isclass(m) or inspect.isfunction(m)]


def test_exported_classes_and_functions_are_ours_and_documented() -> None:
    checked = _classes_and_functions()
    assert len(checked) == len(EXPORTED) - 2  # all but __version__ and the ActionHandler alias
    for name, member in checked:
        assert member.__module__.startswith("aumai_transactions."), name
        assert (member.__doc__ or "").strip(), name


def test_version() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", aumai_transactions.__version__)


def test_the_facade_and_stores_modules_export_their_names() -> None:
    assert sync.__all__ == [
        "Actions",
        "OpenTransaction",
        "ParallelGroup",
        "SagaOrchestrator",
        "TransactionManager",
    ]
    assert sync.TransactionManager is not aumai_transactions.TransactionManager
    assert sync.Actions is aumai_transactions.Actions  # one registry for both front doors
    assert {"Lease", "MemoryStore", "Store", "open_store"} <= set(stores.__all__)
    for name in stores.__all__:
        assert getattr(aumai_transactions, name, getattr(stores, name)) is getattr(stores, name)


def test_errors_form_the_documented_hierarchy() -> None:
    at = aumai_transactions
    assert issubclass(at.StoreError, at.TransactionError)
    for error in (
        at.LeaseLostError,
        at.LeaseConflictError,
        at.CorruptRecordError,
        at.SchemaVersionError,
        at.StoreUnavailableError,
    ):
        assert issubclass(error, at.StoreError)
    # A lease conflict is also a misuse of the API, which is a ValueError.
    assert issubclass(at.LeaseConflictError, ValueError)
