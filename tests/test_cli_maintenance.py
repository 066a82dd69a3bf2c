"""The CLI's maintenance commands (recover, export, import, purge), store selection,
store errors and the one-time import of the original tool's JSON file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from tests._cli_support import ORDER, Cli  # noqa: E402
from tests.test_cli import assert_usage_error  # noqa: E402


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def in_flight(tx_id: str, **overrides: Any) -> dict[str, Any]:
    """A transaction as a dead driver left it: step 1 done, step 2 in doubt."""
    return {
        "transaction_id": tx_id,
        "state": "active",
        "timeout_seconds": None,
        "steps": [
            {
                "step_id": f"{tx_id}-s1",
                "agent_id": "inventory",
                "action": "reserve",
                "compensating_action": "release",
                "status": "completed",
                "attempts": 1,
            },
            {
                "step_id": f"{tx_id}-s2",
                "agent_id": "shipping",
                "action": "ship",
                "compensating_action": "cancel",
                "status": "running",
                "attempts": 1,
            },
        ],
        **overrides,
    }


# ---------------------------------------------------------------------- recover


def test_recover_with_nothing_to_do(cli: Cli) -> None:
    cli.create()
    result = cli.ok("recover", "--handlers", cli.spec())
    assert "Nothing to recover" in result.stderr
    assert cli.json("recover", "--handlers", cli.spec()) == []


def test_recover_compensates_an_abandoned_transaction(cli: Cli, tmp_path: Path) -> None:
    cli.ok("import", str(write_json(tmp_path / "f.json", [in_flight("crashed-1")])))
    rows = cli.json("recover", "--handlers", cli.spec())
    assert [(r["transaction_id"], r["state"]) for r in rows] == [("crashed-1", "rolled_back")]
    assert cli.calls() == ["cancel", "release"]
    assert cli.json("status", "--tx-id", "crashed-1")["state"] == "rolled_back"
    assert cli.json("recover", "--handlers", cli.spec()) == []


def test_recover_human_output(cli: Cli, tmp_path: Path) -> None:
    cli.ok("import", str(write_json(tmp_path / "f.json", [in_flight("crashed-1")])))
    out = cli.ok("recover", "--handlers", cli.spec()).stdout
    assert "Recovered" in out and "crashed-1" in out and "rolled_back" in out


def test_recover_resume_carries_on(cli: Cli, tmp_path: Path) -> None:
    cli.ok("import", str(write_json(tmp_path / "f.json", [in_flight("crashed-1")])))
    rows = cli.json("recover", "--handlers", cli.spec(), "--policy", "resume")
    assert rows[0]["state"] == "committed"
    assert cli.calls() == ["ship"]


def test_recover_blocked_by_a_missing_handler_exits_1(cli: Cli, tmp_path: Path) -> None:
    dump = in_flight("crashed-1")
    dump["steps"][0]["compensating_action"] = "mystery_undo"
    cli.ok("import", str(write_json(tmp_path / "f.json", [dump])))
    result = cli("recover", "--handlers", cli.spec(), "--json")
    assert result.exit_code == 1
    row = json.loads(result.stdout)[0]
    assert "mystery_undo" in row["blocked_reason"]
    assert cli.calls() == []


def test_recover_dead_letters_a_poison_transaction(cli: Cli, tmp_path: Path) -> None:
    dump = in_flight("poison", recovery_attempts=3)
    cli.ok("import", str(write_json(tmp_path / "f.json", [dump])))
    result = cli("recover", "--handlers", cli.spec())
    assert result.exit_code == 1
    assert "dead_letter" in result.stdout
    assert cli.calls() == []
    first_line = cli.ok("list").stdout.splitlines()[0]
    assert "need an operator: 1 dead_letter" in first_line


def test_recover_masks_error_texts(cli: Cli, tmp_path: Path) -> None:
    dump = in_flight("crashed-1")
    cli.ok("import", str(write_json(tmp_path / "f.json", [dump])))
    result = cli("recover", "--handlers", cli.spec("LEAKY"), "--json")
    assert result.exit_code == 1, result.stderr
    row = json.loads(result.stdout)[0]
    assert row["state"] == "compensation_failed"
    (message,) = row["compensation_errors"].values()
    assert message == "release: 401 from https://app:***@pay.example/v1, Authorization: Bearer ***"
    assert "hunter2" not in result.stdout + result.stderr
    assert "tok-live-9" not in result.stdout + result.stderr


def test_recover_bad_policy(cli: Cli) -> None:
    result = cli("recover", "--handlers", cli.spec(), "--policy", "guess")
    assert result.exit_code == 2
    assert "guess" in result.stderr


def test_recover_bad_handlers(cli: Cli) -> None:
    assert_usage_error(cli("recover", "--handlers", "nope_module_q:H"), "no module named")


# ---------------------------------------------------------------------- export


def test_export_to_stdout_is_the_original_list_format(cli: Cli) -> None:
    first = cli.build(ORDER[0])
    second = cli.create()
    exported = json.loads(cli.ok("export").stdout)
    assert [tx["transaction_id"] for tx in exported] == [first, second]  # oldest first
    from aumai_transactions import Transaction

    for dump in exported:
        assert Transaction.model_validate(dump).model_dump(mode="json") == dump


def test_export_to_a_private_file(cli: Cli, tmp_path: Path) -> None:
    cli.build(ORDER[0])
    target = tmp_path / "backup.json"
    data = cli.json("export", "--output", str(target))
    assert data == {"exported": 1, "output": str(target)}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert len(json.loads(target.read_text())) == 1
    human = cli.ok("export", "-o", str(target))
    assert "Exported 1 transaction(s)" in human.stdout
    assert "unmasked" in human.stderr


def test_export_replaces_a_symlink_at_the_target_without_writing_through_it(
    cli: Cli, tmp_path: Path
) -> None:
    cli.build(ORDER[0])
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "backup.json"
    target.symlink_to(victim)
    cli.ok("export", "--output", str(target))
    assert victim.read_text() == "keep me"
    assert not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert len(json.loads(target.read_text())) == 1


def test_export_never_writes_through_a_symlink_at_the_temporary_name(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aumai_transactions.cli import _transfer

    cli.build(ORDER[0])
    target = tmp_path / "backup.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = tmp_path / ".backup.json.planted.tmp"
    planted.symlink_to(victim)
    dangling = tmp_path / ".backup.json.dangling.tmp"
    dangling.symlink_to(tmp_path / "would-be-created")
    predictable = tmp_path / f".backup.json.{os.getpid()}.tmp"  # the name once used
    predictable.symlink_to(victim)
    # The first names tried are the planted links (as an attacker who could guess the
    # name would leave them); the writer must skip them, not open them.
    names = iter([planted, dangling])
    fresh = _transfer._temporary_name
    monkeypatch.setattr(_transfer, "_temporary_name", lambda path: next(names, None) or fresh(path))
    cli.ok("export", "--output", str(target))
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "would-be-created").exists()
    assert planted.is_symlink() and dangling.is_symlink()  # left alone, not removed
    assert len(json.loads(target.read_text())) == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    leftovers = {p.name for p in tmp_path.glob(".backup.json.*")}
    assert leftovers == {planted.name, dangling.name, predictable.name}


def test_export_is_0600_whatever_the_umask(cli: Cli, tmp_path: Path) -> None:
    cli.build(ORDER[0])
    target = tmp_path / "backup.json"
    old = os.umask(0)
    try:
        cli.ok("export", "--output", str(target))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_failed_export_leaves_no_temporary_file(cli: Cli, tmp_path: Path) -> None:
    cli.build(ORDER[0])
    target = tmp_path / "a-directory"
    target.mkdir()
    (target / "inside").write_text("x")
    assert_usage_error(cli("export", "--output", str(target)), "Cannot write")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert (target / "inside").read_text() == "x"


def test_export_by_state(cli: Cli) -> None:
    cli.create()
    committed = cli.build(ORDER[0])
    cli.ok("commit", "--tx-id", committed, "--handlers", cli.spec())
    exported = json.loads(cli.ok("export", "--state", "committed").stdout)
    assert [tx["transaction_id"] for tx in exported] == [committed]


def test_export_to_an_unwritable_place(cli: Cli, tmp_path: Path) -> None:
    result = cli("export", "--output", str(tmp_path / "no" / "such" / "dir.json"))
    assert_usage_error(result, "Cannot write")


# ---------------------------------------------------------------------- import


def test_export_then_import_into_a_fresh_store(cli: Cli, tmp_path: Path) -> None:
    tx_id = cli.build(*ORDER)
    cli("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    cli.create()
    backup = tmp_path / "backup.json"
    cli.ok("export", "--output", str(backup))
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    data = cli.json("import", str(backup), store=fresh)
    assert len(data["imported"]) == 2 and data["skipped"] == []
    assert json.loads(cli.ok("export", store=fresh).stdout) == json.loads(backup.read_text())


def test_import_skips_what_is_stored_unless_replace(cli: Cli, tmp_path: Path) -> None:
    tx_id = cli.create()
    dump = json.loads(cli.ok("export").stdout)
    dump[0]["timeout_seconds"] = 5
    path = write_json(tmp_path / "f.json", dump)
    data = cli.json("import", str(path))
    assert (data["imported"], data["skipped"]) == ([], [tx_id])
    assert "already stored" in cli.ok("import", str(path)).stdout
    assert cli.json("status", "--tx-id", tx_id)["timeout_seconds"] == 600
    data = cli.json("import", str(path), "--replace")
    assert (data["imported"], data["replaced"]) == ([tx_id], [tx_id])
    assert cli.json("status", "--tx-id", tx_id)["timeout_seconds"] == 5


def test_import_accepts_an_object_keyed_by_id(cli: Cli, tmp_path: Path) -> None:
    path = write_json(tmp_path / "f.json", {"tx-a": {"steps": []}, "tx-b": {"steps": []}})
    assert sorted(cli.json("import", str(path))["imported"]) == ["tx-a", "tx-b"]
    assert cli.json("status", "--tx-id", "tx-a")["state"] == "pending"


def test_import_from_stdin(cli: Cli) -> None:
    data = cli.json("import", "-", input=json.dumps([{"transaction_id": "from-stdin"}]))
    assert data["imported"] == ["from-stdin"]


def test_import_warns_about_in_flight_transactions(cli: Cli, tmp_path: Path) -> None:
    result = cli.ok("import", str(write_json(tmp_path / "f.json", [in_flight("x-1")])))
    assert "recover" in result.stderr


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ('[{"transaction_id": "a"},\n {"transaction_id": }]', ("not valid JSON", "line 2")),
        ('"just a string"', ("holds a JSON str",)),
        ('[{"transaction_id": "a"}, 5]', ("entry 1", "expected a transaction object")),
        (
            '[{"transaction_id": "a"}, {"steps": [{"action": "x"}]}]',
            ("entry 1", "steps.0.agent_id", "Field required"),
        ),
        ('[{"transaction_id": "a"}, {"transaction_id": "a"}]', ("appears twice",)),
        ('[{"transaction_id": "a", "state": "exploded"}]', ("entry 0", "state")),
    ],
)
def test_a_bad_import_file_imports_nothing(
    cli: Cli, tmp_path: Path, content: str, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert_usage_error(cli("import", str(path)), str(path), *fragments)
    assert cli.json("list") == []


def test_import_of_a_missing_file(cli: Cli, tmp_path: Path) -> None:
    assert_usage_error(cli("import", str(tmp_path / "nope.json")), "there is no file")


# ---------------------------------------------------------------------- purge


@pytest.fixture
def old_transactions(cli: Cli, tmp_path: Path) -> None:
    dumps = [
        {"transaction_id": f"old-{state}", "state": state, "created_at": "2001-01-01T00:00:00Z"}
        for state in ("committed", "rolled_back", "pending", "active")
    ]
    cli.ok("import", str(write_json(tmp_path / "old.json", dumps)))
    cli.create()


def ids(cli: Cli) -> set[str]:
    return {row["transaction_id"] for row in cli.json("list")}


@pytest.mark.usefixtures("old_transactions")
def test_purge_with_yes(cli: Cli) -> None:
    data = cli.json(
        "purge", "--state", "committed", "--state", "pending", "--older-than", "7d", "--yes"
    )
    assert (data["deleted"], data["matching"]) == (2, 2)
    assert {"old-committed", "old-pending"}.isdisjoint(ids(cli))
    assert {"old-rolled_back", "old-active"} <= ids(cli)
    assert len(ids(cli)) == 3


@pytest.mark.usefixtures("old_transactions")
def test_purge_refuses_to_prompt_without_a_terminal(cli: Cli) -> None:
    result = cli("purge", "--state", "committed", "--older-than", "7d")
    assert_usage_error(result, "Refusing to prompt", "--yes", "1 transaction(s)")
    assert "old-committed" in ids(cli)


@pytest.mark.usefixtures("old_transactions")
@pytest.mark.parametrize(("answer", "left"), [("y\n", False), ("n\n", True), ("\n", True)])
def test_purge_asks_on_a_terminal(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, answer: str, left: bool
) -> None:
    from aumai_transactions.cli import maintenance

    monkeypatch.setattr(maintenance, "_stdin_is_interactive", lambda: True)
    result = cli.ok("purge", "--state", "committed", "--older-than", "7d", input=answer)
    assert "Delete 1 transaction(s) in committed" in result.stderr
    assert ("old-committed" in ids(cli)) is left


@pytest.mark.usefixtures("old_transactions")
def test_purge_dry_run_and_nothing_to_do(cli: Cli) -> None:
    data = cli.json("purge", "--state", "rolled_back", "--older-than", "1d", "--dry-run")
    assert (data["matching"], data["deleted"]) == (1, 0)
    assert (
        "would be deleted"
        in cli.ok("purge", "--state", "rolled_back", "--older-than", "1d", "--dry-run").stdout
    )
    assert "nothing to delete" in cli.ok("purge", "--state", "failed", "--older-than", "1d").stdout
    assert "old-rolled_back" in ids(cli)


def test_purge_keeps_recent_transactions(cli: Cli) -> None:
    tx_id = cli.build(ORDER[0])
    cli.ok("commit", "--tx-id", tx_id, "--handlers", cli.spec())
    assert cli.json("purge", "--state", "committed", "--older-than", "1h", "--yes")["deleted"] == 0
    assert cli.json("purge", "--state", "committed", "--older-than", "0s", "--yes")["deleted"] == 1


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--state", "active", "--older-than", "7d", "--yes"], ("in flight", "recover")),
        (["--state", "committed", "--older-than", "a week", "--yes"], ("not a duration",)),
    ],
)
def test_purge_bad_input(cli: Cli, args: list[str], fragments: tuple[str, ...]) -> None:
    assert_usage_error(cli("purge", *args), *fragments)


def test_purge_needs_state_and_age(cli: Cli) -> None:
    assert cli("purge", "--older-than", "7d", "--yes").exit_code == 2
    assert cli("purge", "--state", "committed", "--yes").exit_code == 2


# ---------------------------------------------------------------------- store selection


def test_unknown_store_scheme(cli: Cli) -> None:
    assert_usage_error(cli("list", store="redis://localhost"), "Unknown store scheme 'redis'")


def test_a_store_that_is_not_a_url(cli: Cli, tmp_path: Path) -> None:
    assert_usage_error(cli("list", store=str(tmp_path / "x.db")), "is not a URL")


def test_the_environment_variable_names_the_store(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    tx_id = cli.create()
    monkeypatch.setenv("AUMAI_TRANSACTIONS_STORE", cli.url)
    assert [r["transaction_id"] for r in cli.json("list", store=None)] == [tx_id]
    assert not (cli.home / ".aumai").exists()


def test_store_option_beats_the_environment(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUMAI_TRANSACTIONS_STORE", "bogus://nowhere")
    assert cli.json("list") == []


def test_memory_store_works_for_one_command(cli: Cli) -> None:
    assert cli.json("create", store="memory://")["state"] == "pending"
