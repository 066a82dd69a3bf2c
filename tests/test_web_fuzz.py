"""A property-based fuzz of the web API, driven by its own OpenAPI document: whatever
the query parameters (declared ones with odd values, undeclared ones, repeats) and
whatever the id in the path, the answer is never a 5xx, a 4xx always says why, and a
200 is what the document promises."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed")
httpx = pytest.importorskip("httpx")

from anyio.from_thread import BlockingPortal, start_blocking_portal  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from aumai_transactions.stores.sqlite import SqliteStore  # noqa: E402
from aumai_transactions.web import build_app  # noqa: E402
from aumai_transactions.web._openapi import openapi_document  # noqa: E402
from aumai_transactions.web._query import LIST_PARAMETERS  # noqa: E402
from tests._web_support import populate  # noqa: E402

DOCUMENT = openapi_document(LIST_PARAMETERS)
PARAMETERS = DOCUMENT["paths"]["/api/transactions"]["get"]["parameters"]
ROW_KEYS = set(DOCUMENT["components"]["schemas"]["TransactionRow"]["properties"])

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def _values(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Values of a parameter: ones its schema allows, near misses, and any text."""
    if "enum" in schema:
        allowed = st.sampled_from(schema["enum"])
        return allowed | allowed.map(str.upper) | TEXT
    if schema.get("type") == "integer":
        return st.integers(-5, schema.get("maximum", 1000) + 5).map(str) | TEXT
    if schema.get("example") in ("1h",):
        amounts = st.integers(0, 10**13) | st.sampled_from([0, 59, 10**6, 10**8, 10**9, 10**12])
        durations = st.tuples(amounts, st.sampled_from("smhdwx")).map(
            lambda pair: f"{pair[0]}{pair[1]}"
        )
        return durations | st.datetimes().map(lambda m: m.isoformat()) | TEXT
    return TEXT


QUERIES = st.lists(
    st.one_of(
        *(st.tuples(st.just(p["name"]), _values(p["schema"])) for p in PARAMETERS),
        st.tuples(TEXT, TEXT),  # names the document does not declare
    ),
    max_size=5,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BlockingPortal, Any]]:
    store = SqliteStore(tmp_path_factory.mktemp("fuzz") / "journal.db")
    with start_blocking_portal() as portal:
        portal.call(store.open)
        portal.call(populate, store)
        made = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_app(store)), base_url="http://127.0.0.1"
        )
        try:
            yield portal, made
        finally:
            portal.call(made.aclose)
            portal.call(store.close)


def _check(answer: Any) -> Any:
    assert answer.status_code < 500, answer.text
    if answer.is_redirect:  # a trailing slash (or an id's %2F) is redirected without it
        assert answer.headers["location"].startswith("http://127.0.0.1/api/transactions")
        return None
    body = answer.json()
    if answer.status_code >= 400:
        assert isinstance(body["error"], str) and len(body["error"]) > 10
    return body


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=QUERIES)
def test_list_api_never_fails_on_any_query(
    client: tuple[BlockingPortal, Any], query: list[tuple[str, str]]
) -> None:
    portal, http = client
    answer = portal.call(http.get, "/api/transactions?" + urlencode(query))
    body = _check(answer)
    if answer.status_code == 200:
        assert isinstance(body, list) and all(set(row) == ROW_KEYS for row in body)
    else:
        assert answer.status_code == 400


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ident=TEXT)
def test_show_api_never_fails_on_any_id(client: tuple[BlockingPortal, Any], ident: str) -> None:
    portal, http = client
    answer = portal.call(http.get, "/api/transactions/" + quote(ident, safe=""))
    _check(answer)
    assert answer.status_code in (200, 307, 404)
