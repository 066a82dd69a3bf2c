"""The CLI's read-only commands: list, show, stats; secret masking; colours."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from tests._cli_support import ORDER, Cli  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def commit(cli: Cli, *steps: tuple[str, str, dict[str, object] | None, str | None]) -> str:
    tx_id = cli.build(*steps)
    cli("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    return tx_id


def import_dumps(cli: Cli, tmp_path: Path, dumps: list[dict[str, object]]) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(dumps))
    cli.ok("import", str(path))


# ---------------------------------------------------------------------- list


def test_list_is_newest_first_and_json_parses(cli: Cli) -> None:
    first = cli.create()
    second = cli.create()
    rows = cli.json("list")
    assert [row["transaction_id"] for row in rows] == [second, first]
    assert set(rows[0]) >= {"transaction_id", "state", "steps", "agents", "created_at"}


def test_list_filters(cli: Cli) -> None:
    committed = commit(cli, ORDER[0])
    rolled_back = commit(cli, *ORDER)
    pending = cli.build(("auditor", "pay", None, None))
    assert [r["transaction_id"] for r in cli.json("list", "--state", "committed")] == [committed]
    assert [r["transaction_id"] for r in cli.json("list", "--state", "ROLLED_BACK")] == [
        rolled_back
    ]
    assert [r["transaction_id"] for r in cli.json("list", "--agent", "auditor")] == [pending]
    assert {r["transaction_id"] for r in cli.json("list", "--agent", "inventory")} == {
        committed,
        rolled_back,
    }
    assert len(cli.json("list", "--limit", "2")) == 2
    assert len(cli.json("list", "--since", "1h")) == 3
    assert len(cli.json("list", "--since", "2999-01-01")) == 0
    assert len(cli.json("list", "--since", "2000-01-01T00:00:00Z")) == 3


def test_list_since_in_days_and_minutes(cli: Cli, tmp_path: Path) -> None:
    import_dumps(
        cli,
        tmp_path,
        [{"transaction_id": "old-one", "created_at": "2001-01-01T00:00:00Z", "steps": []}],
    )
    cli.create()
    assert len(cli.json("list", "--since", "7d")) == 1
    assert len(cli.json("list", "--since", "30m")) == 1
    assert len(cli.json("list")) == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--since", "yesterday"], "neither an ISO date/time"),
        (["--state", "bogus"], "bogus"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_list_bad_filters_are_usage_errors(cli: Cli, args: list[str], fragment: str) -> None:
    result = cli("list", *args)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_list_counts_and_highlights_transactions_needing_an_operator(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0], ("shipping", "ship", None, None))
    cli("commit", "--tx-id", tx_id, "--handlers", cli.spec("BROKEN_UNDO"))  # ship fails
    commit(cli, ORDER[0])
    cli.create()
    out = cli.ok("list").stdout
    first, second = out.splitlines()[:2]
    assert "1 transaction(s) need an operator: 1 compensation_failed" in first
    assert "aumai-transactions list --state compensation_failed" in second
    assert tx_id[:8] in out
    forced = cli.ok("list", env={"FORCE_COLOR": "1"}).stdout
    red_rows = [line for line in forced.splitlines() if tx_id[:8] in line]
    assert red_rows and "\x1b[1;31m" in red_rows[0]


def test_list_human_has_no_colour_when_not_a_terminal(cli: Cli) -> None:
    commit(cli, *ORDER)
    assert not ANSI.search(cli.ok("list").stdout)
    assert not ANSI.search(cli.ok("show", cli.json("list")[0]["transaction_id"]).stdout)


def test_no_color_turns_colours_off_on_a_terminal(cli: Cli) -> None:
    commit(cli, *ORDER)
    coloured = cli.ok("list", env={"FORCE_COLOR": "1"}).stdout
    assert re.search(r"\x1b\[[0-9;]*3\dm", coloured)
    plain = cli.ok("list", env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).stdout
    assert not re.search(r"\x1b\[[0-9;]*3\dm", plain)


def test_list_of_an_empty_store(cli: Cli) -> None:
    assert cli.json("list") == []
    assert "0 shown of 0 stored" in cli.ok("list").stdout


# ---------------------------------------------------------------------- show


def test_show_human(cli: Cli) -> None:
    tx_id = commit(cli, *ORDER)
    out = cli.ok("show", tx_id).stdout
    for fragment in (
        tx_id,
        "rolled_back",
        "charge failed",
        "Steps",
        "Timeline",
        "▶ #1 reserve",
        "▶ #2 charge",
        "↩ #1 release",
        "■ rolled_back",
        "release ✓",
    ):
        assert fragment in out, fragment


def test_show_json(cli: Cli) -> None:
    tx_id = commit(cli, *ORDER)
    data = cli.json("show", tx_id[:6])
    assert data["transaction"]["transaction_id"] == tx_id
    assert data["transaction"]["state"] == "rolled_back"
    steps = data["steps"]
    assert [s["status"] for s in steps] == ["compensated", "failed", "pending"]
    assert [s["attempts"] for s in steps] == [1, 1, 0]
    assert steps[0]["compensation"] == "compensated"
    assert steps[1]["error"] == "charge failed"
    assert steps[0]["duration_seconds"] >= 0
    kinds = [(e["kind"], e["index"]) for e in data["timeline"]]
    assert kinds == [("step", 1), ("step", 2), ("compensation", 1)]
    undo = data["timeline"][2]
    assert undo["start"] == steps[1]["finished_at"] and undo["end"] == steps[0]["compensated_at"]


def test_show_of_a_pending_transaction_has_no_timeline(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0])
    out = cli.ok("show", tx_id).stdout
    assert "pending" in out and "Timeline" not in out
    assert cli.json("show", tx_id)["timeline"] == []


def test_show_unknown_id(cli: Cli) -> None:
    tx_id = cli.create()
    result = cli("show", tx_id.replace("-", "_"))
    assert result.exit_code == 2
    assert f"Closest ids: {tx_id}" in result.stderr


# ---------------------------------------------------------------------- masking

SECRET_DATA = {
    "user": "ana",
    "password": "hunter2",
    "headers": {"Authorization": "Bearer abc", "Accept": "json"},
    "accounts": [{"apiKey": "k-1", "name": "main"}],
    "credentials": {"user": "x", "pass": "y"},
    "max_tokens": 100,
    "author": "Ana",
}


def test_secrets_are_masked_in_human_and_json_output(cli: Cli) -> None:
    tx_id = cli.build(("agent", "reserve", SECRET_DATA, None))
    for args in (("show", tx_id), ("show", tx_id, "--json")):
        out = cli.ok(*args).stdout
        for secret in ("hunter2", "Bearer abc", "k-1", '"pass"', "sk-"):
            assert secret not in out, (args, secret)
        assert "***" in out
    step = cli.json("show", tx_id)["steps"][0]["data"]
    assert step == {
        "user": "ana",
        "password": "***",
        "headers": {"Authorization": "***", "Accept": "json"},
        "accounts": [{"apiKey": "***", "name": "main"}],
        "credentials": "***",
        "max_tokens": 100,
        "author": "Ana",
    }


def test_reveal_shows_secrets(cli: Cli) -> None:
    tx_id = cli.build(("agent", "reserve", SECRET_DATA, None))
    assert cli.json("show", tx_id, "--reveal")["steps"][0]["data"] == SECRET_DATA
    assert "hunter2" in cli.ok("show", tx_id, "--reveal").stdout


def test_add_step_and_commit_output_are_masked(cli: Cli) -> None:
    tx_id = cli.create()
    added = cli.json(
        "add-step",
        "--tx-id",
        tx_id,
        "--agent",
        "a",
        "--action",
        "reserve",
        "--data",
        json.dumps({"token": "t-1"}),
    )
    assert added["step"]["data"] == {"token": "***"}
    human = cli.ok(
        "add-step", "--tx-id", tx_id, "--agent", "a", "--action", "pay", "--data", '{"secret": 7}'
    ).stdout
    assert "***" in human and "7" not in human.split("***")[1][:3]
    result = cli.json("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    assert [s["data"] for s in result["steps"]] == [{"token": "***"}, {"secret": "***"}]


def test_export_is_a_backup_and_never_masked(cli: Cli) -> None:
    cli.build(("agent", "reserve", SECRET_DATA, None))
    exported = json.loads(cli.ok("export").stdout)
    assert exported[0]["steps"][0]["data"] == SECRET_DATA


# The leaky handlers raise "…: 401 from https://app:hunter2@pay.example/v1,
# Authorization: Bearer tok-live-9"; "charge" fails with it, and so does "release".
LEAKS = ("hunter2", "tok-live-9")
MASKED_ERROR = "401 from https://app:***@pay.example/v1, Authorization: Bearer ***"


def leaky_commit(cli: Cli) -> tuple[str, Any]:
    tx_id = cli.build(*ORDER)
    result = cli("commit", "--tx-id", tx_id, "--handlers", cli.spec("LEAKY"), "--json")
    assert result.exit_code == 1, result.stderr
    return tx_id, json.loads(result.stdout)


def test_commit_masks_error_texts_in_json(cli: Cli) -> None:
    _, data = leaky_commit(cli)
    assert data["state"] == "compensation_failed"
    assert data["error"] == f"charge: {MASKED_ERROR}"
    assert list(data["compensation_errors"].values()) == [f"release: {MASKED_ERROR}"]
    assert data["steps"][1]["error"] == f"charge: {MASKED_ERROR}"
    assert data["steps"][0]["compensation_error"] == f"release: {MASKED_ERROR}"
    assert not any(leak in json.dumps(data) for leak in LEAKS)


def test_commit_masks_error_texts_for_people(cli: Cli) -> None:
    tx_id = cli.build(*ORDER)
    result = cli("commit", "--tx-id", tx_id, "--handlers", cli.spec("LEAKY"))
    assert result.exit_code == 1
    assert "Bearer ***" in result.stdout
    assert not any(leak in result.stdout + result.stderr for leak in LEAKS)


def test_show_and_list_mask_error_texts(cli: Cli) -> None:
    tx_id, _ = leaky_commit(cli)
    for args in (("show", tx_id), ("show", tx_id, "--json"), ("list",), ("list", "--json")):
        out = cli.ok(*args).stdout
        assert not any(leak in out for leak in LEAKS), args
        assert "***" in out, args
    shown = cli.json("show", tx_id)
    assert shown["transaction"]["error"] == f"charge: {MASKED_ERROR}"
    errors = [event["error"] for event in shown["timeline"] if event["error"]]
    assert errors == [f"charge: {MASKED_ERROR}", f"release: {MASKED_ERROR}"]


def test_reveal_shows_error_texts(cli: Cli) -> None:
    tx_id, _ = leaky_commit(cli)
    assert "tok-live-9" in cli.json("show", tx_id, "--reveal")["transaction"]["error"]
    assert "hunter2" in cli.ok("list", "--reveal").stdout


def test_export_keeps_error_texts_as_they_are(cli: Cli) -> None:
    tx_id, _ = leaky_commit(cli)
    dump = json.loads(cli.ok("export").stdout)[0]
    assert dump["transaction_id"] == tx_id
    assert "Bearer tok-live-9" in dump["error"] and "app:hunter2@" in dump["error"]


def test_an_error_line_on_stderr_is_masked(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "leaks.py").write_text("raise ValueError('bad config: api_key=sk-123456')\n")
    tx_id = cli.build(ORDER[0])
    result = cli("commit", "--tx-id", tx_id, "--handlers", "leaks.py:HANDLERS")
    assert result.exit_code == 2
    assert "bad config: api_key=***" in result.stderr and "sk-123456" not in result.stderr


# ---------------------------------------------------------------------- stats


def test_stats(cli: Cli) -> None:
    commit(cli, ORDER[0])
    commit(cli, ORDER[0], ORDER[2])
    commit(cli, *ORDER)
    cli.create()
    data = cli.json("stats")
    assert data["total"] == 4
    by_state = {row["state"]: row for row in data["by_state"]}
    assert {s: r["count"] for s, r in by_state.items()} == {
        "pending": 1,
        "committed": 2,
        "rolled_back": 1,
    }
    assert by_state["committed"]["p50_seconds"] > 0
    assert by_state["committed"]["p95_seconds"] >= by_state["committed"]["p50_seconds"]
    assert by_state["pending"]["p50_seconds"] is None
    by_agent = {row["agent_id"]: row for row in data["by_agent"]}
    assert by_agent["inventory"]["transactions"] == 3
    assert by_agent["inventory"]["steps"] == 3
    assert by_agent["billing"]["failed_steps"] == 1
    assert by_agent["shipping"]["steps"] == 2
    by_action = {row["action"]: row for row in data["by_action"]}
    assert {a: (r["steps"], r["failed_steps"], r["compensated"]) for a, r in by_action.items()} == {
        "reserve": (3, 0, 1),
        "ship": (2, 0, 0),
        "charge": (1, 1, 0),
    }
    assert [row["action"] for row in data["by_action"]] == ["reserve", "ship", "charge"]
    assert data["counts"]["compensations_failed"] == 0
    out = cli.ok("stats").stdout
    assert "By state (4 transactions)" in out and "By agent" in out and "p95" in out
    assert "By action (step durations)" in out and "dead letters" in out


def test_stats_since(cli: Cli, tmp_path: Path) -> None:
    import_dumps(
        cli,
        tmp_path,
        [{"transaction_id": "old-one", "created_at": "2001-01-01T00:00:00Z", "steps": []}],
    )
    cli.create()
    assert cli.json("stats")["total"] == 2
    assert cli.json("stats", "--since", "1d")["total"] == 1


def test_stats_of_an_empty_store(cli: Cli) -> None:
    assert cli.json("stats") == {
        "total": 0,
        "by_state": [],
        "by_agent": [],
        "by_action": [],
        "counts": {
            "compensations_failed": 0,
            "step_retries": 0,
            "compensation_retries": 0,
            "recoveries": 0,
            "recovered_transactions": 0,
            "dead_letters": 0,
        },
    }


def test_stats_counts_what_the_metrics_count(cli: Cli, tmp_path: Path) -> None:
    from aumai_transactions import StepStatus, Transaction, TransactionManager, TransactionState

    dead = Transaction.new(60)
    dead.state = TransactionState.DEAD_LETTER
    dead.recovery_attempts = 4
    undone = Transaction.new(60)
    retried = TransactionManager().add_step(undone, "billing", "charge", {}, "refund")
    undone.state = TransactionState.COMPENSATION_FAILED
    undone.recovery_attempts = 1
    retried.status, retried.attempts, retried.compensation_attempts = (
        StepStatus.COMPENSATION_FAILED,
        3,
        2,
    )
    import_dumps(cli, tmp_path, [tx.model_dump(mode="json") for tx in (dead, undone)])
    data = cli.json("stats")
    assert data["counts"] == {
        "compensations_failed": 1,
        "step_retries": 2,
        "compensation_retries": 1,
        "recoveries": 5,
        "recovered_transactions": 2,
        "dead_letters": 1,
    }
    assert data["by_action"][0] | {"p50_seconds": None, "p95_seconds": None} == {
        "action": "charge",
        "steps": 1,
        "failed_steps": 0,
        "retries": 2,
        "compensated": 0,
        "compensations_failed": 1,
        "p50_seconds": None,
        "p95_seconds": None,
    }
