"""OpenAI Agents SDK: function tools whose every call is a step of the open transaction.

Install with the ``openai-agents`` extra. :func:`transaction_tools` turns the actions of
an :class:`~aumai_transactions.Actions` registry into ``FunctionTool``\\ s; an ``Agent``
given them runs inside ``async with manager.transaction() as tx:``, and each call
becomes a step of ``tx``, with the rules of every adapter: the registered compensation
(none for a read-only action), the SDK's tool call id as the idempotency key (a call id
seen before returns the recorded result and does not run again), and the calls the
SDK runs at the same time (one model response's) as one parallel group.

If the run raises, the exception leaves the block and every effect is compensated,
newest first. The SDK wraps an exception raised by a tool in its ``UserError``
("Error running tool ..."), with the step's :class:`~aumai_transactions.StepFailedError`
as its ``__cause__``. A call cut short because a call next to it failed returns a
message saying so to the model instead (the SDK's way of telling the model a tool did
not work), and its step is compensated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from .._actions import Action, Actions
from ._tool_calls import ToolCallRunner, missing_framework, tool_actions

try:
    from agents import FunctionTool, ModelBehaviorError
    from agents.function_schema import function_schema
    from agents.tool_context import ToolContext
except ModuleNotFoundError as exc:  # pragma: no cover - the extra is not installed
    raise missing_framework("the OpenAI Agents SDK", "openai-agents", exc) from exc

__all__ = ["transaction_tools"]


class _TellTheModel(Exception):
    """A call that did not run: its message goes back to the model as the tool output."""


def _never(exc: BaseException) -> bool:
    return False


def transaction_tools(
    actions: Actions, *, agent_id: str = "agent", names: Iterable[str] | None = None
) -> list[FunctionTool]:
    """The actions of ``actions`` as ``FunctionTool``\\ s, each call a step of the open
    transaction in scope (see the module docstring).

    Every action that is not a compensation becomes a tool (``names=[...]`` chooses);
    the schema comes from the function's signature and docstring, without its
    ``StepContext`` parameter. ``agent_id`` is the steps' agent. Called outside an open
    transaction, a tool raises a ``RuntimeError`` that says how to open one.
    """
    runner = ToolCallRunner(
        actions,
        agent_id=agent_id,
        framework="OpenAI Agents SDK",
        run="Runner.run(agent, ...)",
        retry_error=_TellTheModel,
        passes_through=_never,
    )
    return [_function_tool(runner, action) for action in tool_actions(actions, names)]


def _function_tool(runner: ToolCallRunner, action: Action[..., Any]) -> FunctionTool:
    schema = function_schema(action.tool_function(), name_override=action.name)
    model = schema.params_pydantic_model
    name = action.name

    async def invoke(ctx: ToolContext[Any], arguments: str) -> Any:
        try:
            parsed = model.model_validate(json.loads(arguments) if arguments else {})
        except (ValueError, ValidationError) as exc:
            raise ModelBehaviorError(f"Invalid JSON input for tool {name}: {exc}") from exc
        data = parsed.model_dump(mode="json")
        try:
            return await runner.call(name, data, ctx.tool_call_id)
        except _TellTheModel as told:
            return str(told)

    return FunctionTool(
        name=name,
        description=schema.description or "",
        params_json_schema=schema.params_json_schema,
        on_invoke_tool=invoke,
        strict_json_schema=True,
    )
