"""Masking of secret-looking values in step data and results before they are shown.

Step data often carries credentials that an agent needs (an API key, a session
cookie). The CLI shows data to whoever runs it and to whatever its output is piped
into, so values under keys that look secret are replaced by :data:`MASK` in human and
JSON output alike, unless the user asks for ``--reveal``. ``export`` is a backup and is
never masked.

A key looks secret when one of its words (split on ``_``, ``-``, ``.``, spaces and
camelCase humps, compared case-insensitively) is a secret word, or when two adjacent
words make ``api key`` or ``private key``. Whole words, so ``author`` and ``max_tokens``
stay visible while ``authToken``, ``X-Api-Key`` and ``db_password`` are masked.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "looks_secret", "mask_secrets"]

MASK = "***"
"""What a masked value is replaced by."""

_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "token",
        "secret",
        "secrets",
        "apikey",
        "authorization",
        "auth",
        "credential",
        "credentials",
        "privatekey",
        "cookie",
        "session",
    }
)
_SECRET_PAIRS = frozenset({("api", "key"), ("private", "key")})
_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATOR = re.compile(r"[^A-Za-z0-9]+")


def _words(key: str) -> list[str]:
    spaced = _HUMP.sub(" ", key)
    return [word.lower() for word in _SEPARATOR.split(spaced) if word]


def looks_secret(key: str) -> bool:
    """True when a value stored under ``key`` should not be shown."""
    words = _words(key)
    if any(word in _SECRET_WORDS for word in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:], strict=False))


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` with every value under a secret-looking key masked.

    Walks nested dicts and lists; a secret key's whole value is masked, whatever its
    type (a ``credentials`` dict is hidden entirely). Other values are returned as is.
    """
    if isinstance(value, dict):
        return {
            key: MASK if isinstance(key, str) and looks_secret(key) else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(item) for item in value]
    return value
