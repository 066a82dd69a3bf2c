"""PostgresStore: one journal shared by many workers on many machines.

``PostgresStore("postgresql://user@host/db")`` (or ``open_store`` with that URL) keeps
the journal in its own schema (default ``aumai_transactions``), which it creates and
migrates itself under an advisory lock, so any number of workers may start at once.
It needs the ``postgres`` extra: ``pip install -e ".[postgres]"`` from a checkout.

How it keeps the Store contract across processes:

* Leases live in the rows: owner, expiry and epoch (the fencing token). Every write
  is an ``UPDATE ... WHERE lease_epoch = %s AND lease_owner = %s`` (a record that
  changes no header field checks the same under a ``FOR SHARE`` row lock, see
  ``_headers``), so a driver that lost its lease (it was paused,
  partitioned, or presumed dead) can no longer write, and the store raises
  ``LeaseLostError``. Expiries compare against the database's
  ``now()``, so clock skew between machines does not matter.
* ``claim_expired`` picks rows ``FOR UPDATE SKIP LOCKED`` and sets owner, expiry,
  epoch + 1 and recovery_attempts + 1 in the same statement: recovery workers divide
  the abandoned transactions between them without ever taking the same one.
* Group commit: the writes of all transactions a process runs at once travel in one
  statement per round trip (see ``_postgres_writer``), one commit for all of them.
  Only durable writes wait for the WAL flush; an acquire, a release or a renewal
  alone commits without waiting (the next durable write flushes it).
* A record that moves a transaction to a terminal state ends its lease in the same
  statement, so the engine's ``release`` right after it costs nothing.
* Step data and results are stored as JSONB and validated on load; a row that does
  not validate raises ``CorruptRecordError``. Nothing is ever unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import psycopg
    import psycopg.conninfo
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "PostgresStore needs psycopg 3 and psycopg_pool, which are not installed: "
        'install the postgres extra: pip install -e ".[postgres]" in the checkout of '
        "aumai-transactions"
    ) from exc

import anyio

from ..errors import (
    CorruptRecordError,
    LeaseConflictError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
)
from ..models import (
    TERMINAL_STATES,
    LeaseInfo,
    LeaseSummary,
    Transaction,
    TransactionState,
    TransactionStep,
)
from ._base import Lease, ListPosition, RecordThroughNowait, driven_elsewhere
from ._headers import SentHeaders, raw_header
from ._positions import StepPositions
from ._postgres_sql import Statements, decode_transaction, migrate, validate_schema_name
from ._postgres_writer import Op, Writer, header_json

__all__ = ["PostgresStore"]

logger = logging.getLogger("aumai_transactions.stores.postgres")

_URL_OPTIONS = {"schema": str, "min_size": int, "max_size": int}


def _mask(conninfo: str) -> str:
    """``conninfo`` with any password replaced by ``***``."""
    if "://" in conninfo:
        parts = urlsplit(conninfo)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hostinfo = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hostinfo}"
        query = [
            (key, "***" if key == "password" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "<unparsable conninfo>"
    if "password" in params:
        params["password"] = "***"  # noqa: S105 - the mask, not a password
    return psycopg.conninfo.make_conninfo("", **params)


class PostgresStore(RecordThroughNowait):
    """A durable Store in a PostgreSQL schema, safe for many processes at once.

    ``conninfo`` is a libpq URL or ``key=value`` string. ``schema`` names the schema
    holding the journal (a lower-case identifier). ``min_size``/``max_size`` size the
    connection pool of this process; ``connect_timeout`` bounds each connection
    attempt, in seconds. ``drop_schema_on_close`` drops the whole schema when the
    store closes (for tests). Nothing connects before ``open()``.
    """

    acquire_carries_intent = True  # see Store.acquire

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "aumai_transactions",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        drop_schema_on_close: bool = False,
        application_name: str = "aumai-transactions",
    ) -> None:
        if not isinstance(conninfo, str):
            raise TypeError(f"conninfo must be a string, not {type(conninfo).__name__}.")
        try:
            params = psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise ValueError(
                f"Invalid PostgreSQL connection string {_mask(conninfo)!r}: {exc}"
            ) from None
        self._schema = validate_schema_name(schema)
        if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
            raise ValueError(f"min_size must be an integer >= 1, not {min_size!r}.")
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < min_size:
            raise ValueError(
                f"max_size must be an integer >= min_size ({min_size}), not {max_size!r}."
            )
        if not isinstance(connect_timeout, int | float) or not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be a positive number, not {connect_timeout!r}.")
        self._conninfo = conninfo
        self._password = str(params.get("password") or "")
        self._url = _mask(conninfo)
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = float(connect_timeout)
        self._drop_schema_on_close = drop_schema_on_close
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = max(1, round(self._connect_timeout))
        if "application_name" not in params:
            kwargs["application_name"] = application_name
        self._connect_kwargs = kwargs
        self._statements = Statements.for_schema(self._schema)
        self._listings: dict[tuple[bool, ...], bytes] = {}
        self._pool: AsyncConnectionPool[Any] | None = None
        self._writer: Writer | None = None
        self._opening: anyio.Event | None = None
        self._open_error: BaseException | None = None
        # The steps written under each lease this store holds (see ``StepPositions``).
        self._positions = StepPositions()
        # The header each lease's last write sent, so a record that changes none of it
        # sends none (see ``SentHeaders``).
        self._headers = SentHeaders()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        """Build a store from ``postgresql://...``; ``?schema=``, ``?min_size=`` and
        ``?max_size=`` in the query are taken as options (keyword options win)."""
        parts = urlsplit(url)
        kept: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            convert = _URL_OPTIONS.get(key)
            if convert is None:
                kept.append((key, value))
                continue
            try:
                options.setdefault(key, convert(value))
            except ValueError:
                raise ValueError(
                    f"Store URL option {key}={value!r} is not a valid {convert.__name__}."
                ) from None
        return cls(urlunsplit(parts._replace(query=urlencode(kept))), **options)

    def __repr__(self) -> str:
        return f"PostgresStore({self._url!r}, schema={self._schema!r})"

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The connection URL with its password masked."""
        return self._url

    @property
    def schema(self) -> str:
        """The schema holding the journal."""
        return self._schema

    @property
    def durable(self) -> bool:
        return True

    @property
    def stats(self) -> dict[str, int]:
        """Diagnostics: batches written, how many waited for a WAL flush, ops in them."""
        writer = self._writer
        if writer is None:
            return {"batches": 0, "durable_batches": 0, "ops": 0}
        return {
            "batches": writer.batches,
            "durable_batches": writer.durable_batches,
            "ops": writer.ops_written,
        }

    def _translate(self, exc: BaseException, doing: str) -> StoreError:
        """A StoreError for ``exc``; an unreachable server is StoreUnavailableError."""
        if isinstance(exc, StoreError):
            return exc
        message = str(exc).strip() or type(exc).__name__
        if self._password:
            message = message.replace(self._password, "***")
        error: StoreError
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
            error = StoreUnavailableError(
                f"PostgreSQL store {self._url} is unavailable (could not {doing} it): {message}"
            )
        else:
            error = StoreError(
                f"PostgreSQL store {self._url} (schema {self._schema}): could not {doing} it: "
                f"{type(exc).__name__}: {message}"
            )
        error.__cause__ = exc
        return error

    async def open(self) -> None:
        """Connect, create or migrate the schema, open the pool. Idempotent."""
        while self._pool is None:
            opening = self._opening
            if opening is not None:  # another task is opening: share its outcome
                await opening.wait()
                if self._pool is None and self._open_error is not None:
                    raise self._open_error
                continue
            self._opening = anyio.Event()
            self._open_error = None
            try:
                await self._open()
            except BaseException as exc:
                self._open_error = exc
                raise
            finally:
                self._opening.set()
                self._opening = None

    async def _open(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._connect_kwargs)
        except Exception as exc:
            raise self._translate(exc, "connect to") from exc
        try:
            async with conn:
                await migrate(conn, self._schema)
        except SchemaVersionError:
            raise
        except Exception as exc:
            raise self._translate(exc, "create or migrate the schema of") from exc
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._conninfo,
            kwargs=self._connect_kwargs,
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            name=f"aumai_transactions.{self._schema}",
            timeout=self._connect_timeout,
            configure=_configure,
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except Exception as exc:
            await pool.close()
            raise self._translate(exc, "open a connection pool to") from exc
        self._writer = Writer(self._statements, pool.connection, self._translate)
        self._pool = pool

    async def close(self) -> None:
        """Write everything queued, drop the schema if asked, close the pool. Idempotent."""
        pool, writer = self._pool, self._writer
        if pool is None or writer is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await writer.drain()
                if self._drop_schema_on_close:
                    async with pool.connection() as conn:
                        await conn.execute(self._statements.drop_schema)
            except Exception as exc:
                raise self._translate(exc, "close") from exc
            finally:
                self._pool = None
                self._writer = None
                await pool.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _open_writer(self) -> Writer:
        writer = self._writer
        if writer is None:
            raise StoreError(
                f"PostgreSQL store {self._url} is not open: use `async with store:` "
                "or `await store.open()` first."
            )
        return writer

    def _open_pool(self) -> AsyncConnectionPool[Any]:
        self._open_writer()
        assert self._pool is not None
        return self._pool

    async def _fetch(self, query: bytes, params: Any, doing: str) -> list[tuple[Any, ...]]:
        """Run one reading statement (after this process's queued writes land)."""
        pool = self._open_pool()
        writer = self._open_writer()
        await writer.drain()
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchall() if cur.description is not None else []
        except Exception as exc:
            raise self._translate(exc, doing) from exc

    # ------------------------------------------------------------------ writes

    async def save(
        self, tx: Transaction, *, expected: Iterable[TransactionState] | None = None
    ) -> None:
        if not isinstance(tx, Transaction):
            raise TypeError(f"save needs a Transaction, not {type(tx).__name__}.")
        wanted = None if expected is None else tuple(TransactionState(s) for s in expected)
        # A save may rewrite the header under a lease this store noted: the next record
        # of that lease must send its own again.
        self._headers.forget(tx.transaction_id)
        saved = await self._open_writer().submit(Op.whole(tx, expected=wanted or ()))
        if not saved:
            rows = await self._fetch(self._statements.lease_of, (tx.transaction_id,), "read")
            owner = rows[0][2] if rows else None
            state = rows[0][1] if rows else "?"
            if wanted and state not in {s.value for s in wanted}:
                raise LeaseConflictError(
                    f"Transaction {tx.transaction_id} is stored in state '{state}'; expected "
                    + " or ".join(f"'{s.value}'" for s in wanted)
                    + "."
                )
            raise LeaseConflictError(
                f"Transaction {tx.transaction_id} is {state} under a live lease held by "
                f"{owner}; it cannot be replaced."
            )

    async def acquire(
        self,
        tx: Transaction,
        owner: str,
        ttl: float,
        expected: Iterable[TransactionState],
    ) -> Lease:
        expected = tuple(expected)
        op = Op.whole(tx, owner=owner, ttl=ttl, expected=expected)
        raw = raw_header(tx)  # what the op holds: the caller may change tx meanwhile
        lease: Lease | None = await self._open_writer().submit(op)
        tid = tx.transaction_id
        if lease is not None:
            self._positions.written(tid, lease.epoch, (row[0] for row in op.steps))
            assert op.state is not None
            self._headers.committed(tid, lease.epoch, raw, op.state)
            return lease
        rows = await self._fetch(self._statements.lease_of, (tid,), "read")
        if rows and rows[0][4]:
            raise LeaseConflictError(driven_elsewhere(tid, rows[0][2], rows[0][3]))
        state = rows[0][1] if rows else "absent"
        raise LeaseConflictError(
            f"Transaction {tid} is stored in state '{state}'; expected "
            + " or ".join(f"'{TransactionState(s).value}'" for s in expected)
            + "."
        )

    def record_nowait(
        self,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None = None,
        *,
        durable: bool = True,
        previous: TransactionStep | None = None,
    ) -> Coroutine[Any, Any, object] | None:
        writer = self._open_writer()
        if lease.transaction_id != tx.transaction_id:
            raise ValueError(
                f"Lease of transaction {lease.transaction_id} cannot record transaction "
                f"{tx.transaction_id}."
            )
        tid, epoch = tx.transaction_id, lease.epoch
        writer.check_poisoned(tid, epoch)
        carried: tuple[TransactionStep, int] | None = None
        if previous is not None:
            position = self._positions.position(tid, epoch, previous.step_id)
            if position is None:  # appended since the acquire: a record of its own first
                self.record_nowait(lease, tx, previous, durable=False)
            else:
                carried = (previous, position)
        headers = self._headers
        raw = raw_header(tx)
        state = headers.unchanged(tid, epoch, raw)
        header: str | None = None
        token: object | None = None
        if state is None:
            state = tx.state.value
            header = header_json(tx)
            token = headers.sending(tid, epoch, raw, state, durable)
        op = Op.record(lease, tx, step, durable, self._positions, state, header, carried)
        op.sent = token
        writer.enqueue(op)
        return writer.wait(op) if durable else None

    async def renew(self, owner: str, ttl: float) -> int:
        result: int = await self._open_writer().submit(
            Op(kind="renew", tid="", owner=owner, ttl=float(ttl), durable=False)
        )
        return result

    async def release(self, lease: Lease) -> None:
        writer = self._open_writer()
        key = (lease.transaction_id, lease.epoch)
        self._positions.forget(*key)
        self._headers.forget(*key)
        if key in writer.released:  # the terminal record ended the lease already
            writer.released.discard(key)
            return
        # Rides with any batch in flight; alone, it commits without a WAL flush wait.
        await writer.submit(
            Op(
                kind="release",
                tid=lease.transaction_id,
                epoch=lease.epoch,
                owner=lease.owner,
                durable=False,
            )
        )

    # ------------------------------------------------------------------ recovery

    async def claim_expired(
        self, owner: str, ttl: float, limit: int
    ) -> Sequence[tuple[Transaction, Lease]]:
        if limit <= 0:
            return []
        rows = await self._fetch(
            self._statements.claim,
            {"owner": owner, "ttl": float(ttl), "limit": limit},
            "claim transactions in",
        )
        claimed: list[tuple[Transaction, Lease]] = []
        for row in rows:
            try:
                claimed.append(self._claimed(row))
            except CorruptRecordError as exc:
                # Never driven, never rewritten: the claim's lease keeps other
                # recoverers off it until it expires, so the loop does not spin on it.
                logger.error("recovery skipped a corrupt transaction: %s", exc)
        return claimed

    def _claimed(self, row: Sequence[Any]) -> tuple[Transaction, Lease]:
        """The transaction and new lease of a row returned by a claiming statement."""
        tx = decode_transaction(row)
        lease_owner, epoch, expires = row[8], row[9], row[10]
        tid = tx.transaction_id
        lease = Lease(tid, lease_owner, epoch, expires.astimezone(UTC))
        self._positions.written(tid, epoch, (s.step_id for s in tx.steps))
        self._headers.committed(tid, epoch, raw_header(tx), tx.state.value)
        return tx, lease

    async def claim(
        self,
        transaction_id: str,
        owner: str,
        ttl: float,
        expected: Iterable[TransactionState],
    ) -> tuple[Transaction, Lease] | None:
        states = sorted(TransactionState(s).value for s in expected)
        rows = await self._fetch(
            self._statements.claim_one,
            {"tid": transaction_id, "owner": owner, "ttl": float(ttl), "expected": states},
            "claim a transaction in",
        )
        if rows:
            # A corrupt row raises here; the lease just taken lapses by itself.
            return self._claimed(rows[0])
        rows = await self._fetch(self._statements.lease_of, (transaction_id,), "read")
        if not rows:
            return None
        _, state, holder, expires, live = rows[0]
        if live:
            raise LeaseConflictError(
                f"Transaction {transaction_id} is held by {holder} under a lease that "
                f"expires at {expires}; it cannot be taken before then."
            )
        raise LeaseConflictError(
            f"Transaction {transaction_id} is stored in state '{state}'; expected "
            + " or ".join(f"'{s}'" for s in states)
            + "."
        )

    async def release_all(self, owner: str) -> int:
        rows = await self._fetch(
            self._statements.release_all, {"owner": owner}, "release leases in"
        )
        return int(rows[0][0])

    # ------------------------------------------------------------------ reads

    async def load(self, transaction_id: str) -> Transaction | None:
        rows = await self._fetch(self._statements.load, (transaction_id,), "read")
        return decode_transaction(rows[0]) if rows else None

    async def list(
        self,
        *,
        state: TransactionState | None = None,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        action: str | None = None,
        before: ListPosition | None = None,
    ) -> list[Transaction]:
        key = (
            state is not None,
            agent_id is not None,
            since is not None,
            until is not None,
            action is not None,
            before is not None,
        )
        query = self._listings.get(key)
        if query is None:
            query = self._listings[key] = self._statements.listing(
                state=key[0], agent=key[1], since=key[2], until=key[3], action=key[4], before=key[5]
            )
        params = {
            "state": None if state is None else TransactionState(state).value,
            "agent": agent_id,
            "since": _utc(since),
            "until": _utc(until),
            "limit": limit,
            "action": action,
            "before_at": None if before is None else _utc(before.created_at),
            "before_id": None if before is None else before.transaction_id,
        }
        rows = await self._fetch(query, params, "list transactions in")
        return [decode_transaction(row) for row in rows]

    async def leases(self, transaction_ids: Iterable[str]) -> dict[str, LeaseInfo]:
        wanted = list(dict.fromkeys(transaction_ids))
        if not wanted:
            return {}
        rows = await self._fetch(self._statements.leases, {"ids": wanted}, "read leases in")
        found: dict[str, LeaseInfo] = {}
        for tid, owner, expires, epoch, live in rows:
            held = expires is not None
            found[tid] = LeaseInfo(
                transaction_id=tid,
                owner=owner if held else None,  # a released lease keeps its owner here
                expires_at=expires.astimezone(UTC) if held else None,
                epoch=epoch,
                live=bool(live),
            )
        return found

    async def lease_summary(self, *, exclude_owner: str | None = None) -> LeaseSummary:
        rows = await self._fetch(
            self._statements.lease_summary, {"exclude": exclude_owner}, "read leases in"
        )
        waiting, first, claimable, blocked = rows[0]
        return LeaseSummary(
            waiting=int(waiting),
            first_expiry=None if first is None else first.astimezone(UTC),
            claimable=int(claimable),
            blocked=int(blocked),
        )

    async def count_by_state(self) -> dict[TransactionState, int]:
        rows = await self._fetch(self._statements.count, None, "count transactions in")
        counts: dict[TransactionState, int] = {}
        for state, count in rows:
            try:
                counts[TransactionState(state)] = int(count)
            except ValueError:
                raise CorruptRecordError(
                    f"{count} stored transaction(s) have the unknown state {state!r}."
                ) from None
        return counts

    async def delete(self, transaction_id: str) -> bool:
        rows = await self._fetch(self._statements.delete, {"tid": transaction_id}, "delete from")
        deleted, state, owner, expires = rows[0]
        if deleted:
            return True
        if state is None:
            return False
        raise LeaseConflictError(
            f"Transaction {transaction_id} is {state} under a live lease held by {owner} "
            f"(until {expires}); it cannot be deleted."
        )

    async def purge(self, *, states: Iterable[TransactionState], older_than: datetime) -> int:
        wanted = sorted(s.value for s in frozenset(states) & TERMINAL_STATES)
        if not wanted:
            return 0
        pool = self._open_pool()
        await self._open_writer().drain()
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(
                    self._statements.purge, {"states": wanted, "older_than": _utc(older_than)}
                )
                return int(cur.rowcount)
        except Exception as exc:
            raise self._translate(exc, "purge") from exc


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Session settings of every pooled connection.

    The statements are prepared (psycopg does it after a few runs) and bind arrays
    whose sizes change with every batch; PostgreSQL's default would re-plan the
    batch statement at each execution, which costs more than running it.
    """
    await conn.execute("SET plan_cache_mode = force_generic_plan")


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
