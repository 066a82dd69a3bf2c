"""Handlers: registration errors, calling conventions, thread and inline modes."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from aumai_transactions import StepContext, TransactionManager, TransactionState
from aumai_transactions.handlers import HandlerRegistry


async def run_one(handler: Callable[..., Any], **manager_options: Any) -> tuple[Any, Any]:
    """Commit a one-step transaction whose action is served by ``handler``."""
    manager = TransactionManager({"act": handler}, **manager_options)
    tx = manager.begin()
    step = manager.add_step(tx, "agent", "act", {"k": 1})
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED, result.error
    return step.result, tx


# ---------------------------------------------------------------- registration


def test_a_non_callable_handler_is_a_type_error_naming_the_action() -> None:
    with pytest.raises(TypeError, match=r"handler for action 'charge_card' must be callable.*int"):
        TransactionManager({"charge_card": 42})


def test_a_non_mapping_of_handlers_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="action_handlers must be a mapping.*list"):
        TransactionManager([print])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", 7])
def test_an_empty_or_non_string_action_name_is_a_value_error(name: Any) -> None:
    with pytest.raises(ValueError, match="Action names must be non-empty strings"):
        TransactionManager({name: print})


def test_an_unknown_sync_handlers_mode_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="sync_handlers='fast' is not accepted; use 'thread' or"):
        TransactionManager({"a": print}, sync_handlers="fast")  # type: ignore[arg-type]


def test_registry_basics() -> None:
    registry = HandlerRegistry({"b": print, "a": print})
    assert registry.actions == ["a", "b"]
    assert "a" in registry and "c" not in registry
    assert registry and not HandlerRegistry()
    assert registry.get("c") is None
    registry.register("c", len)
    assert registry.actions == ["a", "b", "c"]


def test_all_sync_follows_registrations_and_replacements() -> None:
    async def undo(action: str, data: dict[str, Any]) -> None:
        return None

    registry = HandlerRegistry({"a": print})
    assert registry.all_sync and HandlerRegistry().all_sync
    registry.register("b", undo)
    assert not registry.all_sync
    registry.register("c", undo)
    registry.register("b", print)  # replaced by a sync one: "c" is still async
    assert not registry.all_sync
    registry.register("c", len)
    assert registry.all_sync
    registry.register("a", undo)
    registry.register("a", undo)  # the same async handler again counts once
    registry.register("a", print)
    assert registry.all_sync


# ---------------------------------------------------------------- calling conventions


async def test_a_sync_two_argument_handler_gets_action_and_data() -> None:
    seen: list[tuple[Any, ...]] = []

    def handler(action: str, data: dict[str, Any]) -> str:
        seen.append((action, data))
        return "ok"

    result, _ = await run_one(handler)
    assert seen == [("act", {"k": 1})]
    assert result == "ok"


async def test_an_async_two_argument_handler_is_awaited() -> None:
    async def handler(action: str, data: dict[str, Any]) -> dict[str, int]:
        return {"k": data["k"] + 1}

    result, _ = await run_one(handler)
    assert result == {"k": 2}


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_three_argument_handler_gets_a_step_context(kind: str) -> None:
    contexts: list[StepContext] = []

    def sync_handler(action: str, data: dict[str, Any], ctx: StepContext) -> None:
        contexts.append(ctx)

    async def async_handler(action: str, data: dict[str, Any], ctx: StepContext) -> None:
        contexts.append(ctx)

    _, tx = await run_one(sync_handler if kind == "sync" else async_handler)
    (ctx,) = contexts
    step = tx.steps[0]
    assert isinstance(ctx, StepContext)
    assert (ctx.transaction_id, ctx.step_id, ctx.agent_id, ctx.action) == (
        tx.transaction_id,
        step.step_id,
        "agent",
        "act",
    )
    assert ctx.attempt == 1 and ctx.phase == "forward"
    assert ctx.idempotency_key == f"{tx.transaction_id}:{step.step_id}"
    assert dict(ctx.results) == {} and dict(ctx.results_by_action) == {}


async def test_a_handler_with_an_optional_third_parameter_keeps_its_default() -> None:
    got: list[Any] = []

    def retries(action: str, data: dict[str, Any], retries: int = 3) -> None:
        got.append(retries)

    def varargs(*args: Any) -> None:
        got.append(len(args))

    async def async_optional(action: str, data: dict[str, Any], flag: bool = False) -> None:
        got.append(flag)

    await run_one(retries)
    await run_one(varargs)
    await run_one(async_optional)
    assert got == [3, 2, False]


async def test_a_third_parameter_annotated_step_context_gets_it_even_with_a_default() -> None:
    got: list[Any] = []

    def annotated(action: str, data: dict[str, Any], ctx: StepContext | None = None) -> None:
        got.append(ctx)

    def as_string(action: str, data: dict[str, Any], ctx: "StepContext" = None) -> None:  # type: ignore[assignment]  # noqa: UP037
        got.append(ctx)

    async def required(action: str, data: dict[str, Any], anything: Any) -> None:
        got.append(anything)

    for handler in (annotated, as_string, required):
        await run_one(handler)
    assert len(got) == 3 and all(isinstance(ctx, StepContext) for ctx in got), got


async def test_partials_methods_and_callable_objects_are_handlers() -> None:
    got: list[str] = []

    async def with_prefix(prefix: str, action: str, data: dict[str, Any]) -> None:
        got.append(f"{prefix}:{action}")

    class Service:
        def handle(self, action: str, data: dict[str, Any]) -> None:
            got.append(f"method:{action}")

    class AsyncCallable:
        async def __call__(self, action: str, data: dict[str, Any]) -> None:
            got.append(f"object:{action}")

    await run_one(functools.partial(with_prefix, "partial"))
    await run_one(Service().handle)
    await run_one(AsyncCallable())
    assert got == ["partial:act", "method:act", "object:act"]


async def test_a_sync_handler_returning_an_awaitable_is_awaited() -> None:
    async def later() -> str:
        return "awaited"

    result, _ = await run_one(lambda action, data: later())
    assert result == "awaited"


async def test_handler_results_are_recorded_as_json_converting_what_pydantic_converts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @dataclasses.dataclass
    class Booking:
        ref: str
        at: datetime

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    key = uuid.UUID("12345678-1234-5678-1234-567812345678")
    returns: dict[str, Any] = {
        "json_dict": {"id": 7, "tags": ["a", "b"], "nested": {"ok": True}},
        "json_str": "done",
        "json_list": [1, 2.5, None],
        "datetime": when,
        "uuid": key,
        "decimal": Decimal("12.50"),
        "dataclass": Booking("B-1", when),
        "model": StepContext,  # a class, which JSON cannot hold: stored as its repr
        "set": {1, 2},
        "object": object(),
        "nan": float("nan"),
        "none": None,
    }

    def handler(action: str, data: dict[str, Any]) -> Any:
        return returns[action]

    manager = TransactionManager({action: handler for action in returns})
    tx = manager.begin()
    steps = {action: manager.add_step(tx, "agent", action) for action in returns}
    with caplog.at_level(logging.WARNING, logger="aumai_transactions"):
        result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    assert steps["json_dict"].result == returns["json_dict"]
    assert steps["json_str"].result == "done"
    assert steps["json_list"].result == [1, 2.5, None]
    assert steps["datetime"].result == "2026-01-02T03:04:05Z"
    assert steps["uuid"].result == str(key)
    assert steps["decimal"].result == "12.50"
    assert steps["dataclass"].result == {"ref": "B-1", "at": "2026-01-02T03:04:05Z"}
    assert steps["set"].result == [1, 2]
    assert steps["none"].result is None
    for action in ("object", "nan", "model"):
        assert steps[action].result == repr(returns[action]), action
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "of type object" in warned and "of type float" in warned
    assert "of type datetime" not in warned
    # What is recorded survives a JSON dump of the transaction.
    dumped = json.loads(tx.model_dump_json())
    assert [s["result"] for s in dumped["steps"]] == [s.result for s in tx.steps]


async def test_the_next_step_sees_a_converted_result_and_every_result_of_a_repeated_action() -> (
    None
):
    seen: list[StepContext] = []
    counter = iter(range(10))

    def search(action: str, data: dict[str, Any]) -> Any:
        return {"n": next(counter), "at": datetime(2026, 1, 1, tzinfo=UTC)}

    def book(action: str, data: dict[str, Any], ctx: StepContext) -> None:
        seen.append(ctx)

    manager = TransactionManager({"search": search, "book": book})
    tx = manager.begin()
    for _ in range(3):
        manager.add_step(tx, "agent", "search")
    manager.add_step(tx, "agent", "book")
    await manager.commit(tx)
    (ctx,) = seen
    assert ctx.results_by_action["search"] == {"n": 2, "at": "2026-01-01T00:00:00Z"}
    assert [r["n"] for r in ctx.results_of("search")] == [0, 1, 2]
    assert ctx.results_of("nothing") == []


# ---------------------------------------------------------------- sync handler modes


async def test_sync_handlers_run_in_a_worker_thread_by_default() -> None:
    threads: list[int] = []
    await run_one(lambda action, data: threads.append(threading.get_ident()))
    assert threads and threads[0] != threading.get_ident()


async def test_inline_sync_handlers_run_on_the_event_loop_thread() -> None:
    threads: list[int] = []
    await run_one(
        lambda action, data: threads.append(threading.get_ident()), sync_handlers="inline"
    )
    assert threads == [threading.get_ident()]


async def test_async_handlers_run_on_the_event_loop_thread_in_both_modes() -> None:
    threads: list[int] = []

    async def handler(action: str, data: dict[str, Any]) -> None:
        threads.append(threading.get_ident())

    await run_one(handler)
    await run_one(handler, sync_handlers="inline")
    assert threads == [threading.get_ident()] * 2


async def test_sync_and_async_handlers_mix_in_one_transaction() -> None:
    order: list[str] = []

    def sync_step(action: str, data: dict[str, Any]) -> None:
        order.append(f"sync:{action}")

    async def async_step(action: str, data: dict[str, Any]) -> None:
        order.append(f"async:{action}")

    manager = TransactionManager({"a": sync_step, "b": async_step, "c": sync_step})
    tx = manager.begin()
    for action in "abc":
        manager.add_step(tx, "agent", action)
    assert (await manager.commit(tx)).state is TransactionState.COMMITTED
    assert order == ["sync:a", "async:b", "sync:c"]
