"""The web view through httpx's ASGI transport: every page and endpoint, bad input,
the security rules, and the JSON documents being the CLI's own."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("starlette", reason="the web extra is not installed")
httpx = pytest.importorskip("httpx")

from aumai_transactions import (  # noqa: E402
    RetryPolicy,
    TransactionManager,
    TransactionState,
)
from aumai_transactions.cli._payloads import list_rows, read_leases, show_payload  # noqa: E402
from aumai_transactions.cli._secrets import Masker  # noqa: E402
from aumai_transactions.stores.sqlite import SqliteStore  # noqa: E402
from aumai_transactions.web import build_app  # noqa: E402
from aumai_transactions.web._security import CONTENT_SECURITY_POLICY  # noqa: E402
from tests._web_support import SECRET, TOKEN_SHAPED, populate  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

BASE = "http://127.0.0.1"


class View:
    """The app over one populated store, and clients for it."""

    def __init__(self, store: SqliteStore, ids: dict[str, str]) -> None:
        self.store = store
        self.ids = ids
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_app(store)), base_url=BASE
        )

    def client_for(self, **options: Any) -> Any:
        app = build_app(self.store, **options)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def view(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[View]:
    path = tmp_path_factory.mktemp("web") / "journal.db"
    async with SqliteStore(path) as store:
        ids = await populate(store)
        made = View(store, ids)
        async with made.client:
            yield made


async def get_json(view: View, url: str, status: int = 200) -> Any:
    answer = await view.client.get(url)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    return answer.json()


# ------------------------------------------------------------------ the JSON API


async def test_list_api_is_the_cli_list_json(view: View) -> None:
    rows = await get_json(view, "/api/transactions")
    found = await view.store.list(limit=50)
    assert rows == json.loads(
        json.dumps(list_rows(found, await read_leases(view.store, found), Masker()))
    )
    assert [row["transaction_id"] for row in rows] == [tx.transaction_id for tx in found]
    assert len(rows) == len(view.ids)


async def test_show_api_is_the_cli_show_json_with_secrets_masked(view: View) -> None:
    tid = view.ids["rolled_back"]
    document = await get_json(view, f"/api/transactions/{tid}")
    tx = await view.store.load(tid)
    assert tx is not None
    lease = (await read_leases(view.store, [tx])).get(tid)
    assert document == json.loads(json.dumps(show_payload(tx, lease, Masker())))
    text = json.dumps(document)
    assert SECRET not in text and TOKEN_SHAPED not in text
    assert document["transaction"]["error"] == "card declined: api_key=***"
    assert [e["kind"] for e in document["timeline"]].count("compensation") == 3


async def test_show_api_takes_a_prefix_and_refuses_unknown_ids(view: View) -> None:
    tid = view.ids["committed-0"]
    document = await get_json(view, f"/api/transactions/{tid[:8]}")
    assert document["transaction"]["transaction_id"] == tid
    for ident, words in (
        ("no-such-id", "No transaction 'no-such-id' in sqlite:///"),
        (tid[:2], "too short: give at least 4 characters"),
        ("%20", "The transaction id is empty."),
    ):
        error = await get_json(view, f"/api/transactions/{ident}", 404)
        assert words in error["error"]


async def test_filters_combine_and_page_without_overlap(view: View) -> None:
    rows = await get_json(view, "/api/transactions?state=active")
    assert {row["transaction_id"] for row in rows} == {
        view.ids[name] for name in ("active_live", "active_lapsed", "blocked")
    }
    rows = await get_json(view, "/api/transactions?agent=payments&action=charge_card")
    assert {row["transaction_id"] for row in rows} == {
        view.ids["rolled_back"],
        view.ids["compensation_failed"],
    }
    assert await get_json(view, "/api/transactions?since=1h&until=2999-01-01") != []
    assert await get_json(view, "/api/transactions?until=2000-01-01") == []
    seen: list[str] = []
    url: str | None = "/api/transactions?limit=3"
    while url is not None:
        answer = await view.client.get(url)
        assert answer.status_code == 200
        page = answer.json()
        assert len(page) <= 3
        seen += [row["transaction_id"] for row in page]
        link = answer.headers.get("link")
        url = None if link is None else re.fullmatch(r'<(.+)>; rel="next"', link)[1]  # type: ignore[index]
    everything = await get_json(view, "/api/transactions")
    assert seen == [row["transaction_id"] for row in everything]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("state=bogus", "not a transaction state; accepted: pending"),
        ("limit=0", "from 1 to 500"),
        ("limit=abc", "from 1 to 500"),
        ("limit=501", "from 1 to 500"),
        ("since=yesterday", "neither an ISO date/time"),
        ("since=99999999d", "too far in the past"),
        ("since=2025-02-01&until=2025-01-01", "earlier than until"),
        ("before=nonsense", "not a page position"),
        ("before=99999999999999999999:x", "not a page position"),
        ("colour=red", "unknown query parameter 'colour'; accepted: state"),
        ("state=active&state=failed", "given twice"),
        ("agent=" + "x" * 201, "1 to 200 characters"),
    ],
)
async def test_bad_filters_are_400_with_a_message(view: View, query: str, words: str) -> None:
    error = await get_json(view, f"/api/transactions?{query}", 400)
    assert words in error["error"]
    page = await view.client.get(f"/?{query}")
    assert page.status_code == 400 and words in page.text.replace("&#39;", "'")


async def test_counts_put_the_problems_first(view: View) -> None:
    counts = await get_json(view, "/api/counts")
    assert counts["total"] == len(view.ids)
    assert counts["problems"] == {
        "compensation_failed": 1,
        "dead_letter": 0,
        "blocked": 1,
        "lease_lapsed": 2,
    }
    assert counts["by_state"]["committed"] == 3 and counts["by_state"]["active"] == 3
    assert counts["leases"]["waiting"] == 1
    assert (await get_json(view, "/api/counts?x=1", 400))["error"].startswith("unknown query")


async def test_openapi_document_declares_every_list_parameter(view: View) -> None:
    document = await get_json(view, "/api/openapi.json")
    assert document["openapi"].startswith("3.1")
    listed = document["paths"]["/api/transactions"]["get"]["parameters"]
    assert [p["name"] for p in listed] == [
        "state",
        "agent",
        "action",
        "since",
        "until",
        "limit",
        "before",
    ]
    rows = await get_json(view, "/api/transactions")
    schema = document["components"]["schemas"]["TransactionRow"]
    assert set(rows[0]) == set(schema["properties"])  # the document says what is sent
    shown = await get_json(view, f"/api/transactions/{view.ids['rolled_back']}")
    steps = document["components"]["schemas"]["StepRow"]["properties"]
    assert set(shown["steps"][0]) == set(steps)
    events = document["components"]["schemas"]["TimelineEvent"]["properties"]
    assert set(shown["timeline"][0]) == set(events)


async def test_unknown_paths_are_404_with_a_message(view: View) -> None:
    assert "Nothing is at" in (await get_json(view, "/api/nothing", 404))["error"]
    page = await view.client.get("/nothing/here")
    assert page.status_code == 404 and "Nothing is at /nothing/here" in page.text
    assert (await view.client.get("/static/missing.js")).status_code == 404


# ------------------------------------------------------------------ pages


async def test_list_page_shows_counts_problems_first_and_rows(view: View) -> None:
    page = await view.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    order = re.findall(r'data-count="([a-z_]+)"', page.text)
    assert order[:4] == ["compensation_failed", "dead_letter", "blocked", "lease_lapsed"]
    assert page.text.count('class="tx-link') == len(view.ids)
    assert "held by worker-1 until" in page.text
    assert "worker-2&#39;s lease lapsed" in page.text
    assert 'data-live="1"' in page.text  # the first page follows new transactions
    assert SECRET not in page.text


async def test_list_page_filters_and_links_the_next_page(view: View) -> None:
    page = await view.client.get("/?state=rolled_back&agent=")
    assert page.status_code == 200
    assert re.findall(r'data-state="([a-z_]+)"', page.text) == ["rolled_back"]
    page = await view.client.get("/?limit=2")
    older = re.search(r'href="([^"]+)" id="older"', page.text)
    assert older is not None
    nxt = await view.client.get("/" + older[1].replace("&amp;", "&"))
    assert nxt.status_code == 200 and 'id="newest"' in nxt.text
    assert 'data-live="1"' not in nxt.text  # an older page stays put


async def test_transaction_page_draws_the_timeline(view: View) -> None:
    tid = view.ids["rolled_back"]
    page = await view.client.get(f"/transactions/{tid}")
    assert page.status_code == 200
    bars = re.findall(
        r'data-kind="(step|compensation)" data-step="(\d)" data-status="(\w+)"', page.text
    )
    assert bars == [
        ("step", "1", "completed"),
        ("step", "2", "interrupted"),
        ("step", "3", "interrupted"),
        ("step", "4", "failed"),
        ("compensation", "3", "compensated"),
        ("compensation", "2", "compensated"),
        ("compensation", "1", "compensated"),
    ]
    assert page.text.count('class="undo-link"') == 3
    assert "parallel: bookings" in page.text
    assert "card declined: api_key=***" in page.text
    assert SECRET not in page.text and TOKEN_SHAPED not in page.text
    assert 'data-live="1"' not in page.text  # it ended


async def test_pages_of_other_shapes(view: View) -> None:
    stuck = await view.client.get(f"/transactions/{view.ids['compensation_failed']}")
    assert stuck.status_code == 200
    assert "Bearer ***" in stuck.text and TOKEN_SHAPED not in stuck.text
    assert 'data-status="compensation_failed"' in stuck.text
    assert "↩ #1 refund_card ×3" in stuck.text  # a retried bar says how many attempts
    assert "attempts: 3" in stuck.text
    live = await view.client.get(f"/transactions/{view.ids['active_live']}")
    assert 'data-live="1"' in live.text and "held by worker-1" in live.text
    blocked = await view.client.get(f"/transactions/{view.ids['blocked']}")
    assert "recovery blocked: no handler for &#39;book_hotel&#39;" in blocked.text
    missing = await view.client.get("/transactions/no-such-id")
    assert missing.status_code == 404 and "No transaction &#39;no-such-id&#39;" in missing.text


async def test_static_assets_are_served_from_the_package(view: View) -> None:
    script = await view.client.get("/static/app.js")
    style = await view.client.get("/static/app.css")
    assert script.status_code == style.status_code == 200
    assert "javascript" in script.headers["content-type"]
    page = (await view.client.get("/")).text
    assert not re.search(r"<script(?![^>]*\bsrc=\"/static/)", page)  # no inline script
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from elsewhere
    assert " style=" not in page


# ------------------------------------------------------------------ security


async def test_every_answer_carries_the_security_headers(view: View) -> None:
    for url in ("/", "/api/transactions", "/api/nothing", "/api/transactions?limit=0"):
        answer = await view.client.get(url)
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert answer.headers["x-content-type-options"] == "nosniff"


async def test_head_is_answered_like_get(view: View) -> None:
    for url in ("/", "/api/counts", f"/transactions/{view.ids['rolled_back']}"):
        answer = await view.client.head(url)
        assert answer.status_code == 200 and answer.content == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_nothing_writes(view: View, method: str) -> None:
    before = await view.store.count_by_state()
    for url in ("/", "/api/transactions", f"/api/transactions/{view.ids['active_live']}"):
        answer = await view.client.request(method, url)
        assert answer.status_code == 405 and "read-only" in answer.json()["error"]
    assert await view.store.count_by_state() == before


async def test_loopback_view_refuses_other_host_names(view: View) -> None:
    answer = await view.client.get("/", headers={"host": "evil.example:8750"})
    assert answer.status_code == 400 and "127.0.0.1 or localhost" in answer.json()["error"]
    for host in ("localhost:8750", "127.0.0.1", "[::1]:8750"):
        assert (await view.client.get("/api/counts", headers={"host": host})).status_code == 200


async def test_a_token_is_required_on_every_request(view: View) -> None:
    token = "t0ken-of-twenty-four-chars"
    async with view.client_for(token=token, loopback_only=False) as client:
        for url in ("/", "/api/transactions", "/static/app.js", "/api/openapi.json"):
            answer = await client.get(url)
            assert answer.status_code == 401 and "needs its token" in answer.json()["error"]
        wrong = await client.get("/api/counts", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.get("/api/counts", headers={"authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert (await client.get(f"/api/counts?token={token}")).status_code == 200
        signed = await client.get(f"/?state=active&token={token}")
        assert signed.status_code == 303
        assert signed.headers["location"] == "/?state=active"
        assert "HttpOnly" in signed.headers["set-cookie"]
        assert "SameSite=Strict" in signed.headers["set-cookie"]
        elsewhere = await client.get(f"{BASE}//evil.example/x?token={token}")
        assert elsewhere.headers["location"] == "/evil.example/x"  # never off this site
        page = await client.get("/?state=active", headers={"cookie": f"aumai_token={token}"})
        assert page.status_code == 200 and token not in page.text
        other_host = await client.get(
            "/api/counts", headers={"host": "box.example", "authorization": f"Bearer {token}"}
        )
        assert other_host.status_code == 200  # with a token, any name the box has


# ------------------------------------------------------------------ PostgreSQL


async def test_the_same_view_over_postgresql(tmp_path: Path) -> None:
    from tests.stores.conftest import make_store

    store = make_store("postgres", tmp_path)  # skips locally without a server
    async with store:
        ids = await populate(store)
        app = build_app(store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as web:
            counts = (await web.get("/api/counts")).json()
            assert counts["problems"] == {
                "compensation_failed": 1,
                "dead_letter": 0,
                "blocked": 1,
                "lease_lapsed": 2,
            }
            seen: list[str] = []
            query = "?limit=4"
            while True:
                answer = await web.get("/api/transactions" + query)
                seen += [row["transaction_id"] for row in answer.json()]
                if "link" not in answer.headers:
                    break
                query = answer.headers["link"].split("/api/transactions", 1)[1].split(">")[0]
            assert sorted(seen) == sorted(ids.values()) and len(seen) == len(set(seen))
            rows = (await web.get("/api/transactions?action=charge_card&agent=payments")).json()
            assert {row["transaction_id"] for row in rows} == {
                ids["rolled_back"],
                ids["compensation_failed"],
            }
            page = await web.get(f"/transactions/{ids['rolled_back']}")
            assert page.status_code == 200 and page.text.count('class="undo-link"') == 3


async def test_a_retried_step_is_a_bar_per_attempt_with_its_own_times_and_error(
    tmp_path: Path,
) -> None:
    failures = iter([f"quota service down: api_key={SECRET}", "quota service timed out"])

    def reserve(action: str, data: Any) -> None:
        message = next(failures, None)
        if message is not None:
            raise RuntimeError(message)

    async with SqliteStore(tmp_path / "retried.db") as store:
        manager = TransactionManager({"reserve": reserve}, store=store)
        tx = manager.begin()
        policy = RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0)
        manager.add_step(tx, "quota", "reserve", {}, None, retry=policy)
        assert (await manager.commit(tx)).state is TransactionState.COMMITTED
        app = build_app(store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            page = (await c.get(f"/transactions/{tx.transaction_id}")).text
            shown = (await c.get(f"/api/transactions/{tx.transaction_id}")).json()
    # Two earlier attempts, drawn on the step's row before its last (successful) one.
    attempts = re.findall(r'class="attempt-item" data-step="1" data-attempt="(\d)"', page)
    assert attempts == ["1", "2"]
    xs = [float(x) for x in re.findall(r'class="bar earlier-attempt" x="([\d.]+)"', page)]
    last = float(re.search(r'data-kind="step".*?<rect class="bar" x="([\d.]+)"', page, re.S)[1])
    assert xs == sorted(xs) and xs[-1] < last
    assert "attempt 1 of 3, failed" in page and "quota service timed out" in page
    assert "api_key=***" in page and SECRET not in page  # masked like every error
    [step] = shown["steps"]
    assert [a["error"] for a in step["earlier_attempts"]] == [
        "quota service down: api_key=***",
        "quota service timed out",
    ]
    assert all(a["started_at"] < a["finished_at"] for a in step["earlier_attempts"])
