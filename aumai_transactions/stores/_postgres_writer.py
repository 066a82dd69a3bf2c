"""Group commit for the PostgreSQL store: many writers, one round trip per batch.

Every write of the store (acquire, save, record, release, renew) becomes an *op* in
one queue. Whoever awaits an op while nobody leads becomes the *leader*: it takes the
ops queued so far, sends them as one statement (one implicit transaction, so one
commit and at most one WAL flush for all of them) and wakes their waiters; an op that
arrived meanwhile rides with the next batch, whose leader is the waiter of the first
op still queued, woken for that. Each waiter sleeps on a future of its own and wakes
once its op is written (or to lead): with hundreds of writers in flight, nobody is
woken only to find their op still queued. No background task is needed, so the store
has no task group to keep alive between ``open()`` and ``close()``, and a batch is
never idle while someone waits.

Two things are separate: whether the caller *waits* for its op, and whether the batch
waits for the WAL flush. A non-durable record is queued and not awaited; it reaches
the database with the next batch, in queue order, before any later write of the same
driver. Acquires, releases and renewals are awaited (other processes see them when
the call returns) but need no flush of their own; a batch waits for the flush only
when it carries a durable write (see the batch statement in ``_postgres_sql``).

The leader writes its batch inside a shielded cancel scope: a batch carries other
tasks' writes, so cancelling one waiter must not abort it.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import psycopg
from pydantic_core import PydanticSerializationError

from ..errors import LeaseLostError, StoreError
from ..models import (
    TERMINAL_STATES,
    StepStatus,
    Transaction,
    TransactionState,
    TransactionStep,
)
from ._base import Lease
from ._codec import step_json
from ._headers import confirm
from ._positions import StepPositions
from ._postgres_sql import HEADER_EXCLUDE, Statements

__all__ = ["Op", "Writer"]

OpKind = Literal["acquire", "save", "record", "release", "renew"]

# Errors after which PostgreSQL rolled the whole statement back: safe to resend.
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
_MAX_RETRIES = 5
# States after which a lease has nothing left to drive (see the record statement).
_ENDED = frozenset(s.value for s in TERMINAL_STATES)
_MAX_REMEMBERED = 100_000
_RUNNING = StepStatus.RUNNING
# A batch this large already shares one flush between hundreds of writers; bigger ones
# only make one statement longer to build, send and parse.
MAX_BATCH = 1024


@functools.lru_cache(maxsize=16384)
def _dumps(value: str) -> str:
    """``value`` as a JSON string; plain ids and names skip the encoder (hot path).

    Cached: a batch names each transaction, owner and step several times (a
    transaction's id goes into about eight writes), and a cache hit costs a quarter of
    the checks.
    """
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def step_rows(tx: Transaction) -> list[tuple[str, int, str, str]]:
    """``(step_id, position, agent_id, json)`` for every step of ``tx``.

    Raises ``ValueError`` when two steps share an id (they would share a row).
    """
    rows = [
        (step.step_id, position, step.agent_id, step_json(step, tx.transaction_id))
        for position, step in enumerate(tx.steps)
    ]
    if len({row[0] for row in rows}) != len(rows):
        raise ValueError(
            f"Transaction {tx.transaction_id} has two steps with the same step_id; "
            "step ids must be unique within a transaction."
        )
    return rows


_HEADER_EXCLUDE = set(HEADER_EXCLUDE)


def header_json(tx: Transaction) -> str:
    """The header fields that have no column of their own, as JSON."""
    try:
        return tx.model_dump_json(exclude=_HEADER_EXCLUDE)
    except PydanticSerializationError as exc:
        raise TypeError(f"Transaction {tx.transaction_id} cannot be stored as JSON: {exc}") from exc


@dataclass(eq=False, slots=True)
class Op:
    """One queued write. Serialized when queued: the caller may change ``tx`` after."""

    kind: OpKind
    tid: str
    epoch: int = 0
    durable: bool = True
    state: str | None = None
    attempts: int | None = None
    header: str | None = None
    created_at: datetime | None = None
    steps: list[tuple[str, int, str, str]] = field(default_factory=list)
    owner: str | None = None
    ttl: float = 0.0
    expected: str = ""
    taken: bool = False
    done: bool = False
    appends: bool = False  # a record inserting steps appended since the acquire
    error: BaseException | None = None
    result: Any = None
    waiters: list[asyncio.Future[None]] | None = None  # the tasks waiting for it
    sent: object | None = None  # a durable record's header token, confirmed once written

    @classmethod
    def whole(
        cls,
        tx: Transaction,
        *,
        owner: str | None = None,
        ttl: float = 0.0,
        expected: Iterable[TransactionState] = (),
    ) -> Op:
        """An acquire (``owner`` given) or a save: the header and every step."""
        return cls(
            kind="save" if owner is None else "acquire",
            tid=tx.transaction_id,
            # An acquire need not wait for the WAL flush (see the batch statement),
            # unless it carries a step's intent (a step running: see Store.acquire).
            durable=owner is None or any(s.status is _RUNNING for s in tx.steps),
            state=tx.state.value,
            attempts=tx.recovery_attempts,
            header=header_json(tx),
            created_at=_aware(tx.created_at),
            steps=step_rows(tx),
            owner=owner,
            ttl=float(ttl),
            expected=",".join(TransactionState(s).value for s in expected),
        )

    @classmethod
    def record(
        cls,
        lease: Lease,
        tx: Transaction,
        step: TransactionStep | None,
        durable: bool,
        positions: StepPositions,
        state: str,
        header: str | None,
        previous: tuple[TransactionStep, int] | None = None,
    ) -> Op:
        """A fenced write of the header of ``tx`` and, if given, the row of ``step``.

        ``state`` is the stored state of ``tx``; ``header`` its header JSON, or None
        when the header is the one committed under this lease already (the write then
        only checks the lease). A step appended since the acquire comes with every
        other step the store has not written under this lease yet (see
        ``StepPositions``), so that the stored positions never have a gap.
        ``previous``: another step, with its known position, whose row goes first.
        """
        rows = []
        appends = False
        if previous is not None:
            done, index = previous
            rows.append((done.step_id, index, done.agent_id, step_json(done, tx.transaction_id)))
        if step is not None:
            tid, epoch = tx.transaction_id, lease.epoch
            position = positions.position(tid, epoch, step.step_id)
            if position is not None:
                rows.append((step.step_id, position, step.agent_id, step_json(step, tid)))
            else:
                appends = True
                rows.extend(
                    (s.step_id, index, s.agent_id, step_json(s, tid))
                    for index, s in positions.unwritten(tx, step, epoch)
                )
        return cls(
            kind="record",
            tid=tx.transaction_id,
            epoch=lease.epoch,
            owner=lease.owner,
            durable=durable,
            state=state,
            attempts=None if header is None else tx.recovery_attempts,
            header=header,
            steps=rows,
            appends=appends,
        )


def _s(value: str | None) -> str:
    return "null" if value is None else _dumps(value)


class _Batch:
    """The one parameter of a batch statement: a JSON document built from ops in order.

    Header and step documents are already JSON (made when the op was queued) and are
    spliced in as they are; only ids and names go through ``json.dumps``.
    """

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        a: list[str] = []
        a_steps: list[str] = []
        # tid -> [epoch, owner, state, attempts, header, release]; a later write of the
        # same lease supersedes the header of an earlier one (a write without a header
        # keeps it: its header is the one committed already).
        records: dict[str, list[Any]] = {}
        # (tid, step_id) -> (its row, whether it may be new: inserted or updated)
        r_steps: dict[tuple[str, str], tuple[str, bool]] = {}
        self.renew: dict[str, float] = {}
        durable = False
        for op in ops:
            kind = op.kind
            if kind == "record":
                row = records.get(op.tid)
                header = op.header
                if row is None:
                    row = records[op.tid] = [
                        op.epoch,
                        op.owner,
                        None if header is None else op.state,
                        op.attempts,
                        header,
                        False,
                    ]
                elif header is not None:
                    row[2], row[3], row[4] = op.state, op.attempts, header
                if op.state in _ENDED:
                    # Ends the lease even when its header (a terminal one) is no news:
                    # a transaction claimed in a terminal state, say.
                    row[5] = True
                tid = _dumps(op.tid)
                for step_id, position, agent_id, doc in op.steps:
                    key = (op.tid, step_id)
                    # A step appended since the acquire is upserted, also when a later
                    # record of this batch rewrites it; any other is a known row.
                    if op.appends or (key in r_steps and r_steps[key][1]):
                        r_steps[key] = (
                            f'{{"tid":{tid},"step_id":{_dumps(step_id)},"position":{position},'
                            f'"agent_id":{_dumps(agent_id)},"doc":{doc}}}',
                            True,
                        )
                    else:
                        r_steps[key] = (
                            f'{{"tid":{tid},"step_id":{_dumps(step_id)},"doc":{doc}}}',
                            False,
                        )
                durable = durable or op.durable
            elif kind == "acquire" or kind == "save":
                tid = _dumps(op.tid)
                assert op.created_at is not None
                a.append(
                    f'{{"tid":{tid},"state":{_s(op.state)},'
                    f'"created_at":"{op.created_at.isoformat()}","attempts":{op.attempts},'
                    f'"header":{op.header},"owner":{_s(op.owner)},"ttl":{op.ttl!r},'
                    f'"expected":{_s(op.expected)}}}'
                )
                for step_id, position, agent_id, doc in op.steps:
                    a_steps.append(
                        f'{{"tid":{tid},"step_id":{_dumps(step_id)},"position":{position},'
                        f'"agent_id":{_dumps(agent_id)},"doc":{doc}}}'
                    )
                durable = durable or op.durable
            elif kind == "release":
                row = records.get(op.tid)
                if row is None:
                    records[op.tid] = [op.epoch, op.owner, None, None, None, True]
                else:
                    row[5] = True
            else:
                assert op.owner is not None
                self.renew[op.owner] = op.ttl
        # Rows that change the transaction (a header, a release) are updated; the others
        # are only checked, under a row lock, that the lease still holds (see "k").
        r: list[str] = []
        k: list[str] = []
        for tid, (epoch, owner, state, attempts, header, release) in records.items():
            if header is None and not release:
                k.append(f'{{"tid":{_dumps(tid)},"epoch":{epoch},"owner":{_s(owner)}}}')
            else:
                r.append(
                    f'{{"tid":{_dumps(tid)},"epoch":{epoch},"owner":{_s(owner)},'
                    f'"state":{_s(state)},"attempts":{"null" if attempts is None else attempts},'
                    f'"header":{"null" if header is None else header},'
                    f'"release":{"true" if release else "false"}}}'
                )
        upserts = [row for row, new in r_steps.values() if new]
        updates = [row for row, new in r_steps.values() if not new]
        self.has_acquire = bool(a)
        self.has_record = bool(records)
        self.params = {
            "batch": (
                f'{{"a":[{",".join(a)}],"s":[{",".join(a_steps)}],"r":[{",".join(r)}],'
                f'"k":[{",".join(k)}],"rs":[{",".join(upserts)}],"ru":[{",".join(updates)}]}}'
            ),
            "sync": "on" if durable else "off",
        }


def _wake_all(op: Op) -> None:
    """Wake every task waiting for ``op`` (it is done)."""
    for waiter in op.waiters or ():
        if not waiter.done():
            waiter.set_result(None)


def take_batch(queue: deque[Op], limit: int = MAX_BATCH) -> list[Op]:
    """Pop the longest prefix of ``queue`` that one statement can write.

    One statement must not touch a row twice, so the batch ends before an op whose
    transaction is already in it under another kind or lease (an acquire after a
    release of the same transaction, say); that op leads the next batch, keeping every
    transaction's writes in queue order.
    """
    batch: list[Op] = []
    # tid -> the (epoch, owner) of its records, or None for an acquire or a save
    seen: dict[str, tuple[int, str | None] | None] = {}
    while queue and len(batch) < limit:
        op = queue[0]
        if op.kind == "acquire" or op.kind == "save":
            if op.tid in seen:
                break
            seen[op.tid] = None
        elif op.kind != "renew":
            lease = (op.epoch, op.owner)
            if seen.get(op.tid, lease) != lease:
                break
            seen[op.tid] = lease
        queue.popleft()
        op.taken = True
        batch.append(op)
    return batch


class Writer:
    """The queue, the leader election and the batch statement of one store.

    Made in the event loop it serves (psycopg's async connections run on asyncio):
    waiters sleep on futures of that loop, made without looking the loop up each time.
    """

    def __init__(
        self,
        statements: Statements,
        connection: Callable[[], Any],
        translate: Callable[[BaseException, str], StoreError],
    ) -> None:
        self._statements = statements
        self._connection = connection
        self._translate = translate
        self._loop = asyncio.get_running_loop()
        self._queue: deque[Op] = deque()
        self._leading = False
        # The batch being written, while one is.
        self._inflight: list[Op] | None = None
        # (transaction_id, epoch) of non-durable writes that failed: the driver's next
        # write raises this error instead of going ahead.
        self.poisoned: dict[tuple[str, int], StoreError] = {}
        # (transaction_id, epoch) of leases a terminal record already ended.
        self.released: set[tuple[str, int]] = set()
        self.batches = 0
        self.durable_batches = 0
        self.ops_written = 0

    def check_poisoned(self, tid: str, epoch: int) -> None:
        """Raise the error a queued non-durable write of this lease met, if any."""
        if self.poisoned:
            error = self.poisoned.pop((tid, epoch), None)
            if error is not None:
                raise error

    def enqueue(self, op: Op) -> None:
        """Queue ``op``; a non-durable op is done as far as its caller is concerned."""
        self._queue.append(op)

    async def submit(self, op: Op) -> Any:
        """Queue ``op`` and return its result once the batch carrying it committed."""
        self._queue.append(op)
        return await self.wait(op)

    async def wait(self, op: Op, *, mine: bool = True) -> Any:
        """Wait until ``op`` is written, leading a batch when nobody else does.

        ``mine``: the caller queued ``op`` (its error is raised, and a cancellation
        withdraws it if still queued); otherwise the caller only waits for it.
        """
        try:
            while not op.done:
                if not self._leading:
                    await self._lead()
                    continue
                waiter = self._loop.create_future()
                waiters = op.waiters
                if waiters is None:
                    op.waiters = [waiter]
                else:
                    waiters.append(waiter)
                await waiter  # resolved once op is written, or to lead the next batch
        except BaseException:
            # A cancelled acquire that is still queued must not take a lease later
            # that nobody would drive; queued records are kept: the ones behind
            # them assume they were written, and a later write supersedes them.
            if mine and not op.taken and op.kind == "acquire":
                try:
                    self._queue.remove(op)
                except ValueError:
                    pass
                else:  # withdrawn: done, for whoever else waits for it (a drain)
                    op.done = True
                    _wake_all(op)
            # This task may have been woken to lead: someone else must, then.
            self._pass_on()
            raise
        if mine and op.error is not None:
            raise op.error
        return op.result

    async def drain(self) -> None:
        """Wait until every op queued so far is written (errors are their owners')."""
        if self._queue:
            await self.wait(self._queue[-1], mine=False)
        elif self._inflight:
            await self.wait(self._inflight[-1], mine=False)

    async def _lead(self) -> None:
        self._leading = True
        batch: list[Op] = []
        try:
            # Yield once before taking the batch: writers that are ready right now join
            # it, and a caller that enters a cancel scope lazily, at its first
            # suspension (as the engine does with a transaction's deadline), sees that
            # suspension outside the shield below, so the scopes still nest.
            await asyncio.sleep(0)
            batch = take_batch(self._queue)
            if batch:
                self._inflight = batch
                with anyio.CancelScope(shield=True):
                    await self._write(batch)
        finally:
            self._inflight = None
            self._leading = False
            for op in batch:  # every op of the batch is done, whatever happened
                _wake_all(op)
            self._pass_on()

    def _pass_on(self) -> None:
        """Wake one waiter of the first op still queued to lead its batch, if nobody
        leads (ops nobody waits for ride with the next batch someone leads)."""
        if self._leading:
            return
        for op in self._queue:
            for waiter in op.waiters or ():
                if not waiter.done():
                    waiter.set_result(None)
                    return

    async def _write(self, ops: list[Op]) -> None:
        batch = _Batch(ops)
        main = [op for op in ops if op.kind != "renew"]
        if batch.has_acquire or batch.has_record:
            await self._guarded(main, self._write_main(batch, main))
        if batch.renew:
            await self._guarded([op for op in ops if op.kind == "renew"], self._write_renew(batch))

    async def _guarded(self, ops: list[Op], work: Coroutine[Any, Any, None]) -> None:
        """Run ``work``; if it fails, fail every op of ``ops`` not yet done with it.

        No op may stay undone whatever happens, or its waiter would wait for ever.
        A failed non-durable record poisons its lease: the driver's next write raises.
        So does a failed record that inserted appended steps: the next record of one of
        them (a sibling in a parallel group, say) takes its row for written.
        """
        try:
            await work
        except BaseException as exc:
            error = (
                self._translate(exc, "write to")
                if isinstance(exc, Exception)
                else StoreError(f"a write was interrupted ({type(exc).__name__})")
            )
            for op in ops:
                if op.done:
                    continue
                op.error = error
                op.done = True
                if op.kind == "record" and (not op.durable or op.appends):
                    self.poisoned[(op.tid, op.epoch)] = error
            if not isinstance(exc, Exception):
                raise

    async def _write_main(self, batch: _Batch, ops: list[Op]) -> None:
        rows = await self._execute_main(batch)
        self.batches += 1
        if batch.params["sync"] == "on":
            self.durable_batches += 1
        self.ops_written += len(ops)
        acquired: dict[str, tuple[int, datetime]] = {}
        fenced: set[str] = set()
        for part, tid, epoch, expires in rows:
            if part == "a":
                acquired[tid] = (epoch, expires)
            elif part == "r":
                fenced.add(tid)
        for op in ops:
            kind = op.kind
            if kind == "acquire":
                got = acquired.get(op.tid)
                if got is not None:
                    assert op.owner is not None
                    op.result = Lease(op.tid, op.owner, got[0], got[1].astimezone(UTC))
            elif kind == "save":
                op.result = op.tid in acquired
            elif kind == "record" and op.tid in fenced:
                confirm(op.sent)  # its header is committed (before its waiter resumes)
                if op.state in _ENDED:
                    # The record ended the lease too: release() has nothing left to do.
                    if len(self.released) > _MAX_REMEMBERED:
                        self.released.clear()
                    self.released.add((op.tid, op.epoch))
            elif kind == "record":
                error = LeaseLostError(
                    f"Transaction {op.tid}: lease epoch {op.epoch} is stale (another "
                    "driver took the transaction over, or it was deleted); this driver "
                    "must stop."
                )
                if op.durable:
                    op.error = error
                else:
                    self.poisoned[(op.tid, op.epoch)] = error
            op.done = True

    async def _write_renew(self, batch: _Batch) -> None:
        # On the writer, after the main statement: renewals and records of one
        # process never wait on each other's row locks, so they cannot deadlock.
        renewed: dict[str, int] = {}
        async with self._connection() as conn:
            for owner, ttl in batch.renew.items():
                cur = await conn.execute(self._statements.renew, {"owner": owner, "ttl": ttl})
                renewed[owner] = cur.rowcount
        for op in batch.ops:
            if op.kind == "renew":
                assert op.owner is not None
                op.result = renewed.get(op.owner, 0)
                op.done = True

    async def _execute_main(self, batch: _Batch) -> list[tuple[str, str, int, datetime]]:
        statements = self._statements
        if batch.has_acquire:
            query = statements.batch_both if batch.has_record else statements.batch_acquire
        else:
            query = statements.batch_record
        for attempt in range(1, _MAX_RETRIES + 1):
            try:
                async with self._connection() as conn:
                    cur = await conn.execute(query, batch.params)
                    rows: list[tuple[str, str, int, datetime]] = await cur.fetchall()
                    return rows
            except _RETRYABLE:
                # PostgreSQL rolled the whole statement back: resending it is safe.
                if attempt == _MAX_RETRIES:
                    raise
        raise AssertionError("unreachable")
