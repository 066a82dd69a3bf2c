"""The installed ``aumai-transactions`` in real processes: the operator's scenario end
to end, exit codes as a shell sees them, and ``recover --watch`` stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aumai_transactions import Transaction

pytest.register_assert_rewrite("tests._cli_support")  # before it is imported, whoever imports

from tests._cli_support import on_a_pty  # noqa: E402

HANDLERS = """
import json, os

LOG = os.environ["AUMAI_E2E_LOG"]


def _log(action, data):
    with open(LOG, "a", encoding="utf-8") as handle:
        handle.write(action + "\\n")


def ok(action, data):
    _log(action, data)
    return {"ok": action}


def declined(action, data):
    _log(action, data)
    raise RuntimeError("card declined")


async def slow(action, data):
    import anyio

    _log(action, data)
    await anyio.sleep(60)


HANDLERS = {
    "wait": slow,
    "reserve": ok,
    "release": ok,
    "charge": declined,
    "refund": ok,
    "ship": ok,
    "cancel": ok,
}
"""


def command() -> list[str]:
    """The console script next to this interpreter, or ``python -P -m`` when not installed
    (``-P``: like the script, without the working directory on ``sys.path``)."""
    script = shutil.which("aumai-transactions", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [sys.executable, "-P", "-m", "aumai_transactions.cli"]


class Shell:
    """Runs the CLI as a user's shell would, with its own HOME and store."""

    def __init__(self, tmp_path: Path, store: str) -> None:
        self.tmp_path = tmp_path
        self.log = tmp_path / "side-effects.log"
        (tmp_path / "handlers.py").write_text(HANDLERS)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AUMAI_")},
            "HOME": str(tmp_path / "home"),
            "AUMAI_TRANSACTIONS_STORE": store,
            "AUMAI_E2E_LOG": str(self.log),
            "NO_COLOR": "1",
        }

    def run(
        self, *args: str, expect: int = 0, store: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if store is not None:
            env["AUMAI_TRANSACTIONS_STORE"] = store
        done = subprocess.run(
            [*command(), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.tmp_path,
            timeout=60,
        )
        assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done

    def json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.run(*args, "--json", **kwargs).stdout)

    def side_effects(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def shell(tmp_path: Path) -> Shell:
    return Shell(tmp_path, f"sqlite:///{tmp_path / 'ops.db'}")


def test_operator_scenario_end_to_end(shell: Shell, tmp_path: Path) -> None:
    created = json.loads(shell.run("create", "--timeout", "300").stdout)  # stdout is a pipe
    tx_id = created["transaction_id"]
    assert len(tx_id) == 36
    for agent, action, data, compensate in (
        ("inventory", "reserve", '{"sku": "A-1", "qty": 2}', "release"),
        ("billing", "charge", '{"amount": 42, "api_key": "sk-live-123"}', "refund"),
        ("shipping", "ship", '{"address": "Lisbon"}', "cancel"),
    ):
        shell.run(
            "add-step",
            "--tx-id",
            tx_id,
            "--agent",
            agent,
            "--action",
            action,
            "--data",
            data,
            "--compensate",
            compensate,
        )
    assert shell.json("status", "--tx-id", tx_id)["steps"] == 3

    committed = shell.run("commit", "--tx-id", tx_id, "--handlers", "handlers:HANDLERS", expect=1)
    assert "rolled_back" in committed.stdout and "card declined" in committed.stdout
    assert shell.side_effects() == ["reserve", "charge", "release"]

    shown = shell.run("show", tx_id[:8]).stdout
    for fragment in ("rolled_back", "card declined", "Timeline", "↩ #1 release", "***"):
        assert fragment in shown, fragment
    assert "sk-live-123" not in shown

    rows = shell.json("list")
    assert [(r["transaction_id"], r["state"]) for r in rows] == [(tx_id, "rolled_back")]

    exported = shell.run("export").stdout
    dumps = json.loads(exported)
    assert [Transaction.model_validate(d).transaction_id for d in dumps] == [tx_id]
    assert dumps[0]["steps"][1]["data"]["api_key"] == "sk-live-123"  # a backup: unmasked
    backup = tmp_path / "backup.json"
    shell.run("export", "--output", str(backup))

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    imported = shell.json("import", str(backup), store=fresh)
    assert imported["imported"] == [tx_id]
    assert json.loads(shell.run("export", store=fresh).stdout) == dumps
    again = shell.json("show", tx_id, store=fresh)
    assert [s["status"] for s in again["steps"]] == ["compensated", "failed", "pending"]


def test_exit_codes_as_a_shell_sees_them(shell: Shell, tmp_path: Path) -> None:
    saga = tmp_path / "saga.json"
    saga.write_text(
        json.dumps({"steps": [{"agent": "a", "action": "reserve", "compensate": "release"}]})
    )
    shell.run("run", str(saga), "--handlers", "handlers:HANDLERS", expect=0)
    saga.write_text(json.dumps({"steps": [{"agent": "a", "action": "charge"}]}))
    shell.run("run", str(saga), "--handlers", "handlers:HANDLERS", expect=1)
    bad = shell.run("status", "--tx-id", "nope", expect=2)
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
    shell.run("list", "--store", "nosuch://x", expect=2)
    saga.write_text(
        json.dumps(
            {
                "steps": [
                    {"agent": "a", "action": "reserve", "compensate": "charge"},
                    {"agent": "b", "action": "charge"},
                ]
            }
        )
    )
    undone = shell.run("run", str(saga), "--handlers", "handlers:HANDLERS", expect=1)
    assert "compensation_failed" in undone.stdout
    assert "aumai_transactions.engine ERROR: compensation 'charge'" in undone.stderr  # a log line
    assert shell.run("--version").stdout.startswith("aumai-transactions ")


def test_recover_watch_runs_until_ctrl_c(shell: Shell, tmp_path: Path) -> None:
    crashed = {
        "transaction_id": "crashed-1",
        "state": "active",
        "timeout_seconds": None,
        "steps": [
            {
                "agent_id": "inventory",
                "action": "reserve",
                "compensating_action": "release",
                "status": "completed",
                "attempts": 1,
            },
        ],
    }
    (tmp_path / "crashed.json").write_text(json.dumps([crashed]))
    shell.run("import", str(tmp_path / "crashed.json"))
    process = subprocess.Popen(
        [
            *command(),
            "recover",
            "--handlers",
            "handlers:HANDLERS",
            "--watch",
            "--interval",
            "0.2",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=shell.env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert json.loads(line) | {
            "transaction_id": "crashed-1",
            "state": "rolled_back",
        } == json.loads(line)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "Stopped." in stderr and "Traceback" not in stderr
    assert shell.side_effects() == ["release"]


def test_ctrl_c_during_commit_compensates_and_exits_130(shell: Shell) -> None:
    tx_id = shell.run("create", "--timeout", "300", "-q").stdout.strip()
    shell.run(
        "add-step",
        "--tx-id",
        tx_id,
        "--agent",
        "a",
        "--action",
        "reserve",
        "--compensate",
        "release",
    )
    shell.run(
        "add-step", "--tx-id", tx_id, "--agent", "a", "--action", "wait", "--compensate", "cancel"
    )
    process = subprocess.Popen(
        [*command(), "commit", "--tx-id", tx_id, "--handlers", "handlers:HANDLERS"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=shell.env,
        cwd=shell.tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while "wait" not in shell.side_effects() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "failed" in stdout and "was interrupted" in stdout  # the final state, printed
    assert "Traceback" not in stderr
    # The interrupted step may have had its effect: it is compensated too (in doubt).
    assert shell.side_effects() == ["reserve", "wait", "cancel", "release"]
    shown = shell.json("show", tx_id)
    assert shown["transaction"]["state"] == "failed"
    assert [s["status"] for s in shown["steps"]] == ["compensated", "compensated"]
    assert [s["interrupted"] for s in shown["steps"]] == [False, True]
    assert "interrupted: may have run, compensated" in shell.run("show", tx_id).stdout


# ---------------------------------------------------------------------- scripts, terminals


def test_scripts_read_create_and_status_through_a_pipe(shell: Shell) -> None:
    """What scripts written for the original do: ``create | jq -r .transaction_id``, and
    the same with ``$(...)``; FORCE_COLOR does not make a pipe a terminal."""
    cli = " ".join(shlex.quote(part) for part in command())
    read_id = f"{shlex.quote(sys.executable)} -c " + shlex.quote(
        "import json, sys; print(json.load(sys.stdin)['transaction_id'])"
    )
    script = f"""
        set -e
        TX=$({cli} create --timeout 90 | {read_id})
        {cli} add-step --tx-id "$TX" --agent a --action reserve > /dev/null
        {cli} status --tx-id "$TX"
        echo "quiet: $({cli} create -q)"
    """
    done = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        env={**shell.env, "FORCE_COLOR": "1"},
        cwd=shell.tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    document, quiet = done.stdout.rsplit("quiet: ", 1)
    status = json.loads(document)
    assert list(status)[:5] == ["transaction_id", "state", "steps", "created_at", "timeout_seconds"]
    assert (status["state"], status["steps"], status["timeout_seconds"]) == ("pending", 1, 90)
    assert shell.json("status", "--tx-id", quiet.strip())["steps"] == 0


def test_create_printed_into_a_pipe_is_the_original_document(shell: Shell) -> None:
    done = shell.run("create")
    created = json.loads(done.stdout)
    assert list(created) == ["transaction_id", "state", "created_at", "timeout_seconds"]
    assert created["timeout_seconds"] == 60 and '"timeout_seconds": 60\n' in done.stdout
    assert done.stderr == ""


def test_main_is_importable_and_runs_the_cli(shell: Shell) -> None:
    program = (
        "import sys\n"
        "sys.argv = ['aumai-transactions', 'create', '--timeout', '45']\n"
        "from aumai_transactions.cli import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env=shell.env,
        cwd=shell.tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    tx_id = json.loads(done.stdout)["transaction_id"]
    assert shell.json("status", "--tx-id", tx_id)["timeout_seconds"] == 45


def in_a_terminal(shell: Shell, *args: str) -> str:
    """What the CLI draws with stdout on a pseudo-terminal."""
    env = {**shell.env, "COLUMNS": "100", "TERM": "xterm"}
    code, drawn = on_a_pty([*command(), *args], env, shell.tmp_path)
    assert code == 0
    return drawn


def test_create_and_status_draw_panels_in_a_terminal(shell: Shell) -> None:
    drawn = in_a_terminal(shell, "create", "--timeout", "300")
    assert "Created transaction" in drawn and "commit before" in drawn
    assert '"transaction_id"' not in drawn
    tx_id = shell.json("list")[0]["transaction_id"]
    assert tx_id in drawn
    status = in_a_terminal(shell, "status", "--tx-id", tx_id)
    assert "Transaction" in status and "300 s" in status and '"steps"' not in status
    assert json.loads(in_a_terminal(shell, "status", "--tx-id", tx_id, "--json"))["steps"] == 0


def test_a_sqlite3_module_in_the_working_directory_does_not_replace_the_stdlib(
    shell: Shell,
) -> None:
    """Handlers load from the working directory; the store imported afterwards must still
    get the standard library's sqlite3, not a ``sqlite3.py`` lying there."""
    (shell.tmp_path / "sqlite3.py").write_text(
        "raise ImportError('the sqlite3.py of the working directory was imported')\n"
    )
    tx_id = shell.run("create", "-q").stdout.strip()
    shell.run("add-step", "--tx-id", tx_id, "--agent", "a", "--action", "reserve")
    result = shell.json("commit", "--tx-id", tx_id, "--handlers", "handlers:HANDLERS")
    assert result["state"] == "committed"
    assert shell.side_effects() == ["reserve"]
