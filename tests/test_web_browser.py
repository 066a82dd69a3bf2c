"""The web view in a real browser: Debian's Chromium driven by Playwright.

The browser is the system's (``/usr/bin/chromium``, given as ``executable_path``);
Playwright never downloads one. Without it the test is skipped, and under ``CI=true``
it fails. One server for the module. Set ``AUMAI_WEB_SCREENSHOT`` to a path to keep
the transaction page's screenshot there too (the README's picture is made so).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("starlette", reason="the web extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api")

from aumai_transactions import TransactionManager  # noqa: E402
from aumai_transactions.models import TransactionState  # noqa: E402
from aumai_transactions.stores.sqlite import SqliteStore  # noqa: E402
from tests._web_support import SECRET, served_store  # noqa: E402

CHROMIUM = Path(os.environ.get("AUMAI_TEST_CHROMIUM", "/usr/bin/chromium"))


def _chromium() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict[str, str], Path]]:
    # After the browser: without one, the test is skipped before a server starts.
    path = tmp_path_factory.mktemp("browser") / "journal.db"
    with served_store(path) as (base, ids):
        yield base, ids, path


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda exc: problems.append(str(exc)))
    yield opened
    context.close()
    assert problems == []  # no script error, no CSP violation, nothing failed to load


def test_filter_open_a_rolled_back_transaction_and_read_its_timeline(
    server: tuple[str, dict[str, str], Path], page: Any, tmp_path: Path
) -> None:
    base, ids, _ = server
    expect = sync_api.expect
    page.goto(base + "/")
    expect(page.locator('[data-count="compensation_failed"] .n')).to_have_text("1")
    page.select_option("#filter-state", "rolled_back")
    page.click("#apply")
    page.wait_for_url("**/?state=rolled_back*")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-state", "rolled_back")
    page.click("a.tx-link")
    page.wait_for_url(f"**/transactions/{ids['rolled_back']}")
    expect(page.locator("#tx-state")).to_have_text("rolled_back")

    bars = page.locator("svg#timeline .bar-item")
    expect(bars).to_have_count(7)
    drawn = [
        {
            "kind": bar.get_attribute("data-kind"),
            "step": int(bar.get_attribute("data-step")),
            "status": bar.get_attribute("data-status"),
            "box": bar.locator("rect.bar").bounding_box(),
        }
        for bar in bars.all()
    ]
    steps = [bar for bar in drawn if bar["kind"] == "step"]
    undo = [bar for bar in drawn if bar["kind"] == "compensation"]
    assert [(b["step"], b["status"]) for b in steps] == [
        (1, "completed"),
        (2, "interrupted"),
        (3, "interrupted"),
        (4, "failed"),
    ]
    assert [b["step"] for b in undo] == [3, 2, 1]  # reverse start order, as they ran
    tops = [b["box"]["y"] for b in drawn]
    assert tops == sorted(tops)  # one row each, in this order down the picture
    group = steps[1:]  # the parallel group: lanes that start together and overlap
    assert max(b["box"]["x"] for b in group) - min(b["box"]["x"] for b in group) < 20
    failing_end = steps[3]["box"]["x"] + steps[3]["box"]["width"]
    lefts = [b["box"]["x"] for b in undo]
    assert lefts == sorted(lefts) and lefts[0] >= failing_end - 2  # after the failure
    assert page.locator("svg#timeline path.undo-link").count() == 3
    colours = {
        kind: page.locator(
            f"svg#timeline .bar-item.{kind}.status-{status} rect.bar"
        ).first.evaluate("r => getComputedStyle(r).fill")
        for kind, status in (("step", "completed"), ("compensation", "compensated"))
    }
    assert colours["step"] != colours["compensation"]

    page.locator('svg#timeline .bar-item[data-status="failed"] rect.bar').hover()
    tip = page.locator("#tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("charge_card")
    expect(tip).to_contain_text("error: card declined: api_key=***")
    expect(tip).to_contain_text("start: ")
    assert SECRET not in page.content()

    shot = tmp_path / "transaction.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("AUMAI_WEB_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["AUMAI_WEB_SCREENSHOT"])


def test_the_list_follows_new_transactions_without_a_reload(
    server: tuple[str, dict[str, str], Path], page: Any
) -> None:
    base, ids, path = server
    page.goto(base + "/?state=committed")
    rows = page.locator("tbody tr")
    expect = sync_api.expect
    expect(rows).to_have_count(3)
    page.evaluate("window.marker = 'same page'")
    page.fill("[name=agent]", "half-typed")  # a filter being typed when the update comes

    async def commit_one() -> None:
        async with SqliteStore(path) as store:  # another process would do the same
            manager = TransactionManager(action_handlers={"ping": lambda a, d: "pong"}, store=store)
            tx = manager.begin(timeout_seconds=30)
            manager.add_step(tx, "pinger", "ping", {}, None)
            assert (await manager.commit(tx)).state is TransactionState.COMMITTED

    # Playwright's sync API runs an event loop in this thread: the store gets its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, commit_one).result(30)
    expect(rows).to_have_count(4, timeout=10_000)
    assert page.evaluate("window.marker") == "same page"  # updated in place
    expect(page.locator("[name=agent]")).to_have_value("half-typed")  # the filters stay
    expect(page.locator('[data-count="committed"] .n')).to_have_text("4")
