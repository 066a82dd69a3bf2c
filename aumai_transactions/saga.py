"""SagaOrchestrator: declare the steps of a saga once, execute it as often as needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .manager import TransactionManager
from .models import RecoveryPolicy, RetryPolicy, TransactionResult

__all__ = ["SagaOrchestrator"]

# What register_parallel accepts for each step: register's keyword names, or a tuple of
# its positional ones.
_STEP_KEYS = ("agent_id", "action", "data", "compensating_action", "retry", "recovery")
_REQUIRED_KEYS = ("agent_id", "action")
_TUPLE_KEYS = _STEP_KEYS[:4]
_ACCEPTED = (
    "each step is a dict with register's keyword names (agent_id, action, and optionally "
    "data, compensating_action, retry, recovery) or a tuple (agent_id, action[, data"
    "[, compensating_action]])"
)


@dataclass(frozen=True, slots=True)
class _SagaStep:
    agent_id: str
    action: str
    data: dict[str, Any]
    compensating_action: str | None
    retry: RetryPolicy | None
    recovery: RecoveryPolicy | None
    group: str | None = None
    max_concurrency: int | None = None


def _step_arguments(index: int, item: object) -> dict[str, Any]:
    """register's arguments for item ``index`` of a parallel group."""
    if isinstance(item, Mapping):
        unknown = [key for key in item if key not in _STEP_KEYS]
        if unknown:
            raise ValueError(
                f"register_parallel: step {index} has unknown key(s) "
                f"{', '.join(map(repr, unknown))}; {_ACCEPTED}."
            )
        missing = [key for key in _REQUIRED_KEYS if key not in item]
        if missing:
            raise ValueError(
                f"register_parallel: step {index} lacks {' and '.join(missing)}; {_ACCEPTED}."
            )
        return dict(item)
    if isinstance(item, tuple):
        if not 2 <= len(item) <= len(_TUPLE_KEYS):
            raise ValueError(
                f"register_parallel: step {index} is a tuple of {len(item)} items; {_ACCEPTED}."
            )
        return dict(zip(_TUPLE_KEYS, item, strict=False))
    raise TypeError(f"register_parallel: step {index} is a {type(item).__name__}; {_ACCEPTED}.")


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
        self._groups = 0

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
        arguments = {
            "agent_id": agent_id,
            "action": action,
            "data": data,
            "compensating_action": compensating_action,
            "retry": retry,
            "recovery": recovery,
        }
        self._steps.extend(self._validated([arguments]))
        return self

    def register_parallel(
        self,
        steps: Sequence[Mapping[str, Any] | tuple[Any, ...]],
        *,
        max_concurrency: int | None = None,
    ) -> SagaOrchestrator:
        """Append a group of steps that start together at execute (at most
        ``max_concurrency`` at once); validated now, like :meth:`register`.

        Each step is a dict with :meth:`register`'s keyword names, or a tuple
        ``(agent_id, action, data, compensating_action)`` (the last two optional). The
        first failure in the group cancels its running siblings, which are in doubt and
        compensated with the completed ones, in reverse declaration order.
        """
        if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, Sequence):
            raise TypeError(
                f"register_parallel takes a list of steps, not a {type(steps).__name__}; "
                f"{_ACCEPTED}."
            )
        if not steps:
            raise ValueError(f"register_parallel needs at least one step; {_ACCEPTED}.")
        if max_concurrency is not None and (
            type(max_concurrency) is not int or max_concurrency < 1
        ):
            raise ValueError(
                f"max_concurrency must be a positive integer or None, not {max_concurrency!r}."
            )
        arguments = [_step_arguments(index, item) for index, item in enumerate(steps)]
        # Unique in every transaction execute builds: one name per registered group.
        group = f"parallel-{self._groups + 1}"
        self._steps.extend(self._validated(arguments, group, max_concurrency))
        self._groups += 1
        return self

    def _validated(
        self,
        arguments: list[dict[str, Any]],
        group: str | None = None,
        max_concurrency: int | None = None,
    ) -> list[_SagaStep]:
        """The saga's steps for ``arguments`` (register's, one dict a step), each
        checked now as ``add_step`` will check it at execute."""
        probe = self.manager.begin(timeout_seconds=None)
        steps: list[_SagaStep] = []
        try:
            for index, args in enumerate(arguments):
                try:
                    self.manager.add_step(
                        probe, **args, group=group, max_concurrency=max_concurrency
                    )
                except (TypeError, ValueError) as exc:
                    if group is None:
                        raise
                    kind = TypeError if isinstance(exc, TypeError) else ValueError
                    raise kind(f"register_parallel: step {index}: {exc}") from exc
                steps.append(
                    _SagaStep(
                        args["agent_id"],
                        args["action"],
                        dict(args.get("data") or {}),
                        args.get("compensating_action"),
                        args.get("retry"),
                        args.get("recovery"),
                        group,
                        max_concurrency,
                    )
                )
        finally:
            self.manager.forget(probe.transaction_id)
        return steps

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
                group=step.group,
                max_concurrency=step.max_concurrency,
            )
        return await self.manager.commit(tx)
