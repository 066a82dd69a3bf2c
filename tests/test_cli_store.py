"""Which store the CLI opens: the default SQLite file under HOME, its 0700 directory,
the one-time import of the original tool's transactions.json, and unusable stores."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from tests._cli_support import Cli  # noqa: E402
from tests.test_cli import assert_usage_error  # noqa: E402

# As the original tool wrote them: only the original fields, naive timestamps.
LEGACY = [
    {
        "transaction_id": "11111111-1111-4111-8111-111111111111",
        "steps": [
            {
                "step_id": "s-1",
                "agent_id": "user_service",
                "action": "create_user",
                "data": {"user_id": "u-001", "password": "pw"},
                "compensating_action": "delete_user",
            }
        ],
        "state": "committed",
        "created_at": "2024-05-01T10:00:00",
        "timeout_seconds": 60,
    },
    {
        "transaction_id": "22222222-2222-4222-8222-222222222222",
        "steps": [],
        "state": "pending",
        "created_at": "2024-05-02T10:00:00",
        "timeout_seconds": 30,
    },
]


def legacy_path(cli: Cli) -> Path:
    return cli.home / ".aumai" / "transactions" / "transactions.json"


def write_legacy(cli: Cli, payload: Any) -> Path:
    path = legacy_path(cli)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def test_the_default_store_lives_under_home_with_a_private_directory(cli: Cli) -> None:
    tx_id = cli.json("create", store=None)["transaction_id"]
    directory = cli.home / ".aumai" / "transactions"
    assert (directory / "transactions.db").is_file()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert [r["transaction_id"] for r in cli.json("list", store=None)] == [tx_id]


def test_the_original_tools_file_is_imported_once(cli: Cli) -> None:
    path = write_legacy(cli, LEGACY)
    first = cli.ok("list", "--json", store=None)
    assert f"Imported 2 transaction(s) from {path}" in first.stderr
    rows = json.loads(first.stdout)
    assert [r["transaction_id"] for r in rows] == [
        LEGACY[1]["transaction_id"],
        LEGACY[0]["transaction_id"],
    ]
    assert path.exists()  # left in place
    second = cli.ok("list", "--json", store=None)
    assert "Imported" not in second.stderr
    assert len(json.loads(second.stdout)) == 2
    shown = cli.json("show", "1111", store=None)
    assert shown["transaction"]["state"] == "committed"
    assert shown["transaction"]["created_at"].startswith("2024-05-01T10:00:00")
    assert shown["steps"][0]["data"] == {"user_id": "u-001", "password": "***"}


def test_an_original_file_keyed_by_id_is_imported_too(cli: Cli) -> None:
    write_legacy(cli, {tx.pop("transaction_id"): tx for tx in json.loads(json.dumps(LEGACY))})
    assert cli.json("status", "--tx-id", "2222", store=None)["timeout_seconds"] == 30


def test_the_original_file_is_not_imported_into_an_existing_database(cli: Cli) -> None:
    cli.ok("create", store=None)
    write_legacy(cli, LEGACY)
    assert "Imported" not in cli.ok("list", store=None).stderr
    assert len(cli.json("list", store=None)) == 1


def test_the_original_file_is_not_imported_into_another_store(cli: Cli) -> None:
    write_legacy(cli, LEGACY)
    assert cli.json("list") == []


def test_a_corrupt_original_file_stops_before_creating_the_database(cli: Cli) -> None:
    path = write_legacy(cli, [{"transaction_id": "x", "steps": "not a list"}])
    result = cli("list", store=None)
    assert_usage_error(result, str(path), "entry 0", "steps", "move it aside")
    assert not (path.parent / "transactions.db").exists()


def test_an_unparsable_original_file_names_the_position(cli: Cli) -> None:
    path = legacy_path(cli)
    path.parent.mkdir(parents=True)
    path.write_text('[{"transaction_id": "x"},\n')
    assert_usage_error(cli("list", store=None), str(path), "not valid JSON", "line 2")


def test_a_corrupt_database_is_refused_and_left_alone(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    garbage = bytes(range(256)) * 16
    path.write_bytes(garbage)
    result = cli("list", store=f"sqlite:///{path}")
    assert_usage_error(result, "store error", str(path), "not a SQLite database")
    assert path.read_bytes() == garbage


def test_an_unreachable_database_location(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = cli("create", store=f"sqlite:///{tmp_path / 'a-file' / 'x.db'}")
    assert_usage_error(result, "store error", "a-file")


def test_a_directory_is_not_a_database(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    assert_usage_error(cli("list", store=f"sqlite:///{tmp_path / 'dir.db'}"), "directory")


def test_a_bad_store_option_in_the_url(cli: Cli, tmp_path: Path) -> None:
    result = cli("list", store=f"sqlite:///{tmp_path / 'x.db'}?bogus=1")
    assert_usage_error(result, "Unknown option 'bogus'")


def test_an_unreachable_postgres_server(cli: Cli) -> None:
    pytest.importorskip("psycopg")
    result = cli("list", store="postgresql://postgres@127.0.0.1:1/nowhere")
    assert_usage_error(result, "store error", "127.0.0.1")


def test_sqlite_url_with_a_tilde_means_home(cli: Cli) -> None:
    tx_id = cli.json("create", store="sqlite:///~/elsewhere.db")["transaction_id"]
    assert (cli.home / "elsewhere.db").is_file()
    assert (
        cli.json("status", "--tx-id", tx_id, store="sqlite:///~/elsewhere.db")["state"] == "pending"
    )


def test_a_postgres_url_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    # psycopg made unimportable in a child process: the CLI's own entry point answers.
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "from aumai_transactions.cli import main\n"
        "sys.argv = ['aumai-transactions', 'list', '--store', 'postgresql://u@127.0.0.1/db']\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "cannot be opened" in line and "psycopg" in line, line
    assert line.count('pip install -e ".[postgres]"') == 1, line
