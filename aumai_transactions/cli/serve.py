"""``serve``: the read-only web view of a store, in a browser (the ``web`` extra).

Binds 127.0.0.1 by default, and then answers only requests for a loopback host name.
Any other address needs a token (``--token``, or one is made and printed): every
request must carry it. The memory store is refused, as it lives inside one process
and a server of its own would show it empty. The store is opened (and a missing SQLite
file refused, as every reading command does) before the server starts, so a wrong URL
is one line on stderr, not a server that answers errors.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from typing import Annotated, Any

import typer

from ._errors import CliError
from ._options import StoreOption
from ._output import Output
from ._store import ENV_VAR, cli_store, run_async

__all__ = ["app", "is_loopback"]

app = typer.Typer()

DEFAULT_PORT = 8750

_INSTALL = 'pip install -e ".[web]"'


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _refuse_memory(url: str | None) -> None:
    if url is not None and url.strip().lower().startswith("memory:"):
        raise CliError(
            "serve shows a store other processes write, and memory:// lives inside one "
            "process (a server of its own would show it empty): give --store "
            f"sqlite:///path.db or postgresql://user@host/db (or set {ENV_VAR})."
        )


def _web() -> tuple[Any, Any]:
    """``build_app`` and uvicorn, or a one-line hint to install the extra."""
    try:
        import uvicorn

        from ..web import build_app
    except ImportError as exc:
        raise CliError(
            f"serve needs the web extra ({exc.name or exc} is not installed): {_INSTALL} "
            "in the checkout of aumai-transactions."
        ) from None
    return build_app, uvicorn


@app.command("serve", rich_help_panel="Inspect the store")
def serve(
    store: StoreOption = None,
    host: Annotated[
        str,
        typer.Option("--host", help="Address to bind; other than loopback, a token is required."),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free one).")
    ] = DEFAULT_PORT,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="AUMAI_TRANSACTIONS_WEB_TOKEN",
            show_default=False,
            help="Every request must carry it (made and printed when --host is not loopback).",
        ),
    ] = None,
) -> None:
    """Serve a read-only web view of the store in a browser.

    The list with its problems counted first, each transaction's steps and timeline,
    and a JSON API under /api/. Binds 127.0.0.1; any other --host needs a token.
    Ctrl-C stops it.
    """
    output = Output()
    _refuse_memory(store)
    build_app, uvicorn = _web()
    loopback = is_loopback(host)
    if token is not None and len(token) < 16:
        raise CliError("--token must be at least 16 characters (a guessable token guards nothing).")
    if token is None and not loopback:
        token = secrets.token_urlsafe(24)
        output.note(f"--host {host} is reachable from other machines: made a token for it.")
    shown = f"[{host}]" if ":" in host else host

    async def body() -> None:
        async with cli_store(store, output) as opened:
            app = build_app(opened, token=token, loopback_only=loopback and token is None)
            listening = _bind(host, port)
            bound = listening.getsockname()[1]
            config = uvicorn.Config(app, log_level="warning", lifespan="off")
            server = uvicorn.Server(config)
            address = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
            output.err.print(
                f"Serving {opened.url} read-only at {address} (Ctrl-C stops it)",
                markup=False,
                highlight=False,
            )
            await server.serve(sockets=[listening])

    try:
        run_async(body)
    except KeyboardInterrupt:  # uvicorn gives Ctrl-C back once it has stopped
        output.note("Stopped.")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (bound here, so that a port in use is one
    line, and port 0 prints the port it got)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY on the connections only
    # when the socket says it is TCP, and without it every answer on a kept-alive
    # connection waits ~40 ms for a delayed ACK (headers and body are two writes).
    listening = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host.strip("[]"), port))
    except OSError as exc:
        listening.close()
        raise CliError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None
    listening.listen(128)
    return listening
