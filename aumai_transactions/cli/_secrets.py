"""Masking of secrets in what the CLI shows: step data, results and error texts.

Step data often carries credentials that an agent needs (an API key, a session
cookie), and a failing call often quotes them in its error. The CLI shows data and
errors to whoever runs it and to whatever its output is piped into, so secrets are
replaced by :data:`MASK` in human and JSON output alike, unless the user asks for
``--reveal``. ``export`` is a backup and is never masked.

Keys. A key looks secret when one of its words is a secret word (:data:`SECRET_WORDS`),
when two adjacent words make a secret pair (``api key``, ``card number``,
``database url``: :data:`SECRET_PAIRS`), or when a key written as one lower-case word
ends in ``password``, ``secret``, ``token``... (``pgpassword``, ``authtoken``). Words are
split on ``_``, ``-``, ``.``, spaces and camelCase humps and compared case-insensitively,
so ``access_key``, ``X-Api-Key``, ``cardNumber`` and ``db_password`` are masked while
``author`` (not ``auth``) and ``passenger`` (not ``pass``) stay visible. ``tokens`` is
secret, but a *number* under a key whose only secret word is ``tokens`` is a count
(``max_tokens: 256``, ``usage.total_tokens``) and stays visible; any other value under
such a key is masked.

Text. Every string (an error message, a value in step data) goes through
:func:`mask_text`: ``key=value``, ``key: value`` and ``"key": "value"`` pairs whose key
looks secret (by the rules above), ``Bearer <token>`` and ``Basic <credentials>``, the
password of a URL (``scheme://user:***@host``), PEM private key blocks, JSON Web
Tokens, and tokens of a few well-known shapes (GitHub, Slack, AWS access key ids,
Stripe and OpenAI-style ``sk-`` keys, Google API keys).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Protocol

__all__ = [
    "MASK",
    "SECRET_PAIRS",
    "SECRET_WORDS",
    "Masker",
    "Masking",
    "looks_secret",
    "mask_secrets",
    "mask_text",
]

MASK = "***"
"""What a masked value is replaced by."""

SECRET_WORDS = frozenset(
    {
        "accesskey",
        "apikey",
        "apikeys",
        "auth",
        "authorization",
        "bearer",
        "cardnumber",
        "connectionstring",
        "cookie",
        "credential",
        "credentials",
        "cvc",
        "cvv",
        "databaseurl",
        "dsn",
        "jwt",
        "otp",
        "pass",
        "passcode",
        "passphrase",
        "passwd",
        "password",
        "privatekey",
        "pwd",
        "secret",
        "secrets",
        "session",
        "token",
        "tokens",
    }
)
"""Words that make a key secret wherever they stand in it (``db_password``)."""

SECRET_PAIRS = frozenset(
    {
        ("access", "key"),
        ("api", "key"),
        ("api", "keys"),
        ("card", "number"),
        ("connection", "string"),
        ("credit", "card"),
        ("database", "url"),
        ("encryption", "key"),
        ("private", "key"),
        ("signing", "key"),
    }
)
"""Adjacent words that make a key secret together (``access_key``, ``CardNumber``)."""

_SECRET_ENDINGS = ("passphrase", "password", "passwd", "secret", "token", "apikey")
_COUNT_WORDS = frozenset({"tokens"})  # plural words that, under a number, name a count
_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATOR = re.compile(r"[^A-Za-z0-9]+")


def _words(key: str) -> list[str]:
    spaced = _HUMP.sub(" ", key)
    return [word.lower() for word in _SEPARATOR.split(spaced) if word]


def _secret_words(key: str) -> set[str]:
    """The secret words and pairs (joined, ``api key`` as ``apikey``) found in ``key``."""
    words = _words(key)
    found = {word for word in words if word in SECRET_WORDS}
    found.update(a + b for a, b in zip(words, words[1:], strict=False) if (a, b) in SECRET_PAIRS)
    if len(words) == 1 and words[0].endswith(_SECRET_ENDINGS):
        found.add(words[0])
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _hides(key: str, value: Any) -> bool:
    """True when ``value``, stored under ``key``, must not be shown."""
    found = _secret_words(key)
    if not found:
        return False
    return not (found <= _COUNT_WORDS and _is_number(value))


def looks_secret(key: str) -> bool:
    """True when a value stored under ``key`` is masked (a count under ``max_tokens`` is
    the one exception, decided by the value: see :func:`mask_secrets`)."""
    return bool(_secret_words(key))


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` with every value under a secret-looking key masked.

    Walks nested dicts and lists; a secret key's whole value is masked, whatever its
    type (a ``credentials`` dict is hidden entirely). Strings elsewhere go through
    :func:`mask_text`; other values are returned as they are.
    """
    if isinstance(value, dict):
        return {
            key: MASK if isinstance(key, str) and _hides(key, item) else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(item) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


# ---------------------------------------------------------------------- free text

_PEM_BLOCK = re.compile(
    r"(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----).*?(-----END [A-Z0-9 ]*PRIVATE KEY-----)",
    re.DOTALL,
)
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*):([^\s@/?#]+)@")
_TOKEN_SHAPES = re.compile(
    r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"  # JSON Web Token
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]{10,}"  # Stripe
    r"|\bsk-[A-Za-z0-9_\-]{20,}"  # OpenAI, Anthropic and alike
    r"|\bAIza[0-9A-Za-z_\-]{35}"  # Google API key
)
_TOKEN68 = r"[A-Za-z0-9\-._~+/]+=*"
_BEARER = re.compile(rf"(\bbearer\s+)({_TOKEN68})", re.IGNORECASE)
_BASIC = re.compile(rf"(\bbasic\s+)({_TOKEN68})", re.IGNORECASE)
_SCHEME = r"(?:bearer|basic|token|digest)\s+"

# A key (bare, quoted, or quoted with escaped quotes as in JSON inside a message), a
# separator, an optional authorization scheme, and the value: quoted, a flat {...} or
# [...], or a bare run up to white space or punctuation that ends values in text.
_PAIR = re.compile(
    r"""(?P<q>\\?["']|)(?P<name>[A-Za-z][A-Za-z0-9_.\-]*)(?P=q)"""
    r"""(?P<sep>\s*[:=]\s*)"""
    rf"""(?P<scheme>{_SCHEME})?"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|\\".*?\\"|\\'.*?\\'"""
    r"""|\{[^{}]*\}|\[[^\[\]]*\]|(?![{\[])[^\s"'`,;&|)}\]>]+)""",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_AUTHORITY_END = re.compile(r"[/?#@\s]")


def _masked_like(value: str) -> str:
    """MASK in the quotes ``value`` had (so masked JSON in a message stays JSON-like)."""
    for quote in ('\\"', "\\'", '"', "'"):
        if value.startswith(quote) and len(value) >= 2 * len(quote):
            return f"{quote}{MASK}{quote}"
    return MASK


def _in_userinfo(text: str, index: int) -> bool:
    """True when ``index`` is in the user part of a URL (``https://x-access-token:...@``),
    whose password the URL rule has masked already."""
    scheme_end = text.rfind("://", 0, index)
    return scheme_end != -1 and not _AUTHORITY_END.search(text, scheme_end + 3, index)


def _mask_pairs(text: str) -> str:
    parts: list[str] = []
    position = 0
    while (match := _PAIR.search(text, position)) is not None:
        value = match["value"]
        shown = float(value) if _NUMBER.fullmatch(value) else value
        if _hides(match["name"], shown) and not _in_userinfo(text, match.start()):
            parts.append(text[position : match.start("value")])
            parts.append(_masked_like(value))
            position = match.end()
        else:
            # Not a secret: step over the key only, so a pair inside the value
            # ("note: password=...") is still found.
            parts.append(text[position : match.end("sep")])
            position = match.end("sep")
    parts.append(text[position:])
    return "".join(parts)


def _looks_encoded(credentials: str) -> bool:
    """True when what follows ``Basic`` is base64 of ``user:password`` (not a word)."""
    try:
        decoded = base64.b64decode(credentials, validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


def _mask_basic(match: re.Match[str]) -> str:
    credentials = match[2]
    if credentials == MASK or not _looks_encoded(credentials):
        return match[0]
    return match[1] + MASK


def mask_text(text: str) -> str:
    """``text`` with the secrets it quotes masked (see the module's docstring)."""
    if not text:
        return text
    text = _PEM_BLOCK.sub(rf"\1{MASK}\2", text)
    text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    text = _TOKEN_SHAPES.sub(MASK, text)
    text = _BEARER.sub(rf"\1{MASK}", text)
    text = _BASIC.sub(_mask_basic, text)
    return _mask_pairs(text)


# ---------------------------------------------------------------------- maskers


class Masking(Protocol):
    """What builds rows for output needs: masking of values and of free text. The CLI's
    ``Output`` is one (it reveals with ``--reveal``); :class:`Masker` is the other."""

    def mask(self, value: Any) -> Any:
        """``value`` with the values under secret-looking keys masked."""
        ...

    def mask_text(self, text: str | None) -> str | None:
        """``text`` with the secrets it quotes masked."""
        ...


class Masker:
    """Masking by the rules above, always (the web view has no ``--reveal``)."""

    def mask(self, value: Any) -> Any:
        """``value`` through :func:`mask_secrets`."""
        return mask_secrets(value)

    def mask_text(self, text: str | None) -> str | None:
        """``text`` through :func:`mask_text` (None stays None)."""
        return None if text is None else mask_text(text)
