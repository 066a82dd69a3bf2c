"""The SQL of every SqliteStore operation, run by the writer thread in its transaction.

Operations arrive as ``Op`` objects whose arguments were serialized on the event loop
(so the snapshot is the one the caller recorded). The hot ones, ``acquire``,
``record`` and ``release``, are applied a batch at a time: one read of the rows
concerned, then one ``executemany`` per table. Every handler refuses (raises a
``StoreError`` or sets ``op.error``) before its first write, so a refused operation
never leaves a partial change in the shared SQLite transaction.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import (
    CorruptRecordError,
    LeaseConflictError,
    LeaseLostError,
    StoreError,
    StoreUnavailableError,
)
from ..models import LeaseInfo, LeaseSummary, Transaction, TransactionState
from ._base import Lease, driven_elsewhere
from ._sqlite_schema import HEADER_COLUMNS, decode_transaction, from_us

__all__ = ["Journal", "Op", "now_us"]

logger = logging.getLogger("aumai_transactions.stores.sqlite")

_TX_COLUMNS = f"id, transaction_id, {HEADER_COLUMNS}"
_INSERT_TX = (
    f"INSERT INTO transactions (id, transaction_id, {HEADER_COLUMNS}, lease_owner, "
    "lease_expires, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SET_HEADER = (
    "state=?, updated_at=?, finished_at=?, error=?, blocked_reason=?, recovery_attempts=?, "
    "resolution=?"
)
_SET_FULL_HEADER = f"{_SET_HEADER}, created_at=?, timeout_seconds=?"
# By the row id the epoch check read in the same SQLite transaction (the writer holds
# the write lock from that read on), and still fenced by the epoch.
_FENCE = "WHERE id=? AND epoch=?"
_UPDATE_HEADER = f"UPDATE transactions SET {_SET_HEADER} {_FENCE}"
# Most records leave the state as it is; not naming it spares rewriting its index entry.
_UPDATE_HEADER_SAME_STATE = (
    "UPDATE transactions SET updated_at=?, finished_at=?, error=?, blocked_reason=?, "
    f"recovery_attempts=?, resolution=? {_FENCE}"
)
# Step rows are found by the transaction's row id, which the epoch check reads: an
# integer key, where a sub-select on transaction_id costs a text-index search per row.
_UPDATE_STEP = "UPDATE steps SET body=? WHERE tx=? AND position=? AND step_id=?"
_INSERT_STEP = "INSERT INTO steps (tx, position, step_id, body) VALUES (?, ?, ?, ?)"
_INSERT_AGENT = "INSERT INTO transaction_agents (tx, agent_id) VALUES (?, ?)"
# A step appended after the acquire: inserted at its position, or (written already, by
# another store object on this file) rewritten, unless another step holds the position.
_UPSERT_STEP = (
    "INSERT INTO steps (tx, position, step_id, body) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (tx, position) DO UPDATE SET body=excluded.body "
    "WHERE step_id=excluded.step_id"
)
_ADD_AGENT = "INSERT OR IGNORE INTO transaction_agents (tx, agent_id) VALUES (?, ?)"
_RELEASE = (
    "UPDATE transactions SET lease_owner=NULL, lease_expires=NULL "
    "WHERE transaction_id=? AND epoch=?"
)
_RELEASE_BY_ROW = (
    "UPDATE transactions SET lease_owner=NULL, lease_expires=NULL "
    "WHERE id=? AND transaction_id=? AND epoch=?"
)
_EXPIRED = (
    "state IN ('active', 'compensating') "
    "AND (lease_owner IS NULL OR lease_expires IS NULL OR lease_expires <= ?)"
)
_IN_FLIGHT = ("active", "compensating")
_CHUNK = 512
_RID_HINTS = 100_000  # row ids kept at most (leases held at once, normally far fewer)
_LIVE = "lease_owner IS NOT NULL AND lease_expires IS NOT NULL AND lease_expires > :now"
_LEASE_SUMMARY = (
    f"SELECT COUNT(*) FILTER (WHERE {_LIVE} AND lease_owner IS NOT :exclude), "
    f"MIN(lease_expires) FILTER (WHERE {_LIVE} AND lease_owner IS NOT :exclude), "
    f"COUNT(*) FILTER (WHERE NOT ({_LIVE})), "
    "COUNT(*) FILTER (WHERE blocked_reason IS NOT NULL) "
    "FROM transactions WHERE state IN ('active', 'compensating')"
)


def now_us() -> int:
    """Wall-clock time in microseconds since the Unix epoch (what leases compare)."""
    return time.time_ns() // 1000


class Op:
    """One request from the event loop to the writer thread, and its outcome."""

    __slots__ = ("args", "error", "future", "kind", "result")

    def __init__(
        self, kind: int, args: tuple[Any, ...], future: asyncio.Future[Any] | None = None
    ) -> None:
        self.kind = kind
        self.args = args
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


def _in_list(size: int) -> tuple[int, str]:
    """A padded size (a power of two) and its ``(?, ?, ...)``: few distinct statements."""
    padded = 1
    while padded < size:
        padded *= 2
    return padded, "(" + ", ".join("?" * padded) + ")"


def _select_in(conn: sqlite3.Connection, sql: str, keys: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` (with one ``{}`` for an IN list) over ``keys``, in chunks."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start : start + _CHUNK])
        padded, marks = _in_list(len(chunk))
        chunk.extend(chunk[:1] * (padded - len(chunk)))
        rows.extend(conn.execute(sql.format(marks), chunk))
    return rows


class Journal:
    """The operations, bound to the file they report errors against."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # The row id of each transaction this writer holds a lease on (from its
        # acquire, claim or first record): a hint for reading it by its integer key;
        # the row read says which transaction it is, so a stale hint costs a second read.
        self._rids: dict[str, int] = {}

    def _leased_rows(
        self, conn: sqlite3.Connection, tids: list[str]
    ) -> dict[str, tuple[int, str, int]]:
        """The epoch, state and row id of each stored transaction among ``tids``.

        Read by row id where a hint has one (an integer key: half the cost of the
        text index on transaction_id), by transaction_id for the others and for any
        hint that no longer holds (the row says which transaction it is).
        """
        rids = self._rids
        current: dict[str, tuple[int, str, int]] = {}
        hinted = [rid for rid in map(rids.get, tids) if rid is not None]
        if hinted:
            for row in _select_in(
                conn,
                "SELECT transaction_id, epoch, state, id FROM transactions WHERE id IN {}",
                hinted,
            ):
                current[row[0]] = row[1:]
        missing = [tid for tid in tids if tid not in current]
        if missing:
            for row in _select_in(
                conn,
                "SELECT transaction_id, epoch, state, id FROM transactions "
                "WHERE transaction_id IN {}",
                missing,
            ):
                current[row[0]] = row[1:]
                self._note_rid(row[0], row[3])
        return current

    def _note_rid(self, tid: str, rid: int) -> None:
        rids = self._rids
        if len(rids) >= _RID_HINTS:
            rids.clear()  # hints only: whatever is dropped is read again when needed
        rids[tid] = rid

    # ---------------------------------------------------------------- batched

    def acquire_many(self, conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
        """Take the lease of each transaction, writing it in full (distinct ids).

        An acquire whose caller was cancelled while it waited in the queue is skipped:
        nobody would ever drive (or release) the lease it would take.
        """
        ops = [op for op in ops if op.future is None or not op.future.cancelled()]
        if not ops:
            return
        found = {
            row[0]: row[1:]
            for row in _select_in(
                conn,
                "SELECT transaction_id, id, state, lease_owner, lease_expires, epoch "
                "FROM transactions WHERE transaction_id IN {}",
                [op.args[0] for op in ops],
            )
        }
        now = now_us()
        next_id: int | None = None
        tx_rows: list[tuple[Any, ...]] = []
        step_rows: list[tuple[int, int, str, str]] = []
        agent_rows: list[tuple[int, str]] = []
        for op in ops:
            tid, owner, ttl, expected, header, steps, agents = op.args
            expires = now + round(ttl * 1_000_000)
            row = found.get(tid)
            if row is None:
                if next_id is None:
                    top = conn.execute("SELECT MAX(id) FROM transactions").fetchone()[0]
                    next_id = (top or 0) + 1
                rid, epoch = next_id, 1
                next_id += 1
                tx_rows.append((rid, tid, *header, owner, expires, epoch))
            else:
                rid, state, holder, held_until, stored_epoch = row
                if holder is not None and held_until is not None and held_until > now:
                    op.error = LeaseConflictError(
                        driven_elsewhere(tid, holder, from_us(held_until))
                    )
                    continue
                if state not in expected:
                    op.error = LeaseConflictError(
                        f"Transaction {tid} is stored in state '{state}'; expected "
                        + " or ".join(f"'{s}'" for s in sorted(expected))
                        + "."
                    )
                    continue
                epoch = stored_epoch + 1
                conn.execute(
                    f"UPDATE transactions SET {_SET_FULL_HEADER}, lease_owner=?, "
                    "lease_expires=?, epoch=? WHERE id=?",
                    (*header, owner, expires, epoch, rid),
                )
                self._drop_children(conn, rid)
            step_rows.extend((rid, position, step_id, body) for position, step_id, body in steps)
            agent_rows.extend((rid, agent) for agent in agents)
            expiry = from_us(expires)
            assert expiry is not None
            op.result = Lease(tid, owner, epoch, expiry)
            self._note_rid(tid, rid)
        if tx_rows:
            conn.executemany(_INSERT_TX, tx_rows)
        if step_rows:
            conn.executemany(_INSERT_STEP, step_rows)
        if agent_rows:
            conn.executemany(_INSERT_AGENT, agent_rows)

    def record_many(
        self, conn: sqlite3.Connection, ops: Sequence[Op], poisoned: dict[tuple[str, int], str]
    ) -> None:
        """Apply ``record`` operations, each fenced by its lease epoch.

        The parameters were built on the event loop (``SqliteStore.record``); here
        each is checked against the stored epoch (one read, which also gives the row
        id the step rows are found by), then every transaction's header is written
        once (its newest snapshot; a record whose header did not change since the
        last one under its lease carries none) and every step row once (its newest
        record). A stale record is refused and changes nothing, and does not disturb
        the others. Steps appended since the acquire are inserted, and their agents
        added to the agent filter; a batch may update them too, later in queue order.
        """
        current = self._leased_rows(conn, list({op.args[0]: None for op in ops}))
        newest: dict[str, Op] = {}
        steps: dict[tuple[str, int], tuple[str, int, int, str]] = {}
        appended: dict[tuple[str, int], tuple[int, int, str, str]] = {}
        agents: dict[tuple[str, int], tuple[int, str]] = {}
        for op in ops:
            tid, epoch, _, header, step, new_steps = op.args
            if poisoned and (tid, epoch) in poisoned:
                op.error = _lost(tid, poisoned[(tid, epoch)])
                continue
            stored = current.get(tid)
            if stored is None or stored[0] != epoch:
                op.error = LeaseLostError(
                    f"Transaction {tid}: lease epoch {epoch} is stale "
                    + (
                        f"(the journal {self.path} holds epoch {stored[0]}); "
                        if stored is not None
                        else f"(it is not in the journal {self.path}); "
                    )
                    + "this driver must stop."
                )
                continue
            if header is not None:
                newest[tid] = op
            rid = stored[2]
            if step is not None:
                body, position, step_id = step
                key = (tid, position)
                if appended and key in appended:  # inserted earlier in this batch
                    appended[key] = (rid, position, step_id, body)
                else:
                    steps[key] = (body, rid, position, step_id)
            elif new_steps:
                for position, step_id, body, agent_id in new_steps:
                    key = (tid, position)
                    steps.pop(key, None)
                    appended[key] = (rid, position, step_id, body)
                    agents[key] = (rid, agent_id)
        if newest:
            same: list[tuple[Any, ...]] = []
            changed: list[tuple[Any, ...]] = []
            for tid, op in newest.items():
                _, epoch, state, fields, _, _ = op.args
                stored = current[tid]
                if state == stored[1]:
                    same.append((*fields, stored[2], epoch))
                else:
                    changed.append((state, *fields, stored[2], epoch))
            written = 0
            if changed:
                written += conn.executemany(_UPDATE_HEADER, changed).rowcount
            if same:
                written += conn.executemany(_UPDATE_HEADER_SAME_STATE, same).rowcount
            if written != len(newest):  # cannot happen: we hold the write lock
                raise RuntimeError(f"epoch-fenced update wrote {written} of {len(newest)} rows")
        if steps and conn.executemany(_UPDATE_STEP, steps.values()).rowcount != len(steps):
            self._refuse_unknown_steps(conn, ops, _UPDATE_STEP, steps, 3)
        if appended:
            if conn.executemany(_UPSERT_STEP, appended.values()).rowcount != len(appended):
                for key in self._refuse_unknown_steps(conn, ops, _UPSERT_STEP, appended, 2):
                    del agents[key]
            conn.executemany(_ADD_AGENT, agents.values())

    @staticmethod
    def _refuse_unknown_steps(
        conn: sqlite3.Connection,
        ops: Sequence[Op],
        statement: str,
        rows: dict[tuple[str, int], tuple[Any, ...]],
        step_index: int,
    ) -> list[tuple[str, int]]:
        """Rare path: find the step rows ``statement`` cannot write (the position is not
        that step's) and fail the records that carry them; return their keys.

        Rewriting the others once more is harmless: both statements are idempotent.
        """
        refused = []
        for (tid, position), row in rows.items():
            if conn.execute(statement, row).rowcount == 1:
                continue
            refused.append((tid, position))
            step_id = row[step_index]
            for op in ops:
                if op.args[0] == tid and op.error is None and _carries(op, step_id):
                    op.error = ValueError(
                        f"record: step {step_id} at position {position} is not a stored step "
                        f"of transaction {tid}."
                    )
        return refused

    def release_many(
        self, conn: sqlite3.Connection, ops: Sequence[Op], poisoned: dict[tuple[str, int], str]
    ) -> None:
        """Give up leases (the epoch stays, so the next lease is greater)."""
        rids = self._rids
        by_row: list[tuple[int, str, int]] = []
        by_id: list[tuple[str, int]] = []
        for op in ops:
            tid, epoch = op.args
            rid = rids.pop(tid, None)
            if rid is None:
                by_id.append((tid, epoch))
            else:  # a hint: the transaction_id makes sure the row is still this one's
                by_row.append((rid, tid, epoch))
        if by_row and conn.executemany(_RELEASE_BY_ROW, by_row).rowcount != len(by_row):
            by_id.extend((tid, epoch) for _, tid, epoch in by_row)  # idempotent: once more
        if by_id:
            conn.executemany(_RELEASE, by_id)
        if poisoned:
            for op in ops:
                poisoned.pop(op.args, None)

    # ---------------------------------------------------------------- single

    @staticmethod
    def _drop_children(conn: sqlite3.Connection, rid: int) -> None:
        conn.execute("DELETE FROM steps WHERE tx=?", (rid,))
        conn.execute("DELETE FROM transaction_agents WHERE tx=?", (rid,))

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
            conn.execute(f"UPDATE transactions SET {_SET_FULL_HEADER} WHERE id=?", (*header, rid))
            self._drop_children(conn, rid)
        conn.executemany(_INSERT_STEP, [(rid, *step) for step in steps])
        conn.executemany(_INSERT_AGENT, [(rid, agent) for agent in agents])

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
            bodies = self._step_rows(conn, [row[0] for row in rows])
            updates: list[tuple[str, int, int]] = []
            for row in rows:
                rid, tid, epoch = row[0], row[1], row[-1]
                try:
                    tx = decode_transaction(self.path, row[1:-1], bodies.get(rid, ()))
                except StoreError as exc:
                    skipped += 1
                    logger.error(
                        "recovery skips transaction %s: %s", tid, exc, extra={"transaction_id": tid}
                    )
                    continue
                tx.recovery_attempts += 1
                updates.append((owner, expires, rid))
                claimed.append((tx, Lease(tid, owner, epoch + 1, expiry)))
                self._note_rid(tid, rid)
            conn.executemany(
                "UPDATE transactions SET epoch=epoch+1, lease_owner=?, lease_expires=?, "
                "recovery_attempts=recovery_attempts+1 WHERE id=?",
                updates,
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
        self._drop_children(conn, rid)
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
    def _step_rows(conn: sqlite3.Connection, ids: list[int]) -> dict[int, list[tuple[str, str]]]:
        found: dict[int, list[tuple[str, str]]] = {}
        for rid, step_id, body in _select_in(
            conn,
            "SELECT tx, step_id, body FROM steps WHERE tx IN {} ORDER BY tx, position",
            ids,
        ):
            found.setdefault(rid, []).append((step_id, body))
        return found

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
        for tid, owner, expires, epoch in _select_in(
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
        bodies = self._step_rows(conn, [row[0] for row in rows])
        return [decode_transaction(self.path, row[1:], bodies.get(row[0], ())) for row in rows]

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


def _carries(op: Op, step_id: str) -> bool:
    """True when the record ``op`` writes the step ``step_id``."""
    _, _, _, _, step, new_steps = op.args
    if step is not None:
        return bool(step[2] == step_id)
    return any(row[1] == step_id for row in new_steps or ())


def _lost(tid: str, cause: str) -> StoreError:
    return StoreUnavailableError(
        f"An earlier write of transaction {tid} under this lease was lost when the journal "
        f"failed ({cause}); this driver must stop."
    )
