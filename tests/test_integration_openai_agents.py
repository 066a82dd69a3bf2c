"""The OpenAI Agents SDK adapter, driven offline by the SDK's own ScriptedModel.

No network and no API key: the model is in-process, and tracing is off for every run
(and its processors replaced by one that records, so a test fails should a trace be
produced at all, let alone exported).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, UserError
from agents.testing import ScriptedModel, assistant_message, function_call
from agents.tracing import TracingProcessor, set_trace_processors

from aumai_transactions import StepFailedError, StepStatus, TransactionManager, TransactionState
from aumai_transactions.integrations.openai_agents import transaction_tools

from .test_integration_pydantic_ai import trip

NO_TRACING = RunConfig(tracing_disabled=True)


class _RecordingProcessor(TracingProcessor):
    def __init__(self) -> None:
        self.seen: list[object] = []

    def on_trace_start(self, trace: Any) -> None:
        self.seen.append(trace)

    def on_trace_end(self, trace: Any) -> None:
        self.seen.append(trace)

    def on_span_start(self, span: Any) -> None:
        self.seen.append(span)

    def on_span_end(self, span: Any) -> None:
        self.seen.append(span)

    def shutdown(self) -> None: ...

    def force_flush(self) -> None: ...


@pytest.fixture(autouse=True)
def no_trace_export() -> Iterator[None]:
    """Replace the SDK's exporter (which would upload traces) by a recorder."""
    recorder = _RecordingProcessor()
    set_trace_processors([recorder])
    yield
    assert recorder.seen == []


def agent_with(tools: list[Any], *turns: list[Any]) -> tuple[Agent[Any], ScriptedModel]:
    model = ScriptedModel([*turns, [assistant_message("done")]])
    return Agent(name="travel_agent", model=model, tools=tools), model


async def test_tool_calls_of_one_response_are_a_group_and_a_failure_compensates_all() -> None:
    log: list[Any] = []
    actions = trip(log)
    agent, _ = agent_with(
        transaction_tools(actions, agent_id="travel_agent"),
        [function_call("search_flights", {"destination": "LIS"}, call_id="c0")],
        [
            function_call("hold_flight", {"flight": "FR8342"}, call_id="c1"),
            function_call("book_hotel", {"hotel": "Casa Azul"}, call_id="c2"),
        ],
        [function_call("charge_card", {"amount": 900}, call_id="c3")],
    )
    manager = TransactionManager(actions)
    with pytest.raises(UserError) as info:
        async with manager.transaction() as tx:
            await Runner.run(agent, "Book me a trip", run_config=NO_TRACING)
    # The SDK wraps what a tool raised; the step's failure is its cause.
    assert isinstance(info.value.__cause__, StepFailedError)
    assert "card declined" in str(info.value)
    steps = tx.transaction.steps
    assert [(s.action, s.key, s.status) for s in steps] == [
        ("search_flights", "c0", StepStatus.COMPLETED),  # read-only: nothing to undo
        ("hold_flight", "c1", StepStatus.COMPENSATED),
        ("book_hotel", "c2", StepStatus.COMPENSATED),
        ("charge_card", "c3", StepStatus.FAILED),
    ]
    assert steps[1].group == steps[2].group is not None and steps[0].group is None
    assert log[-2:] == [("cancel_hotel", "Casa Azul"), ("release_flight", {"hold": "H-FR8342"})]
    assert tx.result is not None and tx.result.state is TransactionState.ROLLED_BACK


async def test_a_call_id_seen_again_runs_once_and_the_model_gets_the_recorded_result() -> None:
    log: list[Any] = []
    actions = trip(log)
    agent, model = agent_with(
        transaction_tools(actions),
        [function_call("hold_flight", {"flight": "FR8342"}, call_id="c1")],
        [function_call("hold_flight", {"flight": "FR8342"}, call_id="c1")],
    )
    async with TransactionManager(actions).transaction() as tx:
        result = await Runner.run(agent, "Hold a seat", run_config=NO_TRACING)
        await tx.rollback()
    assert result.final_output == "done"
    assert log == [("hold_flight", "FR8342", "c1"), ("release_flight", {"hold": "H-FR8342"})]
    assert [s.key for s in tx.transaction.steps] == ["c1"]
    last_input = str(model.calls[-1].input)
    assert "H-FR8342" in last_input  # both calls returned the hold to the model


async def test_outside_an_open_transaction_a_tool_call_says_how_to_open_one() -> None:
    log: list[Any] = []
    agent, _ = agent_with(
        transaction_tools(trip(log)),
        [function_call("hold_flight", {"flight": "FR8342"}, call_id="c1")],
    )
    with pytest.raises(UserError) as info:
        await Runner.run(agent, "Hold a seat", run_config=NO_TRACING)
    assert isinstance(info.value.__cause__, RuntimeError)
    message = str(info.value)
    assert "'hold_flight' was called outside an open transaction" in message
    assert "async with manager.transaction() as tx: await Runner.run(agent, ...)" in message
    assert log == []


def test_the_tools_are_the_registered_actions_without_their_compensations() -> None:
    tools = {tool.name: tool for tool in transaction_tools(trip([]))}
    assert sorted(tools) == ["book_hotel", "charge_card", "hold_flight", "search_flights"]
    search = tools["search_flights"]
    assert search.description == "Find flights to a destination."
    assert search.params_json_schema["required"] == ["destination"]
    assert "ctx" not in tools["hold_flight"].params_json_schema["properties"]
    only = transaction_tools(trip([]), names=["charge_card"])
    assert [tool.name for tool in only] == ["charge_card"]
    with pytest.raises(ValueError, match="'fly' is not a registered action"):
        transaction_tools(trip([]), names=["fly"])
