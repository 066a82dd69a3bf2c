"""Parallel groups in the CLI: ``parallel:`` in saga files (JSON, TOML, YAML), their
validation, the group's lanes in ``show``'s timeline, its marks in the step table and
the live display, ``--json``, and how ``list`` and ``stats`` count them.

The handlers of a group of two wait for each other at a ``threading.Barrier(2)``: they
pass only when both run at once (one after the other, the first would wait 5 s and fail).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from aumai_transactions import TransactionManager  # noqa: E402
from tests._cli_support import Cli  # noqa: E402
from tests.test_cli import assert_usage_error  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def trip(hold: float = 0.0, **group: Any) -> dict[str, Any]:
    """reserve; hotel and car at once (holding ``hold`` s after they meet); ship."""
    return {
        "name": "trip",
        "steps": [
            {"agent": "inventory", "action": "reserve", "compensate": "release"},
            {
                **group,
                "parallel": [
                    {
                        "agent": "hotel_agent",
                        "action": "hotel",
                        "data": {"hold": hold},
                        "compensate": "cancel_hotel",
                    },
                    {
                        "agent": "car_agent",
                        "action": "car",
                        "data": {"hold": hold},
                        "compensate": "return_car",
                    },
                ],
            },
            {"agent": "shipping", "action": "ship", "compensate": "cancel"},
        ],
    }


TRIP_TOML = """
name = "trip"

[[steps]]
agent = "inventory"
action = "reserve"
compensate = "release"

[[steps]]
[[steps.parallel]]
agent = "hotel_agent"
action = "hotel"
data = {{ hold = {hold} }}
compensate = "cancel_hotel"

[[steps.parallel]]
agent = "car_agent"
action = "car"
data = {{ hold = {hold} }}
compensate = "return_car"

[[steps]]
agent = "shipping"
action = "ship"
compensate = "cancel"
"""

TRIP_TOML_INLINE = """
name = "trip"
steps = [
  {{agent_id = "inventory", action = "reserve", compensating_action = "release"}},
  {{parallel = [
{{agent = "hotel_agent", action = "hotel", data = {{hold = {hold}}}, compensate = "cancel_hotel"}},
{{agent = "car_agent", action = "car", data = {{hold = {hold}}}, compensate = "return_car"}},
  ]}},
  {{agent_id = "shipping", action = "ship", compensating_action = "cancel"}},
]
"""

TRIP_YAML = """
name: trip
steps:
  - {{agent: inventory, action: reserve, compensate: release}}
  - parallel:
      - {{agent: hotel_agent, action: hotel, data: {{hold: {hold}}}, compensate: cancel_hotel}}
      - agent: car_agent
        action: car
        data: {{hold: {hold}}}
        compensate: return_car
  - {{agent: shipping, action: ship, compensate: cancel}}
"""

FORMATS = {
    "json": (".json", lambda hold: json.dumps(trip(hold))),
    "toml": (".toml", lambda hold: TRIP_TOML.format(hold=hold)),
    "toml-inline": (".toml", lambda hold: TRIP_TOML_INLINE.format(hold=hold)),
    "yaml": (".yaml", lambda hold: TRIP_YAML.format(hold=hold)),
}


def write(tmp_path: Path, document: Any, suffix: str = ".json", name: str = "trip") -> Path:
    path = tmp_path / f"{name}{suffix}"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def run_json(cli: Cli, path: Path, *, expect: int = 0) -> Any:
    result = cli("run", str(path), "--handlers", cli.spec("PARALLEL"), "--json")
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def overlapped(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """The two steps' recorded runs overlap in time."""
    return moment(first["started_at"]) < moment(second["finished_at"]) and moment(
        second["started_at"]
    ) < moment(first["finished_at"])


# ---------------------------------------------------------------------- run


@pytest.mark.parametrize("form", list(FORMATS))
def test_run_a_parallel_group_from_each_format(cli: Cli, tmp_path: Path, form: str) -> None:
    suffix, text = FORMATS[form]
    data = run_json(cli, write(tmp_path, text(0.05), suffix))  # the barrier proves overlap
    assert data["state"] == "committed"
    steps = data["steps"]
    assert [s["action"] for s in steps] == ["reserve", "hotel", "car", "ship"]
    assert [s["group"] for s in steps] == [None, "parallel-1", "parallel-1", None]
    assert [s["status"] for s in steps] == ["completed"] * 4
    assert overlapped(steps[1], steps[2])
    calls = cli.calls()
    assert calls[0] == "reserve" and sorted(calls[1:3]) == ["car", "hotel"]
    assert calls[3:] == ["ship"]


def test_a_named_group_with_a_cap_keeps_its_name_and_cap(cli: Cli, tmp_path: Path) -> None:
    data = run_json(cli, write(tmp_path, trip(name="lodging", max_concurrency=2)))
    assert [s["group"] for s in data["steps"]] == [None, "lodging", "lodging", None]
    assert [s["group_concurrency"] for s in data["steps"]] == [None, 2, 2, None]


def counted_group(size: int, **group: Any) -> dict[str, Any]:
    steps = [{"agent": f"a{i}", "action": "count", "data": {"i": i}} for i in range(size)]
    return {"steps": [{**group, "parallel": steps}]}


@pytest.mark.parametrize(("cap", "peak"), [(None, 3), (2, 2), (1, 1)])
def test_max_concurrency_caps_how_many_run_at_once(
    cli: Cli, tmp_path: Path, cap: int | None, peak: int
) -> None:
    group = {} if cap is None else {"max_concurrency": cap}
    data = run_json(cli, write(tmp_path, counted_group(3, **group)))
    assert data["state"] == "committed"
    assert max(step["result"]["peak"] for step in data["steps"]) == peak


def group_that_fails(*, first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {
        "steps": [
            {"agent": "inventory", "action": "reserve", "compensate": "release"},
            {"parallel": [first, second]},
            {"agent": "shipping", "action": "ship", "compensate": "cancel"},
        ]
    }


CAR_FAILS = {"agent": "car_agent", "action": "car_fails", "compensate": "return_car"}
HOTEL_OUTLIVES = {"agent": "hotel_agent", "action": "hotel_outlives", "compensate": "cancel_hotel"}
HOTEL_DONE = {"agent": "hotel_agent", "action": "hotel", "compensate": "cancel_hotel"}


def test_a_failure_in_a_group_compensates_a_sibling_it_cut_short(cli: Cli, tmp_path: Path) -> None:
    saga = group_that_fails(first=CAR_FAILS, second=HOTEL_OUTLIVES)
    data = run_json(cli, write(tmp_path, saga), expect=1)
    assert data["state"] == "rolled_back"
    assert data["error"] == "car_fails failed"
    reserve, car, hotel, ship = data["steps"]
    assert data["failed_step"] == car["step_id"]
    assert (car["status"], car["compensation"]) == ("failed", None)  # the failing step
    assert (hotel["status"], hotel["interrupted"]) == ("compensated", True)  # in doubt
    assert reserve["status"] == "compensated" and ship["status"] == "pending"
    assert data["interrupted_steps"] == [hotel["step_id"]]
    calls = cli.calls()
    assert sorted(calls[1:3]) == ["car_fails", "hotel_outlives"]
    # Undone one at a time, newest first (within the group, reverse declaration order).
    assert calls[0] == "reserve" and calls[3:] == ["cancel_hotel", "release"]


def test_a_failure_in_a_group_compensates_a_sibling_that_completed(
    cli: Cli, tmp_path: Path
) -> None:
    failing = {**CAR_FAILS, "data": {"after_sibling": "hotel"}}
    data = run_json(
        cli, write(tmp_path, group_that_fails(first=HOTEL_DONE, second=failing)), expect=1
    )
    reserve, hotel, car, ship = data["steps"]
    assert (hotel["status"], hotel["interrupted"]) == ("compensated", False)
    assert car["status"] == "failed" and reserve["status"] == "compensated"
    assert ship["status"] == "pending"
    assert cli.calls()[3:] == ["cancel_hotel", "release"]


def test_the_live_display_shows_the_group_running_at_once(cli: Cli, tmp_path: Path) -> None:
    result = cli(
        "run",
        str(write(tmp_path, trip(hold=0.4))),
        "--handlers",
        cli.spec("PARALLEL"),
        env={"FORCE_COLOR": "1", "COLUMNS": "120"},
    )
    assert result.exit_code == 0, result.stderr
    frames = [ANSI.sub("", frame) for frame in result.stdout.split("Saga trip")[1:]]
    both = [
        frame
        for frame in frames
        if re.search(r"┌ parallel-1 .*hotel .*running \(attempt 1\)", frame)
        and re.search(r"└ .*car .*running \(attempt 1\)", frame)
    ]
    assert both, frames


# ---------------------------------------------------------------------- validation

GOOD = {"agent": "a", "action": "reserve"}


@pytest.mark.parametrize(
    ("name", "document", "fragments"),
    [
        (
            "s.json",
            {"steps": [GOOD, {"parallel": [GOOD], "agent": "a"}]},
            ("s.json, step 2 (a parallel group)", "unknown key(s) 'agent'", "max_concurrency"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [GOOD, {**GOOD, "compensat": "x"}]}]},
            ("s.json, step 1, parallel step 2", "unknown key(s) 'compensat'", "compensate"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [GOOD, {"agent": "a"}]}]},
            ("s.json, step 1, parallel step 2", "missing 'action'"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [{"action": "reserve"}]}]},
            ("s.json, step 1, parallel step 1", "missing 'agent'"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [{**GOOD, "data": [1, 2]}]}]},
            ("s.json, step 1, parallel step 1", "'data' must be an object"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [{**GOOD, "agent": 7}]}]},
            ("parallel step 1", "'agent' must be a non-empty string"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [{**GOOD, "retry": {"max_attempts": 0}}]}]},
            ("s.json, step 1, parallel step 1, retry", "max_attempts"),
        ),
        (
            "s.json",
            {"steps": [GOOD, {"parallel": []}]},
            ("s.json, step 2", "'parallel' must be a non-empty list", "an empty list"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": GOOD}]},
            ("s.json, step 1", "'parallel' must be a non-empty list"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": ["reserve"]}]},
            ("s.json, step 1, parallel step 1", "expected a table/object"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [GOOD, {"parallel": [GOOD]}]}]},
            ("s.json, step 1, parallel step 2", "cannot hold another parallel group"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [GOOD], "max_concurrency": 0}]},
            ("s.json, step 1", "'max_concurrency' must be a positive whole number"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [GOOD], "max_concurrency": "2"}]},
            ("'max_concurrency' must be a positive whole number",),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [GOOD], "max_concurrency": True}]},
            ("'max_concurrency' must be a positive whole number",),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [GOOD], "name": ""}]},
            ("s.json, step 1", "'name' must be a non-empty string"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [GOOD], "name": "x"}, {"parallel": [GOOD], "name": "x"}]},
            ("s.json, step 2", "name 'x' is taken by step 1"),
        ),
        (
            "s.json",
            {"steps": [{"parallel": [GOOD, {**GOOD, "action": "nope"}]}]},
            ("no handler for 'nope'",),
        ),
        (
            "s.json",
            {"steps": [{**GOOD, "paralel": [GOOD]}]},
            ("s.json, step 1", "unknown key(s) 'paralel'", "or parallel, for a group"),
        ),
        (
            "s.toml",
            '[[steps]]\nagent = "a"\naction = "reserve"\n\n[[steps]]\n'
            '[[steps.parallel]]\nparallel = [{ agent = "a", action = "reserve" }]\n',
            ("s.toml, step 2, parallel step 1", "cannot hold another parallel group"),
        ),
        (
            "s.toml",
            '[[steps]]\nparallel = [{ agent = "a", action = "reserve", '
            "data = { d = 2025-01-31 } }]\n",
            ("s.toml, step 1, parallel step 1", "JSON values only", "type date"),
        ),
        (
            "s.yaml",
            "steps:\n  - agent: a\n    action: reserve\n  - parallel: []\n",
            ("s.yaml, step 2", "'parallel' must be a non-empty list"),
        ),
        (
            "s.yaml",
            "steps:\n  - parallel:\n      - {agent: a, action: reserve, data: [1]}\n",
            ("s.yaml, step 1, parallel step 1", "'data' must be an object"),
        ),
    ],
)
def test_bad_parallel_groups_are_refused(
    cli: Cli, tmp_path: Path, name: str, document: Any, fragments: tuple[str, ...]
) -> None:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    assert_usage_error(cli("run", str(path), "--handlers", cli.spec("PARALLEL")), *fragments)
    assert cli.json("list") == []
    assert cli.calls() == []


def test_a_group_of_one_step_and_a_file_name_a_default_would_take(cli: Cli, tmp_path: Path) -> None:
    saga = {"steps": [{"parallel": [GOOD]}, {"parallel": [GOOD], "name": "parallel-1"}]}
    data = run_json(cli, write(tmp_path, saga))
    assert data["state"] == "committed"
    assert [s["group"] for s in data["steps"]] == ["parallel-2", "parallel-1"]


# ---------------------------------------------------------------------- show


@dataclass(frozen=True)
class Row:
    """One row of the rendered timeline: its group cell and where its bar lies."""

    group: str
    first: int
    last: int
    glyph: str


def timeline_rows(out: str) -> dict[str, Row]:
    """The timeline's rows by label (``▶ #2 hotel``), parsed from the rendered text."""
    rows: dict[str, Row] = {}
    lines = out[out.index("Timeline") :].splitlines()
    for line in lines:
        label = re.search(r"[▶↩] #\d+ \S+", line)
        bar = re.search(r"━+|╌+", line[label.end() :] if label else "")
        if label is None or bar is None:
            continue
        offset = label.end()
        rows[label.group()] = Row(
            group=line[: label.start()].strip(),
            first=offset + bar.start(),
            last=offset + bar.end() - 1,
            glyph=bar.group()[0],
        )
    return rows


def shared_cells(a: Row, b: Row) -> int:
    return max(0, min(a.last, b.last) - max(a.first, b.first) + 1)


def run_trip(cli: Cli, tmp_path: Path, hold: float = 0.3, **group: Any) -> dict[str, Any]:
    data = run_json(cli, write(tmp_path, trip(hold, **group)))
    assert data["state"] == "committed"
    return data  # type: ignore[no-any-return]


def test_show_draws_a_group_as_lanes_that_start_together_and_overlap(
    cli: Cli, tmp_path: Path
) -> None:
    tx_id = run_trip(cli, tmp_path)["transaction_id"]
    rows = timeline_rows(cli.ok("show", tx_id).stdout)
    reserve, hotel, car, ship = (
        rows[key] for key in ("▶ #1 reserve", "▶ #2 hotel", "▶ #3 car", "▶ #4 ship")
    )
    assert (hotel.group, car.group) == ("┌ parallel-1", "└")  # one bracket: one group
    assert reserve.group == ship.group == ""
    assert abs(hotel.first - car.first) <= 1  # they start together...
    length = hotel.last - hotel.first + 1
    assert length >= 20  # (the 0.3 s group takes most of the 40 cells)
    assert shared_cells(hotel, car) >= length - 2  # ...and run side by side
    assert ship.first >= max(hotel.last, car.last) - 1 >= reserve.last


def test_show_marks_the_group_in_the_step_table_and_the_panel(cli: Cli, tmp_path: Path) -> None:
    tx_id = run_trip(cli, tmp_path, hold=0, name="lodging", max_concurrency=2)["transaction_id"]
    out = cli.ok("show", tx_id).stdout
    steps = out[out.index("Steps") : out.index("Data and results")]
    assert re.search(r"^ #\s+group\s+agent\s+action", steps, re.M)
    assert re.search(r"^ 2\s+┌ lodging ≤2\s+hotel_agent\s+hotel\s", steps, re.M)
    assert re.search(r"^ 3\s+└\s+car_agent\s+car\s", steps, re.M)
    assert re.search(r"^ 1\s+inventory\s+reserve", steps, re.M)
    assert re.search(r"parallel\s+#2–#3 lodging \(at most 2 at once\)", out)
    assert "open " not in out.split("Steps")[0]  # a declared saga, not an open transaction


def test_show_without_groups_has_no_group_column(cli: Cli, tmp_path: Path) -> None:
    tx_id = run_json(cli, write(tmp_path, {"steps": [GOOD]}))["transaction_id"]
    out = cli.ok("show", tx_id).stdout
    assert "group" not in out and "parallel" not in out


def test_show_json_carries_each_steps_group(cli: Cli, tmp_path: Path) -> None:
    tx_id = run_trip(cli, tmp_path, hold=0)["transaction_id"]
    data = cli.json("show", tx_id)
    assert data["transaction"]["groups"] == 1 and data["transaction"]["open"] is False
    assert [s["group"] for s in data["steps"]] == [None, "parallel-1", "parallel-1", None]
    assert [s["live"] for s in data["steps"]] == [False] * 4
    forward = [(e["index"], e["group"]) for e in data["timeline"] if e["kind"] == "step"]
    assert forward == [(1, None), (2, "parallel-1"), (3, "parallel-1"), (4, None)]


def test_show_of_a_failed_group_draws_the_cut_short_sibling_and_its_undo(
    cli: Cli, tmp_path: Path
) -> None:
    saga = group_that_fails(first=CAR_FAILS, second=HOTEL_OUTLIVES)
    tx_id = run_json(cli, write(tmp_path, saga), expect=1)["transaction_id"]
    data = cli.json("show", tx_id)
    car, hotel = data["steps"][1:3]
    undo = [e for e in data["timeline"] if e["kind"] == "compensation"]
    assert [(e["index"], e["action"]) for e in undo] == [(3, "cancel_hotel"), (1, "release")]
    # The pass began when the failing sibling ended (the one it cut short recorded no end).
    assert hotel["finished_at"] is None
    assert undo[0]["start"] == car["finished_at"]
    assert undo[1]["start"] == undo[0]["end"]
    out = cli.ok("show", tx_id).stdout
    # The step table names the failing sibling by number, not by its id.
    assert "interrupted: step #2" in out and car["step_id"] not in out
    rows = timeline_rows(out)
    failed, cut = rows["▶ #2 car_fails"], rows["▶ #3 hotel_outlives"]
    assert (failed.group, cut.group) == ("┌ parallel-1", "└")
    assert (failed.glyph, cut.glyph) == ("━", "╌")  # dashed: cut short, may have run
    assert abs(failed.first - cut.first) <= 1 and shared_cells(failed, cut) >= 1
    assert rows["↩ #3 cancel_hotel"].first >= cut.last - 1


def open_transaction(cli: Cli) -> str:
    """An open transaction (run with the library) with a step, then a group of two."""

    async def ok(action: str, data: dict[str, Any]) -> dict[str, Any]:
        await anyio.sleep(0.05)
        return {"done": action}

    async def body() -> str:
        manager = TransactionManager({"a": ok, "b": ok, "c": ok, "undo": ok}, store=cli.url)
        async with manager:
            async with manager.transaction() as tx:
                await tx.run("planner", "a", {}, "undo")
                async with tx.parallel() as group:
                    group.run("hotel_agent", "b", {}, "undo")
                    group.run("car_agent", "c", {}, "undo")
            return tx.transaction_id

    return anyio.run(body)


def test_show_says_a_transaction_was_open(cli: Cli) -> None:
    tx_id = open_transaction(cli)
    data = cli.json("show", tx_id)
    assert data["transaction"]["open"] is True and data["transaction"]["state"] == "committed"
    assert [s["live"] for s in data["steps"]] == [True, True, True]
    assert [s["group"] for s in data["steps"]] == [None, "group-1", "group-1"]
    out = cli.ok("show", tx_id).stdout
    assert re.search(r"open\s+yes: an open transaction", out)
    rows = timeline_rows(out)
    assert (rows["▶ #2 b"].group, rows["▶ #3 c"].group) == ("┌ group-1", "└")
    assert shared_cells(rows["▶ #2 b"], rows["▶ #3 c"]) >= 5
    assert [row["open"] for row in cli.json("list")] == [True]


# ---------------------------------------------------------------------- list and stats


def test_list_counts_each_step_of_a_group_and_its_wall_time(cli: Cli, tmp_path: Path) -> None:
    data = run_trip(cli, tmp_path, hold=0.3)
    (row,) = cli.json("list")
    assert (row["steps"], row["groups"]) == (4, 1)
    hotel, car = data["steps"][1:3]
    took = row["duration_seconds"]
    # Wall time: the group's 0.3 s once, not the sum of its steps' 0.6 s.
    assert max(hotel["duration_seconds"], car["duration_seconds"]) <= took
    assert took < hotel["duration_seconds"] + car["duration_seconds"]
    line = next(
        line for line in cli.ok("list").stdout.splitlines() if row["transaction_id"][:8] in line
    )
    assert re.search(r"committed\s+4\s", line)


def test_stats_count_concurrent_steps_once_each(cli: Cli, tmp_path: Path) -> None:
    data = run_trip(cli, tmp_path, hold=0.3)
    failing = group_that_fails(first=CAR_FAILS, second=HOTEL_OUTLIVES)
    run_json(cli, write(tmp_path, failing, name="fails"), expect=1)
    stats = cli.json("stats")
    assert stats["total"] == 2
    by_state = {row["state"]: row for row in stats["by_state"]}
    assert (by_state["committed"]["count"], by_state["rolled_back"]["count"]) == (1, 1)
    (listed,) = [r for r in cli.json("list") if r["state"] == "committed"]
    assert by_state["committed"]["p50_seconds"] == listed["duration_seconds"]
    hotel, car = data["steps"][1:3]
    assert (
        by_state["committed"]["p50_seconds"] < hotel["duration_seconds"] + car["duration_seconds"]
    )
    by_agent = {row["agent_id"]: row for row in stats["by_agent"]}
    # Each transaction's group counts each of its steps once.
    assert {a: (r["transactions"], r["steps"]) for a, r in by_agent.items()} == {
        "inventory": (2, 2),
        "hotel_agent": (2, 2),
        "car_agent": (2, 2),
        "shipping": (2, 2),
    }
    assert by_agent["car_agent"]["failed_steps"] == 1
    assert by_agent["hotel_agent"]["failed_steps"] == 0  # cut short, compensated: not failed
    # The cut-short hotel step recorded no end: only the committed one's duration counts.
    assert by_agent["hotel_agent"]["p50_seconds"] == hotel["duration_seconds"]


# ---------------------------------------------------------------------- the docs


def docs_blocks(heading: str, until: str) -> dict[str, list[str]]:
    """The fenced blocks of docs/cli.md from ``heading`` to ``until``, by language."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index(heading) : text.index(until)]
    blocks: dict[str, list[str]] = {}
    for language, code in FENCE.findall(section):
        blocks.setdefault(language, []).append(code)
    return blocks


def test_the_saga_files_of_the_docs_run_as_they_say(cli: Cli, tmp_path: Path) -> None:
    blocks = docs_blocks("#### Parallel groups\n", "### List and count")
    handlers = tmp_path / "trip.py"
    handlers.write_text(blocks["python"][0])
    documented = [
        ("trip.json", blocks["json"][0], 0),
        ("trip.toml", blocks["toml"][0], 0),
        ("trip-atlantis.yaml", blocks["yaml"][0], 1),
    ]
    for name, text, code in documented:
        path = tmp_path / name
        path.write_text(text)
        result = cli("run", str(path), "--handlers", f"{handlers}:HANDLERS", "--json")
        assert result.exit_code == code, (name, result.stdout, result.stderr)
        data = json.loads(result.stdout)
        assert [s["group"] for s in data["steps"]] == [None, "lodging", "lodging", None], name
        assert [s["action"] for s in data["steps"]] == [
            "hold_flight",
            "book_hotel",
            "rent_car",
            "charge",
        ]
        if code == 0:
            assert data["state"] == "committed", name
            assert [s["group_concurrency"] for s in data["steps"]][1:3] == [2, 2], name
            assert overlapped(data["steps"][1], data["steps"][2]), name
        else:
            statuses = [s["status"] for s in data["steps"]]
            assert statuses == ["compensated", "compensated", "failed", "pending"], name
            assert data["error"] == "no cars to rent in Atlantis"
