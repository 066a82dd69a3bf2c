"""The PostgreSQL journal's schema, migrations, SQL text and row codec.

Kept apart from ``postgres.py`` so the store reads as behaviour (open, write, claim)
while the exact SQL sits in one place. Every statement is parameterized; the only
thing spliced into SQL text is the schema name, validated as an identifier and quoted
with ``psycopg.sql.Identifier``.

Layout (schema version 1)::

    transactions  one row per transaction: the columns the store filters and fences
                  on (state, created_at, lease_owner, lease_expires_at, lease_epoch,
                  recovery_attempts) and ``header``, the rest of the header as JSONB
    steps         one row per step: (transaction_id, step_id) key, position, agent_id
                  (for the agent filter) and ``doc``, the whole step as JSONB
    schema_migrations  one row per applied migration

A released lease has ``lease_expires_at = '-infinity'`` rather than NULL, so "the
lease is live" is the single comparison ``lease_expires_at > now()`` and the claim
query walks one partial index (queries hand it to Python as NULL: a datetime cannot
hold minus infinity). Expiries are always computed by the database clock
(``now()``), never the client's, so workers on machines whose clocks disagree still
agree on who holds a lease.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection, sql
from pydantic import ValidationError

from ..errors import CorruptRecordError, SchemaVersionError
from ..models import Transaction, TransactionState, TransactionStep

__all__ = [
    "SCHEMA_VERSION",
    "HEADER_EXCLUDE",
    "Statements",
    "advisory_lock_key",
    "decode_transaction",
    "migrate",
    "validate_schema_name",
]

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Header fields that live in their own columns (or, for steps, their own table).
HEADER_EXCLUDE = frozenset({"steps", "transaction_id", "state", "created_at", "recovery_attempts"})

# Each migration: (version, description, statements). Append only; never edit one
# that has shipped. ``{s}`` is the quoted schema name.
_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "transactions, steps and their indexes",
        (
            """
            CREATE TABLE {s}.transactions (
                transaction_id    text PRIMARY KEY,
                state             text NOT NULL,
                created_at        timestamptz NOT NULL,
                recovery_attempts integer NOT NULL DEFAULT 0,
                header            jsonb NOT NULL,
                lease_owner       text,
                lease_expires_at  timestamptz NOT NULL DEFAULT '-infinity',
                lease_epoch       bigint NOT NULL DEFAULT 0
            ) WITH (fillfactor = 80)
            """,
            """
            CREATE TABLE {s}.steps (
                transaction_id text NOT NULL
                    REFERENCES {s}.transactions (transaction_id) ON DELETE CASCADE,
                step_id        text NOT NULL,
                position       integer NOT NULL,
                agent_id       text NOT NULL,
                doc            jsonb NOT NULL,
                PRIMARY KEY (transaction_id, step_id)
            ) WITH (fillfactor = 80)
            """,
            "CREATE INDEX transactions_created ON {s}.transactions (created_at DESC)",
            """
            CREATE INDEX transactions_state_created
                ON {s}.transactions (state, created_at DESC)
            """,
            """
            CREATE INDEX transactions_claimable ON {s}.transactions (lease_expires_at)
                WHERE state IN ('active', 'compensating')
            """,
            """
            CREATE INDEX transactions_lease_owner ON {s}.transactions (lease_owner)
                WHERE state IN ('active', 'compensating')
            """,
            "CREATE INDEX steps_agent ON {s}.steps (agent_id, transaction_id)",
        ),
    ),
)

SCHEMA_VERSION = _MIGRATIONS[-1][0]


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a plain lower-case identifier, else raise ValueError."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema must be a lower-case identifier matching {_SCHEMA_NAME.pattern} "
            f"(letters, digits, underscores; at most 63 characters), not {schema!r}."
        )
    return schema


def advisory_lock_key(schema: str) -> int:
    """The 64-bit advisory lock key that serializes migrations of ``schema``.

    Derived from the schema name (not an OID), so it is the same before the schema
    exists, in every process and on every machine.
    """
    digest = hashlib.blake2b(f"aumai_transactions:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _compact(text: str) -> str:
    """``text`` without ``--`` comments and with runs of white space made one space.

    Short statement text is not cosmetic: psycopg caches the parsing of statements
    under 4 KiB only, and the batch statement runs once per round trip. (No literal
    in this module's SQL holds ``--`` or significant white space.)
    """
    return " ".join(re.sub(r"--[^\n]*", "", text).split())


def _q(text: str, schema: str) -> bytes:
    """``text`` with ``{s}`` replaced by the quoted schema name, ready to execute."""
    return sql.SQL(_compact(text)).format(s=sql.Identifier(schema)).as_bytes(None)


async def migrate(conn: AsyncConnection[Any], schema: str) -> int:
    """Create or upgrade ``schema`` to ``SCHEMA_VERSION``; return the version found.

    Runs in one transaction under ``pg_advisory_xact_lock``: several workers starting
    at once take turns, and the first one does the work. A schema written by a newer
    version raises ``SchemaVersionError`` and changes nothing.
    """
    ident = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_lock_key(schema),))
        cur = await conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,))
        row = await cur.fetchone()
        if not (row and row[0]):
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        cur = await conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".schema_migrations',)
        )
        row = await cur.fetchone()
        if not (row and row[0]):
            await conn.execute(
                _q(
                    """
                    CREATE TABLE {s}.schema_migrations (
                        version     integer PRIMARY KEY,
                        description text NOT NULL,
                        applied_at  timestamptz NOT NULL DEFAULT now()
                    )
                    """,
                    schema,
                )
            )
        cur = await conn.execute(_q("SELECT max(version) FROM {s}.schema_migrations", schema))
        row = await cur.fetchone()
        found = int(row[0]) if row and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"PostgreSQL schema {schema!r} is at version {found}, written by a newer "
                f"aumai-transactions; this version knows up to {SCHEMA_VERSION}. "
                "Upgrade aumai-transactions; nothing was changed."
            )
        for version, description, statements in _MIGRATIONS:
            if version <= found:
                continue
            for statement in statements:
                await conn.execute(_q(statement, schema))
            await conn.execute(
                _q(
                    "INSERT INTO {s}.schema_migrations (version, description) VALUES (%s, %s)",
                    schema,
                ),
                (version, description),
            )
    return found


# Columns every reading query returns, in this order, for ``decode_transaction``.
_TX_COLUMNS = """
    t.transaction_id, t.state, t.created_at, t.recovery_attempts, t.header::text,
    st.positions, st.step_ids, st.docs
"""

_STEPS_OF_T = """
    LEFT JOIN LATERAL (
        SELECT array_agg(x.position ORDER BY x.position) AS positions,
               array_agg(x.step_id ORDER BY x.position) AS step_ids,
               array_agg(x.doc::text ORDER BY x.position) AS docs
        FROM {s}.steps AS x
        WHERE x.transaction_id = t.transaction_id
    ) AS st ON true
"""

# One round trip writes a whole batch, sent as one JSON document (the step and header
# documents inside it verbatim, so nothing is escaped twice). The statement is put
# together from two parts, so a batch of records does not pay for acquire machinery:
#
# * acquires and saves: upsert of the header and every step, pruning steps no longer
#   present. An acquire succeeds where the stored lease is not live and the state is
#   one of those expected; a save where no live lease holds an in-flight transaction
#   (and, when the save names expected states, the stored state is one of them).
# * records and releases, fenced: a row is written only while it still carries the
#   writer's epoch *and* owner. (The owner matters after a server crash: an acquire
#   that committed without waiting for its WAL flush can be lost, and a later acquire
#   may hand out the same epoch again, but never to the same owner.) A record that
#   ends the transaction also ends its lease: there is nothing left to drive. A record
#   without a header (it is the one committed under the lease already) and without a
#   release leaves the row as it is: it is checked the same way under a share lock.
#
# The writer never puts two writes of different kinds or epochs for one transaction in
# a batch, so no row is touched twice by one statement. A batch with no durable write
# in it (acquires, releases, non-durable records) commits without waiting for the WAL
# flush: the next durable write flushes it anyway, and until then nothing depends on
# it (an acquire lost in a crash fails its driver's first write: see above).
_BATCH_HEAD = """
WITH b AS (
    SELECT %(batch)s::jsonb AS j
)
"""

_BATCH_ACQUIRE = """
, a_in AS (
    SELECT * FROM jsonb_to_recordset((SELECT j -> 'a' FROM b)) AS a(
        tid text, state text, created_at timestamptz, attempts integer, header jsonb,
        owner text, ttl float8, expected text)
), a_up AS (
    INSERT INTO {s}.transactions AS t
        (transaction_id, state, created_at, recovery_attempts, header,
         lease_owner, lease_expires_at, lease_epoch)
    SELECT a.tid, a.state, a.created_at, a.attempts, a.header, a.owner,
           CASE WHEN a.owner IS NULL THEN '-infinity'::timestamptz
                ELSE now() + a.ttl * interval '1 second' END,
           CASE WHEN a.owner IS NULL THEN 0 ELSE 1 END
    FROM a_in AS a
    ON CONFLICT (transaction_id) DO UPDATE SET
        state = EXCLUDED.state,
        created_at = EXCLUDED.created_at,
        recovery_attempts = EXCLUDED.recovery_attempts,
        header = EXCLUDED.header,
        lease_owner = CASE WHEN EXCLUDED.lease_owner IS NULL THEN t.lease_owner
                           ELSE EXCLUDED.lease_owner END,
        lease_expires_at = CASE WHEN EXCLUDED.lease_owner IS NULL THEN t.lease_expires_at
                                ELSE EXCLUDED.lease_expires_at END,
        lease_epoch = t.lease_epoch + CASE WHEN EXCLUDED.lease_owner IS NULL THEN 0 ELSE 1 END
    WHERE CASE
        WHEN EXCLUDED.lease_owner IS NULL THEN
            NOT (t.state IN ('active', 'compensating') AND t.lease_expires_at > now())
            AND (coalesce((SELECT a.expected FROM a_in AS a WHERE a.tid = t.transaction_id),
                          '') = ''
                 OR t.state = ANY (string_to_array(
                    (SELECT a.expected FROM a_in AS a WHERE a.tid = t.transaction_id), ',')))
        ELSE
            t.lease_expires_at <= now()
            AND t.state = ANY (string_to_array(
                (SELECT a.expected FROM a_in AS a WHERE a.tid = t.transaction_id), ','))
        END
    RETURNING t.transaction_id, t.lease_epoch, t.lease_expires_at
), as_in AS (
    SELECT * FROM jsonb_to_recordset((SELECT j -> 's' FROM b)) AS v(
        tid text, step_id text, position integer, agent_id text, doc jsonb)
), as_up AS (
    INSERT INTO {s}.steps (transaction_id, step_id, position, agent_id, doc)
    SELECT v.tid, v.step_id, v.position, v.agent_id, v.doc
    FROM as_in AS v JOIN a_up ON a_up.transaction_id = v.tid
    ON CONFLICT (transaction_id, step_id) DO UPDATE SET
        position = EXCLUDED.position, agent_id = EXCLUDED.agent_id, doc = EXCLUDED.doc
), as_prune AS (
    DELETE FROM {s}.steps AS x USING a_up
    WHERE x.transaction_id = a_up.transaction_id
      -- Through the primary key, whatever the table's size (see r_up below).
      AND x.transaction_id = ANY (ARRAY(SELECT a2.transaction_id FROM a_up AS a2))
      AND NOT EXISTS (
          SELECT 1 FROM as_in AS v WHERE v.tid = x.transaction_id AND v.step_id = x.step_id)
)
"""

_BATCH_RECORD = """
, r_in AS (
    SELECT * FROM jsonb_to_recordset((SELECT j -> 'r' FROM b)) AS r(
        tid text, epoch bigint, owner text, state text, attempts integer, header jsonb,
        release boolean)
), r_up AS (
    UPDATE {s}.transactions AS t SET
        state = coalesce(r.state, t.state),
        recovery_attempts = coalesce(r.attempts, t.recovery_attempts),
        header = coalesce(r.header, t.header),
        lease_expires_at = CASE
            WHEN r.release OR r.state NOT IN ('pending', 'active', 'compensating')
            THEN '-infinity'::timestamptz ELSE t.lease_expires_at END
    FROM r_in AS r
    WHERE t.transaction_id = r.tid AND t.lease_epoch = r.epoch AND t.lease_owner = r.owner
      -- Redundant, for the planner: whatever the table's size, find the rows through
      -- the primary key (a generic plan guesses 100 rows for r_in, and would rather
      -- hash-join a sequential scan of a table of a few thousand rows).
      AND t.transaction_id = ANY (ARRAY(SELECT r2.tid FROM r_in AS r2))
    RETURNING t.transaction_id
), k_in AS (
    SELECT * FROM jsonb_to_recordset((SELECT j -> 'k' FROM b)) AS k(
        tid text, epoch bigint, owner text)
), k_ok AS (
    -- Records whose header is the one committed already: the same fence as r_up, under
    -- a share lock instead of a new row version. The lock conflicts with every write
    -- that could take the lease away (a claim skips the row, an UPDATE or a DELETE
    -- waits for this batch's commit); one that committed first fails the check here.
    SELECT t.transaction_id FROM {s}.transactions AS t JOIN k_in AS k ON t.transaction_id = k.tid
    WHERE t.lease_epoch = k.epoch AND t.lease_owner = k.owner
      AND t.transaction_id = ANY (ARRAY(SELECT k2.tid FROM k_in AS k2))
    FOR SHARE OF t
), r_ok AS (
    SELECT transaction_id FROM r_up UNION ALL SELECT transaction_id FROM k_ok
), rs_in AS (
    SELECT * FROM jsonb_to_recordset((SELECT j -> 'rs' FROM b)) AS v(
        tid text, step_id text, position integer, agent_id text, doc jsonb)
), rs_up AS (
    -- Steps appended since the acquire: inserted, or rewritten if written already.
    INSERT INTO {s}.steps (transaction_id, step_id, position, agent_id, doc)
    SELECT v.tid, v.step_id, v.position, v.agent_id, v.doc
    FROM rs_in AS v JOIN r_ok ON r_ok.transaction_id = v.tid
    ON CONFLICT (transaction_id, step_id) DO UPDATE SET doc = EXCLUDED.doc
), ru_in AS (
    SELECT * FROM jsonb_to_recordset((SELECT j -> 'ru' FROM b)) AS v(
        tid text, step_id text, doc jsonb)
), ru_up AS (
    -- Steps the store wrote under this lease already: a plain update of the known row
    -- (an upsert would also lock it first, one more WAL record a row), found by its
    -- primary key from each fenced transaction. (No "= ANY" of every id here, as in
    -- r_up: it would become part of each of these probes, one index descent per id.)
    UPDATE {s}.steps AS x SET doc = v.doc
    FROM ru_in AS v JOIN r_ok ON r_ok.transaction_id = v.tid
    WHERE x.transaction_id = v.tid AND x.step_id = v.step_id
)
"""

_BATCH_SYNC = """
SELECT 'c', set_config('synchronous_commit', %(sync)s, true), NULL::bigint, NULL::timestamptz
"""
_BATCH_ACQUIRED = """
SELECT 'a', transaction_id, lease_epoch, nullif(lease_expires_at, '-infinity') FROM a_up
UNION ALL
"""
_BATCH_RECORDED = """
SELECT 'r', transaction_id, NULL::bigint, NULL::timestamptz FROM r_ok
UNION ALL
"""


def _batch(acquire: bool, record: bool) -> str:
    return (
        _BATCH_HEAD
        + (_BATCH_ACQUIRE if acquire else "")
        + (_BATCH_RECORD if record else "")
        + (_BATCH_ACQUIRED if acquire else "")
        + (_BATCH_RECORDED if record else "")
        + _BATCH_SYNC
    )


# A released lease (expiry minus infinity) keeps its owner, for fencing, but is not
# renewed; an expired one is, until another owner takes it.
_RENEW = """
UPDATE {s}.transactions
SET lease_expires_at = now() + %(ttl)s * interval '1 second'
WHERE lease_owner = %(owner)s AND state IN ('active', 'compensating')
  AND lease_expires_at > '-infinity' AND header->>'blocked_reason' IS NULL
"""


def _claiming(where: str, count_attempt: bool) -> str:
    """A statement taking the lease of the rows ``where`` picks (one attempt more of
    recovery each, if ``count_attempt``), returning them as the reading queries do,
    then owner, epoch and expiry of the new lease."""
    attempts = ", recovery_attempts = t.recovery_attempts + 1" if count_attempt else ""
    return (
        """
WITH t AS (
    UPDATE {s}.transactions AS t SET
        lease_owner = %(owner)s,
        lease_expires_at = now() + %(ttl)s * interval '1 second',
        lease_epoch = t.lease_epoch + 1"""
        + attempts
        + " WHERE "
        + where
        + """
    RETURNING t.*
)
SELECT """
        + _TX_COLUMNS
        + """, t.lease_owner, t.lease_epoch, t.lease_expires_at
FROM t """
        + _STEPS_OF_T
    )


# The lease columns are set in the same statement that picks the rows, so two
# claimers can never both take one transaction: SKIP LOCKED makes each pass over
# rows another claimer (or a live writer) has locked.
_CLAIM = _claiming(
    """t.transaction_id IN (
        SELECT c.transaction_id FROM {s}.transactions AS c
        WHERE c.state IN ('active', 'compensating') AND c.lease_expires_at <= now()
        ORDER BY c.lease_expires_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )""",
    count_attempt=True,
)

# One transaction, for an operator action. A concurrent claimer of the same row waits
# for the first one's lock, then finds the lease live and takes nothing.
_CLAIM_ONE = _claiming(
    """t.transaction_id = %(tid)s AND t.state = ANY (%(expected)s::text[])
      AND t.lease_expires_at <= now()""",
    count_attempt=False,
)

# A worker's next incarnation hands its previous one's leases to recovery. The owner
# stays (writes are fenced by owner and epoch; the next claim raises the epoch).
_RELEASE_ALL = """
WITH r AS (
    UPDATE {s}.transactions SET lease_expires_at = '-infinity'
    WHERE lease_owner = %(owner)s AND state IN ('active', 'compensating')
      AND lease_expires_at > '-infinity'
    RETURNING 1
)
SELECT count(*) FROM r
"""

_LEASES = """
SELECT transaction_id, lease_owner, nullif(lease_expires_at, '-infinity'), lease_epoch,
       lease_expires_at > now()
FROM {s}.transactions WHERE transaction_id = ANY (%(ids)s::text[])
"""

_LEASE_SUMMARY = """
SELECT count(*) FILTER (WHERE lease_expires_at > now()
                          AND lease_owner IS DISTINCT FROM %(exclude)s::text),
       min(lease_expires_at) FILTER (WHERE lease_expires_at > now()
                                       AND lease_owner IS DISTINCT FROM %(exclude)s::text),
       count(*) FILTER (WHERE lease_expires_at <= now()),
       count(*) FILTER (WHERE header->>'blocked_reason' IS NOT NULL)
FROM {s}.transactions WHERE state IN ('active', 'compensating')
"""

_LOAD = (
    "SELECT "
    + _TX_COLUMNS
    + " FROM {s}.transactions AS t "
    + _STEPS_OF_T
    + """
WHERE t.transaction_id = %s
"""
)

_LEASE_OF = """
SELECT transaction_id, state, lease_owner, nullif(lease_expires_at, '-infinity'),
       lease_expires_at > now()
FROM {s}.transactions WHERE transaction_id = %s
"""

_DELETE = """
WITH d AS (
    DELETE FROM {s}.transactions
    WHERE transaction_id = %(tid)s
      AND NOT (state IN ('active', 'compensating') AND lease_expires_at > now())
    RETURNING 1
)
SELECT (SELECT count(*) FROM d),
       t.state, t.lease_owner, nullif(t.lease_expires_at, '-infinity')
FROM (SELECT 1) AS one
LEFT JOIN {s}.transactions AS t ON t.transaction_id = %(tid)s
"""

_PURGE = """
DELETE FROM {s}.transactions
WHERE state = ANY (%(states)s::text[]) AND created_at < %(older_than)s
"""

_COUNT = "SELECT state, count(*) FROM {s}.transactions GROUP BY state"


@dataclass(frozen=True, slots=True)
class Statements:
    """Every statement of the store, compiled once for one schema."""

    schema: str
    batch_acquire: bytes
    batch_record: bytes
    batch_both: bytes
    renew: bytes
    claim: bytes
    claim_one: bytes
    release_all: bytes
    leases: bytes
    lease_summary: bytes
    load: bytes
    lease_of: bytes
    delete: bytes
    purge: bytes
    count: bytes
    drop_schema: bytes

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        return cls(
            schema=schema,
            batch_acquire=_q(_batch(acquire=True, record=False), schema),
            batch_record=_q(_batch(acquire=False, record=True), schema),
            batch_both=_q(_batch(acquire=True, record=True), schema),
            renew=_q(_RENEW, schema),
            claim=_q(_CLAIM, schema),
            claim_one=_q(_CLAIM_ONE, schema),
            release_all=_q(_RELEASE_ALL, schema),
            leases=_q(_LEASES, schema),
            lease_summary=_q(_LEASE_SUMMARY, schema),
            load=_q(_LOAD, schema),
            lease_of=_q(_LEASE_OF, schema),
            delete=_q(_DELETE, schema),
            purge=_q(_PURGE, schema),
            count=_q(_COUNT, schema),
            drop_schema=_q("DROP SCHEMA IF EXISTS {s} CASCADE", schema),
        )

    def listing(
        self,
        *,
        state: bool,
        agent: bool,
        since: bool,
        until: bool,
        action: bool = False,
        before: bool = False,
    ) -> bytes:
        """The ``list()`` query with only the filters given (so indexes apply)."""
        where = []
        if state:
            where.append("t.state = %(state)s")
        if since:
            where.append("t.created_at >= %(since)s")
        if until:
            where.append("t.created_at < %(until)s")
        if agent:
            where.append(
                "EXISTS (SELECT 1 FROM {s}.steps AS g "
                "WHERE g.transaction_id = t.transaction_id AND g.agent_id = %(agent)s)"
            )
        if action:
            where.append(
                "EXISTS (SELECT 1 FROM {s}.steps AS g "
                "WHERE g.transaction_id = t.transaction_id AND g.doc->>'action' = %(action)s)"
            )
        if before:
            # The first condition alone is what the created_at index can seek on.
            where.append(
                "t.created_at <= %(before_at)s "
                "AND (t.created_at, t.transaction_id) < (%(before_at)s, %(before_id)s::text)"
            )
        text = (
            "SELECT "
            + _TX_COLUMNS
            + " FROM {s}.transactions AS t "
            + _STEPS_OF_T
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY t.created_at DESC, t.transaction_id DESC LIMIT %(limit)s"
        )
        return _q(text, self.schema)


def _corrupt(transaction_id: object, what: str) -> CorruptRecordError:
    return CorruptRecordError(
        f"Stored transaction {transaction_id!r} is corrupt ({what}); it was rejected "
        "before anything ran. Inspect or delete the row."
    )


def decode_transaction(row: Sequence[Any]) -> Transaction:
    """Rebuild a Transaction from the first 8 columns of a reading query.

    Everything is validated (state, header, every step, step order and ids) so that
    a tampered or truncated row raises ``CorruptRecordError`` instead of reaching a
    handler. Only JSON is ever parsed: nothing stored can execute code on load.
    """
    tid, state, created_at, attempts, header_text, positions, step_ids, docs = row[:8]
    try:
        state_value = TransactionState(state)
    except ValueError:
        raise _corrupt(tid, f"unknown state {state!r}") from None
    try:
        header = json.loads(header_text)
    except (TypeError, ValueError):
        raise _corrupt(tid, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(tid, "its header is not a JSON object")
    positions = positions or []
    step_ids = step_ids or []
    docs = docs or []
    steps: list[TransactionStep] = []
    for index, (position, step_id, doc) in enumerate(zip(positions, step_ids, docs, strict=True)):
        if position != index:
            raise _corrupt(tid, f"step rows are missing or out of order at position {index}")
        try:
            step = TransactionStep.model_validate_json(doc)
        except ValidationError as exc:
            raise _corrupt(tid, f"step {step_id!r} does not validate: {exc}") from None
        if step.step_id != step_id:
            raise _corrupt(tid, f"step row {step_id!r} holds step {step.step_id!r}")
        steps.append(step)
    for key in HEADER_EXCLUDE:
        header.pop(key, None)
    if isinstance(created_at, datetime):
        created_at = created_at.astimezone(UTC)
    header.update(
        transaction_id=tid,
        state=state_value,
        created_at=created_at,
        recovery_attempts=attempts,
    )
    try:
        tx = Transaction.model_validate(header)
    except ValidationError as exc:
        raise _corrupt(tid, f"its header does not validate: {exc}") from None
    tx.steps = steps
    return tx
