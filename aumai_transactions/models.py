"""Pydantic models and enums of aumai-transactions; no I/O, nothing of ours imported.

Every field added beyond the original tool's (transaction_id, steps[step_id, agent_id,
action, data, compensating_action], state, created_at, timeout_seconds) has a default,
so a transaction dumped by the original tool still validates.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_jsonable_python

__all__ = [
    "LeaseInfo",
    "LeaseSummary",
    "RecoveryPolicy",
    "Resolution",
    "RetryPolicy",
    "StepAttempt",
    "StepStatus",
    "Transaction",
    "TransactionResult",
    "TransactionState",
    "TransactionStep",
    "new_id",
    "storable",
    "utcnow",
]

RecoveryPolicy = Literal["compensate", "resume"]
"""What recovery does with a transaction whose driver died: abort it, or carry it on."""


class TransactionState(StrEnum):
    """Lifecycle of a transaction.

    ``pending → active → committed``; ``active → compensating → rolled_back``;
    a timeout ends in ``failed``; a compensation that keeps failing ends in
    ``compensation_failed``; a transaction that kept killing its recoverers ends in
    ``dead_letter``. The last two need an operator, who may retry the failed
    compensations or close either by hand: ``resolved`` (terminal, not a problem; the
    operator's note is in ``Transaction.resolution``).

    The upper-case names are canonical (``repr`` and ``.name`` use them, as for every
    constant); the original tool's lower-case names (``TransactionState.pending``) are
    aliases of the same members, so code written for it keeps working and
    ``list(TransactionState)`` has each state once.
    """

    PENDING = "pending"
    ACTIVE = "active"
    COMMITTED = "committed"
    COMPENSATING = "compensating"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    COMPENSATION_FAILED = "compensation_failed"
    DEAD_LETTER = "dead_letter"
    RESOLVED = "resolved"

    pending = "pending"
    active = "active"
    committed = "committed"
    compensating = "compensating"
    rolled_back = "rolled_back"
    failed = "failed"
    compensation_failed = "compensation_failed"
    dead_letter = "dead_letter"
    resolved = "resolved"

    @property
    def is_terminal(self) -> bool:
        """True when no driver will touch the transaction again."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        TransactionState.COMMITTED,
        TransactionState.ROLLED_BACK,
        TransactionState.FAILED,
        TransactionState.COMPENSATION_FAILED,
        TransactionState.DEAD_LETTER,
        TransactionState.RESOLVED,
    }
)

IN_FLIGHT_STATES = frozenset({TransactionState.ACTIVE, TransactionState.COMPENSATING})


class StepStatus(StrEnum):
    """Lifecycle of a step.

    ``pending → running → completed | failed``;
    ``completed → compensating → compensated | compensation_failed``.
    A step found ``running`` after its driver died is *in doubt*. Lower-case aliases
    (``StepStatus.completed``) as for :class:`TransactionState`.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"

    pending = "pending"
    running = "running"
    completed = "completed"
    failed = "failed"
    compensating = "compensating"
    compensated = "compensated"
    compensation_failed = "compensation_failed"


# ``datetime.now`` bound once: looking a classmethod up makes a new bound method each
# time, an object the cyclic collector tracks (and several timestamps are taken per step).
_now = datetime.now


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return _now(UTC)


# A PRNG of our own, seeded from the OS at import and in every forked child: ids must
# not repeat when user code (or a test framework) seeds the global ``random`` module.
_id_random = random.Random()
os.register_at_fork(after_in_child=_id_random.seed)


_UUID4_CLEAR = ~(0xF000 << 64) & ~(0xC000 << 48)
_UUID4_SET = (4 << 76) | (0x8000 << 48)


def new_id() -> str:
    """A random UUID4 string.

    Built from a private PRNG (seeded from the OS at start and in every forked child)
    because ``uuid.uuid4()`` costs a system call per id, and ids are made on the hot
    path; they identify, they are not secrets.
    """
    h = "%032x" % (_id_random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class RetryPolicy(BaseModel):
    """How often, and how patiently, a handler is tried before its failure counts.

    The delay before attempt ``n + 1`` is ``initial_delay * multiplier ** (n - 1)``,
    capped at ``max_delay``, then spread by ``± jitter`` (a fraction of the delay).
    Only exceptions that are instances of ``retry_on`` are retried.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    max_attempts: int = Field(default=1, ge=1)
    initial_delay: float = Field(default=0.1, ge=0)
    max_delay: float = Field(default=10.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.1, ge=0, le=1)
    retry_on: tuple[type[BaseException], ...] = Field(default=(Exception,), exclude=True)

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 for the first retry)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, attempt - 2))
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """True when ``exc`` raised by ``attempt`` deserves another try."""
        return attempt < self.max_attempts and isinstance(exc, self.retry_on)


class StepAttempt(BaseModel):
    """An attempt of a step that failed and was retried: when it ran, and why it failed.

    The step's own ``started_at``, ``finished_at`` and ``error`` are its last attempt's.
    """

    model_config = ConfigDict(frozen=True)

    started_at: datetime | None
    finished_at: datetime
    error: str | None


class TransactionStep(BaseModel):
    """One action of an agent, with the action that undoes it."""

    model_config = ConfigDict(validate_assignment=False)

    step_id: str = Field(default_factory=new_id)
    agent_id: str
    action: str
    data: dict[str, Any] = Field(default_factory=dict)
    compensating_action: str | None = None
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    compensation_attempts: int = 0
    result: Any = None
    error: str | None = None
    compensation_error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    compensated_at: datetime | None = None
    retry: RetryPolicy | None = None
    recovery: RecoveryPolicy | None = None
    interrupted: bool = False
    """The step was still running when the deadline, a cancellation or a crash stopped
    it: it may or may not have had its effect (in doubt), so it is compensated."""
    recorded_only: bool = False
    """No handler was registered for the action: the step was recorded, no code ran."""
    group: str | None = None
    """Consecutive steps with the same group run at the same time (a parallel group)."""
    group_concurrency: int | None = None
    """The most steps of its group that run at once; None: all of them."""
    live: bool = False
    """Run by an open transaction, chosen by code at run time: a crash takes that code
    with it, so recovery never resumes such a transaction; it compensates it."""
    key: str | None = None
    """The idempotency key its caller gave (an agent framework's tool call id); None:
    derived from the transaction and step ids (see :meth:`idempotency_key`)."""
    earlier_attempts: list[StepAttempt] | None = None
    """The attempts before the last one, oldest first, when it was retried; None when
    it ran once (``attempts`` counts them all)."""

    @classmethod
    def new(
        cls,
        agent_id: str,
        action: str,
        data: dict[str, Any],
        compensating_action: str | None = None,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
        group: str | None = None,
        group_concurrency: int | None = None,
        live: bool = False,
    ) -> TransactionStep:
        """A fresh pending step from arguments the caller has already validated.

        Skips validation (like ``model_construct``) at a fraction of its cost: steps
        are made on the hot path of every agent action.
        """
        return _assemble(
            cls,
            {
                "step_id": new_id(),
                "agent_id": agent_id,
                "action": action,
                "data": data,
                "compensating_action": compensating_action,
                "status": StepStatus.PENDING,
                "attempts": 0,
                "compensation_attempts": 0,
                "result": None,
                "error": None,
                "compensation_error": None,
                "started_at": None,
                "finished_at": None,
                "compensated_at": None,
                "retry": retry,
                "recovery": recovery,
                "interrupted": False,
                "recorded_only": False,
                "group": group,
                "group_concurrency": group_concurrency,
                "live": live,
                "key": None,
                "earlier_attempts": None,
            },
            _STEP_SET,
        )

    def idempotency_key(self, transaction_id: str) -> str:
        """A key stable across retries and recoveries of this step: the one its caller
        gave (``key``), else one derived from the transaction and step ids."""
        return self.key if self.key is not None else f"{transaction_id}:{self.step_id}"


class Resolution(BaseModel):
    """How an operator closed a transaction by hand (it is then ``resolved``).

    ``note`` says what was done (say, "refunded by hand in the PSP dashboard"), ``by``
    who did it, ``at`` when, and ``previous_state`` what the transaction was before
    (``compensation_failed`` or ``dead_letter``).
    """

    model_config = ConfigDict(frozen=True)

    note: str
    by: str | None = None
    at: datetime
    previous_state: TransactionState


class Transaction(BaseModel):
    """An ordered list of steps that succeed together or are undone together."""

    model_config = ConfigDict(validate_assignment=False)

    transaction_id: str = Field(default_factory=new_id)
    steps: list[TransactionStep] = Field(default_factory=list)
    state: TransactionState = TransactionState.PENDING
    created_at: datetime = Field(default_factory=utcnow)
    timeout_seconds: float | None = 60.0
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    recovery_attempts: int = 0
    blocked_reason: str | None = None
    resolution: Resolution | None = None
    """Set when an operator resolved the transaction by hand (state ``resolved``)."""

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # Naive timestamps (as some older dumps hold) are taken as UTC.
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @classmethod
    def new(cls, timeout_seconds: float | None) -> Transaction:
        """A fresh pending transaction (arguments already validated; see TransactionStep.new)."""
        return _assemble(
            cls,
            {
                "transaction_id": new_id(),
                "steps": [],
                "state": TransactionState.PENDING,
                "created_at": utcnow(),
                "timeout_seconds": timeout_seconds,
                "updated_at": None,
                "finished_at": None,
                "error": None,
                "recovery_attempts": 0,
                "blocked_reason": None,
                "resolution": None,
            },
            _TX_SET,
        )

    @property
    def deadline(self) -> datetime | None:
        """When the transaction times out, or None without a timeout."""
        if self.timeout_seconds is None:
            return None
        return self.created_at + timedelta(seconds=self.timeout_seconds)

    @property
    def is_open(self) -> bool:
        """True for an open transaction (its steps chosen and run one by one by code)."""
        return any(step.live for step in self.steps)

    @property
    def agents(self) -> list[str]:
        """The distinct agents taking part, in order of first appearance."""
        return list(dict.fromkeys(step.agent_id for step in self.steps))


class LeaseInfo(BaseModel):
    """The lease of one stored transaction, as the store saw it when read.

    ``owner`` and ``expires_at`` are None when no driver holds it (never leased, or
    released); an expired lease keeps both. ``live`` is the store's own verdict
    (its clock: the database's, for PostgreSQL): True while ``owner`` may still be
    driving the transaction and nobody else can take it. ``epoch`` counts the leases
    ever taken on it (the fencing token).
    """

    model_config = ConfigDict(frozen=True)

    transaction_id: str
    owner: str | None = None
    expires_at: datetime | None = None
    epoch: int = 0
    live: bool = False

    @property
    def lapsed(self) -> bool:
        """True when a driver held the lease and it expired unreleased (it may be dead)."""
        return self.owner is not None and not self.live


class LeaseSummary(BaseModel):
    """The leases of the in-flight (active or compensating) transactions of a store.

    ``waiting``: in flight under a live lease, so recovery cannot take them before it
    expires (being driven, or left by a driver that died less than a lease ago);
    ``first_expiry``: the earliest expiry among those (None when ``waiting`` is 0);
    ``claimable``: in flight with an expired lease or none, which recovery takes now;
    ``blocked``: in flight with their recovery blocked (``blocked_reason`` set: no
    worker that claimed them had a handler they need), counted among the others too.
    """

    model_config = ConfigDict(frozen=True)

    waiting: int = 0
    first_expiry: datetime | None = None
    claimable: int = 0
    blocked: int = 0


_STEP_SET = frozenset({"step_id", "agent_id", "action", "data", "compensating_action"})
_RESULT_SET = frozenset({"transaction_id", "state", "completed_steps", "failed_step", "error"})
_TX_SET = frozenset({"transaction_id", "steps", "state", "created_at", "timeout_seconds"})

_M = TypeVar("_M", bound=BaseModel)


# BaseModel's slots, set through their descriptors: a third cheaper than
# object.__setattr__ by name, on a path that runs for every transaction and step.
_SET_DICT = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__


def _assemble(cls: type[_M], values: dict[str, Any], fields_set: frozenset[str]) -> _M:
    # What model_construct does, for a model whose every field is given.
    obj = object.__new__(cls)
    _SET_DICT(obj, values)
    _SET_FIELDS_SET(obj, set(fields_set))
    _SET_EXTRA(obj, None)
    _SET_PRIVATE(obj, None)
    return obj


class TransactionResult(BaseModel):
    """What a commit or rollback achieved.

    ``completed_steps``: for a commit, the ids of the steps run, in order; for a
    rollback, the completed steps that were undone, in the order they were compensated
    (steps with no compensating action are listed too). ``compensation_errors`` maps
    step ids to the message of a compensation that failed after its retries.
    ``interrupted_steps``: the steps cut short by the deadline or a cancellation while
    running; they may have had their effect, so they were compensated too (they are
    in ``completed_steps`` when their compensation ran). ``recorded_only_steps``: the
    steps recorded without running any code, because no handler has their action.
    """

    transaction_id: str
    state: TransactionState
    completed_steps: list[str] = Field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None
    compensation_errors: dict[str, str] = Field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    interrupted_steps: list[str] = Field(default_factory=list)
    recorded_only_steps: list[str] = Field(default_factory=list)

    @classmethod
    def new(
        cls,
        transaction_id: str,
        state: TransactionState,
        completed_steps: list[str],
        failed_step: str | None,
        error: str | None,
        compensation_errors: dict[str, str],
        started_at: datetime,
        finished_at: datetime | None,
        interrupted_steps: list[str] | None = None,
        recorded_only_steps: list[str] | None = None,
    ) -> TransactionResult:
        """A result from values the engine vouches for (no validation on the hot path).

        The lists given become the result's own: pass lists nobody else holds.
        """
        return _assemble(
            cls,
            {
                "transaction_id": transaction_id,
                "state": state,
                "completed_steps": completed_steps,
                "failed_step": failed_step,
                "error": error,
                "compensation_errors": compensation_errors,
                "started_at": started_at,
                "finished_at": finished_at,
                "duration_seconds": (finished_at - started_at).total_seconds()
                if finished_at is not None
                else None,
                "interrupted_steps": [] if interrupted_steps is None else interrupted_steps,
                "recorded_only_steps": [] if recorded_only_steps is None else recorded_only_steps,
            },
            _RESULT_SET,
        )

    @property
    def succeeded(self) -> bool:
        """True when the transaction committed."""
        return self.state is TransactionState.COMMITTED


_JSON_SCALARS = (str, int, float, bool, type(None))
_INFINITIES = (float("inf"), float("-inf"))


def json_problem(value: Any, path: str = "data") -> str | None:
    """Why ``value`` cannot be stored as JSON (naming where), or None when it can.

    Accepts what ``json.dumps`` would round-trip: dicts with string keys, lists,
    tuples, strings, numbers, booleans and None; NaN and infinities are refused.
    """
    # Data is checked when each step is built and again after its handler ran: plain
    # items (strings, numbers, booleans, None) are passed over in place, and the place
    # of an item is named (a string built) only for one walked into.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return None
    if kind is float:
        return (
            None
            if value == value and value not in _INFINITIES
            else (f"{path} is {value!r}, which JSON cannot represent")
        )
    if kind is dict:
        # Keys, then a lookup: one iterator for the collector to track, where items()
        # makes a view and an iterator.
        for key in value:
            if type(key) is not str:
                return f"{path} has a non-string key {key!r}"
            item = value[key]
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                continue
            if kind is float and item == item and item not in _INFINITIES:
                continue
            problem = json_problem(item, f"{path}[{key!r}]")
            if problem is not None:
                return problem
        return None
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                continue
            if kind is float and item == item and item not in _INFINITIES:
                continue
            problem = json_problem(item, f"{path}[{index}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, _JSON_SCALARS):  # subclasses such as IntEnum or str enums
        return None
    return f"{path} holds a {kind.__name__} ({value!r:.60}), which is not JSON-serializable"


def storable(value: Any) -> Any:
    """``value`` as JSON can hold it: as it is when it can, else converted the way
    pydantic converts (datetimes, UUIDs, Decimals, enums, dataclasses, models, sets).

    Raises TypeError, naming the type, when even the converted value is not JSON.
    """
    if json_problem(value, "the value") is None:
        return value
    try:
        converted = to_jsonable_python(value)
    except Exception as exc:
        raise TypeError(
            f"a {type(value).__name__!r} value cannot be stored as JSON: {exc}"
        ) from exc
    problem = json_problem(converted, "the value")
    if problem is not None:
        raise TypeError(f"a {type(value).__name__!r} value cannot be stored as JSON: {problem}")
    return converted


def ends_failed(tx: Transaction) -> bool:
    """True when ``tx`` is being compensated because it timed out or was interrupted.

    Such a transaction ends ``failed``, whether its compensation finishes in the
    process that was interrupted or in a later recovery: one rule, however often
    Ctrl-C was pressed. (Its ``error``, journaled before compensation starts, says so:
    the engine writes those texts; recovery and the CLI both read them here.)
    """
    error = tx.error or ""
    prefix = f"Transaction {tx.transaction_id} "
    return error.startswith((prefix + "timed out after", prefix + "was interrupted"))
