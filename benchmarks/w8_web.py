"""W8: the web view over a SQLite store of 100,000 transactions.

One journal is built (three steps each: mostly committed, every 10th rolled back
with a failing parallel group of two, every 1000th compensation_failed, the last 20
active under a live lease), then the view is asked for its pages through httpx's
ASGI transport (the application's whole work: routing, store reads, rendering; no
network): the list's first page (50 rows, the counts, the lease summary), a page
deep in the list (after the 50,000th transaction), the list filtered by state, one
transaction's page with its SVG timeline, and the API twins of the first and last.
Figure: ms per page, the median of 20 requests after a warm-up. Baseline in the same
run: the same reads through the store API alone (``list`` of 51 + ``count_by_state``
+ ``lease_summary`` + ``leases`` for a list page, without the counts for the API's
list; ``load`` of one), so the ratio is what the web layer adds. Then the first and
the transaction's page from ``aumai-transactions serve`` over TCP (no baseline).
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from ._common import emit

WORKLOADS = ("W8",)

TRANSACTIONS = 100_000
REQUESTS = 20


async def _build(path: Path) -> tuple[str, Any]:
    """The journal; returns the id of a rolled-back transaction and the 50,000th's
    list position."""
    from aumai_transactions import TransactionManager
    from aumai_transactions.models import StepStatus, TransactionState, utcnow
    from aumai_transactions.stores import ListPosition
    from aumai_transactions.stores.sqlite import SqliteStore

    builder = TransactionManager()
    start = utcnow() - timedelta(days=2)
    made: dict[str, Any] = {}

    def one(n: int) -> Any:
        tx = builder.begin(timeout_seconds=60)
        builder.forget(tx.transaction_id)
        tx.created_at = start + timedelta(seconds=n)
        builder.add_step(tx, "planner", "plan", {"n": n, "api_key": "sk-secret"}, "unplan")
        group = "book" if n % 10 == 0 else None
        builder.add_step(tx, "hotels", "book_hotel", {"n": n}, "cancel_hotel", group=group)
        builder.add_step(tx, "payments", "charge", {"n": n}, "refund", group=group)
        moment = tx.created_at
        for index, step in enumerate(tx.steps):
            step.attempts = 1
            step.started_at = moment + timedelta(milliseconds=10 * index)
            step.finished_at = step.started_at + timedelta(milliseconds=8)
            step.status = StepStatus.COMPLETED
        tx.state = TransactionState.COMMITTED
        if n % 10 == 0:
            tx.steps[2].status = StepStatus.FAILED
            tx.steps[2].error = "card declined"
            for step in tx.steps[:2]:
                step.status = StepStatus.COMPENSATED
                step.compensation_attempts = 1
                step.compensated_at = moment + timedelta(milliseconds=40)
            tx.state = TransactionState.ROLLED_BACK
            tx.error = "card declined"
        if n % 1000 == 0:
            tx.state = TransactionState.COMPENSATION_FAILED
        tx.finished_at = moment + timedelta(milliseconds=50)
        return tx

    async with SqliteStore(path, synchronous="OFF") as store:
        for first in range(0, TRANSACTIONS - 20, 2000):
            batch = [one(n) for n in range(first, min(first + 2000, TRANSACTIONS - 20))]
            await asyncio.gather(*(store.save(tx) for tx in batch))
            for tx in batch:
                if tx.state is TransactionState.ROLLED_BACK:
                    made["rolled_back"] = tx.transaction_id
                if len(made) < 2 and first + 2000 > TRANSACTIONS // 2:
                    made["middle"] = ListPosition.of(tx)
        for n in range(TRANSACTIONS - 20, TRANSACTIONS):
            tx = one(n)
            tx.state = TransactionState.ACTIVE
            tx.finished_at = None
            await store.acquire(tx, "worker-1", 3600.0, [TransactionState.PENDING])
    return made["rolled_back"], made["middle"]


async def _median_ms(call: Callable[[], Awaitable[Any]]) -> float:
    await call()
    times = []
    for _ in range(REQUESTS):
        began = time.perf_counter()
        await call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


async def _measure(path: Path, rolled_back: str, middle: Any) -> None:
    import httpx

    from aumai_transactions.models import TransactionState
    from aumai_transactions.stores.sqlite import SqliteStore
    from aumai_transactions.web import build_app
    from aumai_transactions.web._query import cursor_of

    async with SqliteStore(path, create=False) as store:
        transport = httpx.ASGITransport(app=build_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:

            def page(url: str) -> Callable[[], Awaitable[Any]]:
                async def get() -> None:
                    answer = await client.get(url)
                    if answer.status_code != 200:
                        raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")

                return get

            async def list_baseline(**filters: Any) -> None:
                found = await store.list(limit=51, **filters)
                await store.count_by_state()
                await store.lease_summary()
                await store.leases([tx.transaction_id for tx in found])

            async def rows_baseline() -> None:  # the API's list has no counts
                found = await store.list(limit=51)
                await store.leases([tx.transaction_id for tx in found])

            async def load_baseline() -> None:
                await store.load(rolled_back)

            cursor = cursor_of(middle)
            cases: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
                ("list page", "/", lambda: list_baseline()),
                (
                    "list page 1,000 pages deep",
                    f"/?before={cursor}",
                    lambda: list_baseline(before=middle),
                ),
                (
                    "list page state=rolled_back",
                    "/?state=rolled_back",
                    lambda: list_baseline(state=TransactionState.ROLLED_BACK),
                ),
                (
                    "list page action=refund_x (no such step: every body scanned)",
                    "/?action=refund_x",
                    lambda: list_baseline(action="refund_x"),
                ),
                ("transaction page", f"/transactions/{rolled_back}", load_baseline),
                ("API list", "/api/transactions", rows_baseline),
                ("API transaction", f"/api/transactions/{rolled_back}", load_baseline),
            ]
            for name, url, baseline in cases:
                web = await _median_ms(page(url))
                base = await _median_ms(baseline)
                emit(
                    "W8",
                    "sqlite",
                    web,
                    "ms/page",
                    TRANSACTIONS,
                    name,
                    baseline_ms=round(base, 3),
                    ratio=round(web / base, 2),
                )


def _over_http(path: Path, rolled_back: str) -> None:
    """The list's first page and a transaction's page from ``aumai-transactions serve``
    in a process of its own, over TCP on 127.0.0.1 (what a browser waits for, without
    drawing). No baseline."""
    import re
    import signal
    import subprocess
    import sys

    import httpx

    command = [sys.executable, "-m", "aumai_transactions.cli", "serve", "--port", "0"]
    server = subprocess.Popen(
        [*command, "--store", f"sqlite:///{path}"], stderr=subprocess.PIPE, text=True
    )
    assert server.stderr is not None
    said = server.stderr.readline()  # "Serving ... at http://127.0.0.1:PORT/ (Ctrl-C ...)"
    address = re.search(r"at (http://\S+/) ", said)
    try:
        if address is None:
            raise RuntimeError(f"serve did not start: {said}")
        with httpx.Client(base_url=address[1]) as client:
            for name, url in (
                ("list page", "/"),
                ("transaction page", f"/transactions/{rolled_back}"),
            ):
                client.get(url).raise_for_status()
                times = []
                for _ in range(REQUESTS):
                    began = time.perf_counter()
                    client.get(url).raise_for_status()
                    times.append(time.perf_counter() - began)
                emit(
                    "W8",
                    "sqlite",
                    statistics.median(times) * 1000,
                    "ms/page",
                    TRANSACTIONS,
                    f"{name}, from `serve` over TCP",
                )
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="aumai-w8-"))
    try:
        path = root / "journal.db"
        began = time.perf_counter()
        rolled_back, middle = asyncio.run(_build(path))
        built = time.perf_counter() - began
        print(f"# W8: built {TRANSACTIONS:,} transactions in {built:.1f} s", flush=True)
        asyncio.run(_measure(path, rolled_back, middle))
        _over_http(path, rolled_back)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
