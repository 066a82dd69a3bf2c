"""Which transaction header a durable store last sent under each lease it holds.

Most records change nothing in a transaction's header: a step's intent and completion
leave the state, timestamps and error as the acquire wrote them, and only the record
that ends the transaction (or starts its compensation) changes them. A record whose
header equals the one known to be committed under its lease therefore sends no
header: the store then only checks the lease (its epoch, and owner) instead of
rewriting the transaction row and its index entries. Shared by the SQLite and
PostgreSQL stores.

The comparison is made on the fields as the model holds them (``raw``), read straight
from its ``__dict__`` before anything is converted to JSON: it runs for every record.

A header counts as committed only once the write that sent it returned without error
(an acquire, a claim's read-back, a durable record). A header whose write failed, or
went in a non-durable record nobody waits for, is never taken for committed, so the
next record sends its header again. The bookkeeping is per lease: what was sent under
one epoch says nothing about another.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from ..models import Transaction

__all__ = ["SentHeaders", "confirm", "raw_header"]

# Every field a record's header is made of: all but the steps (rows of their own) and
# the two a record never rewrites. Derived from the model, so a field added to it is
# compared too (and so can never be skipped while it changed).
_FIELDS = tuple(sorted(set(Transaction.model_fields) - {"steps", "transaction_id", "created_at"}))
_read = itemgetter(*_FIELDS)


def raw_header(tx: Transaction) -> tuple[Any, ...]:
    """The header fields of ``tx`` as the model holds them: what tells whether a
    header changed (plain reads of the model's ``__dict__``)."""
    fields: tuple[Any, ...] = _read(tx.__dict__)
    return fields


class _Sent:
    """One header sent under a lease: its raw fields, the lease's epoch, the state
    as stored, and whether it is known to be committed."""

    __slots__ = ("committed", "epoch", "raw", "state")

    def __init__(self, raw: tuple[Any, ...], epoch: int, state: str, committed: bool) -> None:
        self.raw = raw
        self.epoch = epoch
        self.state = state
        self.committed = committed


def confirm(token: object | None) -> None:
    """The durable write that sent ``token`` (from ``SentHeaders.sending``) committed.

    A header sent since replaced ``token`` in its ``SentHeaders``, so confirming a
    superseded one changes nothing: a writer may confirm whenever its write commits,
    without knowing what was sent after it.
    """
    if token is not None:
        assert isinstance(token, _Sent)
        token.committed = True


class SentHeaders:
    """Per leased transaction: the header its last acquire, claim or durable record
    sent, and whether that write is known to be committed."""

    __slots__ = ("_sent",)

    def __init__(self) -> None:
        self._sent: dict[str, _Sent] = {}

    def committed(self, tid: str, epoch: int, raw: tuple[Any, ...], state: str) -> None:
        """Note the header an acquire wrote or a claim read back under ``epoch``."""
        self._sent[tid] = _Sent(raw, epoch, state, committed=True)

    def unchanged(self, tid: str, epoch: int, raw: tuple[Any, ...]) -> str | None:
        """The stored state of ``tid`` when ``raw`` is the header known to be committed
        under ``epoch`` (and the last one sent): the record need not send it. Else None.
        """
        known = self._sent.get(tid)
        if known is not None and known.committed and known.epoch == epoch and known.raw == raw:
            return known.state
        return None

    def sending(
        self, tid: str, epoch: int, raw: tuple[Any, ...], state: str, durable: bool
    ) -> object | None:
        """Note that a record sends this header; return the token ``confirm`` takes
        once its durable write returned. A non-durable write is never known to be
        committed: it only drops what was known, so the next record sends its own."""
        if durable:
            sent = self._sent[tid] = _Sent(raw, epoch, state, committed=False)
            return sent
        self._sent.pop(tid, None)
        return None

    def forget(self, tid: str, epoch: int | None = None) -> None:
        """Drop what was noted for ``tid`` (under ``epoch`` only, when given: a later
        lease's notes stay)."""
        known = self._sent.get(tid)
        if known is not None and (epoch is None or known.epoch == epoch):
            del self._sent[tid]
