"""``aumai-transactions serve``: what it refuses, and the real server it starts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed")
httpx = pytest.importorskip("httpx")

pytest.register_assert_rewrite("tests._cli_support")
pytest_plugins = ["tests._cli_support"]

from aumai_transactions.cli.serve import is_loopback  # noqa: E402
from tests._cli_support import Cli  # noqa: E402
from tests.test_cli import assert_usage_error  # noqa: E402


def test_the_memory_store_is_refused_in_one_line(cli: Cli) -> None:
    line = assert_usage_error(cli("serve", store="memory://"), "memory:// lives inside one")
    assert "sqlite:///path.db or postgresql://" in line


def test_a_missing_store_is_refused_and_not_created(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nodir" / "typo.db"
    line = assert_usage_error(cli("serve", "--port", "0", store=f"sqlite:///{missing}"))
    assert f"There is no store at {missing}" in line and "`serve` only reads" in line
    assert not missing.exists() and not missing.parent.exists()


def test_without_the_web_extra_it_says_how_to_install_it(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn: ImportError
    line = assert_usage_error(cli("serve"), "serve needs the web extra (uvicorn is not installed)")
    assert 'pip install -e ".[web]"' in line


def test_a_short_token_is_refused(cli: Cli) -> None:
    assert_usage_error(cli("serve", "--token", "abc"), "at least 16 characters")


def test_a_port_in_use_is_one_line(cli: Cli) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_usage_error(cli("serve", "--port", str(port)), f"Cannot listen on 127.0.0.1:{port}")


def test_help_says_what_it_serves(cli: Cli) -> None:
    result = cli.ok("serve", "--help", store=None, env={"COLUMNS": "200"})
    for words in ("read-only web view", "--host", "--port", "--token", "--store"):
        assert words in result.stdout


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.fixture
def serving(cli: Cli, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """``serve`` in a process of its own, on a free port; yields (url, stderr line)."""
    args = getattr(request, "param", ())
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aumai_transactions.cli",
            "serve",
            "--store",
            cli.url,
            "--port",
            "0",
            *args,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HOME": str(cli.home)},
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # its first lines say where it listens
        lines.append(line)
        if line.startswith("Serving "):
            break
    try:
        match = re.search(r"at (http://\S+) \(Ctrl-C stops it\)", lines[-1])
        assert match is not None, lines
        yield match[1], "".join(lines)
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=20)[1]  # reads what is left, closes the pipe
        assert process.returncode == 0, rest
        assert rest.strip() == "Stopped."  # Ctrl-C is how it is stopped: no error


def test_serve_answers_on_loopback_without_a_token(serving: tuple[str, str]) -> None:
    url, said = serving
    assert url.startswith("http://127.0.0.1:") and "token" not in url
    answer = httpx.get(url + "api/counts", timeout=10)
    assert answer.status_code == 200 and answer.json()["total"] == 0
    assert httpx.get(url, timeout=10).status_code == 200


@pytest.mark.parametrize("serving", [("--host", "0.0.0.0")], indirect=True)
def test_serve_elsewhere_makes_a_token_and_requires_it(serving: tuple[str, str]) -> None:
    url, said = serving
    assert "made a token" in said
    token = re.search(r"\?token=([\w-]+)", url)
    assert token is not None
    base = url.split("?")[0].replace("0.0.0.0", "127.0.0.1")
    assert httpx.get(base + "api/counts", timeout=10).status_code == 401
    auth = {"authorization": f"Bearer {token[1]}"}
    assert httpx.get(base + "api/counts", headers=auth, timeout=10).status_code == 200


def test_the_listening_socket_says_it_is_tcp() -> None:
    # Regression: a socket made with proto 0 got no TCP_NODELAY from asyncio on its
    # connections, and every answer on a kept-alive connection waited ~40 ms for a
    # delayed ACK.
    import socket

    from aumai_transactions.cli.serve import _bind

    with _bind("127.0.0.1", 0) as listening:
        assert listening.proto == socket.IPPROTO_TCP
