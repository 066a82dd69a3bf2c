"""The CLI's side of the operator's actions and of leases: the ``resolved`` state in
``list`` and ``show``; ``retry-compensation`` and ``resolve``; owners and lease expiry
of in-flight transactions; ``recover`` on live leases and with ``--owner``."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import anyio
import pytest

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from aumai_transactions import Transaction, TransactionManager  # noqa: E402
from aumai_transactions.stores.sqlite import SqliteStore  # noqa: E402
from tests._cli_support import ORDER, Cli  # noqa: E402
from tests.test_cli_maintenance import in_flight, write_json  # noqa: E402


def failed_compensation(cli: Cli) -> str:
    """A compensation_failed transaction: ship fails, then release (its undo) fails."""
    tx_id = cli.build(*ORDER)
    result = cli("commit", tx_id, "--handlers", cli.spec("BROKEN_UNDO"))
    assert result.exit_code == 1, result.output
    assert cli.json("show", tx_id)["transaction"]["state"] == "compensation_failed"
    return tx_id


def resolve_in_library(cli: Cli, tx_id: str, note: str, by: str | None) -> Transaction:
    """Resolve ``tx_id`` through the library, against the CLI test store."""

    async def body() -> Transaction:
        async with SqliteStore(cli.tmp_path / "journal.db") as store:
            async with TransactionManager(store=store) as manager:
                return await manager.resolve(tx_id, note, by=by)

    return anyio.run(body)


# ---------------------------------------------------------------- resolved state


def test_resolved_is_not_a_problem_in_list(cli: Cli) -> None:
    tx_id = failed_compensation(cli)
    before = cli.ok("list").stdout
    assert "need an operator: 1 compensation_failed" in before
    resolve_in_library(cli, tx_id, "refunded by hand in the PSP dashboard", "ana")
    listed = cli.ok("list").stdout
    assert "need an operator" not in listed
    assert "resolved" in listed
    assert "resolved: refunded by hand in the PSP dashboard" in listed
    rows = cli.json("list")
    assert rows[0]["state"] == "resolved"
    assert rows[0]["resolution"]["note"] == "refunded by hand in the PSP dashboard"
    assert rows[0]["resolution"]["by"] == "ana"
    assert rows[0]["resolution"]["previous_state"] == "compensation_failed"


def test_show_displays_the_resolution(cli: Cli) -> None:
    tx_id = failed_compensation(cli)
    tx = resolve_in_library(cli, tx_id, "released by hand", "ops-bob")
    assert tx.resolution is not None
    shown = cli.ok("show", tx_id).stdout
    assert "resolution" in shown
    assert "released by hand (by ops-bob," in shown
    assert "was compensation_failed)" in shown
    payload = cli.json("show", tx_id)["transaction"]
    assert payload["state"] == "resolved"
    assert payload["resolution"] == {
        "note": "released by hand",
        "by": "ops-bob",
        "at": tx.resolution.at.isoformat(),
        "previous_state": "compensation_failed",
    }


def test_list_of_other_states_has_no_resolution(cli: Cli, tmp_path: Path) -> None:
    cli.create()
    rows = cli.json("list")
    assert rows[0]["state"] == "pending"
    assert rows[0]["resolution"] is None


# ---------------------------------------------------------------- operator commands


def test_show_of_compensation_failed_names_the_operator_commands(cli: Cli) -> None:
    tx_id = failed_compensation(cli)
    shown = cli.ok("show", tx_id).stdout
    assert (
        "→ retry its compensations: aumai-transactions retry-compensation "
        f"{tx_id} --handlers SPEC\n" in shown
    )
    assert f'aumai-transactions resolve {tx_id} --note "what was done"' in shown
    print(shown)


def test_show_of_other_states_has_no_operator_hint(cli: Cli) -> None:
    tx_id = cli.build(*ORDER)
    assert cli("commit", tx_id, "--handlers", cli.spec()).exit_code == 1  # rolled back
    assert "retry-compensation" not in cli.ok("show", tx_id).stdout


def test_retry_compensation_ends_rolled_back(cli: Cli) -> None:
    tx_id = failed_compensation(cli)
    before = cli.calls()
    result = cli.ok("retry-compensation", tx_id, "--handlers", cli.spec())
    print(result.stdout)
    assert "rolled_back" in result.stdout
    assert cli.calls()[len(before) :] == ["release"]  # refund succeeded: not run again
    payload = cli.json("show", tx_id)
    assert payload["transaction"]["state"] == "rolled_back"
    assert [s["status"] for s in payload["steps"]] == ["compensated", "compensated", "failed"]
    assert "need an operator" not in cli.ok("list").stdout


def test_retry_compensation_that_fails_again_exits_1(cli: Cli) -> None:
    tx_id = failed_compensation(cli)
    result = cli("retry-compensation", tx_id, "--handlers", cli.spec("BROKEN_UNDO"), "--json")
    assert result.exit_code == 1, result.output
    payload = json.loads(result.stdout)
    assert payload["state"] == "compensation_failed"
    assert payload["compensation_errors"]
    assert cli.json("show", tx_id)["transaction"]["state"] == "compensation_failed"


def test_retry_compensation_refuses_other_states(cli: Cli) -> None:
    tx_id = cli.create()
    result = cli("retry-compensation", tx_id, "--handlers", cli.spec())
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pending" in lines[0], result.stderr
    assert cli.json("show", tx_id)["transaction"]["state"] == "pending"


def test_resolve_marks_it_resolved(cli: Cli) -> None:
    tx_id = failed_compensation(cli)
    result = cli.ok("resolve", tx_id, "--note", "released by hand in the WMS", "--by", "ana")
    print(result.stdout)
    assert "resolved" in result.stdout
    assert "released by hand in the WMS" in result.stdout
    assert "compensation_failed" in result.stdout  # what it was
    payload = cli.json("show", tx_id)["transaction"]
    assert payload["state"] == "resolved"
    assert payload["resolution"]["note"] == "released by hand in the WMS"
    assert payload["resolution"]["by"] == "ana"
    assert "need an operator" not in cli.ok("list").stdout


def test_resolve_json(cli: Cli) -> None:
    tx_id = failed_compensation(cli)
    row = cli.json("resolve", tx_id, "--note", "done")
    assert row["transaction_id"] == tx_id
    assert row["state"] == "resolved"
    assert row["resolution"]["by"] is None
    assert row["resolution"]["previous_state"] == "compensation_failed"


@pytest.mark.parametrize("note", ["done", "   "])
def test_resolve_refuses_other_states_and_blank_notes(cli: Cli, note: str) -> None:
    tx_id = cli.create() if note == "done" else failed_compensation(cli)
    before = cli.json("show", tx_id)["transaction"]["state"]
    result = cli("resolve", tx_id, "--note", note)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    print(result.stderr)
    assert cli.json("show", tx_id)["transaction"]["state"] == before


def test_resolve_needs_a_note(cli: Cli) -> None:
    tx_id = failed_compensation(cli)
    result = cli("resolve", tx_id)
    assert result.exit_code == 2
    assert "--note" in result.stderr


# ---------------------------------------------------------------- leases


def left_in_flight(cli: Cli, tx_id: str, owner: str | None, in_seconds: float) -> None:
    """``tx_id`` active, as a driver named ``owner`` left it, its lease expiring
    ``in_seconds`` from now (negative: lapsed); written in the database, no sleep."""
    cli.ok("import", str(write_json(cli.tmp_path / f"{tx_id}.json", [in_flight(tx_id)])))
    expires = None if owner is None else round((time.time() + in_seconds) * 1_000_000)
    with sqlite3.connect(cli.tmp_path / "journal.db") as db:
        db.execute(
            "UPDATE transactions SET lease_owner=?, lease_expires=?, epoch=1 "
            "WHERE transaction_id=?",
            (owner, expires, tx_id),
        )


def test_show_of_a_live_lease(cli: Cli) -> None:
    left_in_flight(cli, "busy-1", "worker-7", 600)
    shown = cli.ok("show", "busy-1").stdout
    print(shown)
    assert "held by worker-7 until" in shown
    assert "lapsed" not in shown
    lease = cli.json("show", "busy-1")["transaction"]["lease"]
    assert lease["owner"] == "worker-7"
    assert lease["live"] is True and lease["lapsed"] is False
    assert lease["expires_at"] is not None


def test_show_of_a_lapsed_lease(cli: Cli) -> None:
    left_in_flight(cli, "dead-1", "worker-7", -5)
    shown = cli.ok("show", "dead-1").stdout
    print(shown)
    assert "worker-7's lease expired at" in shown
    assert "lapsed: `recover` can take it now" in shown
    lease = cli.json("show", "dead-1")["transaction"]["lease"]
    assert lease["live"] is False and lease["lapsed"] is True


def test_show_of_a_finished_transaction_has_no_lease(cli: Cli) -> None:
    tx_id = failed_compensation(cli)
    assert cli.json("show", tx_id)["transaction"]["lease"] is None
    assert "held by" not in cli.ok("show", tx_id).stdout


def test_list_shows_owner_and_expiry_of_in_flight_rows(cli: Cli) -> None:
    done = failed_compensation(cli)
    left_in_flight(cli, "busy-1", "worker-7", 600)
    left_in_flight(cli, "dead-1", "worker-9", -5)
    listed = cli.ok("list", env={"COLUMNS": "200"}).stdout
    print(listed)
    lines = {line.split()[0]: line for line in listed.splitlines() if line.strip()}
    assert "held by worker-7 until" in lines["busy-1"]
    assert "⚠ worker-9's lease lapsed at" in lines["dead-1"]
    assert "recover can take it" in lines["dead-1"]
    assert "held by" not in lines[done[:8]]
    assert "ship failed" in lines[done[:8]]  # other rows keep their error column
    rows = {row["transaction_id"]: row for row in cli.json("list")}
    assert rows["busy-1"]["lease"]["live"] is True
    assert rows["dead-1"]["lease"]["lapsed"] is True
    assert rows[done]["lease"] is None


# ---------------------------------------------------------------- recover and leases


def test_recover_says_who_waits_on_a_live_lease(cli: Cli) -> None:
    left_in_flight(cli, "busy-1", "worker-7", 600)
    result = cli.ok("recover", "--handlers", cli.spec("ALL_OK"))
    print(result.stderr)
    assert "Nothing to recover" in result.stderr
    assert "1 transaction(s) wait on a live lease; the first expires at " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2
    assert cli.json("show", "busy-1")["transaction"]["state"] == "active"


def test_recover_some_and_report_the_rest(cli: Cli) -> None:
    left_in_flight(cli, "busy-1", "worker-7", 600)
    left_in_flight(cli, "busy-2", "worker-8", 900)
    left_in_flight(cli, "dead-1", "worker-9", -5)
    result = cli.ok("recover", "--handlers", cli.spec("ALL_OK"))
    print(result.stdout, result.stderr)
    assert "dead-1" in result.stdout and "busy-1" not in result.stdout
    assert "2 transaction(s) wait on a live lease; the first expires at " in result.stderr
    first = cli.json("show", "busy-1")["transaction"]["lease"]["expires_at"]
    assert first is not None
    stamp = first[:19].replace("T", " ")
    assert f"the first expires at {stamp}Z" in result.stderr
    assert cli.json("show", "dead-1")["transaction"]["state"] != "active"


def test_recover_with_nothing_waiting_says_nothing_of_leases(cli: Cli) -> None:
    left_in_flight(cli, "dead-1", "worker-9", -5)
    result = cli.ok("recover", "--handlers", cli.spec("ALL_OK"))
    assert "live lease" not in result.stderr


def test_recover_as_the_owner_takes_its_transactions_at_once(cli: Cli) -> None:
    left_in_flight(cli, "mine-1", "billing-worker-1", 600)
    left_in_flight(cli, "other-1", "worker-8", 600)
    result = cli.ok("recover", "--handlers", cli.spec("ALL_OK"), "--owner", "billing-worker-1")
    print(result.stdout, result.stderr)
    assert "mine-1" in result.stdout and "other-1" not in result.stdout
    assert cli.json("show", "mine-1")["transaction"]["state"] not in ("active", "compensating")
    assert cli.json("show", "other-1")["transaction"]["state"] == "active"
    assert "1 transaction(s) wait on a live lease" in result.stderr


def test_recover_help_warns_about_owner(cli: Cli) -> None:
    text = " ".join(cli.ok("recover", "--help", store=None).stdout.replace("│", " ").split())
    assert "--owner" in text
    assert "takes over at once, without waiting for their leases" in text
    assert "two drivers" in text
