"""The side-effect ledger of the crash tests: every effect a handler performs, one
fsynced JSON line each, so a test can compare what really happened with what the
journal says, even after the process that performed it was SIGKILLed."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aumai_transactions import StepContext, TransactionResult

__all__ = ["Effect", "Ledger"]


@dataclass(frozen=True)
class Effect:
    """One side effect a handler performed, as the ledger recorded it."""

    index: int  # position in the ledger: the order things really happened in
    stage: int  # 0: the original run; 1, 2, ...: successive recoveries
    tx: str
    step: str
    # "forward", "compensate"; "returned" (an agent-shape handler's forward call is over,
    # however it ended); "outcome" (what the caller was told); "open" (an open transaction)
    kind: str
    action: str  # for an outcome: the state the caller was told
    key: str  # the idempotency key the handler was given
    attempt: int


class Ledger:
    """An append-only file of side effects, one JSON line each, fsynced per line."""

    def __init__(self, path: str | os.PathLike[str], stage: int) -> None:
        self.path = os.fspath(path)
        self.stage = stage

    def append(self, ctx: StepContext, kind: str) -> None:
        """Record a side effect (``kind`` "forward" or "compensate") of the step ``ctx``."""
        self._write(
            {
                "stage": self.stage,
                "tx": ctx.transaction_id,
                "step": ctx.step_id,
                "kind": kind,
                "action": ctx.action,
                "key": ctx.idempotency_key,
                "attempt": ctx.attempt,
            }
        )

    def opened(self, transaction_id: str) -> None:
        """Record that ``transaction_id`` is an open transaction (its code chose its steps)."""
        self._write(
            {
                "stage": self.stage,
                "tx": transaction_id,
                "step": "",
                "kind": "open",
                "action": "",
                "key": "",
                "attempt": 0,
            }
        )

    def outcome(self, result: TransactionResult) -> None:
        """Record what a caller was told: the journal must never contradict it later."""
        self._write(
            {
                "stage": self.stage,
                "tx": result.transaction_id,
                "step": "",
                "kind": "outcome",
                "action": result.state.value,
                "key": "",
                "attempt": 0,
            }
        )

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[Effect]:
        """Every effect recorded so far (a torn last line cannot happen: one write each)."""
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            return []
        return [
            Effect(index=i, **json.loads(line))
            for i, line in enumerate(text.splitlines())
            if line.strip()
        ]
