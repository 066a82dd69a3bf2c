"""The PydanticAI adapter, driven offline by PydanticAI's own FunctionModel."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from aumai_transactions import (
    Actions,
    StepContext,
    StepFailedError,
    StepStatus,
    TransactionManager,
    TransactionState,
)
from aumai_transactions.integrations.pydantic_ai import TransactionToolset

Turn = list[ToolCallPart]


def trip(log: list[Any]) -> Actions:
    """Travel actions that append what they did (and the key they got) to ``log``."""
    actions = Actions()

    @actions.action(effect="read_only")
    def search_flights(destination: str) -> list[str]:
        """Find flights to a destination.

        Args:
            destination: the airport code.
        """
        log.append(("search_flights", destination))
        return ["FR8342", "TP1351"]

    @actions.action(compensate="release_flight")
    def hold_flight(flight: str, ctx: StepContext) -> dict[str, str]:
        """Hold a seat on a flight."""
        log.append(("hold_flight", flight, ctx.idempotency_key))
        return {"hold": f"H-{flight}"}

    @actions.action()
    def release_flight(result: dict[str, str] | None) -> None:
        log.append(("release_flight", result))

    @actions.action(compensate="cancel_hotel")
    async def book_hotel(hotel: str, ctx: StepContext) -> str:
        """Book a hotel room."""
        log.append(("book_hotel", hotel, ctx.idempotency_key))
        if hotel == "Full House":
            raise ModelRetry("Full House has no rooms left; pick another hotel.")
        return f"R-{hotel}"

    @book_hotel.compensation
    async def cancel_hotel(hotel: str) -> None:
        log.append(("cancel_hotel", hotel))

    @actions.action(compensate="refund_card")
    def charge_card(amount: int) -> str:
        """Charge the card."""
        log.append(("charge_card", amount))
        if amount > 500:
            raise RuntimeError("card declined")
        return "ch-1"

    @charge_card.compensation
    def refund_card(amount: int) -> None:
        log.append(("refund_card", amount))

    return actions


def scripted(turns: list[Turn], seen: list[list[ModelMessage]] | None = None) -> FunctionModel:
    """A model that makes each turn's tool calls in order, then answers "done"."""
    remaining = list(turns)

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if seen is not None:
            seen.append(list(messages))
        if remaining:
            return ModelResponse(parts=list(remaining.pop(0)))
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(respond)


def call(name: str, call_id: str, **args: Any) -> ToolCallPart:
    return ToolCallPart(name, args, tool_call_id=call_id)


def agent_for(actions: Actions, model: FunctionModel) -> Agent[None, str]:
    return Agent(model, toolsets=[TransactionToolset(actions, agent_id="travel_agent")])


def returns(messages: list[ModelMessage]) -> dict[str, Any]:
    """What each tool call returned to the model, by call id."""
    return {
        part.tool_call_id: part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }


async def test_two_tool_calls_of_one_response_run_as_one_parallel_group() -> None:
    log: list[Any] = []
    actions = trip(log)
    seen: list[list[ModelMessage]] = []
    turns = [
        [call("search_flights", "c0", destination="LIS")],
        [call("hold_flight", "c1", flight="FR8342"), call("book_hotel", "c2", hotel="Casa Azul")],
    ]
    manager = TransactionManager(actions)
    async with manager.transaction() as tx:
        result = await agent_for(actions, scripted(turns, seen)).run("Book me a trip to Lisbon")
    assert result.output == "done"
    steps = tx.transaction.steps
    assert [(s.action, s.key, s.agent_id) for s in steps] == [
        ("search_flights", "c0", "travel_agent"),
        ("hold_flight", "c1", "travel_agent"),
        ("book_hotel", "c2", "travel_agent"),
    ]
    assert steps[0].group is None and steps[1].group == steps[2].group is not None
    assert [s.compensating_action for s in steps] == [None, "release_flight", "cancel_hotel"]
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED
    assert returns(seen[-1]) == {
        "c0": ["FR8342", "TP1351"],
        "c1": {"hold": "H-FR8342"},
        "c2": "R-Casa Azul",
    }
    # The tool call id is the idempotency key each action saw.
    assert ("hold_flight", "FR8342", "c1") in log and ("book_hotel", "Casa Azul", "c2") in log


async def test_a_tool_that_raises_fails_the_run_and_everything_is_compensated_newest_first() -> (
    None
):
    log: list[Any] = []
    actions = trip(log)
    turns = [
        [call("hold_flight", "c1", flight="FR8342")],
        [call("book_hotel", "c2", hotel="Casa Azul")],
        [call("charge_card", "c3", amount=900)],
    ]
    manager = TransactionManager(actions)
    with pytest.raises(StepFailedError, match="card declined"):
        async with manager.transaction() as tx:
            await agent_for(actions, scripted(turns)).run("Book and pay")
    assert log == [
        ("hold_flight", "FR8342", "c1"),
        ("book_hotel", "Casa Azul", "c2"),
        ("charge_card", 900),
        ("cancel_hotel", "Casa Azul"),
        ("release_flight", {"hold": "H-FR8342"}),
    ]
    assert tx.result is not None and tx.result.state is TransactionState.ROLLED_BACK
    statuses = [s.status for s in tx.transaction.steps]
    assert statuses == [StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.FAILED]


async def test_a_call_id_seen_again_has_its_effect_once_and_is_compensated_once() -> None:
    log: list[Any] = []
    actions = trip(log)
    seen: list[list[ModelMessage]] = []
    turns = [
        [call("hold_flight", "c1", flight="FR8342")],
        [call("hold_flight", "c1", flight="FR8342")],  # the model repeats the same call
        [call("hold_flight", "c2", flight="FR8342")],  # a distinct call: a second hold
    ]
    manager = TransactionManager(actions)
    async with manager.transaction() as tx:
        await agent_for(actions, scripted(turns, seen)).run("Hold a seat")
        await tx.rollback()  # the code decides against the trip
    assert log == [
        ("hold_flight", "FR8342", "c1"),
        ("hold_flight", "FR8342", "c2"),
        ("release_flight", {"hold": "H-FR8342"}),
        ("release_flight", {"hold": "H-FR8342"}),
    ]
    assert [s.key for s in tx.transaction.steps] == ["c1", "c2"]
    assert tx.result is not None and tx.result.state is TransactionState.ROLLED_BACK
    # The repeated call got the recorded result, as if it had run.
    request_after_repeat = seen[2][-1]
    assert isinstance(request_after_repeat, ModelRequest)
    assert returns([request_after_repeat]) == {"c1": {"hold": "H-FR8342"}}


async def test_model_retry_asks_the_model_again_and_the_transaction_goes_on() -> None:
    log: list[Any] = []
    actions = trip(log)
    seen: list[list[ModelMessage]] = []
    turns = [
        [call("book_hotel", "c1", hotel="Full House")],
        [call("book_hotel", "c2", hotel="Casa Azul")],
    ]
    manager = TransactionManager(actions)
    async with manager.transaction() as tx:
        await agent_for(actions, scripted(turns, seen)).run("Book a hotel")
    (told,) = seen[1][-1].parts  # the request after the first turn
    assert isinstance(told, ToolReturnPart) and told.outcome == "retried"
    assert told.content == "Full House has no rooms left; pick another hotel."
    assert [(s.key, s.status) for s in tx.transaction.steps] == [
        ("c1", StepStatus.FAILED),
        ("c2", StepStatus.COMPLETED),
    ]
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED


async def test_a_retry_in_a_group_cancels_its_sibling_which_is_undone_and_retried() -> None:
    log: list[Any] = []
    actions = trip(log)
    seen: list[list[ModelMessage]] = []
    turns = [
        [call("hold_flight", "c1", flight="FR8342"), call("book_hotel", "c2", hotel="Full House")],
        [call("book_hotel", "c3", hotel="Casa Azul")],
    ]
    manager = TransactionManager(actions)
    async with manager.transaction() as tx:
        await agent_for(actions, scripted(turns, seen)).run("Book")
    told = returns(seen[1])
    assert "no rooms left" in str(told["c2"])
    # The hold ran (a sync action in a worker thread) or was cut short: either way the
    # model is told it is undone, and it is compensated before the commit.
    steps = {s.key: s for s in tx.transaction.steps}
    if steps["c1"].status is StepStatus.COMPLETED:
        assert told["c1"] == {"hold": "H-FR8342"}
    else:
        assert "was cancelled because 'book_hotel'" in str(told["c1"])
        assert steps["c1"].status is StepStatus.COMPENSATED
    assert steps["c3"].status is StepStatus.COMPLETED
    assert tx.result is not None and tx.result.state is TransactionState.COMMITTED


async def test_outside_an_open_transaction_the_run_is_refused_saying_how_to_open_one() -> None:
    log: list[Any] = []
    agent = agent_for(trip(log), scripted([[call("hold_flight", "c1", flight="FR8342")]]))
    with pytest.raises(RuntimeError) as info:
        await agent.run("Hold a seat")
    message = str(info.value)
    assert "outside an open transaction" in message
    assert "async with manager.transaction() as tx:" in message
    assert log == []


def test_the_tools_are_the_actions_that_are_not_compensations() -> None:
    actions = trip([])
    seen: list[AgentInfo] = []

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.append(info)
        return ModelResponse(parts=[TextPart("done")])

    manager = TransactionManager(actions)

    async def run(toolset: TransactionToolset) -> None:
        async with manager.transaction():
            await Agent(FunctionModel(respond), toolsets=[toolset]).run("hi")

    anyio.run(run, TransactionToolset(actions))
    tools = {tool.name: tool for tool in seen[-1].function_tools}
    assert sorted(tools) == ["book_hotel", "charge_card", "hold_flight", "search_flights"]
    schema = tools["search_flights"].parameters_json_schema
    assert schema["required"] == ["destination"]
    assert schema["properties"]["destination"]["description"] == "the airport code."
    assert "ctx" not in tools["hold_flight"].parameters_json_schema["properties"]
    assert tools["hold_flight"].description == "Hold a seat on a flight."
    anyio.run(run, TransactionToolset(actions, names=["search_flights"]))
    assert [tool.name for tool in seen[-1].function_tools] == ["search_flights"]
    with pytest.raises(ValueError, match="'fly' is not a registered action"):
        TransactionToolset(actions, names=["fly"])
    with pytest.raises(TypeError, match="must be an Actions registry"):
        TransactionToolset({"a": print})  # type: ignore[arg-type]


async def test_the_deadline_during_a_group_compensates_what_ran_and_what_was_cut_short() -> None:
    log: list[Any] = []
    actions = trip(log)

    @actions.action(compensate="cancel_transfer")
    async def book_transfer(at: str) -> str:
        log.append(("book_transfer", at))
        await anyio.sleep(30)  # never returns: the deadline comes first
        return "TR-1"

    @actions.action()
    def cancel_transfer(at: str, result: str | None) -> None:
        log.append(("cancel_transfer", at, result))

    turns = [
        [call("hold_flight", "c1", flight="FR8342")],
        [call("book_transfer", "c2", at="LIS"), call("book_hotel", "c3", hotel="Casa Azul")],
    ]
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out after 0.3s"):
        async with TransactionManager(actions).transaction(timeout_seconds=0.3) as tx:
            await agent_for(actions, scripted(turns)).run("Book")
    assert time.monotonic() - started < 5
    assert log[-3:] == [
        ("cancel_hotel", "Casa Azul"),
        ("cancel_transfer", "LIS", None),  # cut short: in doubt, so undone
        ("release_flight", {"hold": "H-FR8342"}),
    ]
    steps = {s.key: s for s in tx.transaction.steps}
    assert steps["c2"].interrupted and steps["c2"].status is StepStatus.COMPENSATED
    assert tx.result is not None and tx.result.state is TransactionState.FAILED
