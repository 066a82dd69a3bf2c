"""The Starlette application: routes, the HTML pages and their JSON twins.

Routes (GET only)::

    /                              the list: counts on top, filters, a page of rows
    /transactions/{id}             one transaction: header, steps, SVG timeline
    /api/transactions              the list's rows (``list --json``); next page in Link
    /api/transactions/{id}         one transaction (``show --json``)
    /api/counts                    counts by state, problems first
    /api/openapi.json              the OpenAPI document of the API
    /static/...                    the view's own stylesheet and script

A bad filter is a 400 and an unknown id a 404, each with a message (``{"error": ...}``
from the API, a page saying it otherwise); an unexpected failure is a 500 whose
message names the error's kind and text (masked), never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._version import __version__
from ..cli._output import format_duration, format_time
from ..cli._payloads import problem_text
from ..cli._secrets import mask_text
from ..cli._views import ATTENTION_STATES, with_step_names
from ..errors import StoreError
from ..stores import Store
from ._openapi import openapi_document
from ._pages import (
    PROBLEMS,
    NotFound,
    counts_document,
    in_flight,
    list_document,
    show_document,
)
from ._query import LIST_PARAMETERS, BadRequest, parse_list_query
from ._security import Guard
from ._svg import lay_out_timeline

__all__ = ["build_app"]

logger = logging.getLogger("aumai_transactions.web")

_STATIC = Path(__file__).parent / "static"
_LIVE_STATES = ("pending", "active", "compensating")

Handler = Callable[[Request], Awaitable[Response]]


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("aumai_transactions.web", "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = format_time
    env.filters["duration"] = format_duration
    env.globals.update(version=__version__, problem_text=problem_text, in_flight=in_flight)
    return env


def _guarded(handler: Handler, *, json_errors: bool, env: Environment) -> Handler:
    """``handler`` with its failures answered as messages: 400, 404, or 500 (logged)."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except BadRequest as exc:
            status, message = 400, str(exc)
        except NotFound as exc:
            status, message = 404, str(exc)
        except StoreError as exc:
            status, message = 503, f"The store cannot be read: {mask_text(str(exc))}"
        except Exception as exc:
            logger.exception("web view: %s %s failed", request.method, request.url.path)
            status = 500
            message = f"unexpected {type(exc).__name__}: {mask_text(str(exc))}"
        if json_errors:
            return JSONResponse({"error": message}, status_code=status)
        page = env.get_template("error.html").render(status=status, message=message)
        return HTMLResponse(page, status_code=status)

    return guarded


def build_app(store: Store, *, token: str | None = None, loopback_only: bool = True) -> Any:
    """The web view over ``store``, which the caller has opened and will close.

    ``token``: every request must carry it (see ``_security``); ``loopback_only``:
    answer only requests for a loopback host name (the default bind, 127.0.0.1).
    """
    env = _environment()
    ignored = frozenset({"token"})

    async def list_page(request: Request) -> Response:
        query = parse_list_query(request.query_params.multi_items(), ignored)
        rows, after = await list_document(store, query)
        counts = await counts_document(store)
        page = env.get_template("list.html").render(
            rows=rows,
            counts=counts,
            query=query,
            next_link=None if after is None else query.link(before=after),
            first_link=query.link(before=None) if query.before is not None else None,
            states=list(counts["by_state"]),
            problems=PROBLEMS,
            attention={state.value for state in ATTENTION_STATES},
            live=query.before is None,
        )
        return HTMLResponse(page)

    async def transaction_page(request: Request) -> Response:
        tx, document = await show_document(store, request.path_params["transaction_id"])
        # Errors name a sibling step by id; the page names steps by number and action.
        names = {row["step_id"]: f"#{row['index']} {row['action']}" for row in document["steps"]}
        steps = [
            {**row, "error": with_step_names(row["error"], names)} for row in document["steps"]
        ]
        events = [{**e, "error": with_step_names(e["error"], names)} for e in document["timeline"]]
        timeline = lay_out_timeline(tx, events)
        page = env.get_template("transaction.html").render(
            tx=document["transaction"],
            steps=steps,
            timeline=timeline,
            deadline=None if tx.deadline is None else tx.deadline.isoformat(),
            live=tx.state.value in _LIVE_STATES,
            attention={state.value for state in ATTENTION_STATES},
        )
        return HTMLResponse(page)

    async def list_api(request: Request) -> Response:
        query = parse_list_query(request.query_params.multi_items(), ignored)
        rows, after = await list_document(store, query)
        headers = {}
        if after is not None:
            headers["link"] = f'</api/transactions{query.link(before=after)}>; rel="next"'
        return JSONResponse(rows, headers=headers)

    async def transaction_api(request: Request) -> Response:
        _, document = await show_document(store, request.path_params["transaction_id"])
        return JSONResponse(document)

    async def counts_api(request: Request) -> Response:
        _refuse_parameters(request)
        return JSONResponse(await counts_document(store))

    async def openapi(request: Request) -> Response:
        _refuse_parameters(request)
        return JSONResponse(openapi_document(LIST_PARAMETERS))

    def page(handler: Handler) -> Handler:
        return _guarded(handler, json_errors=False, env=env)

    def api(handler: Handler) -> Handler:
        return _guarded(handler, json_errors=True, env=env)

    routes = [
        Route("/", page(list_page), methods=["GET"]),
        Route("/transactions/{transaction_id:str}", page(transaction_page), methods=["GET"]),
        Route("/api/transactions", api(list_api), methods=["GET"]),
        Route("/api/transactions/{transaction_id:str}", api(transaction_api), methods=["GET"]),
        Route("/api/counts", api(counts_api), methods=["GET"]),
        Route("/api/openapi.json", api(openapi), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=_STATIC), name="static"),
    ]
    app = Starlette(routes=routes)

    async def not_found(request: Request, exc: Exception) -> Response:
        message = f"Nothing is at {request.url.path}; the list is at /."
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=404)
        html = env.get_template("error.html").render(status=404, message=message)
        return HTMLResponse(html, status_code=404)

    app.add_exception_handler(404, not_found)
    return Guard(app, token=token, loopback_only=loopback_only)


def _refuse_parameters(request: Request) -> None:
    unknown = [name for name in request.query_params if name != "token"]
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; this address takes none.")
