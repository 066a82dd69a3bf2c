"""Handlers: registration errors, calling conventions, thread and inline modes."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
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


async def test_a_handler_with_an_optional_third_parameter_or_varargs_gets_the_context() -> None:
    got: list[Any] = []

    def optional(action: str, data: dict[str, Any], ctx: Any = None) -> None:
        got.append(ctx)

    def varargs(*args: Any) -> None:
        got.append(args[2])

    await run_one(optional)
    await run_one(varargs)
    assert all(isinstance(ctx, StepContext) for ctx in got) and len(got) == 2


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


async def test_handler_return_values_are_recorded_only_when_json_serializable() -> None:
    returns: dict[str, Any] = {
        "json_dict": {"id": 7, "tags": ["a", "b"], "nested": {"ok": True}},
        "json_str": "done",
        "json_list": [1, 2.5, None],
        "object": object(),
        "set": {1, 2},
        "nan": float("nan"),
        "none": None,
    }

    def handler(action: str, data: dict[str, Any]) -> Any:
        return returns[action]

    manager = TransactionManager({action: handler for action in returns})
    tx = manager.begin()
    steps = {action: manager.add_step(tx, "agent", action) for action in returns}
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    assert steps["json_dict"].result == returns["json_dict"]
    assert steps["json_str"].result == "done"
    assert steps["json_list"].result == [1, 2.5, None]
    for action in ("object", "set", "nan", "none"):
        assert steps[action].result is None, action
    # What is recorded survives a JSON dump of the transaction.
    assert tx.model_dump(mode="json")["steps"][0]["result"] == returns["json_dict"]


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
