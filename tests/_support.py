"""Helpers shared by the tests: handlers that record what they were asked to do."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aumai_transactions import Transaction, TransactionResult


class Recorder:
    """Builds handlers that append ``(action, data)`` to ``calls`` and fail on demand."""

    def __init__(self, fail: Iterable[str] = ()) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = set(fail)

    @property
    def actions(self) -> list[str]:
        """The action names called, in call order."""
        return [action for action, _ in self.calls]

    def sync(self, action: str, data: dict[str, Any]) -> dict[str, str]:
        self.calls.append((action, data))
        if action in self.fail:
            raise RuntimeError(f"{action} failed")
        return {"done": action}

    async def async_(self, action: str, data: dict[str, Any]) -> dict[str, str]:
        return self.sync(action, data)

    def handlers(self, *actions: str, kind: str = "sync") -> dict[str, Callable[..., Any]]:
        """One recording handler per action (``kind``: "sync" or "async")."""
        func = self.sync if kind == "sync" else self.async_
        return {action: func for action in actions}


TUTORIAL_ACTIONS = (
    "create_user",
    "delete_user",
    "reserve_quota",
    "release_quota",
    "charge_card",
    "refund_card",
    "send_welcome_email",
)


def actions_of(tx: Transaction, step_ids: Iterable[str | None]) -> list[str | None]:
    """Map step ids (as a result lists them) to the actions of those steps."""
    by_id = {step.step_id: step.action for step in tx.steps}
    return [None if step_id is None else by_id[step_id] for step_id in step_ids]


def completed_actions(tx: Transaction, result: TransactionResult) -> list[str | None]:
    """``result.completed_steps`` as action names."""
    return actions_of(tx, result.completed_steps)
