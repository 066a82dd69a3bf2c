"""What the pages and the API read from the store, built once for both.

Every page is rendered from the same document its ``/api/`` twin returns (the CLI's
``list --json`` and ``show --json`` documents, and the counts), so what a person sees
and what a script reads cannot disagree. Nothing here writes to the store.
"""

from __future__ import annotations

from typing import Any

from ..cli._errors import CliError
from ..cli._payloads import list_rows, read_leases, show_payload
from ..cli._secrets import Masker
from ..cli._store import find_transaction
from ..cli._views import ATTENTION_STATES, IN_FLIGHT
from ..models import Transaction, TransactionState
from ..stores import ListPosition, OperatorStore, Store
from ._query import ListQuery, cursor_of

__all__ = ["NotFound", "counts_document", "in_flight", "list_document", "show_document"]

MASKER = Masker()

PROBLEMS = ("compensation_failed", "dead_letter", "blocked", "lease_lapsed")
"""The counts shown first: what no driver will end on its own, or is stuck."""


class NotFound(LookupError):
    """No transaction answers to the id in the path; the message says so."""


async def counts_document(store: Store) -> dict[str, Any]:
    """How many transactions are stored in each state, the problems first.

    ``problems``: ``compensation_failed`` and ``dead_letter`` (an operator must act),
    ``blocked`` (in flight, recovery blocked on a missing handler) and
    ``lease_lapsed`` (in flight, past their lease: recovery may take them now). The
    last two and ``leases`` need an ``OperatorStore`` (None otherwise).
    """
    counts = await store.count_by_state()
    summary = await store.lease_summary() if isinstance(store, OperatorStore) else None
    problems: dict[str, int | None] = {s.value: counts.get(s, 0) for s in ATTENTION_STATES}
    problems["blocked"] = None if summary is None else summary.blocked
    problems["lease_lapsed"] = None if summary is None else summary.claimable
    return {
        "total": sum(counts.values()),
        "by_state": {state.value: counts.get(state, 0) for state in TransactionState},
        "problems": problems,
        "leases": None if summary is None else summary.model_dump(mode="json"),
    }


async def list_document(store: Store, query: ListQuery) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the list (the rows of ``list --json``) and the ``before`` value of
    the next page (None on the last). Reads ``limit + 1`` transactions, no more."""
    found = await store.list(
        state=query.state,
        agent_id=query.agent,
        action=query.action,
        since=query.since,
        until=query.until,
        limit=query.limit + 1,
        before=query.before,
    )
    page, more = found[: query.limit], len(found) > query.limit
    rows = list_rows(page, await read_leases(store, page), MASKER)
    return rows, cursor_of(ListPosition.of(page[-1])) if more and page else None


async def show_document(store: Store, ident: str) -> tuple[Transaction, dict[str, Any]]:
    """The transaction named by ``ident`` (an id, or a prefix of one, as in the CLI)
    and its ``show --json`` document. Raises :class:`NotFound`."""
    tx = await store.load(ident) if ident else None
    if tx is None:
        try:
            tx = await find_transaction(store, ident)
        except CliError as exc:
            raise NotFound(exc.message) from None
    lease = (await read_leases(store, [tx])).get(tx.transaction_id)
    return tx, show_payload(tx, lease, MASKER)


def in_flight(state: str) -> bool:
    """True for the states a page keeps updating itself in."""
    return state in {s.value for s in (TransactionState.PENDING, *IN_FLIGHT)}
