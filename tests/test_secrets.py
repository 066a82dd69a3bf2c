"""Masking of secrets in what the CLI shows: keys, nested values, free text (error
messages), and the places errors are rendered (step rows, results, the timeline, the
live display, stderr). ``export`` is a backup and is never masked (tests/test_cli_browse)."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from aumai_transactions import (
    StepStatus,
    Transaction,
    TransactionResult,
    TransactionState,
    TransactionStep,
)
from aumai_transactions.cli._output import Output
from aumai_transactions.cli._secrets import MASK, looks_secret, mask_secrets, mask_text
from aumai_transactions.cli._timeline import _live_table, timeline_events
from aumai_transactions.cli._views import result_payload, step_rows, transaction_row

# ---------------------------------------------------------------------- keys

SECRET_KEYS = [
    # the words masked before
    "password",
    "passwd",
    "token",
    "secret",
    "apikey",
    "authorization",
    "auth",
    "credentials",
    "private_key",
    "cookie",
    "session_id",
    # the words issue 8 adds
    "pass",
    "pwd",
    "passphrase",
    "access_key",
    "api_keys",
    "tokens",
    "bearer",
    "jwt",
    "card_number",
    "cvv",
    "dsn",
    "database_url",
    "connection_string",
    # spellings: separators, case, camelCase humps, prefixes and suffixes
    "AWS_ACCESS_KEY_ID",
    "accessKey",
    "AccessKey",
    "apiKeys",
    "X-Api-Key",
    "API_KEYS",
    "cardNumber",
    "CARD_NUMBER",
    "db.password",
    "DATABASE_URL",
    "databaseUrl",
    "connectionString",
    "sentry_dsn",
    "id_jwt",
    "refresh_token",
    "authToken",
    "MYSQL_PWD",
    "pgpassword",
    "authtoken",
    "client_secret",
    "signing_key",
]

VISIBLE_KEYS = [
    "author",
    "authors",
    "passenger",
    "compass",
    "keyboard",
    "api",
    "key",
    "card",
    "number",
    "url",
    "database",
    "access",
    "user",
    "description",
    "tokenizer",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_are_masked(key: str) -> None:
    assert looks_secret(key), key
    assert mask_secrets({key: "s3cr3t-value"}) == {key: MASK}


@pytest.mark.parametrize("key", VISIBLE_KEYS)
def test_ordinary_keys_stay_visible(key: str) -> None:
    assert not looks_secret(key), key
    assert mask_secrets({key: "plain"}) == {key: "plain"}


@pytest.mark.parametrize("key", ["max_tokens", "total_tokens", "promptTokens", "tokens"])
def test_a_count_of_tokens_stays_visible_but_tokens_themselves_do_not(key: str) -> None:
    assert mask_secrets({key: 256}) == {key: 256}
    assert mask_secrets({key: 0.5}) == {key: 0.5}
    assert mask_secrets({key: ["tok-a", "tok-b"]}) == {key: MASK}
    assert mask_secrets({key: "256"}) == {key: MASK}  # a string could be anything
    assert mask_secrets({key: True}) == {key: MASK}  # a bool is not a count


def test_a_number_under_a_truly_secret_key_is_masked() -> None:
    assert mask_secrets({"token": 123456, "cvv": 123, "pin_tokens": 7}) == {
        "token": MASK,
        "cvv": MASK,
        "pin_tokens": 7,
    }


# ---------------------------------------------------------------------- nested values


def test_nested_values_are_masked_at_any_depth() -> None:
    data = {
        "user": "ana",
        "request": {
            "headers": {"Authorization": "Bearer abc", "Accept": "json"},
            "accounts": [{"apiKey": "k-1", "name": "main"}, ("x", {"pwd": "p"})],
        },
        "credentials": {"user": "x", "nested": {"deep": 1}},
        "usage": {"prompt_tokens": 12, "completion_tokens": 30},
    }
    assert mask_secrets(data) == {
        "user": "ana",
        "request": {
            "headers": {"Authorization": MASK, "Accept": "json"},
            "accounts": [{"apiKey": MASK, "name": "main"}, ["x", {"pwd": MASK}]],
        },
        "credentials": MASK,  # a secret key hides its whole value
        "usage": {"prompt_tokens": 12, "completion_tokens": 30},
    }


def test_masking_copies_and_leaves_the_original_alone() -> None:
    data = {"password": "hunter2", "list": [{"token": "t"}]}
    masked = mask_secrets(data)
    assert data == {"password": "hunter2", "list": [{"token": "t"}]}
    assert masked["list"] is not data["list"]


def test_strings_in_data_get_the_text_rules_too() -> None:
    data = {"hint": "use postgresql://app:pa55@db/app", "note": "sent token=abc"}
    assert mask_secrets(data) == {
        "hint": f"use postgresql://app:{MASK}@db/app",
        "note": f"sent token={MASK}",
    }


def test_non_string_keys_and_scalars_pass_through() -> None:
    assert mask_secrets({1: "x", "n": None, "f": 1.5}) == {1: "x", "n": None, "f": 1.5}
    assert mask_secrets(42) == 42 and mask_secrets(None) is None


# ---------------------------------------------------------------------- free text

BASIC = base64.b64encode(b"ana:hunter2").decode()

TEXTS = [
    # key=value, key: value, "key": "value", as error messages quote them
    ("login failed: password=hunter2 user=ana", f"login failed: password={MASK} user=ana"),
    ("token: abc123 expired", f"token: {MASK} expired"),
    ("api_key = 'sk-1'", f"api_key = '{MASK}'"),
    (
        'bad body {"api_key": "k 1", "amount": 42}',
        f'bad body {{"api_key": "{MASK}", "amount": 42}}',
    ),
    ("got {'secret': 'x', 'n': 1}", f"got {{'secret': '{MASK}', 'n': 1}}"),
    ('json {\\"password\\": \\"x y\\"}', f'json {{\\"password\\": \\"{MASK}\\"}}'),
    ("GET /x?user=ana&access_key=AK1&page=2", f"GET /x?user=ana&access_key={MASK}&page=2"),
    ("--db-password=hunter2 --verbose", f"--db-password={MASK} --verbose"),
    ("X-Api-Key: k-1; cvv: 123", f"X-Api-Key: {MASK}; cvv: {MASK}"),
    ("card_number=4111111111111111, ok", f"card_number={MASK}, ok"),
    ("DATABASE_URL=postgres://u:p@h/db", f"DATABASE_URL={MASK}"),
    ("api_keys: [k1, k2] rejected", f"api_keys: {MASK} rejected"),
    ('credentials: {"user": "x", "pass": "y"}', f"credentials: {MASK}"),
    ("note: password=hunter2", f"note: password={MASK}"),  # a pair inside a pair's value
    ("max_tokens=4096 exceeded, tokens=abc", f"max_tokens=4096 exceeded, tokens={MASK}"),
    # authorization schemes
    ("HTTP 401 Authorization: Bearer abc.def-1 bad", f"HTTP 401 Authorization: Bearer {MASK} bad"),
    ("sent Bearer eyJhbGci.x-y_z", f"sent Bearer {MASK}"),
    ("sent bearer abc", f"sent bearer {MASK}"),
    (f"header Basic {BASIC} refused", f"header Basic {MASK} refused"),
    (f"authorization=Basic {BASIC}", f"authorization=Basic {MASK}"),
    # credentials in URLs: the password only
    ("connect postgresql://ana:s3cr3t@db:5432/app", f"connect postgresql://ana:{MASK}@db:5432/app"),
    ("redis://:pw@localhost:6379/0 down", f"redis://:{MASK}@localhost:6379/0 down"),
    (
        "https://x-access-token:ghs_1@github.com/o/r",
        f"https://x-access-token:{MASK}@github.com/o/r",
    ),
    # well-known token shapes, wherever they stand
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln ok", f"jwt {MASK} ok"),
    ("pushed with ghp_" + "a" * 36, f"pushed with {MASK}"),
    ("key AKIAIOSFODNN7EXAMPLE denied", f"key {MASK} denied"),
    ("stripe sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", f"stripe {MASK}"),
    ("openai sk-proj-" + "x" * 30 + " invalid", f"openai {MASK} invalid"),
    ("slack xoxb-1234567890-abcdefghij", f"slack {MASK}"),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIB\n-----END RSA PRIVATE KEY-----",
        f"-----BEGIN RSA PRIVATE KEY-----{MASK}-----END RSA PRIVATE KEY-----",
    ),
]

UNTOUCHED = [
    "card declined: amount over the limit",
    "timeout after 3.0s: step 'charge' still running",
    "Basic authentication failed",
    "author: Ana, passenger: Bo",
    "see https://example.com:8080/path?q=1&page=2",
    "email ana@example.com, user: ana",
    "ssh://git@github.com/o/r.git",
    "max_tokens: 4096",
    "",
]


@pytest.mark.parametrize(("text", "masked"), TEXTS)
def test_secrets_in_text_are_masked(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize("text", UNTOUCHED)
def test_text_without_secrets_is_left_as_it_is(text: str) -> None:
    assert mask_text(text) == text


@pytest.mark.parametrize(("text", "masked"), TEXTS)
def test_masking_text_twice_changes_nothing_more(text: str, masked: str) -> None:
    assert mask_text(masked) == masked


def test_long_text_with_many_pairs() -> None:
    text = " ".join(f"k{i}=v{i} password=p{i}" for i in range(500))
    masked = mask_text(text)
    assert "password=p" not in masked and masked.count(f"password={MASK}") == 500
    assert "k499=v499" in masked


# ---------------------------------------------------------------------- where errors show

TOKEN = "ghp_" + "Z" * 36
ERROR = f"POST /charge failed: 401 Authorization: Bearer tok-live-9 (key {TOKEN})"


def failed_transaction() -> Transaction:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    steps = [
        TransactionStep(
            agent_id="billing",
            action="reserve",
            compensating_action="release",
            status=StepStatus.COMPENSATION_FAILED,
            attempts=1,
            started_at=start,
            finished_at=start + timedelta(seconds=1),
            compensation_error=f"release failed: password=hunter2 at {TOKEN}",
            data={"api_key": "sk-live-123", "note": "token=zqx-9"},
            result={"session": "s-1", "ok": True},
        ),
        TransactionStep(
            agent_id="billing",
            action="charge",
            status=StepStatus.FAILED,
            attempts=1,
            started_at=start + timedelta(seconds=1),
            finished_at=start + timedelta(seconds=2),
            error=ERROR,
        ),
    ]
    return Transaction(
        steps=steps,
        state=TransactionState.COMPENSATION_FAILED,
        created_at=start,
        finished_at=start + timedelta(seconds=3),
        error=ERROR,
        blocked_reason=f"no handler; last error: dsn=postgresql://u:pw@h/db {TOKEN}",
    )


LEAKS = ("tok-live-9", TOKEN, "hunter2", "sk-live-123", "zqx-9", "s-1", ":pw@")


def assert_no_leak(text: str) -> None:
    for secret in LEAKS:
        assert secret not in text, secret


def test_step_rows_mask_errors_data_and_results() -> None:
    rows = step_rows(failed_transaction(), Output())
    assert_no_leak(repr(rows))
    assert rows[1]["error"] == (
        f"POST /charge failed: 401 Authorization: Bearer {MASK} (key {MASK})"
    )
    assert rows[0]["compensation_error"] == f"release failed: password={MASK} at {MASK}"
    assert rows[0]["data"] == {"api_key": MASK, "note": f"token={MASK}"}
    assert rows[0]["result"] == {"session": MASK, "ok": True}


def test_reveal_shows_everything() -> None:
    tx = failed_transaction()
    rows = step_rows(tx, Output(reveal=True))
    assert rows[1]["error"] == ERROR
    assert rows[0]["data"] == {"api_key": "sk-live-123", "note": "token=zqx-9"}
    assert transaction_row(tx, Output(reveal=True))["blocked_reason"] == tx.blocked_reason


def test_transaction_summary_masks_error_and_blocked_reason() -> None:
    row = transaction_row(failed_transaction(), Output())
    assert_no_leak(repr(row))
    assert row["blocked_reason"] == f"no handler; last error: dsn={MASK} {MASK}"


def test_result_payload_masks_error_and_compensation_errors() -> None:
    tx = failed_transaction()
    result = TransactionResult(
        transaction_id=tx.transaction_id,
        state=tx.state,
        failed_step=tx.steps[1].step_id,
        error=ERROR,
        compensation_errors={tx.steps[0].step_id: tx.steps[0].compensation_error or ""},
    )
    payload = result_payload(result, tx, Output())
    assert_no_leak(repr(payload))
    assert payload["compensation_errors"] == {
        tx.steps[0].step_id: f"release failed: password={MASK} at {MASK}"
    }


def test_the_timeline_masks_the_errors_it_carries() -> None:
    events = timeline_events(failed_transaction(), Output())
    assert_no_leak(repr(events))
    by_kind = {(event["kind"], event["action"]): event for event in events}
    assert by_kind[("step", "charge")]["error"].endswith(f"Bearer {MASK} (key {MASK})")
    assert by_kind[("compensation", "release")]["error"] == (
        f"release failed: password={MASK} at {MASK}"
    )
    revealed = timeline_events(failed_transaction(), Output(reveal=True))
    assert any(event["error"] == ERROR for event in revealed)


def test_the_live_display_masks_errors() -> None:
    buffer = io.StringIO()
    Console(width=300, file=buffer).print(
        _live_table(failed_transaction(), "Committing", {}, Output())
    )
    drawn = buffer.getvalue()
    assert "failed: POST /charge failed" in drawn and "compensation failed" in drawn
    assert_no_leak(drawn)


def test_diagnostics_on_stderr_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    output = Output()
    output.error(f"store error: cannot reach postgresql://app:pw@db/x ({TOKEN})")
    output.warn("retrying with password=hunter2")
    output.note("Bearer tok-live-9 refused")
    err = capsys.readouterr().err
    assert_no_leak(err)
    assert err.count(MASK) == 4
