"""What the PostgreSQL workloads share: finding the server, fresh schemas, and child
processes that start their timed runs together.

The server is ``AUMAI_BENCH_POSTGRES_URL``, else ``AUMAI_TEST_POSTGRES_URL``, else
postgresql://postgres@127.0.0.1:5432/test; without one the workloads print a skip note.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> tuple[str, str | None]:
    """``(url, None)`` when the server answers, else ``(url, why not)``."""
    url = os.environ.get("AUMAI_BENCH_POSTGRES_URL") or os.environ.get(
        "AUMAI_TEST_POSTGRES_URL", DEFAULT_URL
    )
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "no server"
        return url, f"{type(exc).__name__}: {exc}".strip()
    return url, None


def backend_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the server processes ``pids`` have used so far.

    Read from ``/proc``, so only for a server on this machine; a process that cannot be
    read counts 0 (a remote server: the figures derived from it are then 0).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def fresh_schema(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Children:
    """Worker processes that each run one timed job per ``go`` line on stdin.

    The parent writes ``go`` to all of them at once and reads one JSON line back from
    each, so the processes run their jobs side by side, the way a fleet of workers
    would, and process start-up is never inside the timing.
    """

    def __init__(self, module: str, specs: list[dict[str, Any]]) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", module, "--child", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for spec in specs
        ]
        for proc in self.procs:
            self._read(proc)  # "ready"

    @staticmethod
    def _read(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark child {proc.args!r} died (exit {proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """Hand ``job`` to every child at once; return their replies."""
        line = json.dumps(job) + "\n"
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line)
            proc.stdin.flush()
        return [self._read(proc) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            proc.wait(timeout=60)


def child_loop(handle: Any) -> None:
    """The child side of ``Children``: answer each job line with ``handle(job)``."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(handle(json.loads(line))), flush=True)
