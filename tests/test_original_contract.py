"""Code written for aumai-transactions 0.1 runs against the blocking facade unchanged.

The first half drives ``aumai_transactions.core`` (the original's own module) in the
idioms of the original's test suite: a dry-run ``manager`` fixture and pending
transactions, lambda handlers, lower-case state names, and the private attributes those
tests reached into. The second half runs the programs of the original's documentation,
verbatim but for their import line, as scripts (tests/_original_0_1.py holds them).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import aumai_transactions
import aumai_transactions.models
from aumai_transactions import core, sync
from aumai_transactions.core import SagaOrchestrator, TransactionManager
from aumai_transactions.models import (
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
)

from . import _original_0_1 as original
from ._support import ROOT, run_python_files

# ---------------------------------------------------------------------------- the module


def test_core_is_the_blocking_facade_under_the_original_module_path() -> None:
    assert core.TransactionManager is sync.TransactionManager
    assert core.SagaOrchestrator is sync.SagaOrchestrator
    # Every name 0.1 offered from aumai_transactions.core, and nothing of the async API.
    assert core.__all__ == [
        "ActionHandler",
        "SagaOrchestrator",
        "Transaction",
        "TransactionManager",
        "TransactionResult",
        "TransactionState",
        "TransactionStep",
    ]
    for name in ("Transaction", "TransactionResult", "TransactionState", "TransactionStep"):
        assert getattr(core, name) is getattr(aumai_transactions.models, name)
    assert core.ActionHandler is aumai_transactions.ActionHandler
    assert "aumai_transactions.sync" in (core.__doc__ or "")


def test_code_that_used_the_original_module_runs_unchanged() -> None:
    namespace: dict[str, Any] = {}
    exec("from aumai_transactions.core import *", namespace)
    assert {"SagaOrchestrator", "TransactionManager"} <= namespace.keys()
    manager = namespace["TransactionManager"]()
    tx = manager.begin()
    assert manager.commit(tx).state == TransactionState.committed  # a result, not a coroutine


# ------------------------------------------------------- the original suite's fixtures


@pytest.fixture
def manager() -> TransactionManager:
    """A manager with no action handlers: a dry run."""
    return TransactionManager()


@pytest.fixture
def pending_tx(manager: TransactionManager) -> Transaction:
    return manager.begin(timeout_seconds=60)


@pytest.fixture
def tx_with_three_steps(manager: TransactionManager, pending_tx: Transaction) -> Transaction:
    for i in range(3):
        manager.add_step(
            pending_tx,
            agent_id=f"agent-{i}",
            action=f"step_{i}",
            data={"index": i},
            compensating_action=f"undo_step_{i}",
        )
    return pending_tx


def failing_on(action_that_fails: str, calls: list[str]) -> Callable[[str, dict[str, Any]], None]:
    """A handler that records every action it gets and raises on one of them."""

    def handler(action: str, data: dict[str, Any]) -> None:
        if action == action_that_fails:
            raise RuntimeError(f"{action} went wrong")
        calls.append(action)

    return handler


# ------------------------------------------------------------------------ begin, add_step


def test_begin_gives_a_pending_transaction_with_a_fresh_id(manager: TransactionManager) -> None:
    before = datetime.now(tz=UTC)
    tx, other = manager.begin(), manager.begin(timeout_seconds=120)
    after = datetime.now(tz=UTC)
    assert isinstance(tx, Transaction)
    assert tx.state == TransactionState.pending and tx.steps == []
    assert tx.transaction_id != "" and tx.transaction_id != other.transaction_id
    assert tx.timeout_seconds == 60 and other.timeout_seconds == 120
    assert before <= tx.created_at <= after
    assert manager.get_transaction(tx.transaction_id) is tx
    assert len(manager.get_all_transactions()) == 2


def test_add_step_records_the_step_as_given(
    manager: TransactionManager, pending_tx: Transaction
) -> None:
    data = {"to": "user@example.com", "subject": "Test"}
    step = manager.add_step(pending_tx, "my-agent", "send_email", data)
    undoable = manager.add_step(pending_tx, "agent", "do_action", {}, compensating_action="undo")
    assert isinstance(step, TransactionStep)
    assert (step.agent_id, step.action, step.data) == ("my-agent", "send_email", data)
    assert step.compensating_action is None and undoable.compensating_action == "undo"
    assert step.step_id != undoable.step_id
    assert [s.action for s in pending_tx.steps] == ["send_email", "do_action"]


def test_add_step_after_commit_raises_value_error(
    manager: TransactionManager, pending_tx: Transaction
) -> None:
    manager.commit(pending_tx)
    with pytest.raises(ValueError, match="pending"):
        manager.add_step(pending_tx, "agent", "action", {})


# --------------------------------------------------------------------------------- commit


def test_a_dry_run_commit(manager: TransactionManager, tx_with_three_steps: Transaction) -> None:
    result = manager.commit(tx_with_three_steps)
    assert isinstance(result, TransactionResult)
    assert result.state == TransactionState.committed
    assert result.transaction_id == tx_with_three_steps.transaction_id
    assert result.completed_steps == [s.step_id for s in tx_with_three_steps.steps]
    assert result.error is None and result.failed_step is None
    stored = manager.get_transaction(tx_with_three_steps.transaction_id)
    assert stored is not None and stored.state == TransactionState.committed
    with pytest.raises(ValueError, match="pending"):
        manager.commit(tx_with_three_steps)


def test_commit_calls_lambda_handlers_in_order() -> None:
    calls: list[str] = []
    mgr = TransactionManager(
        action_handlers={
            "step_a": lambda action, data: calls.append(action),
            "step_b": lambda action, data: calls.append(action),
        }
    )
    tx = mgr.begin()
    mgr.add_step(tx, "agent", "step_a", {})
    mgr.add_step(tx, "agent", "step_b", {})
    assert mgr.commit(tx).state == TransactionState.committed
    assert calls == ["step_a", "step_b"]


def test_a_failing_step_rolls_back_the_completed_ones_in_reverse() -> None:
    calls: list[str] = []
    handler = failing_on("step_c", calls)
    mgr = TransactionManager(
        action_handlers={name: handler for name in ("step_a", "step_b", "step_c", "undo_a")}
        | {"undo_b": handler}
    )
    tx = mgr.begin()
    first = mgr.add_step(tx, "agent", "step_a", {}, compensating_action="undo_a")
    second = mgr.add_step(tx, "agent", "step_b", {}, compensating_action="undo_b")
    failing = mgr.add_step(tx, "agent", "step_c", {})
    result = mgr.commit(tx)
    assert result.state == TransactionState.rolled_back
    assert result.error is not None and "step_c went wrong" in result.error
    assert result.failed_step == failing.step_id
    assert calls == ["step_a", "step_b", "undo_b", "undo_a"]
    assert result.completed_steps == [second.step_id, first.step_id]


def test_a_backdated_transaction_fails_as_timed_out() -> None:
    # The original suite's way: a copy with created_at in the past, put in the registry.
    mgr = TransactionManager()
    tx = mgr.begin(timeout_seconds=1)
    backdated = tx.model_copy(update={"created_at": datetime.now(tz=UTC) - timedelta(seconds=10)})
    mgr._transactions[backdated.transaction_id] = backdated
    result = mgr.commit(backdated)
    assert result.state == TransactionState.failed
    assert "timed out" in (result.error or "").lower()
    assert mgr.get_transaction(tx.transaction_id) is backdated


# ------------------------------------------------------------------------------- rollback


def test_rollback_of_a_pending_transaction(
    manager: TransactionManager, pending_tx: Transaction
) -> None:
    manager.add_step(pending_tx, "agent", "step_without_undo", {})
    result = manager.rollback(pending_tx)
    assert isinstance(result, TransactionResult)
    assert result.state == TransactionState.rolled_back
    stored = manager.get_transaction(pending_tx.transaction_id)
    assert stored is not None and stored.state == TransactionState.rolled_back
    assert manager.rollback(manager.begin()).state == TransactionState.rolled_back  # empty


def test_rollback_calls_the_compensating_actions() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    mgr = TransactionManager(
        action_handlers={"undo_step": lambda action, data: calls.append((action, data))}
    )
    tx = mgr.begin()
    mgr.add_step(tx, "agent", "step", {"k": "v"}, compensating_action="undo_step")
    mgr.rollback(tx)
    assert calls == [("undo_step", {"k": "v"})]


# ------------------------------------------------------------------------------- registry


def test_the_registry_and_an_externally_built_transaction() -> None:
    mgr = TransactionManager()
    assert mgr.get_all_transactions() == []
    assert mgr.get_transaction("nonexistent") is None
    tx = Transaction(
        transaction_id="external-tx-id",
        state=TransactionState.committed,
        created_at=datetime.now(tz=UTC),
    )
    mgr.register_transaction(tx)
    retrieved = mgr.get_transaction("external-tx-id")
    assert retrieved is not None and retrieved.state == TransactionState.committed


def test_a_transaction_dumped_by_0_1_is_restored_and_can_be_compensated() -> None:
    dumped_by_0_1 = {
        "transaction_id": "a1b2c3d4",
        "steps": [
            {
                "step_id": "s-1",
                "agent_id": "billing_agent",
                "action": "charge_card",
                "data": {"amount": 99.0},
                "compensating_action": "refund_card",
            }
        ],
        "state": "committed",
        "created_at": "2026-02-27T12:00:00+00:00",
        "timeout_seconds": 60,
    }
    refunds: list[dict[str, Any]] = []
    mgr = TransactionManager(action_handlers={"refund_card": lambda a, d: refunds.append(d)})
    tx = Transaction.model_validate(dumped_by_0_1)
    mgr.register_transaction(tx)
    assert tx.state == TransactionState.committed
    assert mgr.rollback(tx).state == TransactionState.rolled_back
    assert refunds == [{"amount": 99.0}]


# ----------------------------------------------------------------------------------- saga


def test_a_saga_without_a_manager_is_a_dry_run() -> None:
    saga = SagaOrchestrator()
    assert saga._manager is not None
    saga.register("agent-1", "do_a", {"k": "v"})
    assert len(saga._steps) == 1
    result = saga.execute()
    assert isinstance(result, TransactionResult)
    assert result.state == TransactionState.committed
    assert len(result.completed_steps) == 1
    assert SagaOrchestrator().execute().state == TransactionState.committed  # empty


def test_a_saga_on_a_given_manager_runs_its_steps_in_order() -> None:
    workflow_log: list[str] = []
    mgr = TransactionManager(
        action_handlers={
            "reserve_inventory": lambda a, d: workflow_log.append("reserved"),
            "process_payment": lambda a, d: workflow_log.append("paid"),
            "ship_order": lambda a, d: workflow_log.append("shipped"),
            "cancel_reservation": lambda a, d: workflow_log.append("cancelled"),
            "refund_payment": lambda a, d: workflow_log.append("refunded"),
        }
    )
    saga = SagaOrchestrator(manager=mgr)
    saga.register("inventory", "reserve_inventory", {}, compensating_action="cancel_reservation")
    saga.register("payments", "process_payment", {}, compensating_action="refund_payment")
    saga.register("shipping", "ship_order", {})
    result = saga.execute()
    assert result.state == TransactionState.committed
    assert workflow_log == ["reserved", "paid", "shipped"]
    assert len(mgr.get_all_transactions()) == 1  # only the executed one


def test_a_failing_saga_step_compensates_through_the_given_manager() -> None:
    undo_calls: list[str] = []
    calls: list[str] = []
    mgr = TransactionManager(
        action_handlers={
            "do_a": lambda a, d: None,
            "do_b": failing_on("do_b", calls),
            "undo_a": lambda a, d: undo_calls.append(a),
        }
    )
    saga = SagaOrchestrator(manager=mgr)
    saga.register("agent-1", "do_a", {}, compensating_action="undo_a")
    saga.register("agent-2", "do_b", {})
    result = saga.execute()
    assert result.state == TransactionState.rolled_back
    assert result.error == "do_b went wrong"
    assert undo_calls == ["undo_a"]


# --------------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("state", "value", "canonical"),
    [
        (TransactionState.pending, "pending", TransactionState.PENDING),
        (TransactionState.active, "active", TransactionState.ACTIVE),
        (TransactionState.committed, "committed", TransactionState.COMMITTED),
        (TransactionState.rolled_back, "rolled_back", TransactionState.ROLLED_BACK),
        (TransactionState.failed, "failed", TransactionState.FAILED),
    ],
)
def test_the_original_state_names(
    state: TransactionState, value: str, canonical: TransactionState
) -> None:
    assert state.value == value and state == value  # a str enum, as 0.1's was
    assert state is canonical and TransactionState(value) is state
    assert list(TransactionState).count(state) == 1


def test_matching_a_result_on_the_original_state_names(manager: TransactionManager) -> None:
    def outcome(result: TransactionResult) -> str:
        match result.state:
            case TransactionState.committed:
                return f"Success: {len(result.completed_steps)} steps"
            case TransactionState.rolled_back:
                return f"Rolled back. Failed: {result.failed_step}"
            case TransactionState.failed:
                return f"Timed out: {result.error}"
        return "unexpected"

    tx = manager.begin()
    manager.add_step(tx, "agent", "a", {})
    assert outcome(manager.commit(tx)) == "Success: 1 steps"


def test_the_models_defaults_are_the_originals() -> None:
    now = datetime.now(tz=UTC)
    tx = Transaction(transaction_id="t1", created_at=now)
    assert (tx.state, tx.steps, tx.timeout_seconds) == (TransactionState.pending, [], 60)
    step = TransactionStep(step_id="s1", agent_id="a", action="do")
    assert step.compensating_action is None and step.data == {}
    result = TransactionResult(transaction_id="t1", state=TransactionState.committed)
    assert (result.error, result.failed_step, result.completed_steps) == (None, None, [])


# ------------------------------------------------------------ the documentation's programs

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Definitions the documentation's snippets take from their surroundings.
SAY = """\
def say(action, data):
    print(action, data)


def decline(action, data):
    print(action, data)
    raise RuntimeError("card declined")


"""

TUTORIAL_RESULT = """\

action_of = {step.step_id: step.action for step in tx.steps}
print("state:", result.state.value)
print("failed_step:", action_of[result.failed_step])
print("error:", result.error)
print("completed_steps:", [action_of[step_id] for step_id in result.completed_steps])
"""


def getting_started_patterns(module: str) -> str:
    """Patterns 1 to 5 of the getting-started guide, one after the other."""
    travel = ("reserve_flight", "cancel_flight", "book_hotel", "cancel_hotel", "refund_card")
    populate = """\
tx = manager.begin()
manager.add_step(tx, "agent_a", "step_a", {"x": 1}, "undo_a")
manager.commit(tx)
manager.begin()
"""
    return "\n".join(
        [
            SAY + f"my_handlers = {{name: say for name in {travel!r}}}",
            'my_handlers["charge_card"] = decline',
            original.with_import(original.SAGA_PATTERN, module),
            # Pattern 2, in a transaction whose later step fails: it is not compensated,
            # and is still listed among the undone steps.
            'manager = TransactionManager({"create": say, "delete": say, "log_event": say,'
            ' "fail": decline})',
            "tx = manager.begin()",
            'manager.add_step(tx, "agent", "create", {}, "delete")',
            original.STEP_WITHOUT_COMPENSATION,
            'manager.add_step(tx, "agent", "fail", {})',
            "result = manager.commit(tx)",
            "action_of = {step.step_id: step.action for step in tx.steps}",
            "print(result.state.value, [action_of[i] for i in result.completed_steps])",
            original.DRY_RUN,
            'manager = TransactionManager({"action_a": say, "undo_a": say})',
            original.MANUAL_ROLLBACK,
            'my_handlers = {"step_a": say, "undo_a": say}',
            original.with_import(
                original.PERSISTENCE.replace(original.PERSISTENCE_PLACEHOLDER, populate, 1),
                module,
            ),
            "restored = new_manager.get_all_transactions()",
            "print([(t.state.value, len(t.steps)) for t in restored])",
            "print(new_manager.rollback(restored[0]).state.value)",
        ]
    )


GETTING_STARTED_PATTERNS_OUTPUT = """\
reserve_flight {'flight_id': 'F123'}
book_hotel {'hotel_id': 'H456'}
charge_card {'amount': 850.0}
cancel_hotel {'hotel_id': 'H456'}
cancel_flight {'flight_id': 'F123'}
Failed at step <id>: card declined
create {}
log_event {'event': 'user_created'}
fail {}
delete {}
rolled_back ['log_event', 'create']
committed
2
undo_a {}
rolled_back
[('committed', 1), ('pending', 0)]
undo_a {'x': 1}
rolled_back
"""


def readme_examples(module: str) -> str:
    """The original README's Python examples, one after the other."""
    handlers = "\n".join(
        f"{name}_handler = say"
        for name in ("reserve_flight", "cancel_flight", "book_hotel", "cancel_hotel")
    )
    return "\n".join(
        [
            original.with_import(original.README_QUICK_START, module),
            SAY + handlers,
            "charge_card_handler = decline",
            "refund_card_handler = say",
            original.with_import(original.README_SAGA, module),
            "manager = TransactionManager({name: say for name in "
            "('step_a', 'undo_a', 'step_b', 'undo_b')})",
            original.README_MANUAL_ROLLBACK,
            "print(result.state.value)",
            "transaction_id = tx.transaction_id",
            original.README_RETRIEVING,
            "print(tx.transaction_id == transaction_id)",
        ]
    )


README_EXAMPLES_OUTPUT = """\
Creating user u123 ...
Sending welcome email to alice@example.com ...
Outcome: committed
reserve_flight {'flight_id': 'F123'}
book_hotel {'hotel_id': 'H456'}
charge_card {'amount': 850.0}
cancel_hotel {'hotel_id': 'H456'}
cancel_flight {'flight_id': 'F123'}
Booking failed at step <id>: card declined
Compensated steps: ['<id>', '<id>']
undo_b {}
undo_a {}
rolled_back
<id>: rolled_back (2 steps)
True
"""

QUICKSTART_OUTPUT = (
    """\
aumai-transactions quickstart
==================================================

=== Demo 1: Successful Commit ===
  Transaction ID : <id>
  Steps added    : 3

  Executing...
  [create_user] action=create_user data={'user_id': 'u-001', 'email': 'alice@example.com'}
  [init_quota] action=init_quota data={'user_id': 'u-001', 'email': 'alice@example.com'}
  [send_email] action=send_email data={'user_id': 'u-001', 'email': 'alice@example.com'}

  Result:
  State          : committed
  Completed steps: 3

  Assertions passed.

=== Demo 2: Automatic Rollback on Step Failure ===
  Executing (email step will fail)...
  [create_user] action=create_user data={'user_id': 'u-002', 'email': 'bob@example.com'}
  [init_quota] action=init_quota data={'user_id': 'u-002', 'email': 'bob@example.com'}
  [send_email_BROKEN] action=send_email data={'user_id': 'u-002', 'email': 'bob@example.com'}
  [reset_quota [UNDO]] action=reset_quota data={'user_id': 'u-002', 'email': 'bob@example.com'}
  [delete_user [UNDO]] action=delete_user data={'user_id': 'u-002', 'email': 'bob@example.com'}

  Result:
  State          : rolled_back
  Completed steps: 2
  Failed step    : <id>
  Error          : Simulated failure in send_email_BROKEN

  Forward steps executed : 3
  Compensations executed  : 2

  Assertions passed.

=== Demo 3: Manual Rollback Before Commit ===
  Transaction state before rollback: pending
  [reset_quota [UNDO]] action=reset_quota data={'user_id': 'u-003'}
  [delete_user [UNDO]] action=delete_user data={'user_id': 'u-003'}
  Transaction state after rollback : rolled_back

  Result:
  State          : rolled_back
  Completed steps: 2

  Assertions passed.

=== Demo 4: SagaOrchestrator ===
  Executing saga...
"""
    "  [charge_card] action=charge_card data={'amount': 500, 'booking_ref': 'BK-9999', "
    "'user_id': 'u-004'}\n"
    "  [charge_card] action=charge_card data={'amount': 350, 'booking_ref': 'BK-9999', "
    "'user_id': 'u-004'}\n"
    """\
  [send_email] action=send_email data={'booking_ref': 'BK-9999', 'user_id': 'u-004'}

  Result:
  State          : committed
  Completed steps: 3

  Assertions passed.

=== Demo 5: Dry-Run Mode (no action handlers) ===
  State          : committed
  Completed steps: 3
  Dry-run assertions passed — no side effects executed.

==================================================
All demos completed successfully.
"""
)

TUTORIAL_OUTPUT = (
    "Transaction ID: <id>, State: pending\n"
    + original.TUTORIAL_OUTPUT
    + "state: rolled_back\n"
    + "failed_step: send_welcome\n"
    + "error: SMTP server unavailable\n"
    + "completed_steps: ['init_quota', 'create_user']\n"
)

# name: (the program's files, first one run, and what it prints, ids as <id>)
PROGRAMS: dict[str, tuple[dict[str, str], str]] = {
    f"tutorial-{module}": (
        {
            "main.py": original.with_import(original.TUTORIAL_MAIN, f"aumai_transactions.{module}")
            + TUTORIAL_RESULT,
            "handlers.py": original.TUTORIAL_HANDLERS,
        },
        TUTORIAL_OUTPUT,
    )
    for module in ("sync", "core")
} | {
    "getting-started-patterns": (
        {"main.py": getting_started_patterns("aumai_transactions.sync")},
        GETTING_STARTED_PATTERNS_OUTPUT,
    ),
    "readme-examples": (
        {"main.py": readme_examples("aumai_transactions.core")},
        README_EXAMPLES_OUTPUT,
    ),
    # It imports TransactionState from the package as well: from .core, all in one line.
    "quickstart": (
        {"main.py": original.with_import(original.QUICKSTART, "aumai_transactions.core")},
        QUICKSTART_OUTPUT,
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run every program at once, each as a script in its own directory."""
    cwd = tmp_path_factory.mktemp("original")
    mains: dict[str, Path] = {}
    for name, (files, _) in PROGRAMS.items():
        (cwd / name).mkdir()
        for filename, source in files.items():
            (cwd / name / filename).write_text(source)
        mains[name] = cwd / name / "main.py"
    return run_python_files(mains, cwd)


@pytest.mark.parametrize("name", PROGRAMS)
def test_the_original_documentation_runs_unchanged_but_for_its_import(
    name: str, runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    done = runs[name]
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert UUID.sub("<id>", done.stdout) == PROGRAMS[name][1]


def test_the_original_programs_do_not_run_against_the_async_package_as_they_are() -> None:
    # Why the import line must change: the package's manager is async now.
    assert aumai_transactions.TransactionManager is not TransactionManager
    manager = aumai_transactions.TransactionManager()
    pending = manager.commit(manager.begin())
    assert hasattr(pending, "__await__")
    pending.close()


def test_the_readme_tells_users_of_0_1_what_changed() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n## Coming from aumai-transactions 0.1\n" in readme
    section = readme.split("\n## Coming from aumai-transactions 0.1\n")[1].split("\n## ")[0]
    assert "aumai_transactions.core" in section and "(docs/migrating.md)" in section
    page = (ROOT / "docs" / "migrating.md").read_text(encoding="utf-8")
    for phrase in ("aumai_transactions.sync", "aumai_transactions.core", "TransactionState"):
        assert phrase in page, phrase
    # After the tutorial, before the patterns.
    assert readme.index("## Tutorial: onboarding a user") < readme.index("## Coming from")
