"""A transaction that runs out of time: the slow step is cancelled, the rest undone.

The transaction has half a second. Reserving a seat is quick; generating the ticket
would take ten seconds. At the deadline the ticket step is cancelled, the seat that was
reserved is released, and the transaction ends ``failed``, about half a second after it
started. Run it with ``python examples/timeout.py``.
"""

import asyncio
import time

from aumai_transactions import TransactionManager


async def reserve_seat(action, data):
    print(f"  {action}: {data['seat']}")


async def release_seat(action, data):
    print(f"  {action}: {data['seat']}")


async def issue_ticket(action, data):
    print(f"  {action}: started for {data['seat']} (needs 10 s)")
    await asyncio.sleep(10)
    print(f"  {action}: finished")  # never printed: the deadline comes first


async def main():
    manager = TransactionManager(
        action_handlers={
            "reserve_seat": reserve_seat,
            "release_seat": release_seat,
            "issue_ticket": issue_ticket,
        }
    )
    tx = manager.begin(timeout_seconds=0.5)
    manager.add_step(tx, "seat_agent", "reserve_seat", {"seat": "14C"}, "release_seat")
    manager.add_step(tx, "ticket_agent", "issue_ticket", {"seat": "14C"})

    print("Booking seat 14C with a 0.5 s budget")
    started = time.monotonic()
    result = await manager.commit(tx)
    elapsed = time.monotonic() - started

    print(f"state:           {result.state.value}")
    print(f"error:           {result.error}")
    print(f"returned after:  {elapsed:.1f} s")
    for step in tx.steps:
        print(f"step {step.action}: {step.status.value}")


if __name__ == "__main__":
    asyncio.run(main())
