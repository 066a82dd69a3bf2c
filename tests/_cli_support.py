"""Fixtures of the CLI tests: a harness that runs commands against a fresh SQLite store.

Every test gets its own HOME (so the default store and the legacy JSON file are under
tmp_path, never the real home directory), its own store file, and a handlers module
whose handlers append each call to a log file the test can read back.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner, Result

from aumai_transactions.cli import app
from aumai_transactions.stores.sqlite import SqliteStore

HANDLERS_SOURCE = """
import json
import sqlite3
import threading
import time

import anyio

LOG = {log!r}
JOURNAL = {journal!r}


def _log(action, data):
    with open(LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps([action, data]) + "\\n")


def ok(action, data):
    _log(action, data)
    return {{"done": action}}


def fail(action, data):
    _log(action, data)
    raise RuntimeError(f"{{action}} failed")


def chatty(action, data):
    _log(action, data)
    print("handler says hello on stdout")
    return None


LEAKED = "Bearer tok-live-9"


def leaky(action, data):
    _log(action, data)
    raise RuntimeError(
        f"{{action}}: 401 from https://app:hunter2@pay.example/v1, Authorization: {{LEAKED}}"
    )


# Parallel groups. A step of a group of two passes the barrier only when its sibling
# reaches it too, that is, when both run at once; run one after the other, the first
# waits 5 s and fails with BrokenBarrierError.
BARRIER = threading.Barrier(2, timeout=5)
SIBLING_FAILED = threading.Event()
SIBLING_DONE = threading.Event()


def together(action, data):
    _log(action, data)
    BARRIER.wait()
    time.sleep(data.get("hold", 0))
    SIBLING_DONE.set()
    return {{"done": action}}


def _journaled_done(action):
    # True once the journal holds a completed step running this action.
    conn = sqlite3.connect(f"file:{{JOURNAL}}?mode=ro", uri=True, timeout=5)
    try:
        for (body,) in conn.execute("SELECT body FROM steps"):
            step = json.loads(body)
            if step["action"] == action and step["status"] == "completed":
                return True
        return False
    finally:
        conn.close()


def together_then_fail(action, data):
    _log(action, data)
    BARRIER.wait()
    sibling = data.get("after_sibling")
    if sibling:
        # Fail only once the engine has recorded the sibling completed (a completion is
        # committed within the journal's group-commit delay), so it is not in doubt.
        deadline = time.monotonic() + 10
        while not _journaled_done(sibling) and time.monotonic() < deadline:
            time.sleep(0.005)
    SIBLING_FAILED.set()
    raise RuntimeError(f"{{action}} failed")


async def outlives_sibling(action, data):
    # Never returns on its own: its sibling's failure cancels it, so it is in doubt.
    _log(action, data)
    await anyio.to_thread.run_sync(BARRIER.wait)
    await anyio.Event().wait()


_LOCK = threading.Lock()
_IN_FLIGHT = [0, 0]  # running now, most at once


def counted(action, data):
    with _LOCK:
        _IN_FLIGHT[0] += 1
        _IN_FLIGHT[1] = max(_IN_FLIGHT)
    time.sleep(0.2)
    with _LOCK:
        _IN_FLIGHT[0] -= 1
        peak = _IN_FLIGHT[1]
    _log(action, {{**data, "peak": peak}})
    return {{"peak": peak}}


HANDLERS = {{
    "reserve": ok,
    "release": ok,
    "charge": fail,
    "refund": ok,
    "ship": ok,
    "cancel": ok,
    "pay": ok,
    "notify": chatty,
}}
BROKEN_UNDO = {{**HANDLERS, "release": fail, "charge": ok, "ship": fail}}
ALL_OK = {{**HANDLERS, "charge": ok}}
LEAKY = {{**HANDLERS, "charge": leaky, "release": leaky}}
PARALLEL = {{
    **ALL_OK,
    "hotel": together,
    "car": together,
    "car_fails": together_then_fail,
    "hotel_outlives": outlives_sibling,
    "count": counted,
    "cancel_hotel": ok,
    "return_car": ok,
}}
NOT_A_MAPPING = [ok, fail]
NOT_CALLABLE = {{"reserve": 42}}
"""


def on_a_pty(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    rows: int | None = None,
    columns: int | None = None,
) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal (of ``rows`` x
    ``columns`` when given); its exit code and everything it drew."""
    main_fd, child_fd = pty.openpty()
    if rows is not None and columns is not None:
        fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=child_fd,
        stderr=child_fd,
        env=dict(env),
        cwd=cwd,
    )
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    return process.wait(timeout=60), b"".join(chunks).decode()


async def make_store(path: Path) -> None:
    """An empty SQLite store at ``path`` (read-only commands never create one)."""
    async with SqliteStore(path):
        pass


class Cli:
    """Runs ``aumai-transactions`` in-process (Typer's CliRunner) against one store,
    which exists (empty) from the start, as after a first command that writes."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.url = f"sqlite:///{tmp_path / 'journal.db'}"
        anyio.run(make_store, tmp_path / "journal.db")
        self.log = tmp_path / "calls.jsonl"
        self.handlers_file = tmp_path / "handlers.py"
        source = HANDLERS_SOURCE.format(log=str(self.log), journal=str(tmp_path / "journal.db"))
        self.handlers_file.write_text(textwrap.dedent(source))
        self.runner = CliRunner()

    def spec(self, attribute: str = "HANDLERS") -> str:
        """A ``--handlers`` value naming ``attribute`` of the test handlers file."""
        return f"{self.handlers_file}:{attribute}"

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        store: str | None = "default-test-store",
        env: dict[str, str] | None = None,
    ) -> Result:
        """Run one command; ``--store`` is the test store unless ``store`` says otherwise."""
        argv = list(args)
        if store == "default-test-store":
            argv += ["--store", self.url]
        elif store is not None:
            argv += ["--store", store]
        return self.runner.invoke(app, argv, input=input, env=env)

    def ok(self, *args: str, **kwargs: Any) -> Result:
        """Run a command that must succeed."""
        result = self(*args, **kwargs)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result

    def json(self, *args: str, **kwargs: Any) -> Any:
        """Run a command with ``--json`` that must succeed; its stdout, parsed."""
        return json.loads(self.ok(*args, "--json", **kwargs).stdout)

    def create(self, timeout: str = "600") -> str:
        """A new pending transaction's id."""
        return str(self.json("create", "--timeout", timeout)["transaction_id"])

    def build(self, *steps: tuple[str, str, dict[str, Any] | None, str | None]) -> str:
        """A pending transaction with ``steps`` (agent, action, data, compensate)."""
        tx_id = self.create()
        for agent, action, data, compensate in steps:
            args = ["add-step", "--tx-id", tx_id, "--agent", agent, "--action", action]
            if data is not None:
                args += ["--data", json.dumps(data)]
            if compensate is not None:
                args += ["--compensate", compensate]
            self.ok(*args)
        return tx_id

    def calls(self) -> list[str]:
        """The actions the handlers ran, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line)[0] for line in self.log.read_text().splitlines()]


ORDER = (
    ("inventory", "reserve", {"sku": "A-1", "qty": 2}, "release"),
    ("billing", "charge", {"amount": 42, "api_key": "sk-live-123"}, "refund"),
    ("shipping", "ship", {"address": "Lisbon"}, "cancel"),
)
"""Three steps whose second fails with the HANDLERS mapping."""


@pytest.fixture
def on_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands behave as with stdout on a terminal (``create`` and ``status`` draw a
    panel instead of printing their JSON document)."""
    monkeypatch.setattr("aumai_transactions.cli._output.stdout_is_terminal", lambda: True)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """A harness with its own HOME, store file and handlers module."""
    harness = Cli(tmp_path)
    monkeypatch.setenv("HOME", str(harness.home))
    for name in ("AUMAI_TRANSACTIONS_STORE", "COLUMNS", "FORCE_COLOR", "AUMAI_TRANSACTIONS_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # handler loading may prepend dirs
    monkeypatch.chdir(tmp_path)
    return harness
