"""Book a trip as a saga: a flight, a hotel and a rental car, or none of them.

The saga is declared once and executed twice. The agency has one car left at the
destination: the first trip gets it and commits; the second trip finds no car, so its
hotel and flight bookings are cancelled, in reverse order. Run it with
``python examples/travel_booking.py``.
"""

import asyncio

from aumai_transactions import SagaOrchestrator, TransactionManager

cars_left = {"LIS": 1}


async def book_flight(action, data):
    print(f"  {action}: {data['flight']}")
    return {"booking": f"FL-{data['flight']}"}


async def cancel_flight(action, data):
    print(f"  {action}: {data['flight']}")


async def book_hotel(action, data):
    print(f"  {action}: {data['hotel']}, {data['nights']} nights")
    return {"booking": f"HT-{data['hotel']}"}


async def cancel_hotel(action, data):
    print(f"  {action}: {data['hotel']}")


async def rent_car(action, data):
    print(f"  {action}: at {data['city']}")
    if cars_left[data["city"]] == 0:
        raise RuntimeError(f"no cars left at {data['city']}")
    cars_left[data["city"]] -= 1
    return {"booking": f"CAR-{data['city']}"}


async def return_car(action, data):
    print(f"  {action}: at {data['city']}")
    cars_left[data["city"]] += 1


async def main():
    manager = TransactionManager(
        action_handlers={
            "book_flight": book_flight,
            "cancel_flight": cancel_flight,
            "book_hotel": book_hotel,
            "cancel_hotel": cancel_hotel,
            "rent_car": rent_car,
            "return_car": return_car,
        }
    )
    saga = SagaOrchestrator(manager)
    saga.register("flight_agent", "book_flight", {"flight": "TP1351"}, "cancel_flight")
    saga.register("hotel_agent", "book_hotel", {"hotel": "Alfama Inn", "nights": 3}, "cancel_hotel")
    saga.register("car_agent", "rent_car", {"city": "LIS"}, "return_car")

    for trip in ("first", "second"):
        print(f"Booking the {trip} trip")
        result = await saga.execute(timeout_seconds=60)
        tx = manager.get_transaction(result.transaction_id)
        action_of = {step.step_id: step.action for step in tx.steps}
        print(f"state:           {result.state.value}")
        print(f"completed_steps: {[action_of[step_id] for step_id in result.completed_steps]}")
        print(f"failed_step:     {action_of.get(result.failed_step)}")
        print(f"error:           {result.error}")
        print()
    print(f"cars left at LIS: {cars_left['LIS']}")


if __name__ == "__main__":
    asyncio.run(main())
