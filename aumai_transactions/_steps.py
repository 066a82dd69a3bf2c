"""What makes a step's arguments valid, checked before the step is built.

``TransactionManager.new_step`` (and through it ``add_step``, open transactions and
parallel groups) calls these; each failure names the argument and what is accepted.
"""

from __future__ import annotations

from typing import Any

from .models import RecoveryPolicy, RetryPolicy, Transaction, json_problem

__all__ = ["check_group_fields", "check_group_is_consecutive", "checked_step_fields"]

_POLICIES = ("compensate", "resume")


def checked_step_fields(
    agent_id: str,
    action: str,
    data: dict[str, Any] | None,
    compensating_action: str | None,
    retry: RetryPolicy | None,
    recovery: RecoveryPolicy | None,
) -> dict[str, Any]:
    """Refuse what a step cannot be built from; return the step's own copy of ``data``."""
    if type(agent_id) is not str or not agent_id or agent_id.isspace():
        raise ValueError(f"agent_id must be a non-empty string, not {agent_id!r}.")
    if type(action) is not str or not action or action.isspace():
        raise ValueError(f"action must be a non-empty string, not {action!r}.")
    if compensating_action is not None and (
        type(compensating_action) is not str
        or not compensating_action
        or compensating_action.isspace()
    ):
        raise ValueError(
            f"compensating_action must be a non-empty string or None, not {compensating_action!r}."
        )
    if data is None:
        data = {}
    elif type(data) is not dict:
        raise TypeError(f"data must be a dict, not {type(data).__name__}.")
    elif data:
        problem = json_problem(data)
        if problem is not None:
            raise TypeError(f"Step data must be JSON-serializable: {problem}.")
        # The step's own copy: one dict passed to several steps (as the tutorial
        # does) must not carry one handler's changes into the others' data.
        data = data.copy()
    else:
        data = {}
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}.")
    if recovery is not None and recovery not in _POLICIES:
        raise ValueError(f"recovery must be 'compensate', 'resume' or None, not {recovery!r}.")
    return data


def check_group_fields(group: str | None, max_concurrency: int | None) -> None:
    """A group's name, and the cap on how many of its steps run at once."""
    if group is not None and (type(group) is not str or not group or group.isspace()):
        raise ValueError(f"group must be a non-empty string or None, not {group!r}.")
    if max_concurrency is not None:
        if group is None:
            raise ValueError("max_concurrency applies to a parallel group: give group= too.")
        if type(max_concurrency) is not int or max_concurrency < 1:
            raise ValueError(
                f"max_concurrency must be a positive integer or None, not {max_concurrency!r}."
            )


def check_group_is_consecutive(transaction: Transaction, group: str) -> None:
    """A parallel group is a run of consecutive steps: its name cannot come back later."""
    steps = transaction.steps
    if steps and steps[-1].group == group:
        return
    if any(step.group == group for step in steps):
        raise ValueError(
            f"Parallel group {group!r} of transaction {transaction.transaction_id} was "
            "closed by a step outside it; a group is a run of consecutive steps "
            "(give this one another name)."
        )
