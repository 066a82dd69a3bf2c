"""Every example runs as a script and prints what the README says it prints."""

from __future__ import annotations

import re
import subprocess

import pytest

from ._support import ROOT, readme_blocks, readme_output_after, run_python_files

EXAMPLES = ROOT / "examples"
NAMES = [
    "onboarding",
    "onboarding_sync",
    "travel_booking",
    "timeout",
    "agent_booking",
    "travel_agent",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run all the examples at once, each in a fresh working directory."""
    cwd = tmp_path_factory.mktemp("examples")
    return run_python_files({name: EXAMPLES / f"{name}.py" for name in NAMES}, cwd)


def test_every_example_is_exercised() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_example_runs_cleanly(
    name: str, runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    done = runs[name]
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_onboarding_commits_one_user_and_rolls_back_the_other(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    first, second = runs["onboarding"].stdout.split("\n\n")
    assert first.splitlines() == [
        "Onboarding u-001",
        "  create_user: u-001",
        "  reserve_quota: 10 GB for u-001",
        "  charge_card: $20 on card 4242-4242-4242-4242",
        "  send_welcome_email: u-001",
        "state:           committed",
        "completed_steps: ['create_user', 'reserve_quota', 'charge_card', 'send_welcome_email']",
        "failed_step:     None",
        "error:           None",
    ]
    assert second.splitlines() == [
        "Onboarding u-002",
        "  create_user: u-002",
        "  reserve_quota: 10 GB for u-002",
        "  charge_card: $20 on card 4000-0000-0000-0002",
        "  release_quota: 10 GB for u-002",
        "  delete_user: u-002",
        "state:           rolled_back",
        "completed_steps: ['reserve_quota', 'create_user']",
        "failed_step:     charge_card",
        "error:           card 4000-0000-0000-0002 was declined",
    ]


def test_onboarding_prints_what_the_readme_shows(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    (tutorial,) = [b for b in readme_blocks() if b.code == (EXAMPLES / "onboarding.py").read_text()]
    assert readme_output_after(tutorial) == runs["onboarding"].stdout


def test_the_sync_onboarding_prints_exactly_what_the_async_one_does(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    assert runs["onboarding_sync"].stdout == runs["onboarding"].stdout


def desynchronize(source: str) -> str:
    """The async tutorial as a blocking script: the import changes, async and await go."""
    source = source.replace("import asyncio\n\n", "")
    source = source.replace(
        "from aumai_transactions import TransactionManager",
        "from aumai_transactions.sync import TransactionManager",
    )
    source = source.replace("async with ", "with ").replace("async def ", "def ")
    source = source.replace("await ", "").replace("asyncio.run(main())", "main()")
    return source.replace("examples/onboarding.py", "examples/onboarding_sync.py")


def test_the_sync_onboarding_differs_from_the_async_one_only_by_async_syntax() -> None:
    source = (EXAMPLES / "onboarding.py").read_text()
    assert "await" in source and "asyncio.run" in source
    assert desynchronize(source) == (EXAMPLES / "onboarding_sync.py").read_text()


def test_travel_booking_commits_then_compensates_in_reverse(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    assert runs["travel_booking"].stdout.splitlines() == [
        "Booking the first trip",
        "  book_flight: TP1351",
        "  book_hotel: Alfama Inn, 3 nights",
        "  rent_car: at LIS",
        "state:           committed",
        "completed_steps: ['book_flight', 'book_hotel', 'rent_car']",
        "failed_step:     None",
        "error:           None",
        "",
        "Booking the second trip",
        "  book_flight: TP1351",
        "  book_hotel: Alfama Inn, 3 nights",
        "  rent_car: at LIS",
        "  cancel_hotel: Alfama Inn",
        "  cancel_flight: TP1351",
        "state:           rolled_back",
        "completed_steps: ['book_hotel', 'book_flight']",
        "failed_step:     rent_car",
        "error:           no cars left at LIS",
        "",
        "cars left at LIS: 0",
    ]


def test_timeout_cancels_the_slow_step_and_releases_the_seat(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    lines = runs["timeout"].stdout.splitlines()
    assert lines[:4] == [
        "Booking seat 14C with a 0.5 s budget",
        "  reserve_seat: 14C",
        "  issue_ticket: started for 14C (needs 10 s)",
        "  release_seat: 14C",
    ]
    assert lines[4] == "state:           failed"
    assert re.fullmatch(
        r"error: +Transaction [0-9a-f-]{36} timed out after 0\.5s while running; "
        r"completed steps were compensated\.",
        lines[5],
    )
    elapsed = re.fullmatch(r"returned after: +(\d+\.\d) s", lines[6])
    assert elapsed is not None and 0.4 <= float(elapsed.group(1)) < 2
    assert lines[7:] == ["step reserve_seat: compensated", "step issue_ticket: failed"]
    assert "finished" not in runs["timeout"].stdout


def test_examples_leave_nothing_in_the_repository() -> None:
    leftovers = {p.name for p in EXAMPLES.iterdir()} - {f"{n}.py" for n in NAMES}
    assert leftovers <= {"__pycache__"}


def test_the_agent_books_from_the_search_result_and_undoes_everything_on_a_decline(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    first, second = runs["agent_booking"].stdout.split("\n\n")
    assert first.splitlines() == [
        "Booking a trip for Ana",
        "  search_flights: BER -> LIS",
        "  hold_flight: FR8342 for Ana",  # the cheapest of what the search returned
        "  book_hotel: Casa Azul (started)",
        "  rent_car: at LIS (started)",
        "  charge_card: EUR 276 on 4242-4242-4242-4242",
        "state: committed",
    ]
    assert second.splitlines() == [
        "Booking a trip for Rui",
        "  search_flights: BER -> LIS",
        "  hold_flight: FR8342 for Rui",
        "  book_hotel: Casa Azul (started)",
        "  rent_car: at LIS (started)",
        "  charge_card: EUR 276 on 4000-0000-0000-0002",
        "  return_car: at LIS",
        "  cancel_hotel: Casa Azul",
        "  release_flight: FR8342",
        "state: rolled_back",
        "error: card declined",
        "undone, newest first: ['rent_car', 'book_hotel', 'hold_flight']",
    ]


def test_the_pydantic_ai_travel_agent_is_undone_newest_first_when_the_charge_is_declined(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    assert runs["travel_agent"].stdout.splitlines() == [
        "Booking a trip to Lisbon",
        "  search_flights: BER -> LIS",
        "  hold_flight: FR8342 (tool call c2)",  # the cheapest of what the search returned
        "  book_hotel: Casa Azul, 3 nights",
        "  rent_car: at LIS",
        "  charge_card: EUR 276 on 4000-0000-0000-0002",
        "  return_car: at LIS",
        "  cancel_hotel: Casa Azul",
        "  release_flight: FR8342, hold H-FR8342",
        "the agent run failed: charge_card: card declined",
        "state: rolled_back",
        "ledger (tool call, action, status):",
        "  c1  search_flights  completed",
        "  c2  hold_flight     compensated",
        "  c3  book_hotel      compensated (parallel)",
        "  c4  rent_car        compensated (parallel)",
        "  c5  charge_card     failed",
        "undone, newest first: ['rent_car', 'book_hotel', 'hold_flight']",
    ]
