"""A PydanticAI agent books a trip; every tool call is a step of one transaction.

The actions are registered once, each with what undoes it. The agent (a scripted
``FunctionModel``, so this runs offline with no API key) searches flights (read-only),
holds the cheapest, books a hotel and rents a car in one turn (two tool calls in one
response: a parallel group), then charges the card. The charge is declined, the agent
run raises, and leaving the transaction block undoes the car, the hotel and the flight
hold, newest first. Needs the ``pydantic-ai`` extra; run it with
``python examples/travel_agent.py``.
"""

import asyncio

from pydantic_ai import Agent
from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import FunctionModel

from aumai_transactions import Actions, StepContext, StepFailedError, TransactionManager
from aumai_transactions.integrations.pydantic_ai import TransactionToolset

actions = Actions()


@actions.action(effect="read_only")
async def search_flights(origin: str, destination: str) -> list[dict]:
    """Find flights between two airports."""
    print(f"  search_flights: {origin} -> {destination}")
    return [{"flight": "TP1350", "price": 214}, {"flight": "FR8342", "price": 96}]


@actions.action(compensate="release_flight")
async def hold_flight(flight: str, ctx: StepContext) -> dict:
    """Hold a seat on a flight."""
    print(f"  hold_flight: {flight} (tool call {ctx.idempotency_key})")
    return {"hold": f"H-{flight}"}


@actions.action()
async def release_flight(flight: str, result: dict | None) -> None:
    print(f"  release_flight: {flight}, hold {result['hold'] if result else 'never made'}")


@actions.action(compensate="cancel_hotel")
async def book_hotel(hotel: str, nights: int) -> dict:
    """Book a hotel room."""
    print(f"  book_hotel: {hotel}, {nights} nights")
    return {"booking": "HT-1"}


@book_hotel.compensation
async def cancel_hotel(hotel: str) -> None:
    print(f"  cancel_hotel: {hotel}")


@actions.action(compensate="return_car")
async def rent_car(city: str) -> dict:
    """Rent a car."""
    print(f"  rent_car: at {city}")
    return {"booking": "CAR-1"}


@rent_car.compensation
async def return_car(city: str) -> None:
    print(f"  return_car: at {city}")


@actions.action(compensate="refund_card")
async def charge_card(amount: int, card: str) -> dict:
    """Charge the traveller's card."""
    print(f"  charge_card: EUR {amount} on {card}")
    raise RuntimeError("card declined")


@charge_card.compensation
async def refund_card(amount: int, card: str) -> None:
    print(f"  refund_card: EUR {amount}")


def last_tool_result(messages):
    """What the last tool call returned to the model."""
    request = messages[-1]
    assert isinstance(request, ModelRequest)
    return request.parts[-1].content


def travel_model(messages, info):
    """The model, scripted: one turn per model request, deciding from what tools returned."""
    turn = sum(isinstance(message, ModelResponse) for message in messages)
    if turn == 0:
        calls = [ToolCallPart("search_flights", {"origin": "BER", "destination": "LIS"}, "c1")]
    elif turn == 1:
        cheapest = min(last_tool_result(messages), key=lambda option: option["price"])
        calls = [ToolCallPart("hold_flight", {"flight": cheapest["flight"]}, "c2")]
    elif turn == 2:  # two tool calls in one response: they run at the same time
        calls = [
            ToolCallPart("book_hotel", {"hotel": "Casa Azul", "nights": 3}, "c3"),
            ToolCallPart("rent_car", {"city": "LIS"}, "c4"),
        ]
    elif turn == 3:
        calls = [ToolCallPart("charge_card", {"amount": 276, "card": "4000-0000-0000-0002"}, "c5")]
    else:
        return ModelResponse(parts=[TextPart("Your trip is booked.")])
    return ModelResponse(parts=calls)


agent = Agent(
    FunctionModel(travel_model), toolsets=[TransactionToolset(actions, agent_id="travel")]
)


async def main():
    manager = TransactionManager(actions)
    print("Booking a trip to Lisbon")
    try:
        async with manager.transaction(timeout_seconds=60) as tx:
            await agent.run("Book me three nights in Lisbon, with a car.")
    except StepFailedError as exc:
        print(f"the agent run failed: {exc.step.action}: {exc.step.error}")
    print(f"state: {tx.result.state.value}")
    print("ledger (tool call, action, status):")
    for step in tx.transaction.steps:
        together = " (parallel)" if step.group else ""
        print(f"  {step.key}  {step.action:<15} {step.status.value}{together}")
    # completed_steps is the order they were undone in; the read-only search is among
    # them, with nothing to undo.
    steps = {step.step_id: step for step in tx.transaction.steps}
    undone = [steps[step_id] for step_id in tx.result.completed_steps]
    print("undone, newest first:", [s.action for s in undone if s.status.value == "compensated"])


asyncio.run(main())
