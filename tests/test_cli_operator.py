"""The CLI's side of the operator's actions and of leases: the ``resolved`` state in
``list`` and ``show``; ``retry-compensation`` and ``resolve``; owners and lease expiry
of in-flight transactions; ``recover`` on live leases and with ``--owner``."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from aumai_transactions import Transaction, TransactionManager  # noqa: E402
from aumai_transactions.stores.sqlite import SqliteStore  # noqa: E402
from tests._cli_support import ORDER, Cli  # noqa: E402


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
