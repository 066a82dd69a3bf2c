"""An agent books a trip in an open transaction: each step is chosen from the last result.

The agent searches for flights, picks the cheapest from what the search returned,
holds it, books a hotel and a car at the same time (a parallel group), then charges
the card. The first traveller's card goes through and the trip commits; the second
traveller's card is declined, so the car, the hotel and the flight hold are undone,
newest first. Run it with ``python examples/agent_booking.py``.
"""

import asyncio

from aumai_transactions import StepFailedError, TransactionManager


async def search_flights(action, data):
    print(f"  {action}: {data['origin']} -> {data['destination']}")
    return [
        {"flight": "TP1350", "price": 214},
        {"flight": "FR8342", "price": 96},
        {"flight": "U27612", "price": 131},
    ]


async def hold_flight(action, data):
    print(f"  {action}: {data['flight']} for {data['traveller']}")
    await asyncio.sleep(0.01)
    return {"hold": f"H-{data['flight']}"}


async def release_flight(action, data):
    print(f"  {action}: {data['flight']}")


async def book_hotel(action, data):
    print(f"  {action}: {data['hotel']} (started)")
    await asyncio.sleep(0.01)
    return {"booking": "HT-1"}


async def cancel_hotel(action, data):
    print(f"  {action}: {data['hotel']}")


async def rent_car(action, data):
    print(f"  {action}: at {data['city']} (started)")
    await asyncio.sleep(0.01)
    return {"booking": "CAR-1"}


async def return_car(action, data):
    print(f"  {action}: at {data['city']}")


async def charge_card(action, data):
    print(f"  {action}: EUR {data['amount']} on {data['card']}")
    if data["card"].endswith("0002"):
        raise RuntimeError("card declined")
    return {"charge": "ch-1"}


HANDLERS = {
    "search_flights": search_flights,
    "hold_flight": hold_flight,
    "release_flight": release_flight,
    "book_hotel": book_hotel,
    "cancel_hotel": cancel_hotel,
    "rent_car": rent_car,
    "return_car": return_car,
    "charge_card": charge_card,
}


async def book_trip(manager, traveller, card):
    print(f"Booking a trip for {traveller}")
    async with manager.transaction(timeout_seconds=30) as tx:
        options = await tx.run(
            "search_agent", "search_flights", {"origin": "BER", "destination": "LIS"}
        )
        cheapest = min(options, key=lambda option: option["price"])
        flight = cheapest["flight"]
        await tx.run(
            "flight_agent",
            "hold_flight",
            {"flight": flight, "traveller": traveller},
            "release_flight",
        )
        async with tx.parallel() as lodging:  # hotel and car at the same time
            lodging.run("hotel_agent", "book_hotel", {"hotel": "Casa Azul"}, "cancel_hotel")
            lodging.run("car_agent", "rent_car", {"city": "LIS"}, "return_car")
        await tx.run(
            "billing_agent", "charge_card", {"amount": cheapest["price"] + 180, "card": card}
        )
    return tx


async def main():
    manager = TransactionManager(action_handlers=HANDLERS)

    tx = await book_trip(manager, "Ana", "4242-4242-4242-4242")
    print(f"state: {tx.result.state.value}")
    print()

    try:
        await book_trip(manager, "Rui", "4000-0000-0000-0002")
    except StepFailedError as failure:
        result = failure.result
        steps = manager.get_transaction(result.transaction_id).steps
        by_id = {step.step_id: step for step in steps}
        # completed_steps is the order they were undone in; the search had nothing to undo.
        undone = [by_id[step_id] for step_id in result.completed_steps]
        print(f"state: {result.state.value}")
        print(f"error: {result.error}")
        print(f"undone, newest first: {[s.action for s in undone if s.compensating_action]}")


if __name__ == "__main__":
    asyncio.run(main())
