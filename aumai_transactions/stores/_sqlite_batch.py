"""The hot path of the SQLite journal: acquires, records and releases, a batch at a time.

Operations arrive as ``Op`` and ``Record`` objects (``_sqlite_requests``) whose values
were serialized on the event loop (so the snapshot is the one the caller recorded).
The writer thread applies the acquires, records and releases of a batch together: one
read of the rows concerned, then one ``executemany`` per table. Every handler refuses
(raises a ``StoreError`` or sets ``op.error``) before its first write, so a refused
operation never leaves a partial change in the shared SQLite transaction. The other
operations are in ``_sqlite_ops``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import LeaseConflictError, LeaseLostError, StoreError, StoreUnavailableError
from ._base import Lease, driven_elsewhere
from ._sqlite_requests import Op, Record
from ._sqlite_schema import HEADER_COLUMNS, from_us

__all__ = [
    "INSERT_AGENT",
    "INSERT_STEP",
    "SET_FULL_HEADER",
    "BatchedJournal",
    "now_us",
    "select_in",
]

_INSERT_TX = (
    f"INSERT INTO transactions (id, transaction_id, {HEADER_COLUMNS}, lease_owner, "
    "lease_expires, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SET_HEADER = (
    "state=?, updated_at=?, finished_at=?, error=?, blocked_reason=?, recovery_attempts=?, "
    "resolution=?"
)
SET_FULL_HEADER = f"{_SET_HEADER}, created_at=?, timeout_seconds=?"
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
INSERT_STEP = "INSERT INTO steps (tx, position, step_id, body) VALUES (?, ?, ?, ?)"
INSERT_AGENT = "INSERT INTO transaction_agents (tx, agent_id) VALUES (?, ?)"
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
_CHUNK = 512
_RID_HINTS = 100_000  # row ids kept at most (leases held at once, normally far fewer)


def now_us() -> int:
    """Wall-clock time in microseconds since the Unix epoch (what leases compare)."""
    return time.time_ns() // 1000


def _in_list(size: int) -> tuple[int, str]:
    """A padded size (a power of two) and its ``(?, ?, ...)``: few distinct statements."""
    padded = 1
    while padded < size:
        padded *= 2
    return padded, "(" + ", ".join("?" * padded) + ")"


def select_in(conn: sqlite3.Connection, sql: str, keys: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` (with one ``{}`` for an IN list) over ``keys``, in chunks."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start : start + _CHUNK])
        padded, marks = _in_list(len(chunk))
        chunk.extend(chunk[:1] * (padded - len(chunk)))
        rows.extend(conn.execute(sql.format(marks), chunk))
    return rows


class BatchedJournal:
    """The batched operations, bound to the file they report errors against; the
    row id hints they share with the single operations (``Journal``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # The row id of each transaction this writer holds a lease on (from its
        # acquire, claim or first record): a hint for reading it by its integer key;
        # the row read says which transaction it is, so a stale hint costs a second read.
        self._rids: dict[str, int] = {}

    def _leased_rows(
        self, conn: sqlite3.Connection, tids: list[str]
    ) -> dict[str, tuple[str, int, str, int]]:
        """The row (transaction id, epoch, state, row id) of each stored transaction
        among ``tids``.

        Read by row id where a hint has one (an integer key: half the cost of the
        text index on transaction_id), by transaction_id for the others and for any
        hint that no longer holds (the row says which transaction it is).
        """
        rids = self._rids
        current: dict[str, tuple[str, int, str, int]] = {}
        hinted = [rid for rid in map(rids.get, tids) if rid is not None]
        if hinted:
            for row in select_in(
                conn,
                "SELECT transaction_id, epoch, state, id FROM transactions WHERE id IN {}",
                hinted,
            ):
                current[row[0]] = row
        missing = [tid for tid in tids if tid not in current]
        if missing:
            for row in select_in(
                conn,
                "SELECT transaction_id, epoch, state, id FROM transactions "
                "WHERE transaction_id IN {}",
                missing,
            ):
                current[row[0]] = row
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
            for row in select_in(
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
            tid, owner, ttl, expected, header, steps, agents, _durable = op.args
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
                    f"UPDATE transactions SET {SET_FULL_HEADER}, lease_owner=?, "
                    "lease_expires=?, epoch=? WHERE id=?",
                    (*header, owner, expires, epoch, rid),
                )
                self.drop_children(conn, rid)
            step_rows.extend((rid, position, step_id, body) for position, step_id, body in steps)
            agent_rows.extend((rid, agent) for agent in agents)
            expiry = from_us(expires)
            assert expiry is not None
            op.result = Lease(tid, owner, epoch, expiry)
            self._note_rid(tid, rid)
        if tx_rows:
            conn.executemany(_INSERT_TX, tx_rows)
        if step_rows:
            conn.executemany(INSERT_STEP, step_rows)
        if agent_rows:
            conn.executemany(INSERT_AGENT, agent_rows)

    def record_many(
        self, conn: sqlite3.Connection, ops: Sequence[Record], poisoned: dict[tuple[str, int], str]
    ) -> None:
        """Apply ``record`` operations, each fenced by its lease epoch.

        The values were built on the event loop (``SqliteStore.record``); here each is
        checked against the stored epoch (one read, which also gives the row id the
        step rows are found by), then every transaction's header is written once (its
        newest snapshot; a record whose header did not change since the last one under
        its lease carries none) and every step row once (its newest record). A stale
        record is refused and changes nothing, and does not disturb the others. Steps
        appended since the acquire are inserted, and their agents added to the agent
        filter; a batch may update them too, later in queue order.

        What a batch gathers is keyed by strings and held as the records themselves,
        and the statements' parameters are made one row at a time as SQLite takes
        them: a batch of thousands of records leaves few objects for the cyclic
        garbage collector to trace while it runs.
        """
        current = self._leased_rows(conn, list({op.tid: None for op in ops}))
        newest: dict[str, Record] = {}
        steps: dict[str, Record] = {}  # by _step_key
        appended: dict[str, tuple[str, int, tuple[int, int, str, str]]] = {}
        agents: dict[str, tuple[int, str]] = {}
        for op in ops:
            tid, epoch = op.tid, op.epoch
            if poisoned and (tid, epoch) in poisoned:
                op.error = _lost(tid, poisoned[(tid, epoch)])
                continue
            stored = current.get(tid)
            if stored is None or stored[1] != epoch:
                op.error = LeaseLostError(
                    f"Transaction {tid}: lease epoch {epoch} is stale "
                    + (
                        f"(the journal {self.path} holds epoch {stored[1]}); "
                        if stored is not None
                        else f"(it is not in the journal {self.path}); "
                    )
                    + "this driver must stop."
                )
                continue
            if op.header is not None:
                newest[tid] = op
            # The known rows it updates: the step it carries first, then its own.
            for update in (op,) if op.previous is None else (op.previous, op):
                if update.step_id is None:
                    continue
                key = _step_key(tid, update.position)
                if appended and key in appended:  # inserted earlier in this batch
                    assert update.body is not None
                    row = (stored[3], update.position, update.step_id, update.body)
                    appended[key] = (tid, update.position, row)
                else:
                    steps[key] = update
            if op.step_id is None and op.appended:
                rid = stored[3]
                for position, step_id, body, agent_id in op.appended:
                    key = _step_key(tid, position)
                    steps.pop(key, None)
                    appended[key] = (tid, position, (rid, position, step_id, body))
                    agents[key] = (rid, agent_id)
        if newest:
            written = 0
            changed = sum(1 for tid, op in newest.items() if op.state != current[tid][2])
            if changed:
                rows = _header_rows(newest, current, False)
                written += conn.executemany(_UPDATE_HEADER, rows).rowcount
            if changed != len(newest):
                rows = _header_rows(newest, current, True)
                written += conn.executemany(_UPDATE_HEADER_SAME_STATE, rows).rowcount
            if written != len(newest):  # cannot happen: we hold the write lock
                raise RuntimeError(f"epoch-fenced update wrote {written} of {len(newest)} rows")
        if steps:
            updates = (
                (op.body, current[op.tid][3], op.position, op.step_id) for op in steps.values()
            )
            if conn.executemany(_UPDATE_STEP, updates).rowcount != len(steps):
                params = {
                    key: (
                        op.tid,
                        op.position,
                        (op.body, current[op.tid][3], op.position, op.step_id),
                    )
                    for key, op in steps.items()
                }
                self._refuse_unknown_steps(conn, ops, _UPDATE_STEP, params, 3)
        if appended:
            inserts = (row for _, _, row in appended.values())
            if conn.executemany(_UPSERT_STEP, inserts).rowcount != len(appended):
                for key in self._refuse_unknown_steps(conn, ops, _UPSERT_STEP, appended, 2):
                    del agents[key]
            conn.executemany(_ADD_AGENT, agents.values())

    @staticmethod
    def _refuse_unknown_steps(
        conn: sqlite3.Connection,
        ops: Sequence[Record],
        statement: str,
        rows: dict[str, tuple[str, int, tuple[Any, ...]]],
        step_index: int,
    ) -> list[str]:
        """Rare path: find the step rows ``statement`` cannot write (the position is not
        that step's) and fail the records that carry them; return their keys.

        ``rows`` maps each step's key to its transaction id, its position and the
        statement's parameters. Rewriting the others once more is harmless: both
        statements are idempotent.
        """
        refused = []
        for key, (tid, position, row) in rows.items():
            if conn.execute(statement, row).rowcount == 1:
                continue
            refused.append(key)
            step_id = row[step_index]
            for op in ops:
                if op.tid == tid and op.error is None and _carries(op, step_id):
                    op.error = ValueError(
                        f"record: step {step_id} at position {position} is not a stored step "
                        f"of transaction {tid}."
                    )
        return refused

    def release_many(
        self, conn: sqlite3.Connection, ops: Sequence[Op], poisoned: dict[tuple[str, int], str]
    ) -> None:
        """Give up leases (the epoch stays, so the next lease is greater); each op's
        arguments are the transaction id and the epoch (distinct ids)."""
        rids = self._rids
        hinted: list[Op] = []
        by_id: list[Op] = []
        for op in ops:
            (hinted if op.args[0] in rids else by_id).append(op)
        if hinted:
            # By the row id a hint gives; the transaction_id makes sure the row is still
            # this one's.
            rows = ((rids.pop(op.args[0]), *op.args) for op in hinted)
            if conn.executemany(_RELEASE_BY_ROW, rows).rowcount != len(hinted):
                by_id += hinted  # idempotent: once more, by transaction_id
        if by_id:
            conn.executemany(_RELEASE, (op.args for op in by_id))
        if poisoned:
            for op in ops:
                poisoned.pop(op.args, None)

    # ---------------------------------------------------------------- single

    @staticmethod
    def drop_children(conn: sqlite3.Connection, rid: int) -> None:
        conn.execute("DELETE FROM steps WHERE tx=?", (rid,))
        conn.execute("DELETE FROM transaction_agents WHERE tx=?", (rid,))


def _carries(op: Record, step_id: str) -> bool:
    """True when the record ``op`` writes the step ``step_id``."""
    if op.previous is not None and op.previous.step_id == step_id:
        return True
    if op.step_id is not None:
        return op.step_id == step_id
    return any(row[1] == step_id for row in op.appended or ())


def _lost(tid: str, cause: str) -> StoreError:
    return StoreUnavailableError(
        f"An earlier write of transaction {tid} under this lease was lost when the journal "
        f"failed ({cause}); this driver must stop."
    )


def _step_key(tid: str, position: int) -> str:
    """The key of a step row among a batch's records: a string, which the cyclic
    garbage collector does not track (a tuple it would)."""
    return f"{position} {tid}"


def _header_rows(
    newest: dict[str, Record], current: dict[str, tuple[str, int, str, int]], same_state: bool
) -> Iterator[tuple[Any, ...]]:
    """The parameters of the header updates of the records whose state is (or is not)
    the stored one, by row id and epoch: one tuple at a time, as SQLite binds them."""
    for tid, op in newest.items():
        stored = current[tid]
        header = op.header
        assert header is not None
        if (op.state == stored[2]) is same_state:
            if same_state:
                yield (*header[1:], stored[3], op.epoch)
            else:
                yield (*header, stored[3], op.epoch)
