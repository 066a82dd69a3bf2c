"""Which steps of each leased transaction a durable store has written, and where.

Shared by the SQLite and PostgreSQL stores. A record normally rewrites a step row the
store already holds, found by its position. But a driver may add steps after it took
the lease (an open transaction runs one step at a time; a parallel group appends all
its steps, then records them in any order), so a record can name a step the store has
never seen. It then writes that step, and every other step of the transaction it has
not seen yet, at their positions: the stored steps never have a gap, whichever
sibling of a group happens to be recorded first (a crash between two records must
leave a transaction that loads).

The bookkeeping is per lease: what a driver wrote under one epoch says nothing about
another, so a stale driver's record (refused by the store anyway) never marks a step
as written for the driver that took over.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..models import Transaction, TransactionStep

__all__ = ["StepPositions"]


class StepPositions:
    """Per leased transaction: its lease epoch and the position of each written step."""

    __slots__ = ("_leased",)

    def __init__(self) -> None:
        self._leased: dict[str, tuple[int, dict[str, int]]] = {}

    def written(self, transaction_id: str, epoch: int, step_ids: Iterable[str]) -> None:
        """Note that the steps ``step_ids`` (all of them, in order) were written under
        ``epoch`` (by an acquire, or read back by a claim)."""
        self._leased[transaction_id] = (epoch, {sid: i for i, sid in enumerate(step_ids)})

    def forget(self, transaction_id: str, epoch: int) -> None:
        """Drop what was noted under ``epoch`` (a later lease's notes stay)."""
        entry = self._leased.get(transaction_id)
        if entry is not None and entry[0] == epoch:
            del self._leased[transaction_id]

    def position(self, transaction_id: str, epoch: int, step_id: str) -> int | None:
        """Where the written step ``step_id`` sits, or None if not written under ``epoch``.

        The hot path of every record: two dictionary look-ups.
        """
        entry = self._leased.get(transaction_id)
        if entry is None or entry[0] != epoch:
            return None
        return entry[1].get(step_id)

    def unwritten(
        self, tx: Transaction, step: TransactionStep, epoch: int
    ) -> list[tuple[int, TransactionStep]]:
        """The steps of ``tx`` not written under ``epoch``, with their positions.

        ``step`` (which must be one of them, by id) stands for its own position; the
        others are taken as they are in ``tx``. They are noted as written: the caller
        writes them now, in the order of its writes. With no notes for ``epoch`` (the
        store was reopened, or the lease came from elsewhere) every step is returned:
        a store writes them as upserts, so rewriting a stored one is harmless.
        """
        tid = tx.transaction_id
        entry = self._leased.get(tid)
        if entry is None or entry[0] < epoch:
            entry = (epoch, {})
        known = entry[1] if entry[0] == epoch else {}
        found: list[tuple[int, TransactionStep]] = []
        mine = False
        for index, candidate in enumerate(tx.steps):
            step_id = candidate.step_id
            if step_id in known:
                continue
            if step_id == step.step_id:
                mine = True
                candidate = step
            found.append((index, candidate))
        if not mine:
            raise ValueError(f"record: step {step.step_id} is not a step of transaction {tid}.")
        if len(known) + len({s.step_id for _, s in found}) != len(tx.steps):
            raise ValueError(f"Transaction {tid} has two steps with the same step_id.")
        if entry[0] == epoch:  # a stale driver (a newer lease is noted) notes nothing
            self._leased[tid] = entry
            for index, candidate in found:
                known[candidate.step_id] = index
        return found
