"""``run``: sagas from JSON, TOML and YAML files, the live display, and bad saga files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from tests._cli_support import Cli  # noqa: E402
from tests.test_cli import assert_usage_error  # noqa: E402

SAGA = {
    "name": "order",
    "timeout": 30,
    "steps": [
        {
            "agent": "inventory",
            "action": "reserve",
            "data": {"sku": "A-1"},
            "compensate": "release",
        },
        {
            "agent": "billing",
            "action": "charge",
            "data": {"amount": 42, "token": "tok-9"},
            "compensate": "refund",
            "retry": {"max_attempts": 3, "initial_delay": 0, "jitter": 0},
        },
        {"agent": "shipping", "action": "ship", "compensate": "cancel"},
    ],
}

TOML = """
name = "order"
timeout = 30

[[steps]]
agent = "inventory"
action = "reserve"
data = { sku = "A-1" }
compensate = "release"

[[steps]]
agent = "billing"
action = "charge"
data = { amount = 42, token = "tok-9" }
compensate = "refund"
retry = { max_attempts = 3, initial_delay = 0, jitter = 0 }

[[steps]]
agent = "shipping"
action = "ship"
compensate = "cancel"
"""

YAML = """
name: order
timeout: 30
steps:
  - agent: inventory
    action: reserve
    data: {sku: A-1}
    compensate: release
  - agent: billing
    action: charge
    data: {amount: 42, token: tok-9}
    compensate: refund
    retry: {max_attempts: 3, initial_delay: 0, jitter: 0}
  - agent: shipping
    action: ship
    compensate: cancel
"""


def saga_file(tmp_path: Path, suffix: str) -> Path:
    path = tmp_path / f"order{suffix}"
    text = {".json": json.dumps(SAGA), ".toml": TOML, ".yaml": YAML, ".yml": YAML}[suffix]
    path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml", ".yml"])
def test_run_a_saga_that_commits(cli: Cli, tmp_path: Path, suffix: str) -> None:
    path = saga_file(tmp_path, suffix)
    data = cli.json("run", str(path), "--handlers", cli.spec("ALL_OK"))
    assert data["saga"] == "order"
    assert data["state"] == "committed"
    assert [s["action"] for s in data["steps"]] == ["reserve", "charge", "ship"]
    assert data["steps"][1]["data"] == {"amount": 42, "token": "***"}
    assert cli.calls() == ["reserve", "charge", "ship"]
    assert cli.json("status", "--tx-id", data["transaction_id"])["timeout_seconds"] == 30


def test_run_a_saga_that_rolls_back_exits_1_after_retries(cli: Cli, tmp_path: Path) -> None:
    result = cli("run", str(saga_file(tmp_path, ".toml")), "--handlers", cli.spec(), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["state"] == "rolled_back"
    assert data["steps"][1]["attempts"] == 3
    assert cli.calls() == ["reserve", "charge", "charge", "charge", "release"]


def test_run_human_output_off_a_terminal(cli: Cli, tmp_path: Path) -> None:
    result = cli("run", str(saga_file(tmp_path, ".json")), "--handlers", cli.spec())
    assert result.exit_code == 1
    assert "rolled_back" in result.stdout and "release ✓" in result.stdout
    assert "\x1b[" not in result.stdout


def test_run_shows_a_live_display_on_a_terminal(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "run",
        str(saga_file(tmp_path, ".json")),
        "--handlers",
        cli.spec(),
        env={"FORCE_COLOR": "1", "COLUMNS": "120"},
    )
    assert result.exit_code == 1
    assert "Saga order" in result.stdout  # the live table's title, drawn while running
    assert "\x1b[" in result.stdout
    assert "rolled_back" in result.stdout


def test_commit_shows_a_live_display_on_a_terminal(cli: Cli) -> None:
    tx_id = cli.build(("a", "reserve", None, "release"))
    result = cli.ok("commit", "--tx-id", tx_id, "--handlers", cli.spec(), env={"FORCE_COLOR": "1"})
    assert "Committing" in result.stdout


def test_run_timeout_option_overrides_the_file(cli: Cli, tmp_path: Path) -> None:
    path = saga_file(tmp_path, ".json")
    data = cli.json("run", str(path), "--handlers", cli.spec("ALL_OK"), "--timeout", "99")
    assert cli.json("status", "--tx-id", data["transaction_id"])["timeout_seconds"] == 99


def test_run_a_bare_list_of_steps(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "steps.json"
    path.write_text(json.dumps([{"agent_id": "a", "action": "reserve"}]))
    data = cli.json("run", str(path), "--handlers", cli.spec())
    assert (data["saga"], data["state"]) == ("steps", "committed")


def test_yaml_without_pyyaml_says_what_to_install(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    result = cli("run", str(saga_file(tmp_path, ".yaml")), "--handlers", cli.spec())
    assert_usage_error(result, "needs PyYAML", 'pip install -e ".[yaml]"')


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("s.json", '{"steps": [}', ("not valid JSON", "line 1, column 12")),
        ("s.toml", "[[steps]\nagent = 1", ("not valid TOML", "line 1")),
        ("s.yaml", "steps:\n  - agent: a\n   action: b", ("not valid YAML", "line 3")),
        ("s.txt", "{}", ("extension", ".txt")),
        ("s.json", '{"steps": []}', ("non-empty list of steps",)),
        ("s.json", '{"stepz": []}', ("unknown key(s) 'stepz'",)),
        ("s.json", '{"steps": [{"agent": "a"}]}', ("step 1", "missing 'action'")),
        (
            "s.json",
            '{"steps": [{"agent": "a", "action": "x", "compensat": "y"}]}',
            ("step 1", "'compensat'"),
        ),
        (
            "s.json",
            '{"steps": [{"agent": "a", "action": "x", "data": [1]}]}',
            ("'data' must be an object",),
        ),
        (
            "s.json",
            '{"steps": [{"agent": "", "action": "x"}]}',
            ("'agent' must be a non-empty string",),
        ),
        (
            "s.json",
            '{"steps": [{"agent": "a", "action": "x", "retry": {"max_attempts": 0}}]}',
            ("step 1, retry", "max_attempts"),
        ),
        (
            "s.json",
            '{"steps": [{"agent": "a", "action": "x", "retry": {"attempts": 2}}]}',
            ("unknown key(s) 'attempts'", "max_attempts"),
        ),
        (
            "s.json",
            '{"steps": [{"agent": "a", "action": "x", "recovery": "retry"}]}',
            ("'recovery'",),
        ),
        ("s.json", '{"timeout": -1, "steps": [{"agent": "a", "action": "x"}]}', ("'timeout'",)),
        ("s.json", '{"steps": [{"agent": "a", "action": "nope"}]}', ("no handler for 'nope'",)),
    ],
)
def test_bad_saga_files_change_nothing(
    cli: Cli, tmp_path: Path, name: str, content: str, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert_usage_error(cli("run", str(path), "--handlers", cli.spec()), *fragments)
    assert cli.json("list") == []
    assert cli.calls() == []


def test_run_of_a_missing_file(cli: Cli, tmp_path: Path) -> None:
    result = cli("run", str(tmp_path / "nope.json"), "--handlers", cli.spec())
    assert_usage_error(result, "there is no file")


def test_run_bad_timeout(cli: Cli, tmp_path: Path) -> None:
    path = saga_file(tmp_path, ".json")
    assert_usage_error(
        cli("run", str(path), "--handlers", cli.spec(), "--timeout", "0"), "--timeout"
    )
