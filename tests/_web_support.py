"""A store holding one transaction of every shape the web view draws, and a server.

Used by the web view's tests (httpx's ASGI transport, the fuzz, the browser). The
rolled-back transaction is run by the engine (a parallel group whose third step
fails while its siblings run); the others are written as the engine would leave them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread

from aumai_transactions import TransactionManager
from aumai_transactions.models import StepStatus, Transaction, TransactionState, utcnow
from aumai_transactions.stores import Store
from aumai_transactions.stores.sqlite import SqliteStore

SECRET = "hunter2-very-secret"
TOKEN_SHAPED = "sk-abcdefghijklmnopqrstuvwx"


async def _ok(action: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"done": action, "session_token": TOKEN_SHAPED}


async def _slow(action: str, data: dict[str, Any]) -> dict[str, Any]:
    await anyio.sleep(0.2)  # cut short by its sibling's failure: never completes
    return {"done": action}


async def _declined(action: str, data: dict[str, Any]) -> None:
    await anyio.sleep(0.02)
    raise RuntimeError(f"card declined: api_key={SECRET}")


HANDLERS = {
    "plan_trip": _ok,
    "book_hotel": _slow,
    "rent_car": _slow,
    "charge_card": _declined,
    "cancel_plan": _ok,
    "cancel_hotel": _ok,
    "return_car": _ok,
    "refund_card": _ok,
    "send_receipt": _ok,
}


def _stored(manager: TransactionManager, agent: str, actions: list[str]) -> Transaction:
    tx = manager.begin(timeout_seconds=300)
    for action in actions:
        manager.add_step(tx, agent, action, {"password": SECRET, "city": "Lisbon"}, None)
    return tx


async def populate(store: Store) -> dict[str, str]:
    """Fill ``store``; returns the id of each kind of transaction by name."""
    manager = TransactionManager(action_handlers=HANDLERS, store=store)
    ids: dict[str, str] = {}
    for n in range(3):
        tx = manager.begin(timeout_seconds=60)
        manager.add_step(tx, "mailer", "send_receipt", {"password": SECRET, "n": n}, None)
        await manager.commit(tx)
        ids[f"committed-{n}"] = tx.transaction_id
    trip = manager.begin(timeout_seconds=60)
    manager.add_step(trip, "planner", "plan_trip", {"to": "Lisbon"}, "cancel_plan")
    manager.add_step(trip, "hotels", "book_hotel", {}, "cancel_hotel", group="bookings")
    manager.add_step(trip, "cars", "rent_car", {}, "return_car", group="bookings")
    manager.add_step(
        trip, "payments", "charge_card", {"card_number": "4111"}, "refund_card", group="bookings"
    )
    result = await manager.commit(trip)
    assert result.state is TransactionState.ROLLED_BACK, result
    ids["rolled_back"] = trip.transaction_id

    stuck = _stored(manager, "payments", ["charge_card", "send_receipt"])
    first, second = stuck.steps
    now = utcnow()
    for step, status in ((first, StepStatus.COMPENSATION_FAILED), (second, StepStatus.FAILED)):
        step.status = status
        step.attempts = 1
        step.started_at = now - timedelta(seconds=3)
        step.finished_at = now - timedelta(seconds=2)
    first.compensating_action = "refund_card"
    first.compensation_attempts = 3
    first.compensation_error = f"refund failed: Authorization: Bearer {TOKEN_SHAPED}"
    second.error = "mail server down"
    stuck.state = TransactionState.COMPENSATION_FAILED
    stuck.error = "mail server down"
    stuck.finished_at = now
    await store.save(stuck)
    ids["compensation_failed"] = stuck.transaction_id

    for name, owner, ttl, blocked in (
        ("active_live", "worker-1", 600.0, None),
        ("active_lapsed", "worker-2", -60.0, None),
        ("blocked", "worker-3", -60.0, "recovery blocked: no handler for 'book_hotel'"),
    ):
        tx = _stored(manager, "hotels", ["book_hotel"])
        tx.state = TransactionState.ACTIVE
        tx.steps[0].status = StepStatus.RUNNING
        tx.steps[0].attempts = 1
        tx.steps[0].started_at = utcnow()
        lease = await store.acquire(tx, owner, ttl, [TransactionState.PENDING])
        if blocked is not None:
            tx.blocked_reason = blocked
            await store.record(lease, tx)
        ids[name] = tx.transaction_id
    return ids


@contextmanager
def served_store(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A real uvicorn server over a populated SQLite store at ``path``, on a free
    port, in a thread of its own; yields its base URL and the ids by name."""
    import uvicorn

    from aumai_transactions.web import build_app

    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with SqliteStore(path) as store:
            box["ids"] = await populate(store)
            config = uvicorn.Config(
                build_app(store), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
            )
            server = uvicorn.Server(config)
            box["server"] = server
            async with anyio.create_task_group() as group:
                group.start_soon(server.serve)
                while not server.started:
                    await anyio.sleep(0.01)
                box["port"] = server.servers[0].sockets[0].getsockname()[1]
                ready.set()

    def run() -> None:
        try:
            anyio.run(serve)
        except BaseException as exc:  # reported to the test thread
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="web-server", daemon=True)
    thread.start()
    if not ready.wait(30) or "error" in box:
        raise RuntimeError(f"the web server did not start: {box.get('error')!r}")
    try:
        yield f"http://127.0.0.1:{box['port']}", box["ids"]
    finally:
        box["server"].should_exit = True
        thread.join(30)
