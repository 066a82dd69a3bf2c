"""The Actions registry: registration, its errors, and what a manager does with it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from aumai_transactions import (
    Actions,
    RetryPolicy,
    SagaOrchestrator,
    StepContext,
    StepStatus,
    TransactionManager,
    TransactionState,
)
from aumai_transactions import sync as blocking
from aumai_transactions.cli._errors import CliError
from aumai_transactions.cli._handlers import check_handlers, load_handlers

from ._support import actions_of


def travel(log: list[Any]) -> Actions:
    """A registry of a trip's actions; each appends what it did to ``log``."""
    actions = Actions()

    @actions.action(effect="read_only")
    def search_flights(origin: str, to: str) -> list[str]:
        log.append(("search_flights", origin, to))
        return ["FR8342", "TP1351"]

    @actions.action(retry=RetryPolicy(max_attempts=3, initial_delay=0, jitter=0))
    async def hold_flight(flight: str, ctx: StepContext) -> dict[str, str]:
        log.append(("hold_flight", flight, ctx.attempt))
        if ctx.attempt < 2:
            raise ConnectionError("airline timeout")
        return {"hold": f"H-{flight}"}

    @hold_flight.compensation
    def release_flight(result: dict[str, str] | None) -> None:
        log.append(("release_flight", result))

    @actions.action("book_hotel", compensate="cancel_hotel", idempotent=True)
    def reserve_room(hotel: str, nights: int = 1) -> str:
        log.append(("book_hotel", hotel, nights))
        return f"R-{hotel}"

    @actions.action()
    async def cancel_hotel(hotel: str, result: str | None) -> None:
        log.append(("cancel_hotel", hotel, result))

    @actions.action(effect="irreversible")
    def send_receipt(to: str) -> None:
        log.append(("send_receipt", to))

    @actions.action(compensate="refund_card")
    def charge_card(amount: int) -> str:
        log.append(("charge_card", amount))
        if amount > 500:
            raise RuntimeError("card declined")
        return "ch-1"

    @actions.action
    def refund_card(amount: int, result: str | None) -> None:
        log.append(("refund_card", amount, result))

    return actions


# ---------------------------------------------------------------------- registering


def test_registered_functions_stay_callable_and_say_what_they_are() -> None:
    actions = travel([])
    assert sorted(actions) == [
        "book_hotel",
        "cancel_hotel",
        "charge_card",
        "hold_flight",
        "refund_card",
        "release_flight",
        "search_flights",
        "send_receipt",
    ]
    hold = actions.get_action("hold_flight")
    assert hold is not None and hold.compensate == "release_flight"
    assert (hold.effect, hold.recovery, hold.retry and hold.retry.max_attempts) == (
        "compensable",
        None,
        3,
    )
    book = actions.get_action("book_hotel")
    assert book is not None and (book.effect, book.recovery) == ("compensable", "resume")
    search = actions.get_action("search_flights")
    assert search is not None and (search.effect, search.compensate) == ("read_only", None)
    receipt = actions.get_action("send_receipt")
    assert receipt is not None and (receipt.effect, receipt.recovery) == (
        "irreversible",
        "compensate",
    )
    assert search.func("BER", "LIS") == ["FR8342", "TP1351"]  # still the function
    assert actions.get_action("charge_card")(amount=5) == "ch-1"  # type: ignore[misc]
    assert "hold_flight" in repr(actions) and "release_flight" in repr(hold)


def test_two_actions_under_one_name_are_refused() -> None:
    actions = Actions()

    @actions.action()
    def book(x: int) -> None: ...

    with pytest.raises(ValueError, match=r"Two actions are registered under the name 'book'"):

        @actions.action("book")
        def other(x: int) -> None: ...


@pytest.mark.parametrize("thing", [42, "book", None])
def test_the_decorator_refuses_what_is_not_callable(thing: Any) -> None:
    with pytest.raises(TypeError, match="decorates a function"):
        Actions().action("x")(thing)


def test_a_compensation_naming_an_unknown_action_is_refused_when_the_registry_is_used() -> None:
    actions = Actions()

    @actions.action(compensate="cancel_flight")
    def book_flight(flight: str) -> None: ...

    @actions.action()
    def cancel_fligt(flight: str) -> None: ...

    with pytest.raises(ValueError) as info:
        TransactionManager(actions)
    message = str(info.value)
    assert "'book_flight' is compensated by 'cancel_flight'" in message
    assert "not a registered action" in message and "cancel_fligt" in message
    with pytest.raises(ValueError, match="cancel_flight"):
        blocking.TransactionManager(actions)


@pytest.mark.parametrize(
    ("register", "message"),
    [
        (lambda a: a.action("")(lambda: None), "An action name must be a non-empty string"),
        (lambda a: a.action()(lambda: None), "has no usable name"),
        (lambda a: a.action("x", effect="undoable")(print), "effect must be one of"),
        (lambda a: a.action("x", compensate="y", effect="read_only")(print), "nothing to undo"),
        (lambda a: a.action("x", compensate="x")(print), "cannot be its own compensation"),
        (lambda a: a.action("x", retry=3)(print), "retry must be a RetryPolicy"),
        (lambda a: a.action("x", idempotent="yes")(print), "idempotent must be True or False"),
    ],
)
def test_registration_errors_name_what_was_wrong(register: Any, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        register(Actions())


def test_a_compensation_is_paired_once_and_only_with_an_action_that_has_an_effect() -> None:
    actions = Actions()

    @actions.action(compensate="lambda_free_undo")
    def do(x: int) -> None: ...

    with pytest.raises(ValueError, match="has a compensation already"):
        do.compensation(print)
    actions.action()(lambda_free_undo)

    @actions.action(effect="irreversible")
    def email(to: str) -> None: ...

    with pytest.raises(ValueError, match="is irreversible"):

        @email.compensation
        def unsend(to: str) -> None: ...

    @actions.action(effect="compensable")
    def reserve(x: int) -> None: ...

    with pytest.raises(ValueError, match="'reserve' is compensable but has no compensation"):
        actions.check()

    @reserve.compensation(name="release")
    def anything(x: int) -> None: ...

    assert actions.get_action("reserve").compensate == "release"  # type: ignore[union-attr]


def lambda_free_undo(x: int) -> None: ...


# ---------------------------------------------------------------------- steps


async def test_steps_get_the_registered_compensation_retry_and_recovery() -> None:
    log: list[Any] = []
    manager = TransactionManager(travel(log))
    tx = manager.begin()
    search = manager.add_step(tx, "agent", "search_flights", {"origin": "BER", "to": "LIS"})
    hold = manager.add_step(tx, "agent", "hold_flight", {"flight": "FR8342"})
    hotel = manager.add_step(tx, "agent", "book_hotel", {"hotel": "Casa Azul"}, "release_flight")
    charge = manager.add_step(tx, "agent", "charge_card", {"amount": 900})
    assert (search.compensating_action, search.recovery) == (None, "resume")
    assert (hold.compensating_action, hold.retry and hold.retry.max_attempts) == (
        "release_flight",
        3,
    )
    assert (hotel.compensating_action, hotel.recovery) == ("release_flight", "resume")  # explicit
    assert charge.compensating_action == "refund_card"
    result = await manager.commit(tx)
    assert result.state is TransactionState.ROLLED_BACK
    assert result.error == "card declined"
    assert log == [
        ("search_flights", "BER", "LIS"),
        ("hold_flight", "FR8342", 1),
        ("hold_flight", "FR8342", 2),  # the registered retry policy
        ("book_hotel", "Casa Azul", 1),
        ("charge_card", 900),
        ("release_flight", "R-Casa Azul"),  # book_hotel's explicit compensation
        ("release_flight", {"hold": "H-FR8342"}),  # the undone step's result
    ]
    # The read-only search is listed as undone, with nothing run for it.
    assert actions_of(tx, result.completed_steps) == ["book_hotel", "hold_flight", "search_flights"]
    assert search.status is StepStatus.COMPLETED


async def test_a_compensation_gets_the_data_it_names_and_the_result() -> None:
    log: list[Any] = []
    manager = TransactionManager(travel(log))
    tx = manager.begin()
    manager.add_step(tx, "agent", "book_hotel", {"hotel": "Alfama Inn", "nights": 3})
    result = await manager.rollback(tx)
    assert result.state is TransactionState.ROLLED_BACK
    assert log == [("cancel_hotel", "Alfama Inn", None)]  # never ran: no result to undo


async def test_data_that_do_not_fit_the_function_are_refused_at_add_step() -> None:
    manager = TransactionManager(travel([]))
    tx = manager.begin()
    with pytest.raises(TypeError) as info:
        manager.add_step(tx, "agent", "book_hotel", {"hotl": "Casa Azul"})
    assert "'book_hotel' do not fit reserve_room(hotel, nights=1): it" in str(info.value)
    assert "no parameter 'hotl'" in str(info.value)
    with pytest.raises(TypeError, match="missing a required argument: 'flight'"):
        manager.add_step(tx, "agent", "hold_flight", {})
    assert tx.steps == []


async def test_the_order_check_warns_and_strict_mode_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    actions = travel([])
    manager = TransactionManager(actions)
    tx = manager.begin()
    manager.add_step(tx, "agent", "hold_flight", {"flight": "FR8342"})
    manager.add_step(tx, "agent", "send_receipt", {"to": "ana@example.com"})
    with caplog.at_level(logging.WARNING, logger="aumai_transactions"):
        manager.add_step(tx, "agent", "search_flights", {"origin": "BER", "to": "LIS"})
        assert caplog.records == []  # read-only after irreversible: nothing to undo anyway
        manager.add_step(tx, "agent", "charge_card", {"amount": 5})
    (record,) = caplog.records
    assert record.getMessage() == (
        "step 'charge_card' (compensable) comes after 'send_receipt', which is irreversible: "
        "if 'charge_card' or a later step fails, 'send_receipt' cannot be undone. "
        "Put irreversible steps last."
    )
    strict = TransactionManager(actions, strict=True)
    tx = strict.begin()
    strict.add_step(tx, "agent", "send_receipt", {"to": "ana@example.com"})
    with pytest.raises(ValueError, match=r"Refused \(strict mode\): step 'charge_card'"):
        strict.add_step(tx, "agent", "charge_card", {"amount": 5})
    assert [s.action for s in tx.steps] == ["send_receipt"]


async def test_strict_mode_refuses_the_order_in_an_open_transaction_before_anything_runs() -> None:
    log: list[Any] = []
    manager = TransactionManager(travel(log), strict=True)
    with pytest.raises(ValueError, match="Put irreversible steps last"):
        async with manager.transaction() as tx:
            await tx.run("agent", "send_receipt", {"to": "ana@example.com"})
            await tx.run("agent", "charge_card", {"amount": 5})
    assert log == [("send_receipt", "ana@example.com")]
    assert tx.result is not None and tx.result.state is TransactionState.ROLLED_BACK
    with pytest.raises(ValueError, match="No handler for action 'unknown'"):
        manager.add_step(manager.begin(), "agent", "unknown")


async def test_a_dict_of_handlers_keeps_working_without_defaults() -> None:
    manager = TransactionManager({"a": lambda action, data: data})
    tx = manager.begin()
    step = manager.add_step(tx, "x", "a", {"k": 1})
    assert (step.compensating_action, step.retry, step.recovery) == (None, None, None)
    assert (await manager.commit(tx)).state is TransactionState.COMMITTED
    assert step.result == {"k": 1}


async def test_sagas_and_open_transactions_get_the_defaults_too() -> None:
    log: list[Any] = []
    actions = travel(log)
    saga = SagaOrchestrator(TransactionManager(actions))
    saga.register("agent", "book_hotel", {"hotel": "Casa Azul"})
    saga.register("agent", "charge_card", {"amount": 900})
    result = await saga.execute()
    assert result.state is TransactionState.ROLLED_BACK
    assert log[-1] == ("cancel_hotel", "Casa Azul", "R-Casa Azul")
    log.clear()
    with pytest.raises(RuntimeError):
        async with TransactionManager(actions).transaction() as tx:
            async with tx.parallel() as group:
                group.run("agent", "book_hotel", {"hotel": "Casa Azul"})
                group.run("agent", "hold_flight", {"flight": "FR8342"})
            raise RuntimeError("the agent gave up")
    assert [s.compensating_action for s in tx.transaction.steps] == [
        "cancel_hotel",
        "release_flight",
    ]
    assert log[-2:] == [
        ("release_flight", {"hold": "H-FR8342"}),
        ("cancel_hotel", "Casa Azul", "R-Casa Azul"),
    ]


def test_the_blocking_facade_takes_the_registry() -> None:
    log: list[Any] = []
    manager = blocking.TransactionManager(blocking.Actions and travel(log))
    tx = manager.begin()
    manager.add_step(tx, "agent", "book_hotel", {"hotel": "Casa Azul"})
    manager.add_step(tx, "agent", "charge_card", {"amount": 900})
    assert manager.commit(tx).state is TransactionState.ROLLED_BACK
    assert log[-1] == ("cancel_hotel", "Casa Azul", "R-Casa Azul")


# ---------------------------------------------------------------------- the CLI


REGISTRY_MODULE = """
from aumai_transactions import Actions

actions = Actions()

@actions.action(compensate="release")
def reserve(sku):
    return sku

@actions.action()
def release(sku):
    print("released", sku)

@actions.action()
def ship():
    raise RuntimeError("no courier")

broken = Actions()

@broken.action(compensate="nowhere")
def lost():
    pass
"""


def test_the_cli_loads_a_registry_and_checks_it(tmp_path: Path) -> None:
    module = tmp_path / "trip_actions.py"
    module.write_text(REGISTRY_MODULE)
    loaded = load_handlers(f"{module}:actions")
    assert isinstance(loaded, Actions) and sorted(loaded) == ["release", "reserve", "ship"]
    check_handlers(loaded, "spec", ["reserve", "release", None])
    with pytest.raises(CliError, match="has no handler for 'teleport'"):
        check_handlers(loaded, "spec", ["reserve", "teleport"])
    with pytest.raises(CliError, match="'lost' is compensated by 'nowhere'"):
        load_handlers(f"{module}:broken")


def test_cli_run_of_a_saga_file_uses_the_registry_compensations(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aumai_transactions.cli import app

    module = tmp_path / "trip_actions.py"
    module.write_text(REGISTRY_MODULE)
    saga = tmp_path / "saga.json"
    steps = [
        {"agent": "a", "action": "reserve", "data": {"sku": 1}},
        {"agent": "a", "action": "ship"},
    ]
    saga.write_text(json.dumps({"name": "s", "steps": steps}))
    result = CliRunner().invoke(
        app,
        ["run", str(saga), "--handlers", f"{module}:actions", "--json"]
        + ["--store", f"sqlite:///{tmp_path / 'j.db'}"],
    )
    assert result.exit_code == 1, result.stdout
    document = json.loads(result.stdout)
    assert document["steps"][0]["compensating_action"] == "release"
    assert document["steps"][0]["status"] == "compensated"
    assert document["state"] == "rolled_back"
    refused = CliRunner().invoke(
        app,
        ["run", str(saga), "--handlers", f"{module}:broken"]
        + ["--store", f"sqlite:///{tmp_path / 'j.db'}"],
    )
    assert refused.exit_code == 2
    assert refused.stderr.splitlines() == [
        f"error: --handlers '{module}:broken': Action 'lost' is compensated by 'nowhere', "
        "which is not a registered action (registered: lost)."
    ]
