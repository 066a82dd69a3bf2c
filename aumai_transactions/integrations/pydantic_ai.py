"""PydanticAI: a toolset whose every tool call is a step of the open transaction in scope.

Install with the ``pydantic-ai`` extra. :class:`TransactionToolset` offers the actions
of an :class:`~aumai_transactions.Actions` registry as tools; an ``Agent`` given it
runs inside ``async with manager.transaction() as tx:``, and each tool call becomes a
step of ``tx``:

- with the compensation its action was registered with (a read-only action's steps are
  recorded with nothing to undo), journaled like any step;
- with PydanticAI's tool call id as the step's idempotency key (``ctx.idempotency_key``
  in the action): a call id seen before in the transaction returns the recorded result
  and does not run again, so an effect happens once per distinct call and is
  compensated once;
- the tool calls of one model response, which PydanticAI runs concurrently, as one
  parallel group.

If the agent run raises (a tool failed, a usage limit, anything), the exception leaves
the block and every effect is compensated, newest first; ``await tx.rollback()`` does
the same on purpose. A tool that raises ``ModelRetry`` asks the model to try again, as
usual: its step is recorded as failed (nothing to undo) and the transaction goes on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._actions import Actions
from ._tool_calls import ToolCallRunner, missing_framework, tool_actions

try:
    from pydantic_ai import ModelRetry, RunContext
    from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool, WrapperToolset
except ModuleNotFoundError as exc:  # pragma: no cover - the extra is not installed
    raise missing_framework("PydanticAI", "pydantic-ai", exc) from exc

__all__ = ["TransactionToolset"]


def _is_model_retry(exc: BaseException) -> bool:
    return isinstance(exc, ModelRetry)


@dataclass(init=False)
class TransactionToolset(WrapperToolset[Any]):
    """The actions of a registry as PydanticAI tools, each call a step of the open
    transaction in scope (see the module docstring).

    ``TransactionToolset(actions, agent_id="travel_agent")`` offers every action that is
    not a compensation (``names=[...]`` chooses); ``agent_id`` is the steps' agent.
    Give it to ``Agent(model, toolsets=[...])`` and run the agent inside
    ``async with manager.transaction():``; outside one, the run is refused with a
    ``RuntimeError`` that says how to open it.
    """

    runner: ToolCallRunner

    def __init__(
        self,
        actions: Actions | None = None,
        *,
        agent_id: str = "agent",
        names: Iterable[str] | None = None,
        wrapped: AbstractToolset[Any] | None = None,
        runner: ToolCallRunner | None = None,
    ) -> None:
        if runner is None:
            if actions is None:
                raise TypeError("TransactionToolset needs the Actions registry of its tools.")
            runner = ToolCallRunner(
                actions,
                agent_id=agent_id,
                framework="PydanticAI",
                run="agent.run(...)",
                retry_error=ModelRetry,
                passes_through=_is_model_retry,
            )
        if wrapped is None:
            # The registered functions' signatures and docstrings make the tool schemas;
            # the calls themselves go through the transaction, never through these.
            chosen = tool_actions(runner.actions, names)
            wrapped = FunctionToolset[Any]([action.tool_function() for action in chosen])
        self.wrapped = wrapped
        self.runner = runner

    async def for_run(self, ctx: RunContext[Any]) -> AbstractToolset[Any]:
        self.runner.open_transaction()  # refuse a run outside a transaction up front
        return await super().for_run(ctx)

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        return await self.runner.call(name, tool_args, ctx.tool_call_id)
