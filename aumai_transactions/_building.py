"""Building transactions: ``begin``, ``add_step`` and ``new_step`` of the manager.

A mixin of ``TransactionManager``: a step's arguments are checked (``_steps``), the
registry's defaults applied, and actions with no handler warned about (strict:
refused) before the step is built.
"""

from __future__ import annotations

import logging
from typing import Any

from ._actions import Actions
from ._steps import check_group_fields, check_group_is_consecutive, checked_step_fields
from .handlers import HandlerRegistry
from .models import RecoveryPolicy, RetryPolicy, Transaction, TransactionState, TransactionStep

__all__ = ["StepBuilding", "check_timeout"]

logger = logging.getLogger("aumai_transactions")

_PENDING = TransactionState.PENDING
# Made once: ``int | float`` in the check would build a union object for every call.
_NUMBERS = (int, float)
_INFINITY = float("inf")


def check_timeout(timeout_seconds: float | None, name: str = "timeout_seconds") -> None:
    """Refuse a timeout that is not None or a positive, finite number of seconds."""
    if timeout_seconds is None:
        return
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, _NUMBERS):
        raise TypeError(f"{name} must be a number of seconds or None, not {timeout_seconds!r}.")
    if not timeout_seconds > 0 or timeout_seconds == _INFINITY:
        raise ValueError(f"{name} must be a positive number of seconds, not {timeout_seconds!r}.")


class StepBuilding:
    """What the manager builds transactions and steps with."""

    _handlers: HandlerRegistry
    _actions: Actions | None
    _transactions: dict[str, Transaction]
    strict: bool

    def begin(self, timeout_seconds: float | None = 60.0) -> Transaction:
        """Start a pending transaction; it times out ``timeout_seconds`` after now."""
        check_timeout(timeout_seconds)
        tx = Transaction.new(timeout_seconds)
        self._transactions[tx.transaction_id] = tx
        return tx

    def add_step(
        self,
        transaction: Transaction,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
        group: str | None = None,
        max_concurrency: int | None = None,
    ) -> TransactionStep:
        """Append a step to a pending transaction and return it.

        Consecutive steps given the same ``group`` name form a parallel group: at commit
        they start together, the first failure cancels the others (which are then in
        doubt, so compensated), and compensation runs in reverse declaration order.
        ``max_concurrency`` on any step of a group caps how many of its steps run at
        once (the smallest given wins).
        """
        if not isinstance(transaction, Transaction):
            raise TypeError(f"add_step needs a Transaction, not {type(transaction).__name__}.")
        if transaction.state is not _PENDING:
            raise ValueError(
                f"Cannot add steps to transaction {transaction.transaction_id} in state "
                f"'{transaction.state.value}'; only 'pending' transactions accept steps."
            )
        step = self.new_step(
            agent_id,
            action,
            data,
            compensating_action,
            retry=retry,
            recovery=recovery,
            group=group,
            max_concurrency=max_concurrency,
        )
        if group is not None:
            check_group_is_consecutive(transaction, group)
        self._check_order(transaction.steps, step)
        transaction.steps.append(step)
        return step

    def _check_order(self, earlier: list[TransactionStep], step: TransactionStep) -> None:
        """Warn (strict: refuse) when a compensable step follows an irreversible one."""
        problem = None if self._actions is None else self._actions.ordering_problem(earlier, step)
        if problem is not None:
            if self.strict:
                raise ValueError(f"Refused (strict mode): {problem}")
            logger.warning("%s", problem)

    def new_step(
        self,
        agent_id: str,
        action: str,
        data: dict[str, Any] | None = None,
        compensating_action: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        recovery: RecoveryPolicy | None = None,
        group: str | None = None,
        max_concurrency: int | None = None,
        live: bool = False,
    ) -> TransactionStep:
        """A validated pending step, not yet part of any transaction (what ``add_step``
        appends; open transactions and parallel groups build theirs with it)."""
        data = checked_step_fields(agent_id, action, data, compensating_action, retry, recovery)
        if self._actions is not None:  # the registry's defaults; what the step names wins
            compensating_action, retry, recovery = self._actions.step_defaults(
                action, data, compensating_action, retry, recovery
            )
        if group is not None or max_concurrency is not None:
            check_group_fields(group, max_concurrency)
        known = self._handlers.names
        if known and (
            action not in known
            or (compensating_action is not None and compensating_action not in known)
        ):
            self._unknown_actions(action, compensating_action)
        return TransactionStep.new(
            agent_id,
            action,
            data,
            compensating_action,
            retry,
            recovery,
            group,
            max_concurrency,
            live,
        )

    def _unknown_actions(self, action: str, compensating_action: str | None) -> None:
        known = self._handlers.names
        for name in (action, compensating_action):
            if name is not None and name not in known:
                if self.strict:
                    raise ValueError(
                        f"No handler for action {name!r} (strict mode); known actions: "
                        f"{', '.join(self._handlers.actions)}."
                    )
                if name == action:
                    logger.warning("no handler for action %r: it will be recorded only", name)
                else:
                    logger.warning(
                        "no handler for compensating action %r: if it is needed, the "
                        "transaction ends compensation_failed (known actions: %s)",
                        name,
                        ", ".join(self._handlers.actions),
                    )
