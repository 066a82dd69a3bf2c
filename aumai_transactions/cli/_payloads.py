"""The JSON documents of ``list`` and ``show``, built once for every front end.

``list --json`` and ``show --json`` print them; the web view serves the very same
documents under ``/api/`` and renders its pages from them, so a field means the same
thing wherever it is read, and secrets are masked by one set of rules
(``_secrets``). Rows hold plain JSON values only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..models import LeaseInfo, Transaction
from ..stores import OperatorStore, Store
from ._secrets import Masking
from ._timeline import timeline_events
from ._views import IN_FLIGHT, lease_row, lease_text, step_rows, transaction_row

__all__ = ["list_rows", "problem_text", "read_leases", "show_payload"]


async def read_leases(store: Store, found: Sequence[Transaction]) -> dict[str, LeaseInfo]:
    """The leases of the in-flight transactions among ``found``, when the store shows
    them (an ``OperatorStore``; every built-in backend is one)."""
    ids = [tx.transaction_id for tx in found if tx.state in IN_FLIGHT]
    if not ids or not isinstance(store, OperatorStore):
        return {}
    return await store.leases(ids)


def list_rows(
    found: Sequence[Transaction], leases: dict[str, LeaseInfo], masking: Masking
) -> list[dict[str, Any]]:
    """``list --json``: one summary row per transaction, with its lease when in flight."""
    return [
        {**transaction_row(tx, masking), "lease": lease_row(leases.get(tx.transaction_id))}
        for tx in found
    ]


def show_payload(tx: Transaction, lease: LeaseInfo | None, masking: Masking) -> dict[str, Any]:
    """``show --json``: the summary, every step (data and results masked) and the
    timeline's events."""
    return {
        "transaction": {**transaction_row(tx, masking), "lease": lease_row(lease)},
        "steps": step_rows(tx, masking),
        "timeline": timeline_events(tx, masking),
    }


def without_own_id(text: str, transaction_id: str) -> str:
    """``text`` shown in its transaction's own row: "was interrupted by ...", without the
    "Transaction <id> " it starts with (the row names the transaction already)."""
    return text.removeprefix(f"Transaction {transaction_id} ")


def problem_text(row: dict[str, Any]) -> str | None:
    """The last column of a list row, in words: who holds an in-flight transaction until
    when (a lapsed lease marked), an operator's note (``resolved: refunded by hand``),
    or why it is stuck or failed."""
    if row["lease"] is not None:
        return lease_text(row["lease"], short=True).plain
    if row["resolution"] is not None:
        return f"resolved: {row['resolution']['note']}"
    problem: str | None = row["blocked_reason"] or row["error"]
    return None if problem is None else without_own_id(problem, row["transaction_id"])
