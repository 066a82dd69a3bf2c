"""The read-only web view of a store: ``aumai-transactions serve`` (the ``web`` extra).

Pages for people and a JSON API for scripts (the CLI's ``list --json`` and ``show
--json`` documents under ``/api/``, with an OpenAPI document), rendered from the same
reads; nothing writes to the store. Starlette, Jinja2 templates with autoescape, one
hand-written stylesheet and script served from the package itself.

``build_app(store, token=..., loopback_only=...)`` returns the ASGI application over
an opened store; the CLI's ``serve`` runs it under uvicorn.
"""

from __future__ import annotations

from ._app import build_app

__all__ = ["build_app"]
