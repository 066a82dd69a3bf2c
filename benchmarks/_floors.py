"""The floors W1 and W2 are measured against: what any engine has to do per transaction.

``_floor``: the plain loop plus the least any journaled step needs, in plain Python
with no library (a record per step with a random id, two timestamps, an intent written
before the handler and a completion after; an id and a final record per transaction;
for a failing transaction also its failure, the move to ``compensating``, and each
compensation's intent, completion and two timestamps, as the design's journal rules 1
and 2 ask). ``_design_floor``: that, plus what the design and the public API ask of any
engine on top (the package's pydantic models for the transaction, its steps and its
result, built the cheapest way; with async handlers, the anyio cancel scopes of the
timeout and of the shielded, time-bounded compensation, and the compensation's own
task).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel

from aumai_transactions import (
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
)

__all__ = [
    "DATA",
    "STEPS",
    "Boom",
    "active_models",
    "design_floor",
    "floor",
    "model",
    "pending_models",
    "result_model",
    "start",
]

STEPS = (("reserve", "release"), ("charge", "refund"), ("notify", "unnotify"))
DATA: dict[str, Any] = {"user_id": "u-001"}


_M = TypeVar("_M", bound=BaseModel)


class Boom(Exception):
    pass


class _Record:
    """The least a journaled step is: an id, what it runs, its status, two times (and
    two more for its compensation, once it is undone)."""

    __slots__ = (
        "action",
        "compensated_at",
        "compensating_at",
        "finished_at",
        "started_at",
        "status",
        "step_id",
    )

    def __init__(self, step_id: str, action: str) -> None:
        self.step_id = step_id
        self.action = action
        self.status = "pending"
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.compensating_at: datetime | None = None
        self.compensated_at: datetime | None = None


def _record_id(bits: Callable[[int], int]) -> str:
    return f"{bits(128):032x}"


async def floor(n: int, handlers: dict[str, Callable[..., Any]], is_async: bool) -> None:
    journal: list[tuple[str, str, str]] = []
    write = journal.append
    bits = random.Random(1).getrandbits
    for _ in range(n):
        tx_id = _record_id(bits)
        records = [_Record(_record_id(bits), action) for action, _ in STEPS]
        write((tx_id, "", "active"))
        done: list[tuple[_Record, str]] = []
        record = records[0]
        try:
            for record, (action, comp) in zip(records, STEPS, strict=True):
                record.status = "running"
                record.started_at = datetime.now(UTC)
                write((tx_id, record.step_id, "running"))  # the intent, before the handler
                if is_async:
                    await handlers[action](action, DATA)
                else:
                    handlers[action](action, DATA)
                record.status = "completed"
                record.finished_at = datetime.now(UTC)
                write((tx_id, record.step_id, "completed"))
                done.append((record, comp))
            write((tx_id, "", "committed"))
        except Exception:
            # The design's rules 1 and 2: the failure is recorded (else it is in doubt),
            # the state change before the compensations, and each compensation's intent
            # before it runs and its completion after.
            record.status = "failed"
            record.finished_at = datetime.now(UTC)
            write((tx_id, record.step_id, "failed"))
            write((tx_id, "", "compensating"))
            for record, comp in reversed(done):
                record.status = "compensating"
                record.compensating_at = datetime.now(UTC)
                write((tx_id, record.step_id, "compensating"))
                if is_async:
                    await handlers[comp](comp, DATA)
                else:
                    handlers[comp](comp, DATA)
                record.status = "compensated"
                record.compensated_at = datetime.now(UTC)
                write((tx_id, record.step_id, "compensated"))
            write((tx_id, "", "rolled_back"))
        journal.clear()


# BaseModel's slots, set through their descriptors (cheaper than by name).
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__


def model(cls: type[_M], values: dict[str, Any]) -> _M:
    """What pydantic's ``model_construct`` does for a model whose every field is given
    (no defaults to fill, no validation): the cheapest way to build one."""
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    _SET_FIELDS_SET(obj, set())
    _SET_EXTRA(obj, None)
    _SET_PRIVATE(obj, None)
    return obj


def pending_models(tx_id: str, bits: Callable[[int], int]) -> Transaction:
    """A pending transaction of three pending steps, as the package's models (every
    field of each given in one dict display, the cheapest way to make the dict)."""
    steps = [
        model(
            TransactionStep,
            {
                "step_id": _record_id(bits),
                "agent_id": "agent",
                "action": action,
                "data": dict(DATA),  # the step's own copy, which a handler may change
                "compensating_action": comp,
                "status": StepStatus.PENDING,
                "attempts": 0,
                "compensation_attempts": 0,
                "result": None,
                "error": None,
                "compensation_error": None,
                "started_at": None,
                "finished_at": None,
                "compensated_at": None,
                "retry": None,
                "recovery": None,
                "interrupted": False,
                "recorded_only": False,
                "group": None,
                "group_concurrency": None,
                "live": False,
                "key": None,
                "earlier_attempts": None,
            },
        )
        for action, comp in STEPS
    ]
    return model(
        Transaction,
        {
            "transaction_id": tx_id,
            "steps": steps,
            "state": TransactionState.PENDING,
            "created_at": datetime.now(UTC),
            "timeout_seconds": 60.0,
            "updated_at": None,
            "finished_at": None,
            "error": None,
            "recovery_attempts": 0,
            "blocked_reason": None,
            "resolution": None,
        },
    )


def active_models(tx_id: str, bits: Callable[[int], int]) -> Transaction:
    """``pending_models``, moved to ``active`` as a commit does before its first step."""
    tx = pending_models(tx_id, bits)
    fields = tx.__dict__
    fields["state"] = TransactionState.ACTIVE
    fields["updated_at"] = datetime.now(UTC)
    return tx


def start(step: TransactionStep) -> dict[str, Any]:
    """Mark ``step`` running (its first attempt, started now); its fields, to change."""
    values = step.__dict__
    values["status"] = StepStatus.RUNNING
    values["attempts"] = 1
    values["started_at"] = datetime.now(UTC)
    return values


def result_model(tx: Transaction, completed: list[str], failed: str | None) -> TransactionResult:
    finished = tx.finished_at
    assert finished is not None
    return model(
        TransactionResult,
        {
            "transaction_id": tx.transaction_id,
            "state": tx.state,
            "completed_steps": completed,
            "failed_step": failed,
            "error": None,
            "compensation_errors": {},
            "started_at": tx.created_at,
            "finished_at": finished,
            "duration_seconds": (finished - tx.created_at).total_seconds(),
            "interrupted_steps": [],
            "recorded_only_steps": [],
        },
    )


async def design_floor(n: int, handlers: dict[str, Callable[..., Any]], is_async: bool) -> None:
    """``floor`` plus what the design and the public API ask of any engine on top: the
    transaction, its steps and its result as the package's pydantic models (built the
    cheapest way, ``model``), and with async handlers the timeout as an anyio cancel
    scope around the forward pass, and the compensations shielded, under their own time
    bound, in a task of their own (a plain ``task.cancel()`` of the caller must not land
    in one). Inline sync handlers never suspend, so no scope could interrupt them: an
    engine checks the deadline between steps and needs none of the three."""
    journal: list[tuple[str, str, str]] = []
    write = journal.append
    bits = random.Random(1).getrandbits
    loop = asyncio.get_running_loop()

    async def undo(done: list[tuple[dict[str, Any], str]], tx_id: str) -> None:
        for record, comp in reversed(done):
            record["status"] = StepStatus.COMPENSATING
            record["compensation_attempts"] = 1
            write((tx_id, record["step_id"], "compensating"))
            if is_async:
                await handlers[comp](comp, DATA)
            else:
                handlers[comp](comp, DATA)
            record["status"] = StepStatus.COMPENSATED
            record["compensated_at"] = datetime.now(UTC)
            write((tx_id, record["step_id"], "compensated"))

    async def forward(tx: Transaction, done: list[tuple[dict[str, Any], str]]) -> None:
        tx_id = tx.transaction_id
        for step, (action, comp) in zip(tx.steps, STEPS, strict=True):
            record = step.__dict__
            record["status"] = StepStatus.RUNNING
            record["attempts"] = 1
            record["started_at"] = datetime.now(UTC)
            write((tx_id, record["step_id"], "running"))  # the intent first
            try:
                if is_async:
                    await handlers[action](action, DATA)
                else:
                    handlers[action](action, DATA)
            except Boom as exc:
                record["status"] = StepStatus.FAILED
                record["error"] = str(exc)
                record["finished_at"] = datetime.now(UTC)
                write((tx_id, record["step_id"], "failed"))
                raise
            record["status"] = StepStatus.COMPLETED
            record["finished_at"] = datetime.now(UTC)
            write((tx_id, record["step_id"], "completed"))
            done.append((record, comp))

    for _ in range(n):
        tx_id = _record_id(bits)
        tx = pending_models(tx_id, bits)
        fields = tx.__dict__
        fields["state"] = TransactionState.ACTIVE
        fields["updated_at"] = datetime.now(UTC)
        write((tx_id, "", "active"))
        done: list[tuple[dict[str, Any], str]] = []
        try:
            if is_async:
                with anyio.CancelScope(deadline=loop.time() + 60.0):
                    await forward(tx, done)
            else:
                await forward(tx, done)
            fields["state"] = TransactionState.COMMITTED
            fields["finished_at"] = datetime.now(UTC)
            write((tx_id, "", "committed"))
            result_model(tx, [r["step_id"] for r, _ in done], None)
        except Boom:
            failed = tx.steps[len(done)].step_id
            fields["state"] = TransactionState.COMPENSATING
            write((tx_id, "", "compensating"))
            if is_async:
                with anyio.CancelScope(shield=True), anyio.move_on_after(30.0):
                    await asyncio.ensure_future(undo(done, tx_id))
            else:
                await undo(done, tx_id)
            fields["state"] = TransactionState.ROLLED_BACK
            fields["finished_at"] = datetime.now(UTC)
            write((tx_id, "", "rolled_back"))
            result_model(tx, [r["step_id"] for r, _ in reversed(done)], failed)
        journal.clear()
