"""The OpenAPI 3.1 document of the web view's JSON API.

Query parameters come from the same declarations the API parses them with
(``_query.LIST_PARAMETERS``); the schemas describe the CLI's ``list --json`` and
``show --json`` documents, which the API returns as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ._query import Parameter

__all__ = ["openapi_document"]

_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_NTIME = {"type": ["string", "null"], "format": "date-time"}
_INT = {"type": "integer"}
_NNUM = {"type": ["number", "null"]}
_BOOL = {"type": "boolean"}
_ANY: dict[str, Any] = {}


def _object(properties: dict[str, Any], *, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": ["object", "null"] if nullable else "object",
        "properties": properties,
        "required": list(properties),
    }
    return schema


_LEASE = _object(
    {"owner": _NSTR, "expires_at": _NTIME, "epoch": _INT, "live": _BOOL, "lapsed": _BOOL},
    nullable=True,
)
_RESOLUTION = _object(
    {"note": _NSTR, "by": _NSTR, "at": _NTIME, "previous_state": _STR}, nullable=True
)
TRANSACTION_ROW = _object(
    {
        "transaction_id": _STR,
        "state": _STR,
        "steps": _INT,
        "groups": _INT,
        "open": _BOOL,
        "agents": {"type": "array", "items": _STR},
        "created_at": {"type": "string", "format": "date-time"},
        "finished_at": _NTIME,
        "duration_seconds": _NNUM,
        "timeout_seconds": _NNUM,
        "error": _NSTR,
        "blocked_reason": _NSTR,
        "recovery_attempts": _INT,
        "resolution": _RESOLUTION,
        "lease": _LEASE,
    }
)
STEP_ROW = _object(
    {
        "index": _INT,
        "step_id": _STR,
        "agent_id": _STR,
        "action": _STR,
        "status": _STR,
        "group": _NSTR,
        "group_concurrency": {"type": ["integer", "null"]},
        "live": _BOOL,
        "attempts": _INT,
        "earlier_attempts": {
            "type": "array",
            "items": _object({"started_at": _NTIME, "finished_at": _NTIME, "error": _NSTR}),
        },
        "started_at": _NTIME,
        "finished_at": _NTIME,
        "duration_seconds": _NNUM,
        "error": _NSTR,
        "compensating_action": _NSTR,
        "compensation": _NSTR,
        "compensation_attempts": _INT,
        "compensation_error": _NSTR,
        "compensated_at": _NTIME,
        "interrupted": _BOOL,
        "recorded_only": _BOOL,
        "note": _NSTR,
        "data": _ANY,
        "result": _ANY,
    }
)
TIMELINE_EVENT = _object(
    {
        "kind": {"type": "string", "enum": ["step", "compensation"]},
        "index": _INT,
        "step_id": _STR,
        "action": _STR,
        "agent_id": _STR,
        "group": _NSTR,
        "status": _STR,
        "start": _NTIME,
        "end": _NTIME,
        "error": _NSTR,
    }
)
_COUNT = {"type": ["integer", "null"]}
COUNTS = _object(
    {
        "total": _INT,
        "by_state": {"type": "object", "additionalProperties": _INT},
        "problems": _object(
            {
                "compensation_failed": _COUNT,
                "dead_letter": _COUNT,
                "blocked": _COUNT,
                "lease_lapsed": _COUNT,
            }
        ),
        "leases": _object(
            {"waiting": _INT, "first_expiry": _NTIME, "claimable": _INT, "blocked": _INT},
            nullable=True,
        ),
    }
)
_ERROR = _object({"error": _STR})


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    words = {400: "A bad query parameter", 401: "No token, or a wrong one", 404: "Unknown id"}
    return {
        str(status): _json({"$ref": "#/components/schemas/Error"}, words[status])
        for status in statuses
    }


def openapi_document(parameters: Sequence[Parameter]) -> dict[str, Any]:
    """The document, with the list's query parameters as declared in ``parameters``."""
    query = [
        {
            "name": p.name,
            "in": "query",
            "required": False,
            "description": p.description,
            "schema": p.schema,
        }
        for p in parameters
    ]
    ref = "#/components/schemas/"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aumai-transactions web view",
            "version": __version__,
            "description": "Read-only: the transactions of one store, as the CLI's --json "
            "shows them (secrets masked).",
        },
        "paths": {
            "/api/transactions": {
                "get": {
                    "summary": "A page of transactions, newest first (list --json)",
                    "operationId": "listTransactions",
                    "parameters": query,
                    "responses": {
                        "200": {
                            **_json(
                                {"type": "array", "items": {"$ref": ref + "TransactionRow"}},
                                "The page's rows",
                            ),
                            "headers": {
                                "Link": {"description": 'The next page: rel="next"', "schema": _STR}
                            },
                        },
                        **_errors(400, 401),
                    },
                }
            },
            "/api/transactions/{transaction_id}": {
                "get": {
                    "summary": "One transaction: summary, steps, timeline (show --json)",
                    "operationId": "showTransaction",
                    "parameters": [
                        {
                            "name": "transaction_id",
                            "in": "path",
                            "required": True,
                            "description": "An id, or a prefix of at least 4 characters of one.",
                            "schema": _STR,
                        }
                    ],
                    "responses": {
                        "200": _json(
                            _object(
                                {
                                    "transaction": {"$ref": ref + "TransactionRow"},
                                    "steps": {"type": "array", "items": {"$ref": ref + "StepRow"}},
                                    "timeline": {
                                        "type": "array",
                                        "items": {"$ref": ref + "TimelineEvent"},
                                    },
                                }
                            ),
                            "The transaction",
                        ),
                        **_errors(401, 404),
                    },
                }
            },
            "/api/counts": {
                "get": {
                    "summary": "How many transactions are in each state, problems first",
                    "operationId": "counts",
                    "responses": {
                        "200": _json({"$ref": ref + "Counts"}, "The counts"),
                        **_errors(400, 401),
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {
            "schemas": {
                "TransactionRow": TRANSACTION_ROW,
                "StepRow": STEP_ROW,
                "TimelineEvent": TIMELINE_EVENT,
                "Counts": COUNTS,
                "Error": _ERROR,
            },
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
    }
