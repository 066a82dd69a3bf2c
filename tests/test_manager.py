"""TransactionManager: the tutorial, the original tool's contract, patterns, bad input."""

from __future__ import annotations

import importlib.util
import json
import logging
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from aumai_transactions import (
    RetryPolicy,
    StepContext,
    StepStatus,
    Transaction,
    TransactionManager,
    TransactionState,
)

from ._support import TUTORIAL_ACTIONS, Recorder, completed_actions

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def onboarding_steps(manager: TransactionManager, tx: Transaction) -> None:
    manager.add_step(tx, "user_service", "create_user", {"user_id": "u-1"}, "delete_user")
    manager.add_step(tx, "storage_agent", "reserve_quota", {"gb": 10}, "release_quota")
    manager.add_step(tx, "billing_agent", "charge_card", {"amount": 20}, "refund_card")
    manager.add_step(tx, "mail_agent", "send_welcome_email", {"user_id": "u-1"})


# ---------------------------------------------------------------- the tutorial


async def test_the_tutorial_calls_handlers_in_order_and_reports_its_results(
    capsys: pytest.CaptureFixture[str],
) -> None:
    onboarding = load_example("onboarding")
    calls: list[tuple[str, dict[str, Any]]] = []

    def recording(func: Any) -> Any:
        def handler(action: str, data: dict[str, Any]) -> Any:
            calls.append((action, data))
            return func(action, data)

        return handler

    handlers = {action: recording(func) for action, func in onboarding.HANDLERS.items()}
    assert sorted(handlers) == sorted(TUTORIAL_ACTIONS)
    async with TransactionManager(action_handlers=handlers) as manager:
        ok = await onboarding.onboard(manager, "u-001", card="4242-4242-4242-4242")
        tx = manager.get_transaction(ok.transaction_id)
        assert tx is not None
        assert [action for action, _ in calls] == [
            "create_user",
            "reserve_quota",
            "charge_card",
            "send_welcome_email",
        ]
        assert ok.state is TransactionState.COMMITTED and ok.state.value == "committed"
        assert ok.completed_steps == [step.step_id for step in tx.steps]
        assert ok.failed_step is None and ok.error is None
        assert ok.compensation_errors == {}
        assert ok.succeeded
        assert ok.started_at is not None and ok.finished_at is not None
        assert ok.started_at <= ok.finished_at
        assert ok.duration_seconds == (ok.finished_at - ok.started_at).total_seconds()
        assert [step.status for step in tx.steps] == [StepStatus.COMPLETED] * 4
        assert tx.steps[0].result == {"user_id": "u-001"}
        assert tx.steps[2].result == {"charge_id": "ch-u-001"}

        calls.clear()
        bad = await onboarding.onboard(manager, "u-002", card="4000-0000-0000-0002")
        tx = manager.get_transaction(bad.transaction_id)
        assert tx is not None
        assert [action for action, _ in calls] == [
            "create_user",
            "reserve_quota",
            "charge_card",
            "release_quota",
            "delete_user",
        ]
        # Compensations get the data of the step they undo.
        assert calls[3][1] == tx.steps[1].data and calls[4][1] == tx.steps[0].data
        assert bad.state is TransactionState.ROLLED_BACK and bad.state.value == "rolled_back"
        assert bad.completed_steps == [tx.steps[1].step_id, tx.steps[0].step_id]
        assert bad.failed_step == tx.steps[2].step_id
        assert bad.error == "card 4000-0000-0000-0002 was declined"
        assert bad.compensation_errors == {}
        assert not bad.succeeded
        assert [step.status for step in tx.steps] == [
            StepStatus.COMPENSATED,
            StepStatus.COMPENSATED,
            StepStatus.FAILED,
            StepStatus.PENDING,
        ]
        assert tx.steps[2].error == bad.error
        assert tx.state is TransactionState.ROLLED_BACK
    assert "state:           rolled_back" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("mode", ["thread", "inline"])
async def test_the_failing_step_is_not_compensated_the_completed_ones_are(
    kind: str, mode: Any
) -> None:
    recorder = Recorder(fail={"charge_card"})
    manager = TransactionManager(
        recorder.handlers(*TUTORIAL_ACTIONS, kind=kind), sync_handlers=mode
    )
    tx = manager.begin()
    onboarding_steps(manager, tx)
    result = await manager.commit(tx)
    assert recorder.actions == [
        "create_user",
        "reserve_quota",
        "charge_card",
        "release_quota",
        "delete_user",
    ]
    assert "refund_card" not in recorder.actions
    assert completed_actions(tx, result) == ["reserve_quota", "create_user"]
    assert result.error == "charge_card failed"


# ---------------------------------------------------------------- begin / add_step / registry


def test_begin_makes_a_registered_pending_transaction_with_a_uuid() -> None:
    manager = TransactionManager()
    tx = manager.begin()
    assert tx.state is TransactionState.PENDING
    assert uuid.UUID(tx.transaction_id).version == 4
    assert tx.timeout_seconds == 60
    assert tx.steps == []
    assert manager.get_transaction(tx.transaction_id) is tx
    assert manager.begin(timeout_seconds=None).deadline is None
    assert manager.begin(timeout_seconds=2.5).timeout_seconds == 2.5


def test_add_step_appends_and_returns_the_step() -> None:
    manager = TransactionManager()
    tx = manager.begin()
    step = manager.add_step(
        tx,
        agent_id="user_service",
        action="create_user",
        data={"user_id": "u-001"},
        compensating_action="delete_user",
    )
    assert tx.steps == [step]
    assert (step.agent_id, step.action, step.data, step.compensating_action) == (
        "user_service",
        "create_user",
        {"user_id": "u-001"},
        "delete_user",
    )
    assert step.status is StepStatus.PENDING and step.attempts == 0
    other = manager.add_step(tx, "mail_agent", "send_welcome_email")
    assert other.data == {} and other.compensating_action is None
    assert other.step_id != step.step_id


def test_get_all_transactions_and_register_transaction() -> None:
    manager = TransactionManager()
    first, second = manager.begin(), manager.begin()
    assert manager.get_all_transactions() == [first, second]
    assert manager.get_transaction("no-such-id") is None
    outsider = Transaction()
    manager.register_transaction(outsider)
    assert manager.get_transaction(outsider.transaction_id) is outsider
    assert manager.get_all_transactions() == [first, second, outsider]
    with pytest.raises(TypeError, match="register_transaction needs a Transaction, not dict"):
        manager.register_transaction({"transaction_id": "x"})  # type: ignore[arg-type]


# ---------------------------------------------------------------- the original's error messages


async def test_add_step_on_an_active_transaction_names_it_and_its_state() -> None:
    errors: list[str] = []
    manager: TransactionManager

    def sneaky(action: str, data: dict[str, Any]) -> None:
        try:
            manager.add_step(tx, "agent", "sneaky")
        except ValueError as exc:
            errors.append(str(exc))

    manager = TransactionManager({"sneaky": sneaky}, sync_handlers="inline")
    tx = manager.begin()
    manager.add_step(tx, "agent", "sneaky")
    await manager.commit(tx)
    assert errors == [
        f"Cannot add steps to transaction {tx.transaction_id} in state 'active'; "
        "only 'pending' transactions accept steps."
    ]
    assert len(tx.steps) == 1


async def test_add_step_on_a_committed_transaction_is_refused() -> None:
    manager = TransactionManager()
    tx = manager.begin()
    await manager.commit(tx)
    with pytest.raises(ValueError) as info:
        manager.add_step(tx, "agent", "late")
    assert str(info.value).startswith(
        f"Cannot add steps to transaction {tx.transaction_id} in state 'committed'"
    )
    assert tx.steps == []


@pytest.mark.parametrize("fail", [False, True])
async def test_committing_a_finished_transaction_gives_the_original_message(fail: bool) -> None:
    recorder = Recorder(fail={"a"} if fail else ())
    manager = TransactionManager(recorder.handlers("a"))
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    first = await manager.commit(tx)
    state = "rolled_back" if fail else "committed"
    assert first.state.value == state
    with pytest.raises(ValueError) as info:
        await manager.commit(tx)
    assert str(info.value) == (
        f"Transaction {tx.transaction_id} is in state '{state}'; "
        "only 'pending' transactions can be committed."
    )
    assert recorder.actions == ["a"]  # the refused commit ran nothing


# ---------------------------------------------------------------- strict, unknown actions, dry run


def test_strict_mode_refuses_an_action_without_a_handler_naming_the_known_ones() -> None:
    manager = TransactionManager({"b": print, "a": print}, strict=True)
    tx = manager.begin()
    with pytest.raises(
        ValueError, match=r"No handler for action 'c' \(strict mode\); known actions: a, b"
    ):
        manager.add_step(tx, "agent", "c")
    with pytest.raises(ValueError, match="No handler for action 'undo_a'"):
        manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    assert tx.steps == []
    manager.add_step(tx, "agent", "a", compensating_action="b")
    assert len(tx.steps) == 1


async def test_an_action_without_a_handler_is_recorded_only_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    manager = TransactionManager(recorder.handlers("known"))
    tx = manager.begin()
    with caplog.at_level(logging.WARNING, logger="aumai_transactions"):
        manager.add_step(tx, "agent", "known")
        manager.add_step(tx, "agent", "typo_action")
    assert [r.getMessage() for r in caplog.records] == [
        "no handler for action 'typo_action': it will be recorded only"
    ]
    assert caplog.records[0].levelno == logging.WARNING
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    assert recorder.actions == ["known"]
    assert [step.status for step in tx.steps] == [StepStatus.COMPLETED] * 2


async def test_dry_run_records_and_sequences_without_running_anything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = TransactionManager()
    tx = manager.begin()
    with caplog.at_level(logging.WARNING, logger="aumai_transactions"):
        onboarding_steps(manager, tx)
    assert caplog.records == []  # a dry run is not a manager with missing handlers
    result = await manager.commit(tx)
    assert result.state is TransactionState.COMMITTED
    assert result.completed_steps == [step.step_id for step in tx.steps]
    assert [step.status for step in tx.steps] == [StepStatus.COMPLETED] * 4
    assert all(step.attempts == 1 and step.result is None for step in tx.steps)
    rolled = await manager.rollback(tx)
    assert rolled.state is TransactionState.ROLLED_BACK


# ---------------------------------------------------------------- steps without compensation


async def test_a_step_without_compensation_is_skipped_in_rollback_but_listed() -> None:
    recorder = Recorder(fail={"charge_card"})
    manager = TransactionManager(recorder.handlers(*TUTORIAL_ACTIONS, "log_event"))
    tx = manager.begin()
    manager.add_step(tx, "audit", "log_event", {"event": "checkout"})
    manager.add_step(tx, "storage", "reserve_quota", {}, "release_quota")
    manager.add_step(tx, "billing", "charge_card", {}, "refund_card")
    result = await manager.commit(tx)
    assert recorder.actions == ["log_event", "reserve_quota", "charge_card", "release_quota"]
    assert result.state is TransactionState.ROLLED_BACK
    assert completed_actions(tx, result) == ["reserve_quota", "log_event"]
    assert tx.steps[0].status is StepStatus.COMPLETED  # nothing ran to undo it
    assert tx.steps[0].compensation_attempts == 0


# ---------------------------------------------------------------- manual rollback


async def test_rollback_of_a_pending_transaction_compensates_every_step_in_reverse() -> None:
    recorder = Recorder()
    manager = TransactionManager(recorder.handlers(*TUTORIAL_ACTIONS))
    tx = manager.begin()
    onboarding_steps(manager, tx)  # run elsewhere; the manager is the compensation log
    result = await manager.rollback(tx)
    assert recorder.actions == ["refund_card", "release_quota", "delete_user"]
    assert result.state is TransactionState.ROLLED_BACK
    assert tx.state is TransactionState.ROLLED_BACK
    assert completed_actions(tx, result) == [
        "send_welcome_email",
        "charge_card",
        "reserve_quota",
        "create_user",
    ]
    assert result.failed_step is None and result.compensation_errors == {}
    assert [s.status for s in tx.steps[:3]] == [StepStatus.COMPENSATED] * 3


async def test_rollback_of_a_committed_transaction_undoes_it() -> None:
    recorder = Recorder()
    manager = TransactionManager(recorder.handlers(*TUTORIAL_ACTIONS))
    tx = manager.begin()
    onboarding_steps(manager, tx)
    assert (await manager.commit(tx)).state is TransactionState.COMMITTED
    result = await manager.rollback(tx)
    assert recorder.actions == [
        "create_user",
        "reserve_quota",
        "charge_card",
        "send_welcome_email",
        "refund_card",
        "release_quota",
        "delete_user",
    ]
    assert result.state is TransactionState.ROLLED_BACK


async def test_rollback_of_a_rolled_back_transaction_is_refused() -> None:
    recorder = Recorder()
    manager = TransactionManager(recorder.handlers("a", "undo_a"))
    tx = manager.begin()
    manager.add_step(tx, "agent", "a", compensating_action="undo_a")
    await manager.rollback(tx)
    with pytest.raises(ValueError) as info:
        await manager.rollback(tx)
    assert str(info.value) == (
        f"Transaction {tx.transaction_id} is in state 'rolled_back'; "
        "only 'pending' or 'committed' transactions can be rolled back."
    )
    assert recorder.actions == ["undo_a"]


# ---------------------------------------------------------------- persistence


async def test_a_pending_transaction_survives_json_and_commits_in_another_manager() -> None:
    first = TransactionManager()
    tx = first.begin(timeout_seconds=3600)
    onboarding_steps(first, tx)
    saved = json.dumps(tx.model_dump(mode="json"))

    restored = Transaction.model_validate(json.loads(saved))
    assert restored is not tx and restored.model_dump() == tx.model_dump()
    recorder = Recorder()
    other = TransactionManager(recorder.handlers(*TUTORIAL_ACTIONS))
    other.register_transaction(restored)
    assert other.get_transaction(tx.transaction_id) is restored
    result = await other.commit(restored)
    assert result.state is TransactionState.COMMITTED
    assert result.completed_steps == [step.step_id for step in tx.steps]
    assert recorder.actions == ["create_user", "reserve_quota", "charge_card", "send_welcome_email"]
    assert tx.state is TransactionState.PENDING  # the original object is untouched


# ---------------------------------------------------------------- StepContext


async def test_step_context_key_is_stable_across_retries_and_shared_with_the_compensation() -> None:
    seen: list[StepContext] = []

    def charge(action: str, data: dict[str, Any], ctx: StepContext) -> dict[str, str]:
        seen.append(ctx)
        if ctx.attempt < 3:
            raise ConnectionError("reply lost")
        return {"charge_id": "ch-1"}

    def refund(action: str, data: dict[str, Any], ctx: StepContext) -> None:
        seen.append(ctx)

    def ship(action: str, data: dict[str, Any], ctx: StepContext) -> None:
        seen.append(ctx)
        raise RuntimeError("warehouse closed")

    manager = TransactionManager({"charge": charge, "refund": refund, "ship": ship})
    tx = manager.begin()
    charge_step = manager.add_step(
        tx,
        "billing",
        "charge",
        {"amount": 5},
        "refund",
        retry=RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0),
    )
    ship_step = manager.add_step(tx, "warehouse", "ship")
    result = await manager.commit(tx)
    assert result.state is TransactionState.ROLLED_BACK

    key = f"{tx.transaction_id}:{charge_step.step_id}"
    attempts = [(c.action, c.phase, c.attempt, c.idempotency_key) for c in seen]
    assert attempts == [
        ("charge", "forward", 1, key),
        ("charge", "forward", 2, key),
        ("charge", "forward", 3, key),
        ("ship", "forward", 1, f"{tx.transaction_id}:{ship_step.step_id}"),
        ("refund", "compensate", 1, key),
    ]
    # The forward step sees the results of the steps completed before it.
    assert dict(seen[0].results) == {}
    assert dict(seen[3].results) == {charge_step.step_id: {"charge_id": "ch-1"}}
    assert dict(seen[3].results_by_action) == {"charge": {"charge_id": "ch-1"}}
    # The compensation sees the result of the step it undoes.
    assert seen[4].results[seen[4].step_id] == {"charge_id": "ch-1"}
    assert seen[4].results_by_action["charge"] == {"charge_id": "ch-1"}
    assert charge_step.attempts == 3 and charge_step.result == {"charge_id": "ch-1"}


# ---------------------------------------------------------------- bad input


def _manager_and_tx() -> tuple[TransactionManager, Transaction]:
    manager = TransactionManager({"a": print})
    return manager, manager.begin()


BAD_ADD_STEP: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"data": ["not", "a", "dict"]}, TypeError, "data must be a dict, not list"),
    ({"data": "text"}, TypeError, "data must be a dict, not str"),
    (
        {"data": {"when": object()}},
        TypeError,
        r"Step data must be JSON-serializable: data\['when'\] holds a object",
    ),
    ({"data": {"ids": {1, 2}}}, TypeError, r"data\['ids'\] holds a set"),
    ({"data": {"x": float("nan")}}, TypeError, "JSON cannot represent"),
    ({"data": {3: "x"}}, TypeError, "non-string key 3"),
    ({"agent_id": ""}, ValueError, "agent_id must be a non-empty string, not ''"),
    ({"agent_id": "   "}, ValueError, "agent_id must be a non-empty string"),
    ({"agent_id": None}, ValueError, "agent_id must be a non-empty string, not None"),
    ({"action": ""}, ValueError, "action must be a non-empty string, not ''"),
    ({"compensating_action": ""}, ValueError, "compensating_action must be a non-empty string"),
    ({"retry": {"max_attempts": 3}}, TypeError, "retry must be a RetryPolicy, not dict"),
    ({"recovery": "sometimes"}, ValueError, "recovery must be 'compensate', 'resume' or None"),
]


@pytest.mark.parametrize(("override", "error", "message"), BAD_ADD_STEP)
def test_add_step_rejects_bad_input_naming_the_problem(
    override: dict[str, Any], error: type[Exception], message: str
) -> None:
    manager, tx = _manager_and_tx()
    kwargs: dict[str, Any] = {"agent_id": "agent", "action": "a", "data": {}}
    kwargs.update(override)
    with pytest.raises(error, match=message):
        manager.add_step(tx, **kwargs)
    assert tx.steps == []  # nothing half-added


@pytest.mark.parametrize(
    ("timeout", "error", "message"),
    [
        (0, ValueError, "timeout_seconds must be a positive number of seconds, not 0"),
        (-5, ValueError, "timeout_seconds must be a positive number of seconds, not -5"),
        (float("inf"), ValueError, "timeout_seconds must be a positive number"),
        (float("nan"), ValueError, "timeout_seconds must be a positive number"),
        ("60", TypeError, "timeout_seconds must be a number of seconds or None, not '60'"),
        (True, TypeError, "timeout_seconds must be a number of seconds or None"),
    ],
)
def test_begin_rejects_a_bad_timeout(timeout: Any, error: type[Exception], message: str) -> None:
    manager = TransactionManager()
    with pytest.raises(error, match=message):
        manager.begin(timeout_seconds=timeout)
    assert manager.get_all_transactions() == []


async def test_methods_given_something_other_than_a_transaction_raise_type_error() -> None:
    manager = TransactionManager()
    with pytest.raises(TypeError, match="add_step needs a Transaction, not str"):
        manager.add_step("tx-id", "agent", "a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="commit needs a Transaction, not str"):
        await manager.commit("tx-id")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rollback needs a Transaction, not NoneType"):
        await manager.rollback(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"store": 42}, TypeError, "store must be a Store or a store URL, not int"),
        ({"store": "redis://localhost"}, ValueError, "Unknown store scheme 'redis'"),
        ({"store": "not a url"}, ValueError, "is not a URL"),
        ({"compensation_timeout": 0}, ValueError, "compensation_timeout must be a positive"),
        ({"compensation_retry": 3}, TypeError, "compensation_retry must be a RetryPolicy"),
        ({"max_recovery_attempts": 0}, ValueError, "max_recovery_attempts must be a positive"),
    ],
)
def test_the_manager_rejects_bad_settings(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        TransactionManager(**kwargs)


async def test_retain_finished_false_forgets_what_has_finished() -> None:
    manager = TransactionManager({"a": lambda a, d: None}, retain_finished=False)
    tx = manager.begin()
    manager.add_step(tx, "agent", "a")
    assert manager.get_transaction(tx.transaction_id) is tx  # pending: still known
    result = await manager.commit(tx)
    assert result.state.value == "committed"
    assert manager.get_transaction(tx.transaction_id) is None
    assert await manager.store.load(tx.transaction_id) is tx  # the store keeps it
