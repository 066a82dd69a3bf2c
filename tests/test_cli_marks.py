"""Steps the engine marks: ``interrupted`` (cut short while running by the deadline or a
cancellation: in doubt, so compensated) and ``recorded_only`` (no handler registered for
the action: recorded, no code ran). ``show`` and the result output of commit, rollback
and run say so, in the step table (a marker and a note line) and in JSON.

The transactions are built here with the flags set and imported, so these tests do not
depend on which runs of the engine set them.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aumai_transactions import (
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
)
from aumai_transactions.cli._output import Output
from aumai_transactions.cli._views import result_payload, result_renderables

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from tests._cli_support import Cli  # noqa: E402

START = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


def undone_step(
    agent: str,
    action: str,
    undo: str,
    ran: tuple[float, float],
    undone: float,
    *,
    interrupted: bool = False,
    recorded_only: bool = False,
) -> TransactionStep:
    """A step that ran from ``ran[0]`` to ``ran[1]`` seconds and was compensated at ``undone``."""
    return TransactionStep(
        agent_id=agent,
        action=action,
        compensating_action=undo,
        status=StepStatus.COMPENSATED,
        attempts=1,
        started_at=START + timedelta(seconds=ran[0]),
        finished_at=START + timedelta(seconds=ran[1]),
        compensated_at=START + timedelta(seconds=undone),
        interrupted=interrupted,
        recorded_only=recorded_only,
    )


def marked_transaction(state: TransactionState = TransactionState.FAILED) -> Transaction:
    """Three steps: a typo recorded without a handler, one that ran, one interrupted."""
    return Transaction(
        transaction_id="0badc0de-0000-4000-8000-000000000001",
        state=state,
        created_at=START,
        finished_at=START + timedelta(seconds=3),
        error="the transaction timed out after 2 s",
        steps=[
            undone_step("billing", "charge_crad", "refund", (0, 0), 2.5, recorded_only=True),
            undone_step("inventory", "reserve", "release", (0, 1), 2.4),
            undone_step("shipping", "ship", "cancel", (1, 2), 2.2, interrupted=True),
        ],
    )


def store(cli: Cli, tmp_path: Path, *transactions: Transaction) -> None:
    dump = tmp_path / "marked.json"
    dump.write_text(json.dumps([tx.model_dump(mode="json") for tx in transactions]))
    cli.ok("import", str(dump))


def step_line(out: str, action: str) -> str:
    """The step table's row of ``action`` (the first line naming it after 'Steps')."""
    table = out.split("Steps", 1)[1]
    return next(line for line in table.splitlines() if f" {action} " in line)


# ---------------------------------------------------------------------- show


def test_show_marks_the_steps_and_says_why(cli: Cli, tmp_path: Path) -> None:
    tx = marked_transaction()
    store(cli, tmp_path, tx)
    out = cli.ok("show", tx.transaction_id).stdout
    assert "∅" in step_line(out, "charge_crad") and "⚠" not in step_line(out, "charge_crad")
    assert "⚠" in step_line(out, "ship") and "∅" not in step_line(out, "ship")
    assert "⚠" not in step_line(out, "reserve") and "∅" not in step_line(out, "reserve")
    assert "∅ #1 charge_crad: recorded only: no handler for 'charge_crad', no code ran" in out
    assert "⚠ #3 ship: interrupted: may have run, compensated" in out
    panel = out.split("Steps", 1)[0]
    assert "interrupted" in panel and "#3 ship" in panel
    assert "recorded only" in panel and "#1 charge_crad" in panel
    assert "▶ #3 ship ⚠" in out  # the timeline marks the interrupted run too


def test_show_json_has_the_flags_and_the_notes(cli: Cli, tmp_path: Path) -> None:
    tx = marked_transaction()
    store(cli, tmp_path, tx)
    data = cli.json("show", tx.transaction_id)
    steps = data["steps"]
    assert [s["recorded_only"] for s in steps] == [True, False, False]
    assert [s["interrupted"] for s in steps] == [False, False, True]
    assert steps[0]["note"] == "recorded only: no handler for 'charge_crad', no code ran"
    assert steps[1]["note"] is None
    assert steps[2]["note"] == "interrupted: may have run, compensated"
    statuses = {e["action"]: e["status"] for e in data["timeline"] if e["kind"] == "step"}
    assert statuses == {"charge_crad": "completed", "reserve": "completed", "ship": "interrupted"}
    undo = next(e for e in data["timeline"] if e["kind"] == "compensation")
    assert (undo["action"], undo["start"]) == ("cancel", steps[2]["finished_at"])


@pytest.mark.parametrize(
    ("status", "compensate", "said"),
    [
        (
            StepStatus.COMPENSATION_FAILED,
            "cancel",
            "interrupted: may have run, its compensation failed",
        ),
        (StepStatus.COMPENSATING, "cancel", "interrupted: may have run, being compensated"),
        (StepStatus.RUNNING, "cancel", "interrupted: may have run, not compensated yet"),
        (
            StepStatus.RUNNING,
            None,
            "interrupted: may have run, nothing undoes it (no compensating action)",
        ),
    ],
)
def test_an_interrupted_step_says_what_became_of_it(
    cli: Cli, tmp_path: Path, status: StepStatus, compensate: str | None, said: str
) -> None:
    tx = marked_transaction(TransactionState.COMPENSATION_FAILED)
    tx.steps[2].status = status
    tx.steps[2].compensating_action = compensate
    store(cli, tmp_path, tx)
    assert cli.json("show", tx.transaction_id)["steps"][2]["note"] == said
    assert said in cli.ok("show", tx.transaction_id).stdout


def test_unmarked_steps_have_no_markers_or_notes(cli: Cli, tmp_path: Path) -> None:
    tx = marked_transaction()
    for step in tx.steps:
        step.interrupted = step.recorded_only = False
    store(cli, tmp_path, tx)
    out = cli.ok("show", tx.transaction_id).stdout
    assert "⚠" not in out and "∅" not in out
    assert "recorded only" not in out and "interrupted" not in out


# ---------------------------------------------------------------------- result output


def rendered(renderables: list[Any]) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=160)
    for renderable in renderables:
        console.print(renderable)
    return buffer.getvalue()


def marked_result(tx: Transaction) -> TransactionResult:
    return TransactionResult(
        transaction_id=tx.transaction_id,
        state=TransactionState.FAILED,
        completed_steps=[s.step_id for s in tx.steps],
        error="the transaction timed out after 2 s",
        interrupted_steps=[tx.steps[2].step_id],
        recorded_only_steps=[tx.steps[0].step_id],
    )


def test_result_output_names_interrupted_and_recorded_only_steps() -> None:
    tx = marked_transaction()
    out = rendered(
        result_renderables(marked_result(tx), tx, Output(), goal=TransactionState.COMMITTED)
    )
    panel = out.split("Steps", 1)[0]
    assert "interrupted" in panel and "#3 ship" in panel
    assert "recorded only" in panel and "#1 charge_crad" in panel
    assert "⚠" in step_line(out, "ship") and "∅" in step_line(out, "charge_crad")
    assert "⚠ #3 ship: interrupted: may have run, compensated" in out
    assert "∅ #1 charge_crad: recorded only: no handler for 'charge_crad'" in out


def test_result_output_without_marked_steps_says_nothing_of_them() -> None:
    tx = marked_transaction()
    for step in tx.steps:
        step.interrupted = step.recorded_only = False
    result = marked_result(tx).model_copy(
        update={"interrupted_steps": [], "recorded_only_steps": []}
    )
    out = rendered(result_renderables(result, tx, Output(), goal=TransactionState.COMMITTED))
    assert "interrupted" not in out and "recorded only" not in out and "⚠" not in out


def test_result_json_lists_the_steps_and_flags_them() -> None:
    tx = marked_transaction()
    payload = result_payload(marked_result(tx), tx, Output())
    assert payload["interrupted_steps"] == [tx.steps[2].step_id]
    assert payload["recorded_only_steps"] == [tx.steps[0].step_id]
    assert [s["interrupted"] for s in payload["steps"]] == [False, False, True]
    assert [s["recorded_only"] for s in payload["steps"]] == [True, False, False]
    json.dumps(payload)  # a JSON document, as printed


def test_rollback_output_keeps_the_recorded_only_marker(cli: Cli, tmp_path: Path) -> None:
    tx = marked_transaction(TransactionState.COMMITTED)
    for step in tx.steps:
        step.status = StepStatus.COMPLETED
        step.compensated_at = None
        step.interrupted = False
    tx.steps[0].action = "charge_crad"
    store(cli, tmp_path, tx)
    handlers = tmp_path / "undo.py"
    handlers.write_text(
        "HANDLERS = {name: (lambda a, d: None) for name in ('refund', 'release', 'cancel')}\n"
    )
    result = cli("rollback", "--tx-id", tx.transaction_id, "--handlers", f"{handlers}:HANDLERS")
    assert result.exit_code == 0, result.stderr
    assert "∅" in step_line(result.stdout, "charge_crad")
    assert "recorded only: no handler for 'charge_crad'" in result.stdout
    data = cli.json("show", tx.transaction_id)
    assert data["transaction"]["state"] == "rolled_back"
    assert data["steps"][0]["recorded_only"] is True
