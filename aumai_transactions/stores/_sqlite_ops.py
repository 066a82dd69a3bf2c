"""The SQL of the SqliteStore operations run one at a time, and of its reads, run by the
writer thread in its transaction.

The batched hot path (acquires, records, releases) is ``_sqlite_batch``; as there,
every handler refuses (raises a ``StoreError``) before its first write, so a refused
operation never leaves a partial change in the shared SQLite transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from ..errors import CorruptRecordError, LeaseConflictError, StoreError
from ..models import LeaseInfo, LeaseSummary, Transaction, TransactionState
from ._base import Lease
from ._sqlite_batch import (
    INSERT_AGENT,
    INSERT_STEP,
    SET_FULL_HEADER,
    BatchedJournal,
    now_us,
    select_in,
)
from ._sqlite_schema import HEADER_COLUMNS, decode_transaction, from_us

__all__ = ["Journal"]

logger = logging.getLogger("aumai_transactions.stores.sqlite")

_TX_COLUMNS = f"id, transaction_id, {HEADER_COLUMNS}"
_EXPIRED = (
    "state IN ('active', 'compensating') "
    "AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires <= ?)"
)
_IN_FLIGHT = ("active", "compensating")
_LIVE = "lease_owner IS NOT NULL AND lease_expires IS NOT NULL AND lease_expires > :now"
_LEASE_SUMMARY = (
    f"SELECT COUNT(*) FILTER (WHERE {_LIVE} AND lease_owner IS NOT :exclude), "
    f"MIN(lease_expires) FILTER (WHERE {_LIVE} AND lease_owner IS NOT :exclude), "
    f"COUNT(*) FILTER (WHERE NOT ({_LIVE})), "
    "COUNT(*) FILTER (WHERE blocked_reason IS NOT NULL) "
    "FROM transactions WHERE state IN ('active', 'compensating')"
)


class Journal(BatchedJournal):
    """Every operation, bound to the file they report errors against."""

    def _check_not_driven(self, conn: sqlite3.Connection, tid: str, verb: str) -> int | None:
        """Raise if ``tid`` is in flight under a live lease; return its row id or None."""
        row = conn.execute(
            "SELECT id, state, lease_owner, lease_expires FROM transactions WHERE transaction_id=?",
            (tid,),
        ).fetchone()
        if row is None:
            return None
        rid, state, holder, expires = row
        if state in _IN_FLIGHT and holder is not None and expires is not None:
            if expires > now_us():
                raise LeaseConflictError(
                    f"Transaction {tid} is {state} under a live lease held by {holder}; "
                    f"it cannot be {verb}."
                )
        return int(rid)

    def save(
        self,
        conn: sqlite3.Connection,
        tid: str,
        header: tuple[Any, ...],
        steps: list[tuple[int, str, str]],
        agents: list[str],
        expected: frozenset[str] | None = None,
    ) -> None:
        rid = self._check_not_driven(conn, tid, "replaced")
        if rid is not None and expected is not None:
            (state,) = conn.execute("SELECT state FROM transactions WHERE id=?", (rid,)).fetchone()
            if state not in expected:
                raise LeaseConflictError(
                    f"Transaction {tid} is stored in state '{state}'; expected "
                    + " or ".join(f"'{s}'" for s in sorted(expected))
                    + "."
                )
        if rid is None:
            rid = conn.execute(
                f"INSERT INTO transactions (transaction_id, {HEADER_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tid, *header),
            ).lastrowid
            assert rid is not None
        else:
            conn.execute(f"UPDATE transactions SET {SET_FULL_HEADER} WHERE id=?", (*header, rid))
            self.drop_children(conn, rid)
        conn.executemany(INSERT_STEP, [(rid, *step) for step in steps])
        conn.executemany(INSERT_AGENT, [(rid, agent) for agent in agents])

    @staticmethod
    def renew(conn: sqlite3.Connection, owner: str, ttl: float) -> int:
        expires = now_us() + round(ttl * 1_000_000)
        return conn.execute(
            "UPDATE transactions SET lease_expires=? "
            "WHERE state IN ('active', 'compensating') AND lease_owner=? "
            "AND blocked_reason IS NULL",
            (expires, owner),
        ).rowcount

    def claim(
        self, conn: sqlite3.Connection, owner: str, ttl: float, limit: int
    ) -> list[tuple[Transaction, Lease]]:
        """Claim up to ``limit`` expired in-flight transactions, oldest first.

        Runs inside BEGIN IMMEDIATE, so no other process claims between the read and
        the write. A row that does not decode is logged and left untouched (the
        others are still recovered); an operator must repair or delete it.
        """
        now = now_us()
        expires = now + round(ttl * 1_000_000)
        expiry = from_us(expires)
        assert expiry is not None
        claimed: list[tuple[Transaction, Lease]] = []
        skipped = 0
        while len(claimed) < limit:
            want = limit - len(claimed)
            rows = conn.execute(
                f"SELECT {_TX_COLUMNS}, epoch FROM transactions WHERE {_EXPIRED} "
                "ORDER BY created_at, id LIMIT ? OFFSET ?",
                (now, want, skipped),
            ).fetchall()
            if not rows:
                break
            steps = _StepRows(conn, [row[0] for row in rows])
            taken: list[int] = []  # the row ids claimed
            for row in rows:
                rid, tid, epoch = row[0], row[1], row[-1]
                try:
                    tx = decode_transaction(self.path, row[1:-1], steps.of(rid))
                except StoreError as exc:
                    skipped += 1
                    logger.error(
                        "recovery skips transaction %s: %s", tid, exc, extra={"transaction_id": tid}
                    )
                    continue
                tx.recovery_attempts += 1
                taken.append(rid)
                claimed.append((tx, Lease(tid, owner, epoch + 1, expiry)))
                self._note_rid(tid, rid)
            conn.executemany(
                "UPDATE transactions SET epoch=epoch+1, lease_owner=?, lease_expires=?, "
                "recovery_attempts=recovery_attempts+1 WHERE id=?",
                ((owner, expires, rid) for rid in taken),
            )
            if len(rows) < want:
                break
        return claimed

    def claim_one(
        self,
        conn: sqlite3.Connection,
        tid: str,
        owner: str,
        ttl: float,
        expected: frozenset[str],
    ) -> tuple[Transaction, Lease] | None:
        """Take the lease of ``tid`` as stored (see ``OperatorStore.claim``)."""
        found = self._read(conn, tid, ", lease_owner, lease_expires, epoch")
        if found is None:
            return None
        row, steps = found
        now = now_us()
        state, (holder, held_until, epoch) = row[2], row[-3:]
        if holder is not None and held_until is not None and held_until > now:
            raise LeaseConflictError(
                f"Transaction {tid} is held by {holder} under a lease that expires at "
                f"{from_us(held_until)}; it cannot be taken before then."
            )
        if state not in expected:
            raise LeaseConflictError(
                f"Transaction {tid} is stored in state '{state}'; expected "
                + " or ".join(f"'{s}'" for s in sorted(expected))
                + "."
            )
        tx = decode_transaction(self.path, row[1:-3], steps)  # corrupt: refused, unwritten
        expires = now + round(ttl * 1_000_000)
        conn.execute(
            "UPDATE transactions SET epoch=?, lease_owner=?, lease_expires=? WHERE id=?",
            (epoch + 1, owner, expires, row[0]),
        )
        expiry = from_us(expires)
        assert expiry is not None
        self._note_rid(tid, row[0])
        return tx, Lease(tid, owner, epoch + 1, expiry)

    @staticmethod
    def release_all(conn: sqlite3.Connection, owner: str) -> int:
        return conn.execute(
            "UPDATE transactions SET lease_owner=NULL, lease_expires=NULL "
            "WHERE state IN ('active', 'compensating') AND lease_owner=?",
            (owner,),
        ).rowcount

    def delete(self, conn: sqlite3.Connection, tid: str) -> bool:
        rid = self._check_not_driven(conn, tid, "deleted")
        if rid is None:
            return False
        self.drop_children(conn, rid)
        conn.execute("DELETE FROM transactions WHERE id=?", (rid,))
        return True

    @staticmethod
    def purge(conn: sqlite3.Connection, states: tuple[str, ...], older: int) -> int:
        if not states:
            return 0
        where = f"state IN ({', '.join('?' * len(states))}) AND created_at < ?"
        params = (*states, older)
        doomed = f"SELECT id FROM transactions WHERE {where}"
        conn.execute(f"DELETE FROM steps WHERE tx IN ({doomed})", params)
        conn.execute(f"DELETE FROM transaction_agents WHERE tx IN ({doomed})", params)
        return conn.execute(f"DELETE FROM transactions WHERE {where}", params).rowcount

    # ---------------------------------------------------------------- reads

    @staticmethod
    def _read(
        conn: sqlite3.Connection, tid: str, extra: str = ""
    ) -> tuple[tuple[Any, ...], list[tuple[str, str]]] | None:
        """The header row of ``tid`` (``_TX_COLUMNS``, then the ``extra`` columns) and
        its step rows, or None."""
        row = conn.execute(
            f"SELECT {_TX_COLUMNS}{extra} FROM transactions WHERE transaction_id=?", (tid,)
        ).fetchone()
        if row is None:
            return None
        steps = conn.execute(
            "SELECT step_id, body FROM steps WHERE tx=? ORDER BY position", (row[0],)
        ).fetchall()
        return row, steps

    def load(self, conn: sqlite3.Connection, tid: str) -> Transaction | None:
        found = self._read(conn, tid)
        if found is None:
            return None
        row, steps = found
        return decode_transaction(self.path, row[1:], steps)

    @staticmethod
    def leases(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, LeaseInfo]:
        now = now_us()
        found: dict[str, LeaseInfo] = {}
        for tid, owner, expires, epoch in select_in(
            conn,
            "SELECT transaction_id, lease_owner, lease_expires, epoch FROM transactions "
            "WHERE transaction_id IN {}",
            ids,
        ):
            held = owner is not None and expires is not None
            found[tid] = LeaseInfo(
                transaction_id=tid,
                owner=owner if held else None,
                expires_at=from_us(expires) if held else None,
                epoch=epoch,
                live=held and expires > now,
            )
        return found

    @staticmethod
    def lease_summary(conn: sqlite3.Connection, exclude: str | None) -> LeaseSummary:
        waiting, first, claimable, blocked = conn.execute(
            _LEASE_SUMMARY, {"now": now_us(), "exclude": exclude}
        ).fetchone()
        return LeaseSummary(
            waiting=waiting, first_expiry=from_us(first), claimable=claimable, blocked=blocked
        )

    def list(
        self,
        conn: sqlite3.Connection,
        state: str | None,
        agent_id: str | None,
        since: int | None,
        until: int | None,
        limit: int | None,
        action: str | None = None,
        before: tuple[int, str] | None = None,
    ) -> list[Transaction]:
        clauses: list[str] = []
        params: list[Any] = []
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if agent_id is not None:
            clauses.append("id IN (SELECT tx FROM transaction_agents WHERE agent_id = ?)")
            params.append(agent_id)
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("created_at < ?")
            params.append(until)
        if action is not None:
            # No index: a scan of the step bodies (an operator's occasional search).
            clauses.append("id IN (SELECT tx FROM steps WHERE json_extract(body, '$.action') = ?)")
            params.append(action)
        if before is not None:
            # ``created_at <= ?`` on its own lets the index seek; the rest breaks ties.
            clauses.append("created_at <= ? AND (created_at < ? OR transaction_id < ?)")
            params.extend((before[0], before[0], before[1]))
        sql = f"SELECT {_TX_COLUMNS} FROM transactions"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created_at DESC, transaction_id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = conn.execute(sql, params).fetchall()
        steps = _StepRows(conn, [row[0] for row in rows])
        return [decode_transaction(self.path, row[1:], steps.of(row[0])) for row in rows]

    def count(self, conn: sqlite3.Connection) -> dict[TransactionState, int]:
        counts: dict[TransactionState, int] = {}
        for state, count in conn.execute("SELECT state, COUNT(*) FROM transactions GROUP BY state"):
            try:
                counts[TransactionState(state)] = count
            except ValueError:
                raise CorruptRecordError(
                    f"The journal {self.path} holds {count} transaction(s) in the unknown "
                    f"state {state!r}."
                ) from None
        return counts


class _StepRows:
    """The step rows (transaction row id, step id, body) of many transactions, read in
    one go, ordered by transaction and position, and where each one's rows are.

    Each transaction's rows are handed out as a slice made when it is decoded (and
    dropped right after), not as a list per transaction kept until all are decoded: a
    claim of a thousand leaves that many fewer objects for the cyclic collector.
    """

    __slots__ = ("_ends", "_rows", "_starts")

    def __init__(self, conn: sqlite3.Connection, ids: list[int]) -> None:
        self._rows = select_in(
            conn,
            "SELECT tx, step_id, body FROM steps WHERE tx IN {} ORDER BY tx, position",
            ids,
        )
        # A chunk of ids at a time, each ordered: one transaction's rows are together.
        self._starts: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        starts, ends = self._starts, self._ends
        for index, row in enumerate(self._rows):
            rid = row[0]
            if rid not in starts:
                starts[rid] = index
            ends[rid] = index + 1

    def of(self, rid: int) -> list[tuple[Any, ...]]:
        """The rows of the transaction with row id ``rid``, in order (none: empty)."""
        start = self._starts.get(rid)
        if start is None:
            return []
        return self._rows[start : self._ends[rid]]
