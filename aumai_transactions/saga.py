"""SagaOrchestrator: declare the steps of a saga once, execute it as often as needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .manager import TransactionManager
from .models import RecoveryPolicy, RetryPolicy, TransactionResult

__all__ = ["SagaOrchestrator"]


@dataclass(frozen=True, slots=True)
class _SagaStep:
    agent_id: str
    action: str
    data: dict[str, Any]
    compensating_action: str | None
    retry: RetryPolicy | None
    recovery: RecoveryPolicy | None


class SagaOrchestrator:
    """An ordered list of steps; each ``execute`` runs them as one new transaction.

    Without a ``manager`` (as the original tool allowed) the saga makes its own
    ``TransactionManager()``: a dry run in memory, where steps are recorded, not run.
    """

    def __init__(self, manager: TransactionManager | None = None) -> None:
        if manager is None:
            manager = TransactionManager()
        elif not isinstance(manager, TransactionManager):
            raise TypeError(
                f"SagaOrchestrator needs a TransactionManager, not {type(manager).__name__}."
            )
        self.manager = manager
        self._steps: list[_SagaStep] = []

    def register(
        self,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
    ) -> SagaOrchestrator:
        """Append a step; validated now, so a bad step fails here rather than at execute."""
        probe = self.manager.begin(timeout_seconds=None)
        try:
            self.manager.add_step(
                probe,
                agent_id,
                action,
                data,
                compensating_action,
                retry=retry,
                recovery=recovery,
            )
        finally:
            self.manager.forget(probe.transaction_id)
        self._steps.append(
            _SagaStep(agent_id, action, dict(data or {}), compensating_action, retry, recovery)
        )
        return self

    @property
    def steps(self) -> list[tuple[str, str]]:
        """The registered steps as (agent_id, action) pairs, in order."""
        return [(s.agent_id, s.action) for s in self._steps]

    async def execute(self, timeout_seconds: float | None = 60.0) -> TransactionResult:
        """Run the registered steps as a new transaction and return its result."""
        tx = self.manager.begin(timeout_seconds=timeout_seconds)
        for step in self._steps:
            self.manager.add_step(
                tx,
                step.agent_id,
                step.action,
                dict(step.data),
                step.compensating_action,
                retry=step.retry,
                recovery=step.recovery,
            )
        return await self.manager.commit(tx)
