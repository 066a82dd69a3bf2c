"""Programs a user of aumai-transactions 0.1 wrote from its documentation, verbatim.

Taken from invincible-jha/aumai-transactions (Apache-2.0) at commit 7eefb04:
``docs/getting-started.md``, ``README.md`` and ``examples/quickstart.py``. They are
kept as text, exactly as published (not reformatted), because the point of the tests
that run them is that they run unchanged. 0.1 was synchronous and its package exported
the blocking classes; here the package is async and the blocking classes live in
``aumai_transactions.sync`` and in the original's own module ``aumai_transactions.core``.
So the one line a user changes is the import, and :func:`with_import` changes that line
and nothing else.

Some snippets use names the documentation defines elsewhere (``my_handlers``, a
``manager``, a ``transaction_id``): the tests supply them around the snippet, never in it.
"""

from __future__ import annotations

IMPORT_0_1 = "from aumai_transactions import "


def with_import(source: str, module: str) -> str:
    """``source`` with its one package import taken from ``module`` instead."""
    assert source.count(IMPORT_0_1) == 1, "expected exactly one import of the package"
    return source.replace(IMPORT_0_1, f"from {module} import ")


# docs/getting-started.md, "Your First Transaction", Step 1: handlers.py
TUTORIAL_HANDLERS = """\
# handlers.py

def create_user(action: str, data: dict) -> None:
    print(f"[user_service] Creating user: {data['user_id']}")
    # In a real system: POST to user service API

def delete_user(action: str, data: dict) -> None:
    print(f"[user_service] Deleting user: {data['user_id']} (compensation)")

def init_quota(action: str, data: dict) -> None:
    print(f"[quota_service] Initializing quota for: {data['user_id']}")

def reset_quota(action: str, data: dict) -> None:
    print(f"[quota_service] Resetting quota for: {data['user_id']} (compensation)")

def send_welcome(action: str, data: dict) -> None:
    print(f"[email_service] Sending welcome email to: {data['email']}")
    # Simulate a failure:
    raise RuntimeError("SMTP server unavailable")

def cancel_welcome(action: str, data: dict) -> None:
    print(f"[email_service] Cancelling welcome email for: {data['email']} (compensation)")
"""

# Step 2: build and commit the transaction
TUTORIAL_MAIN = """\
from aumai_transactions import TransactionManager
from handlers import (
    create_user, delete_user,
    init_quota, reset_quota,
    send_welcome, cancel_welcome,
)

manager = TransactionManager(action_handlers={
    "create_user": create_user,
    "delete_user": delete_user,
    "init_quota": init_quota,
    "reset_quota": reset_quota,
    "send_welcome": send_welcome,
    "cancel_welcome": cancel_welcome,
})

# Step 1: begin a new transaction
tx = manager.begin(timeout_seconds=60)
print(f"Transaction ID: {tx.transaction_id}, State: {tx.state.value}")

# Step 2: add steps with compensating actions
user_data = {"user_id": "u-001", "email": "alice@example.com"}

manager.add_step(
    tx,
    agent_id="user_service",
    action="create_user",
    data=user_data,
    compensating_action="delete_user",
)

manager.add_step(
    tx,
    agent_id="quota_service",
    action="init_quota",
    data=user_data,
    compensating_action="reset_quota",
)

manager.add_step(
    tx,
    agent_id="email_service",
    action="send_welcome",
    data=user_data,
    compensating_action="cancel_welcome",
)

# Step 3: commit
result = manager.commit(tx)
"""

# Step 3: "Because send_welcome raises a RuntimeError, the output will be:" (after the
# first line, "Transaction ID: ..., State: pending")
TUTORIAL_OUTPUT = """\
[user_service] Creating user: u-001
[quota_service] Initializing quota for: u-001
[email_service] Sending welcome email to: alice@example.com
[quota_service] Resetting quota for: u-001 (compensation)
[user_service] Deleting user: u-001 (compensation)
"""

# "Pattern 1 — Saga orchestrator for clean ergonomics" (uses my_handlers)
SAGA_PATTERN = """\
from aumai_transactions import SagaOrchestrator, TransactionManager

manager = TransactionManager(action_handlers=my_handlers)
saga = SagaOrchestrator(manager)

saga.register("flight_agent",  "reserve_flight",  {"flight_id": "F123"}, "cancel_flight")
saga.register("hotel_agent",   "book_hotel",      {"hotel_id": "H456"},  "cancel_hotel")
saga.register("billing_agent", "charge_card",     {"amount": 850.00},    "refund_card")

result = saga.execute(timeout_seconds=90)

match result.state.value:
    case "committed":
        print("All booked!")
    case "rolled_back":
        print(f"Failed at step {result.failed_step}: {result.error}")
    case "failed":
        print("Transaction timed out.")
"""

# "Pattern 2 — Steps without compensating actions" (uses a manager and a tx)
STEP_WITHOUT_COMPENSATION = """\
manager.add_step(
    tx,
    agent_id="analytics_agent",
    action="log_event",
    data={"event": "user_created"},
    compensating_action=None,   # logging is idempotent; no undo needed
)
"""

# "Pattern 3 — Dry-run mode (no handlers)"
DRY_RUN = """\
manager = TransactionManager()   # no handlers

tx = manager.begin()
manager.add_step(tx, "agent_a", "step_a", {"x": 1}, "undo_a")
manager.add_step(tx, "agent_b", "step_b", {"y": 2}, "undo_b")
result = manager.commit(tx)

print(result.state.value)          # "committed"
print(len(result.completed_steps)) # 2
# No handlers ran; steps were recorded and sequenced only
"""

# "Pattern 4 — Explicit manual rollback" (uses a manager)
MANUAL_ROLLBACK = """\
tx = manager.begin()
manager.add_step(tx, "agent_a", "action_a", {}, "undo_a")

# Decide to abort (e.g., validation failed)
result = manager.rollback(tx)
print(result.state.value)  # "rolled_back"
"""

# "Pattern 5 — Restoring transactions from persistent storage" (uses my_handlers; the
# placeholder line is where the user's own code populates the manager)
PERSISTENCE_PLACEHOLDER = "# ... populate manager ...\n"
PERSISTENCE = """\
import json
from aumai_transactions import TransactionManager
from aumai_transactions.models import Transaction

# Save all transactions
manager = TransactionManager()
# ... populate manager ...

data = [tx.model_dump(mode="json") for tx in manager.get_all_transactions()]
with open("transactions.json", "w") as f:
    json.dump(data, f, indent=2)

# Restore in a new process
new_manager = TransactionManager(action_handlers=my_handlers)
with open("transactions.json") as f:
    for entry in json.load(f):
        tx = Transaction.model_validate(entry)
        new_manager.register_transaction(tx)
"""

# README.md, "Python API — three-step commit"
README_QUICK_START = """\
from aumai_transactions import TransactionManager

# Define action handlers: what actually executes when a step runs
def create_user(action: str, data: dict) -> None:
    print(f"Creating user {data['user_id']} ...")

def delete_user(action: str, data: dict) -> None:
    print(f"Rolling back: deleting user {data['user_id']} ...")

def send_welcome_email(action: str, data: dict) -> None:
    print(f"Sending welcome email to {data['email']} ...")

def cancel_welcome_email(action: str, data: dict) -> None:
    print(f"Rolling back: cancelling welcome email for {data['email']} ...")

manager = TransactionManager(action_handlers={
    "create_user": create_user,
    "delete_user": delete_user,
    "send_welcome_email": send_welcome_email,
    "cancel_welcome_email": cancel_welcome_email,
})

tx = manager.begin(timeout_seconds=30)

manager.add_step(
    tx,
    agent_id="user_agent",
    action="create_user",
    data={"user_id": "u123", "name": "Alice"},
    compensating_action="delete_user",
)

manager.add_step(
    tx,
    agent_id="email_agent",
    action="send_welcome_email",
    data={"email": "alice@example.com"},
    compensating_action="cancel_welcome_email",
)

result = manager.commit(tx)
print(f"Outcome: {result.state.value}")
# "committed" if all steps succeeded
# "rolled_back" if any step failed
"""

# README.md, "Using SagaOrchestrator (high-level)" (uses the six *_handler functions)
README_SAGA = """\
from aumai_transactions import SagaOrchestrator, TransactionManager

manager = TransactionManager(action_handlers={
    "reserve_flight": reserve_flight_handler,
    "cancel_flight": cancel_flight_handler,
    "book_hotel": book_hotel_handler,
    "cancel_hotel": cancel_hotel_handler,
    "charge_card": charge_card_handler,
    "refund_card": refund_card_handler,
})

saga = SagaOrchestrator(manager)

saga.register("flight_agent", "reserve_flight", {"flight_id": "F123"}, "cancel_flight")
saga.register("hotel_agent", "book_hotel", {"hotel_id": "H456"}, "cancel_hotel")
saga.register("billing_agent", "charge_card", {"amount": 850.00}, "refund_card")

result = saga.execute(timeout_seconds=60)

if result.state.value == "committed":
    print("Trip booked successfully!")
elif result.state.value == "rolled_back":
    print(f"Booking failed at step {result.failed_step}: {result.error}")
    print(f"Compensated steps: {result.completed_steps}")
"""

# README.md, "Manual rollback" (uses a manager)
README_MANUAL_ROLLBACK = """\
tx = manager.begin()
manager.add_step(tx, "agent_a", "step_a", {}, compensating_action="undo_a")
manager.add_step(tx, "agent_b", "step_b", {}, compensating_action="undo_b")

# Decide to abort before committing
result = manager.rollback(tx)
# result.state.value == "rolled_back"
"""

# README.md, "Retrieving transactions" (uses a manager and a transaction_id)
README_RETRIEVING = """\
# By ID
tx = manager.get_transaction(transaction_id)

# All transactions
all_txs = manager.get_all_transactions()
for t in all_txs:
    print(f"{t.transaction_id}: {t.state.value} ({len(t.steps)} steps)")
"""

# examples/quickstart.py, whole
QUICKSTART = '''\
"""Quickstart examples for aumai-transactions.

Demonstrates ACID-like transaction semantics for multi-agent operations:
  1. Successful commit (all steps pass)
  2. Automatic rollback on step failure
  3. Manual rollback before commit
  4. SagaOrchestrator high-level API
  5. Dry-run mode (no action handlers)

Run directly:
    python examples/quickstart.py
"""

from __future__ import annotations

from aumai_transactions import (
    SagaOrchestrator,
    TransactionManager,
    TransactionState,
)
from aumai_transactions.models import TransactionResult

# ---------------------------------------------------------------------------
# Shared action handlers
# ---------------------------------------------------------------------------

_log: list[str] = []   # Execution trace, for assertions


def _make_handler(label: str, *, fail: bool = False):
    """Factory that returns an action handler which logs calls and optionally fails."""
    def handler(action: str, data: dict) -> None:
        entry = f"[{label}] action={action} data={data}"
        _log.append(entry)
        print(f"  {entry}")
        if fail:
            raise RuntimeError(f"Simulated failure in {label}")
    return handler


# Forward actions
handle_create_user = _make_handler("create_user")
handle_init_quota = _make_handler("init_quota")
handle_send_email = _make_handler("send_email")
handle_charge_card = _make_handler("charge_card")

# Compensating actions
handle_delete_user = _make_handler("delete_user [UNDO]")
handle_reset_quota = _make_handler("reset_quota [UNDO]")
handle_cancel_email = _make_handler("cancel_email [UNDO]")
handle_refund_card = _make_handler("refund_card [UNDO]")

# A handler that always fails (for rollback demos)
handle_send_email_broken = _make_handler("send_email_BROKEN", fail=True)


def _build_manager(broken_email: bool = False) -> TransactionManager:
    """Build a TransactionManager with all handlers registered."""
    return TransactionManager(action_handlers={
        "create_user":   handle_create_user,
        "delete_user":   handle_delete_user,
        "init_quota":    handle_init_quota,
        "reset_quota":   handle_reset_quota,
        "send_email":    handle_send_email_broken if broken_email else handle_send_email,
        "cancel_email":  handle_cancel_email,
        "charge_card":   handle_charge_card,
        "refund_card":   handle_refund_card,
    })


def _print_result(result: TransactionResult) -> None:
    """Print a transaction result summary."""
    print(f"  State          : {result.state.value}")
    print(f"  Completed steps: {len(result.completed_steps)}")
    if result.failed_step:
        print(f"  Failed step    : {result.failed_step}")
        print(f"  Error          : {result.error}")


# ---------------------------------------------------------------------------
# Demo 1: Successful commit
# ---------------------------------------------------------------------------


def demo_successful_commit() -> None:
    """Build a 3-step transaction and commit it successfully."""
    print("\\n=== Demo 1: Successful Commit ===")
    _log.clear()

    manager = _build_manager(broken_email=False)
    tx = manager.begin(timeout_seconds=60)

    user_payload = {"user_id": "u-001", "email": "alice@example.com"}

    manager.add_step(tx, "user_service",  "create_user", user_payload, "delete_user")
    manager.add_step(tx, "quota_service", "init_quota",  user_payload, "reset_quota")
    manager.add_step(tx, "email_service", "send_email",  user_payload, "cancel_email")

    print(f"  Transaction ID : {tx.transaction_id}")
    print(f"  Steps added    : {len(tx.steps)}")
    print("\\n  Executing...")
    result = manager.commit(tx)

    print("\\n  Result:")
    _print_result(result)

    assert result.state == TransactionState.committed
    assert len(result.completed_steps) == 3
    assert result.failed_step is None
    print("\\n  Assertions passed.")


# ---------------------------------------------------------------------------
# Demo 2: Automatic rollback on failure
# ---------------------------------------------------------------------------


def demo_automatic_rollback() -> None:
    """Demonstrate that when the email step fails, prior steps are compensated."""
    print("\\n=== Demo 2: Automatic Rollback on Step Failure ===")
    _log.clear()

    manager = _build_manager(broken_email=True)   # email handler will raise
    tx = manager.begin(timeout_seconds=60)

    user_payload = {"user_id": "u-002", "email": "bob@example.com"}

    manager.add_step(tx, "user_service",  "create_user", user_payload, "delete_user")
    manager.add_step(tx, "quota_service", "init_quota",  user_payload, "reset_quota")
    manager.add_step(tx, "email_service", "send_email",  user_payload, "cancel_email")

    print("  Executing (email step will fail)...")
    result = manager.commit(tx)

    print("\\n  Result:")
    _print_result(result)

    # Forward steps that ran: create_user, init_quota
    # Compensation steps that ran: reset_quota, delete_user (reverse order)
    # Email's cancel_email should NOT run (it never completed)
    forward_calls = [e for e in _log if "[UNDO]" not in e]
    undo_calls = [e for e in _log if "[UNDO]" in e]

    print(f"\\n  Forward steps executed : {len(forward_calls)}")
    print(f"  Compensations executed  : {len(undo_calls)}")

    assert result.state == TransactionState.rolled_back
    assert result.error == "Simulated failure in send_email_BROKEN"
    assert len(undo_calls) == 2   # reset_quota + delete_user
    print("\\n  Assertions passed.")


# ---------------------------------------------------------------------------
# Demo 3: Manual rollback before commit
# ---------------------------------------------------------------------------


def demo_manual_rollback() -> None:
    """Abort a transaction explicitly before committing."""
    print("\\n=== Demo 3: Manual Rollback Before Commit ===")
    _log.clear()

    manager = _build_manager()
    tx = manager.begin(timeout_seconds=60)

    manager.add_step(tx, "user_service", "create_user", {"user_id": "u-003"}, "delete_user")
    manager.add_step(tx, "quota_service", "init_quota", {"user_id": "u-003"}, "reset_quota")

    print(f"  Transaction state before rollback: {tx.state.value}")
    result = manager.rollback(tx)
    print(f"  Transaction state after rollback : {tx.state.value}")

    print("\\n  Result:")
    _print_result(result)

    # Manual rollback runs compensations for ALL steps even though none executed
    # (treat all as completed during a manual abort)
    assert result.state == TransactionState.rolled_back
    print("\\n  Assertions passed.")


# ---------------------------------------------------------------------------
# Demo 4: SagaOrchestrator — high-level choreography
# ---------------------------------------------------------------------------


def demo_saga_orchestrator() -> None:
    """Use SagaOrchestrator for a cleaner multi-participant saga."""
    print("\\n=== Demo 4: SagaOrchestrator ===")
    _log.clear()

    manager = _build_manager(broken_email=False)
    saga = SagaOrchestrator(manager)

    trip_data = {"booking_ref": "BK-9999", "user_id": "u-004"}

    saga.register("flight_agent",  "charge_card",  {"amount": 500, **trip_data}, "refund_card")
    saga.register("hotel_agent",   "charge_card",  {"amount": 350, **trip_data}, "refund_card")
    saga.register("email_service", "send_email",   trip_data,                    "cancel_email")

    print("  Executing saga...")
    result = saga.execute(timeout_seconds=30)

    print("\\n  Result:")
    _print_result(result)

    assert result.state == TransactionState.committed
    assert len(result.completed_steps) == 3
    print("\\n  Assertions passed.")


# ---------------------------------------------------------------------------
# Demo 5: Dry-run / no handlers
# ---------------------------------------------------------------------------


def demo_dry_run() -> None:
    """Create and commit a transaction without any action handlers (dry run)."""
    print("\\n=== Demo 5: Dry-Run Mode (no action handlers) ===")

    # No handlers: steps are recorded and sequenced but nothing executes
    manager = TransactionManager()

    tx = manager.begin(timeout_seconds=60)
    manager.add_step(tx, "agent_a", "action_a", {"payload": 1}, "undo_a")
    manager.add_step(tx, "agent_b", "action_b", {"payload": 2}, "undo_b")
    manager.add_step(tx, "agent_c", "action_c", {"payload": 3})   # no compensation

    result = manager.commit(tx)

    print(f"  State          : {result.state.value}")
    print(f"  Completed steps: {len(result.completed_steps)}")

    assert result.state == TransactionState.committed
    assert len(result.completed_steps) == 3
    print("  Dry-run assertions passed — no side effects executed.")


# ---------------------------------------------------------------------------
# Main entry point
# ---------------------------------------------------------------------------


def main() -> None:
    """Run all quickstart demos in sequence."""
    print("aumai-transactions quickstart")
    print("=" * 50)

    demo_successful_commit()
    demo_automatic_rollback()
    demo_manual_rollback()
    demo_saga_orchestrator()
    demo_dry_run()

    print("\\n" + "=" * 50)
    print("All demos completed successfully.")


if __name__ == "__main__":
    main()
'''
