"""The CLI behaves the same everywhere: read-only commands never create a store; every
error is one line on stderr (Typer's own option validation included) with exit code 2;
help has no placeholder on flags; a transaction id is passed one way (positional
TX_ID, ``--tx-id`` kept where scripts used it); one duration per transaction; and the
small wording and rendering faults of issue 10 stay fixed."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from tests._cli_support import ORDER, Cli, on_a_pty  # noqa: E402
from tests.test_cli import COMMANDS, assert_usage_error  # noqa: E402
from tests.test_cli_e2e import command  # noqa: E402

READ_ONLY = (
    ("list",),
    ("show", "abcd1234"),
    ("status", "abcd1234"),
    ("status", "--tx-id", "abcd1234"),
    ("stats",),
    ("export",),
    ("purge", "--state", "committed", "--older-than", "1d", "--yes"),
)


# ---------------------------------------------------------------------- read-only commands


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda args: " ".join(args))
def test_a_read_only_command_never_creates_a_missing_store(
    cli: Cli, tmp_path: Path, args: tuple[str, ...]
) -> None:
    missing = tmp_path / "nodir" / "typo.db"
    result = cli(*args, store=f"sqlite:///{missing}")
    line = assert_usage_error(result, f"There is no store at {missing}", "nor its directory")
    assert f"named by --store sqlite:///{missing}" in line
    assert f"`{args[0]}` only reads" in line
    assert not missing.exists() and not missing.parent.exists()


def test_a_missing_file_in_an_existing_directory(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    line = assert_usage_error(cli("list", store=f"sqlite:///{missing}"), str(missing))
    assert "nor its directory" not in line
    assert not missing.exists()


def test_a_missing_store_named_by_the_environment_says_so(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "from-env.db"
    env = {"AUMAI_TRANSACTIONS_STORE": f"sqlite:///{missing}"}
    result = cli("stats", store=None, env=env)
    assert_usage_error(
        result, str(missing), f"named by AUMAI_TRANSACTIONS_STORE=sqlite:///{missing}"
    )
    assert not missing.exists()


def test_a_missing_default_store_is_not_created_by_reading(cli: Cli) -> None:
    directory = cli.home / ".aumai" / "transactions"
    result = cli("list", store=None)
    assert_usage_error(result, str(directory / "transactions.db"), "the default store")
    assert not directory.exists()
    cli.ok("create", store=None)  # a command that writes creates it
    assert (directory / "transactions.db").is_file()
    assert len(cli.json("list", store=None)) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("create",),
        ("import", "-"),
    ],
    ids=lambda args: args[0],
)
def test_commands_that_write_create_the_store(
    cli: Cli, tmp_path: Path, args: tuple[str, ...]
) -> None:
    path = tmp_path / "new" / "fresh.db"
    cli.ok(*args, store=f"sqlite:///{path}", input="[]")
    assert path.is_file()


def test_run_creates_the_store(cli: Cli, tmp_path: Path) -> None:
    saga = tmp_path / "saga.json"
    saga.write_text(json.dumps({"steps": [{"agent": "a", "action": "reserve"}]}))
    path = tmp_path / "new" / "run.db"
    cli.ok("run", str(saga), "--handlers", cli.spec(), store=f"sqlite:///{path}")
    assert path.is_file()


# ---------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ("purge", "--state", "commited", "--older-than", "1d"),
            ("'--state'", "'commited'", "'committed'", "purge -h"),
        ),
        (("list", "--limit", "0"), ("'--limit'", "greater than or equal to 1", "list -h")),
        (("list", "--limit", "x"), ("'--limit'", "integer")),
        (("list", "--bogus"), ("No such option: --bogus",)),
        (("commit", "abcd1234"), ("Missing option '--handlers'", "commit -h")),
        (("recover", "--handlers", "h:H", "--policy", "x"), ("'--policy'", "'resume'")),
        (("frobnicate",), ("No such command 'frobnicate'",)),
        (("--bogus",), ("No such option: --bogus",)),
        (("status",), ("Missing the transaction id", "status TX_ID", "--tx-id")),
        (("show",), ("Missing the transaction id", "show TX_ID")),
        (("commit", "--handlers", "h:H"), ("Missing the transaction id", "commit TX_ID")),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) and value[0][0] != "'" else "",
)
def test_every_usage_error_is_one_line_and_exit_2(
    cli: Cli, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    line = assert_usage_error(cli(*args), *fragments)
    assert "╭" not in line and "Usage:" not in line


def test_no_arguments_still_shows_the_help(cli: Cli) -> None:
    result = cli(store=None)
    assert result.exit_code == 2
    assert "Usage: aumai-transactions" in result.stdout + result.stderr


@pytest.mark.parametrize("command_name", [None, *COMMANDS])
def test_help_shows_no_placeholder_on_flags(cli: Cli, command_name: str | None) -> None:
    args = ["--help"] if command_name is None else [command_name, "--help"]
    text = cli.ok(*args, store=None, env={"COLUMNS": "200"}).stdout
    assert "<bool>" not in text
    for flag in ("--help", "--json", "--reveal", "--version", "--yes", "--dry-run", "--watch"):
        for line in text.splitlines():
            if re.search(rf"│\s+(\*\s+)?{flag}\b", line):
                # the flag, maybe its short form, then straight to its help text
                assert re.search(rf"{flag}(\s+-\w)?\s+[A-Z]", line), line


# ---------------------------------------------------------------------- transaction ids


@pytest.mark.parametrize("spelling", ["positional", "--tx-id"])
def test_a_transaction_id_is_passed_the_same_way_everywhere(cli: Cli, spelling: str) -> None:
    def ident(tx_id: str) -> list[str]:
        return [tx_id] if spelling == "positional" else ["--tx-id", tx_id]

    tx_id = cli.create()
    cli.ok(
        "add-step", *ident(tx_id), "--agent", "a", "--action", "reserve", "--compensate", "release"
    )
    assert cli.json("status", *ident(tx_id))["steps"] == 1
    assert cli.json("show", *ident(tx_id))["transaction"]["state"] == "pending"
    assert cli.json("commit", *ident(tx_id), "--handlers", cli.spec())["state"] == "committed"
    assert cli.json("rollback", *ident(tx_id), "--handlers", cli.spec())["state"] == "rolled_back"


def test_tx_id_is_documented_on_status_only(cli: Cli) -> None:
    for name in ("status", "add-step", "commit", "rollback", "show"):
        text = cli.ok(name, "--help", store=None, env={"COLUMNS": "200"}).stdout
        assert "TX_ID" in text, name
        assert ("--tx-id" in text) is (name == "status"), name


def test_two_different_ids_are_refused(cli: Cli) -> None:
    assert_usage_error(cli("status", "abcd1111", "--tx-id", "abcd2222"), "Two transaction ids")


def _import(cli: Cli, tmp_path: Path, *ids: str, created_at: str | None = None) -> None:
    path = tmp_path / "ids.json"
    entries = [{"transaction_id": tid, "steps": [], "timeout_seconds": None} for tid in ids]
    if created_at is not None:
        entries = [{**entry, "created_at": created_at} for entry in entries]
    path.write_text(json.dumps(entries))
    cli.ok("import", str(path))


def test_a_prefix_shorter_than_the_minimum_says_the_minimum_and_suggests(
    cli: Cli, tmp_path: Path
) -> None:
    _import(cli, tmp_path, "99e1f00d-0000-4000-8000-000000000001", "abcd0000-x", "abcd1000-y")
    line = assert_usage_error(cli("show", "99e"), "'99e' is too short", "at least 4 characters")
    assert "99e1f00d-0000-4000-8000-000000000001" in line
    two = assert_usage_error(cli("status", "ab"), "too short", "at least 4")
    assert "2 ids start with it" in two
    assert_usage_error(cli("show", "zz"), "No transaction 'zz'")  # none starts with it
    assert cli.json("show", "99e1")["transaction"]["transaction_id"].startswith("99e1")


# ---------------------------------------------------------------------- wording


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[{"transaction_id": "a', ("Unterminated string starting at line 1", "truncated")),
        ('[{"transaction_id": "a"},\n', ("Expecting value at line 2, column 1", "truncated")),
        ("", ("is empty",)),
    ],
)
def test_import_of_a_truncated_file_reads_well(
    cli: Cli, tmp_path: Path, text: str, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / "cut.json"
    path.write_text(text)
    line = assert_usage_error(cli("import", str(path)), str(path), *fragments)
    assert "at at" not in line


def test_recover_ending_a_transaction_failed_is_not_an_operator_problem(
    cli: Cli, tmp_path: Path
) -> None:
    # Interrupted mid-compensation: recovery finishes the compensation and it ends
    # failed, as it would have where it was interrupted; nobody needs to look.
    tid = "0000aaaa-0000-4000-8000-000000000001"
    stuck = {
        "transaction_id": tid,
        "state": "compensating",
        "error": f"Transaction {tid} was interrupted by a cancellation before it finished.",
        "steps": [
            {
                "agent_id": "a",
                "action": "reserve",
                "compensating_action": "release",
                "status": "completed",
                "attempts": 1,
            },
        ],
    }
    path = tmp_path / "stuck.json"
    path.write_text(json.dumps([stuck]))
    cli.ok("import", str(path))
    rows = cli.json("recover", "--handlers", cli.spec())
    assert [row["state"] for row in rows] == ["failed"]


# ---------------------------------------------------------------------- one duration


def _took(text: str) -> str:
    return next(
        line.split("took", 1)[1].strip(" │") for line in text.splitlines() if "took " in line
    )


def test_commit_and_show_report_the_same_duration(cli: Cli) -> None:
    tx_id = cli.build(*ORDER)
    committed = cli("commit", tx_id, "--handlers", cli.spec())
    shown = cli.ok("show", tx_id).stdout
    assert _took(committed.stdout) == _took(shown)
    as_json = json.loads(
        cli("commit", cli.build(*ORDER), "--handlers", cli.spec(), "--json").stdout
    )
    show_json = cli.json("show", as_json["transaction_id"])
    assert as_json["duration_seconds"] == show_json["transaction"]["duration_seconds"]


def test_a_rollback_and_show_report_the_same_duration(cli: Cli, tmp_path: Path) -> None:
    # Created long ago, rolled back now: whatever the definition, one number.
    _import(cli, tmp_path, "feed0000-0000-4000-8000-000000000001", created_at="2024-01-01")
    tid = "feed0000-0000-4000-8000-000000000001"
    cli.ok("add-step", tid, "--agent", "a", "--action", "reserve", "--compensate", "release")
    rolled = cli.json("rollback", tid, "--handlers", cli.spec())
    listed = cli.json("list")[0]
    assert rolled["duration_seconds"] == listed["duration_seconds"]
    human = cli.ok("rollback", cli.build(*ORDER[:1]), "--handlers", cli.spec()).stdout
    assert _took(human) == _took(cli.ok("show", cli.json("list")[0]["transaction_id"]).stdout)


# ---------------------------------------------------------------------- the live display


def _screen(raw: str, rows: int) -> list[str]:
    """What a terminal of ``rows`` lines shows, scrollback included, after ``raw``:
    enough of a VT100 for what Rich's live display sends (CR, LF, cursor up, erase
    line; colours ignored). The cursor cannot go above the top of the screen: lines
    that scrolled off it stay, as in a real terminal."""
    lines: list[str] = [""]
    row = 0  # the cursor's line in ``lines``
    text = re.sub(r"\x1b\[[0-9;?]*[mlh]", "", raw)
    for token in re.findall(r"\x1b\[\d*[AK]|\r\n|\r|\n|[^\x1b\r\n]+", text):
        top = max(0, len(lines) - rows)
        if token in ("\n", "\r\n"):
            row += 1
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            continue
        elif token.endswith("A"):
            row = max(top, row - int(token[2:-1] or 1))
        elif token.endswith("K"):
            lines[row] = ""
        else:
            lines[row] = token if not lines[row] else lines[row] + token
    return [line.rstrip() for line in lines]


def test_run_in_a_terminal_leaves_no_stale_live_line_above_the_panel(
    cli: Cli, tmp_path: Path
) -> None:
    saga = tmp_path / "tall.json"
    steps = [{"agent": "a", "action": "reserve", "compensate": "release"}] * 12
    saga.write_text(json.dumps({"name": "tall", "steps": steps}))
    rows = 10  # the live table (16 lines) is taller than the terminal
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    code, raw = on_a_pty(
        [*command(), "run", str(saga), "--handlers", cli.spec(), "--store", cli.url],
        {**env, "HOME": str(cli.home), "TERM": "xterm"},
        tmp_path,
        rows=rows,
        columns=100,
    )
    assert code == 0, raw
    assert "Saga tall" in raw  # the live display was drawn ...
    screen = _screen(raw, rows)
    assert not [line for line in screen if "Saga tall" in line], screen  # ... and left no line
    assert any(line.startswith("╭─ Transaction") for line in screen)


# ---------------------------------------------------------------------- SIGINT handling


def test_a_commit_leaves_sigint_as_it_found_it(cli: Cli) -> None:
    # The commit wraps asyncio's SIGINT handler to say what a first Ctrl-C does; once
    # done, SIGINT is back as it was: Python's default, or whatever was there before.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    cli.ok("commit", cli.build(*ORDER[:1]), "--handlers", cli.spec())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def mine(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, mine)
    try:
        cli.ok("commit", cli.build(*ORDER[:1]), "--handlers", cli.spec())
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)
