"""The CLI's build-and-drive commands: create, status, add-step, commit, rollback.

Exit codes: 0 success, 1 when a commit or rollback did not reach its goal state,
2 for usage errors (one line on stderr, no traceback, nothing changed in the store).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from aumai_transactions import __version__

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from tests._cli_support import ORDER, Cli  # noqa: E402

COMMANDS = (
    "create",
    "status",
    "add-step",
    "commit",
    "rollback",
    "run",
    "list",
    "show",
    "stats",
    "recover",
    "export",
    "import",
    "purge",
    "retry-compensation",
    "resolve",
)


def assert_usage_error(result: object, *fragments: str) -> str:
    """Exit 2, one line on stderr containing ``fragments``, no traceback; the line."""
    exit_code = result.exit_code  # type: ignore[attr-defined]
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert exit_code == 2, (exit_code, result.stdout, stderr)  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------------- help, version


def test_help_lists_every_command_with_one_line_help(cli: Cli) -> None:
    result = cli.ok("--help", store=None, env={"COLUMNS": "120"})
    for command in COMMANDS:
        lines = [line for line in result.stdout.splitlines() if f"│ {command} " in line]
        assert len(lines) == 1, command
        assert len(lines[0].split(command, 1)[1].strip(" │")) > 10, lines[0]


def test_every_command_has_help_with_json_and_store(cli: Cli) -> None:
    for command in COMMANDS:
        result = cli.ok(command, "--help", store=None, env={"COLUMNS": "200"})
        assert "--json" in result.stdout, command
        assert "--store" in result.stdout, command
        assert "AUMAI_TRANSACTIONS_STORE" in result.stdout, command


def test_version(cli: Cli) -> None:
    result = cli.ok("--version", store=None)
    assert result.stdout.strip() == f"aumai-transactions {__version__}"


def test_no_arguments_shows_help(cli: Cli) -> None:
    result = cli(store=None)
    assert result.exit_code == 2
    assert "create" in result.stdout + result.stderr


# ---------------------------------------------------------------------- create, status


CREATE_KEYS = ["transaction_id", "state", "created_at", "timeout_seconds"]
STATUS_KEYS = ["transaction_id", "state", "steps", "created_at", "timeout_seconds"]


def test_create_off_a_terminal_prints_the_original_document(cli: Cli) -> None:
    result = cli.ok("create")  # CliRunner's stdout is not a terminal, as a pipe is not
    data = json.loads(result.stdout)
    assert list(data)[: len(CREATE_KEYS)] == CREATE_KEYS
    assert data["state"] == "pending"
    assert data["timeout_seconds"] == 60
    assert '"timeout_seconds": 60\n' in result.stdout  # 60 as the original printed it, not 60.0
    assert datetime.fromisoformat(data["created_at"]).tzinfo is not None
    assert result.stderr == ""  # nothing but the document, even with 2>&1
    assert cli.json("status", "--tx-id", data["transaction_id"])["state"] == "pending"


def test_create_json_on_a_terminal_is_the_same_document(cli: Cli, on_terminal: None) -> None:
    data = cli.json("create", "--timeout", "120")
    assert list(data)[: len(CREATE_KEYS)] == CREATE_KEYS
    assert data["timeout_seconds"] == 120


def test_create_on_a_terminal_prints_a_panel(cli: Cli, on_terminal: None) -> None:
    result = cli.ok("create", "--timeout", "600")
    assert "Created transaction" in result.stdout and "commit before" in result.stdout
    assert "pending" in result.stdout and "600 s" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)
    tx_id = cli.json("list")[0]["transaction_id"]
    assert tx_id in result.stdout


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_create_quiet_prints_the_bare_id(cli: Cli, flag: str) -> None:
    result = cli.ok("create", flag)
    assert result.stdout == result.stdout.strip() + "\n"
    tx_id = result.stdout.strip()
    assert cli.json("status", "--tx-id", tx_id)["transaction_id"] == tx_id
    assert result.stderr == ""


def test_create_quiet_on_a_terminal_is_still_the_bare_id(cli: Cli, on_terminal: None) -> None:
    tx_id = cli.ok("create", "-q").stdout.strip()
    assert cli.json("list")[0]["transaction_id"] == tx_id


def test_create_quiet_and_json_together_are_refused(cli: Cli) -> None:
    assert_usage_error(cli("create", "-q", "--json"), "--quiet", "--json")
    assert cli.json("list") == []


def test_a_fractional_timeout_stays_a_float(cli: Cli) -> None:
    assert cli.json("create", "--timeout", "2.5")["timeout_seconds"] == 2.5


@pytest.mark.parametrize("value", ["0", "-5", "inf"])
def test_create_rejects_a_non_positive_timeout(cli: Cli, value: str) -> None:
    assert_usage_error(cli("create", "--timeout", value), "--timeout")
    assert cli.json("list") == []


def test_create_rejects_a_non_numeric_timeout(cli: Cli) -> None:
    result = cli("create", "--timeout", "soon")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr


def test_status_off_a_terminal_prints_the_original_document(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0], ORDER[2])
    created_at = cli.json("show", tx_id)["transaction"]["created_at"]
    data = json.loads(cli.ok("status", "--tx-id", tx_id).stdout)
    assert list(data)[: len(STATUS_KEYS)] == STATUS_KEYS
    assert data["transaction_id"] == tx_id
    assert (data["state"], data["steps"], data["timeout_seconds"]) == ("pending", 2, 600)
    assert data["created_at"] == created_at


def test_status_json_on_a_terminal_is_the_same_document(cli: Cli, on_terminal: None) -> None:
    tx_id = cli.build(ORDER[0])
    data = cli.json("status", "--tx-id", tx_id)
    assert list(data)[: len(STATUS_KEYS)] == STATUS_KEYS
    assert data["steps"] == 1


def test_status_on_a_terminal_prints_a_panel(cli: Cli, on_terminal: None) -> None:
    tx_id = cli.create()
    out = cli.ok("status", "--tx-id", tx_id).stdout
    assert tx_id in out and "pending" in out and "600 s" in out and "commit before" in out
    assert '"transaction_id"' not in out


def test_status_warns_when_the_deadline_passed(cli: Cli, on_terminal: None) -> None:
    tx_id = cli.create(timeout="0.001")
    assert "deadline passed" in cli.ok("status", "--tx-id", tx_id).stdout


def test_a_unique_prefix_finds_the_transaction(cli: Cli) -> None:
    tx_id = cli.create()
    assert cli.json("status", "--tx-id", tx_id[:8])["transaction_id"] == tx_id


def test_unknown_id_suggests_the_closest(cli: Cli) -> None:
    tx_id = cli.create()
    typo = tx_id[:-1] + ("0" if tx_id[-1] != "0" else "1")
    assert_usage_error(cli("status", "--tx-id", typo), "No transaction", tx_id)


def test_unknown_id_in_an_empty_store(cli: Cli) -> None:
    assert_usage_error(cli("status", "--tx-id", "nope"), "holds no transactions")


def test_an_ambiguous_prefix_is_refused(cli: Cli, tmp_path: Path) -> None:
    dumps = [
        {"transaction_id": f"abcd{n}000-0000-4000-8000-000000000000", "steps": []} for n in range(2)
    ]
    (tmp_path / "two.json").write_text(json.dumps(dumps))
    cli.ok("import", str(tmp_path / "two.json"))
    assert_usage_error(cli("status", "--tx-id", "abcd"), "ambiguous", "abcd0000", "abcd1000")


def test_status_requires_tx_id(cli: Cli) -> None:
    result = cli("status")
    assert result.exit_code == 2
    assert "--tx-id" in result.stderr


# ---------------------------------------------------------------------- add-step


def test_add_step_appends_and_saves(cli: Cli) -> None:
    tx_id = cli.create()
    data = cli.json(
        "add-step",
        "--tx-id",
        tx_id,
        "--agent",
        "inventory",
        "--action",
        "reserve",
        "--data",
        '{"sku": "A-1"}',
        "--compensate",
        "release",
    )
    assert data["transaction_id"] == tx_id
    step = data["step"]
    assert (step["index"], step["agent_id"], step["action"]) == (1, "inventory", "reserve")
    assert (step["compensating_action"], step["data"], step["status"]) == (
        "release",
        {"sku": "A-1"},
        "pending",
    )
    assert cli.json("status", "--tx-id", tx_id)["steps"] == 1


def test_add_step_human(cli: Cli) -> None:
    tx_id = cli.create()
    result = cli.ok("add-step", "--tx-id", tx_id, "--agent", "a", "--action", "reserve")
    assert "reserve" in result.stdout
    assert "has 1 step(s)" in result.stderr


def test_add_step_data_from_a_file(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text('{"nested": {"list": [1, 2]}}')
    tx_id = cli.create()
    data = cli.json(
        "add-step", "--tx-id", tx_id, "--agent", "a", "--action", "x", "--data", "@data.json"
    )
    assert data["step"]["data"] == {"nested": {"list": [1, 2]}}


def test_add_step_data_from_stdin(cli: Cli) -> None:
    tx_id = cli.create()
    data = cli.json(
        "add-step",
        "--tx-id",
        tx_id,
        "--agent",
        "a",
        "--action",
        "x",
        "--data",
        "@-",
        input='{"from": "stdin"}',
    )
    assert data["step"]["data"] == {"from": "stdin"}


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ('{"sku": "A-1",}', ("not valid JSON", "line 1, column 15")),
        ('{"a": 1,\n "b": }', ("not valid JSON", "line 2, column 7")),
        ("[1, 2]", ("must be a JSON object", "list")),
        ('{"x": NaN}', ("NaN",)),
        ("@missing.json", ("there is no file", "missing.json")),
    ],
)
def test_add_step_bad_data_changes_nothing(cli: Cli, data: str, fragments: tuple[str, ...]) -> None:
    tx_id = cli.create()
    result = cli("add-step", "--tx-id", tx_id, "--agent", "a", "--action", "x", "--data", data)
    assert_usage_error(result, *fragments)
    assert cli.json("status", "--tx-id", tx_id)["steps"] == 0


def test_add_step_bad_json_in_a_file_names_the_file(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{\n  "a": 1\n  "b": 2\n}')
    tx_id = cli.create()
    result = cli(
        "add-step", "--tx-id", tx_id, "--agent", "a", "--action", "x", "--data", "@bad.json"
    )
    assert_usage_error(result, "bad.json", "line 3, column 3")


def test_add_step_empty_agent_is_refused(cli: Cli) -> None:
    tx_id = cli.create()
    result = cli("add-step", "--tx-id", tx_id, "--agent", " ", "--action", "x")
    assert_usage_error(result, "agent_id")
    assert cli.json("status", "--tx-id", tx_id)["steps"] == 0


def test_add_step_to_a_committed_transaction_is_refused(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0])
    cli.ok("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    result = cli("add-step", "--tx-id", tx_id, "--agent", "a", "--action", "x")
    assert_usage_error(result, "committed", "only be added to pending")
    assert cli.json("status", "--tx-id", tx_id)["steps"] == 1


def test_add_step_unknown_id(cli: Cli) -> None:
    result = cli("add-step", "--tx-id", "missing", "--agent", "a", "--action", "x")
    assert_usage_error(result, "No transaction 'missing'")


# ---------------------------------------------------------------------- commit


def test_commit_success(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0], ORDER[2])
    data = cli.json("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    assert data["state"] == "committed"
    assert [s["status"] for s in data["steps"]] == ["completed", "completed"]
    assert data["completed_steps"] == [s["step_id"] for s in data["steps"]]
    assert cli.calls() == ["reserve", "ship"]
    assert cli.json("status", "--tx-id", tx_id)["state"] == "committed"


def test_commit_human_output(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0])
    out = cli.ok("commit", "--tx-id", tx_id, "--handlers", cli.spec()).stdout
    assert "committed" in out and "reserve" in out and "Steps" in out


def test_commit_with_a_failing_step_rolls_back_and_exits_1(cli: Cli) -> None:
    tx_id = cli.build(*ORDER)
    result = cli("commit", "--tx-id", tx_id, "--handlers", cli.spec(), "--json")
    assert result.exit_code == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "rolled_back"
    assert data["error"] == "charge failed"
    assert data["failed_step"] == data["steps"][1]["step_id"]
    assert [s["status"] for s in data["steps"]] == ["compensated", "failed", "pending"]
    assert cli.calls() == ["reserve", "charge", "release"]


def test_commit_failure_human_output(cli: Cli) -> None:
    tx_id = cli.build(*ORDER)
    result = cli("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    assert result.exit_code == 1
    assert "rolled_back" in result.stdout
    assert "#2 charge (billing)" in result.stdout
    assert "charge failed" in result.stdout


def test_commit_twice_is_a_usage_error(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0])
    cli.ok("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    result = cli("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    assert_usage_error(result, "is committed", "only pending")
    assert cli.calls() == ["reserve"]


def test_commit_after_the_deadline_fails_without_running(cli: Cli) -> None:
    tx_id = cli.create(timeout="0.001")
    cli.ok("add-step", "--tx-id", tx_id, "--agent", "a", "--action", "reserve")
    result = cli("commit", "--tx-id", tx_id, "--handlers", cli.spec(), "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "failed"
    assert cli.calls() == []


def test_commit_refuses_handlers_missing_an_action(cli: Cli) -> None:
    tx_id = cli.build(("a", "unheard_of", None, "release"))
    result = cli("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    assert_usage_error(result, "no handler for 'unheard_of'", "nothing was run")
    assert cli.json("status", "--tx-id", tx_id)["state"] == "pending"
    assert cli.calls() == []


def test_commit_requires_handlers(cli: Cli) -> None:
    tx_id = cli.create()
    result = cli("commit", "--tx-id", tx_id)
    assert result.exit_code == 2
    assert "--handlers" in result.stderr


def test_compensation_failure_exits_1_with_compensation_failed(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0], ORDER[1], ("shipping", "ship", None, None))
    result = cli("commit", "--tx-id", tx_id, "--handlers", cli.spec("BROKEN_UNDO"), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["state"] == "compensation_failed"
    assert data["compensation_errors"] == {data["steps"][0]["step_id"]: "release failed"}
    assert data["steps"][0]["compensation"] == "failed"


def test_handler_stdout_goes_to_stderr_in_json_mode(cli: Cli) -> None:
    tx_id = cli.build(("notifier", "notify", None, None))
    result = cli.ok("commit", "--tx-id", tx_id, "--handlers", cli.spec(), "--json")
    assert json.loads(result.stdout)["state"] == "committed"
    assert "handler says hello" in result.stderr


# ---------------------------------------------------------------------- rollback


def test_rollback_of_a_pending_transaction_compensates_in_reverse(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0], ORDER[2], ("audit", "pay", None, None))
    data = cli.json("rollback", "--tx-id", tx_id, "--handlers", cli.spec())
    assert data["state"] == "rolled_back"
    assert cli.calls() == ["cancel", "release"]
    ids = [s["step_id"] for s in data["steps"]]
    assert data["completed_steps"] == ids[::-1]


def test_rollback_of_a_committed_transaction(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0])
    cli.ok("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    cli.ok("rollback", "--tx-id", tx_id, "--handlers", cli.spec())
    assert cli.calls() == ["reserve", "release"]
    assert cli.json("status", "--tx-id", tx_id)["state"] == "rolled_back"


def test_rollback_of_a_rolled_back_transaction_is_refused(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0])
    cli.ok("rollback", "--tx-id", tx_id, "--handlers", cli.spec())
    result = cli("rollback", "--tx-id", tx_id, "--handlers", cli.spec())
    assert_usage_error(result, "rolled_back", "pending or committed")


def test_rollback_with_a_failing_compensation_exits_1(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0])
    result = cli("rollback", "--tx-id", tx_id, "--handlers", cli.spec("BROKEN_UNDO"))
    assert result.exit_code == 1
    assert "compensation_failed" in result.stdout


def test_rollback_only_needs_compensation_handlers(cli: Cli) -> None:
    tx_id = cli.build(("a", "never_defined", None, "release"))
    cli.ok("rollback", "--tx-id", tx_id, "--handlers", cli.spec())
    assert cli.calls() == ["release"]


# ---------------------------------------------------------------------- handler specs


def test_handlers_by_module_name(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "cli_test_handlers_mod.py").write_text(
        "HANDLERS = {'reserve': lambda action, data: None}\n"
    )
    tx_id = cli.build(("a", "reserve", None, None))
    data = cli.json("commit", "--tx-id", tx_id, "--handlers", "cli_test_handlers_mod:HANDLERS")
    assert data["state"] == "committed"


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("no_colon_here", ("module:attribute",)),
        ("no_such_module_xyz:HANDLERS", ("no module named 'no_such_module_xyz'",)),
        ("./missing_file.py:HANDLERS", ("there is no file",)),
        ("{handlers}:NOPE", ("has no attribute 'NOPE'", "ALL_OK", "HANDLERS")),
        ("{handlers}:NOT_A_MAPPING", ("is a list, not a mapping",)),
        ("{handlers}:NOT_CALLABLE", ("handler of 'reserve' is a int, not a callable",)),
        ("{handlers}:ok", ("is a function, not a mapping",)),
    ],
)
def test_bad_handler_specs(cli: Cli, spec: str, fragments: tuple[str, ...]) -> None:
    tx_id = cli.build(ORDER[0])
    result = cli("commit", "--tx-id", tx_id, "--handlers", spec.format(handlers=cli.handlers_file))
    assert_usage_error(result, *fragments)
    assert cli.json("status", "--tx-id", tx_id)["state"] == "pending"


def test_handler_module_that_raises_on_import(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "raises.py").write_text("raise ZeroDivisionError('at import')\nHANDLERS = {}\n")
    tx_id = cli.build(ORDER[0])
    result = cli("commit", "--tx-id", tx_id, "--handlers", "raises.py:HANDLERS")
    assert_usage_error(result, "raised ZeroDivisionError: at import")


def test_handler_module_with_a_syntax_error(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("HANDLERS = {\n")
    tx_id = cli.build(ORDER[0])
    result = cli("commit", "--tx-id", tx_id, "--handlers", "broken.py:HANDLERS")
    assert_usage_error(result, "broken.py", "line 1", "syntax error")


def test_handler_module_missing_a_dependency(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "needs.py").write_text("import not_installed_dep_xyz\nHANDLERS = {}\n")
    tx_id = cli.build(ORDER[0])
    result = cli("commit", "--tx-id", tx_id, "--handlers", "needs.py:HANDLERS")
    assert_usage_error(result, "needs the module 'not_installed_dep_xyz'")


# ---------------------------------------------------------------------- handlers and sys.path


def test_loading_handlers_from_the_working_directory_leaves_sys_path_as_it_was(
    cli: Cli, tmp_path: Path
) -> None:
    import sys

    from aumai_transactions.cli._handlers import load_handlers

    (tmp_path / "shop_sibling_q.py").write_text("def ok(action, data):\n    return 1\n")
    (tmp_path / "shop_handlers_q.py").write_text(
        "from shop_sibling_q import ok\nHANDLERS = {'reserve': ok}\n"
    )
    before = list(sys.path)
    assert str(tmp_path) not in before
    handlers = load_handlers("shop_handlers_q:HANDLERS")
    assert handlers["reserve"]("reserve", {}) == 1  # the sibling imported during the import
    assert sys.path == before


def test_loading_handlers_from_a_file_leaves_sys_path_as_it_was(cli: Cli, tmp_path: Path) -> None:
    import sys

    from aumai_transactions.cli._handlers import load_handlers

    package = tmp_path / "elsewhere"
    package.mkdir()
    (package / "file_sibling_q.py").write_text("VALUE = 7\n")
    (package / "h.py").write_text(
        "import file_sibling_q\nHANDLERS = {'x': lambda a, d: file_sibling_q.VALUE}\n"
    )
    before = list(sys.path)
    assert load_handlers(f"{package / 'h.py'}:HANDLERS")["x"]("x", {}) == 7
    assert sys.path == before


def test_a_failing_handler_import_leaves_sys_path_as_it_was(cli: Cli, tmp_path: Path) -> None:
    import sys

    from aumai_transactions.cli._handlers import load_handlers

    (tmp_path / "fails_q.py").write_text("raise RuntimeError('no')\n")
    before = list(sys.path)
    with pytest.raises(Exception, match="raised RuntimeError"):
        load_handlers("fails_q:HANDLERS")
    assert sys.path == before


def test_a_handler_module_keeps_the_path_entries_it_adds_itself(cli: Cli, tmp_path: Path) -> None:
    import sys

    from aumai_transactions.cli._handlers import load_handlers

    (tmp_path / "adds_q.py").write_text(
        "import sys\nsys.path.append('/opt/own-lib')\nHANDLERS = {}\n"
    )
    before = list(sys.path)
    load_handlers("adds_q:HANDLERS")
    assert sys.path == [*before, "/opt/own-lib"]
