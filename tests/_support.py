"""Helpers shared by the tests: handlers that record what they were asked to do."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aumai_transactions import Transaction, TransactionResult


class Recorder:
    """Builds handlers that append ``(action, data)`` to ``calls`` and fail on demand."""

    def __init__(self, fail: Iterable[str] = ()) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = set(fail)

    @property
    def actions(self) -> list[str]:
        """The action names called, in call order."""
        return [action for action, _ in self.calls]

    def sync(self, action: str, data: dict[str, Any]) -> dict[str, str]:
        self.calls.append((action, data))
        if action in self.fail:
            raise RuntimeError(f"{action} failed")
        return {"done": action}

    async def async_(self, action: str, data: dict[str, Any]) -> dict[str, str]:
        return self.sync(action, data)

    def handlers(self, *actions: str, kind: str = "sync") -> dict[str, Callable[..., Any]]:
        """One recording handler per action (``kind``: "sync" or "async")."""
        func = self.sync if kind == "sync" else self.async_
        return {action: func for action in actions}


TUTORIAL_ACTIONS = (
    "create_user",
    "delete_user",
    "reserve_quota",
    "release_quota",
    "charge_card",
    "refund_card",
    "send_welcome_email",
)


def actions_of(tx: Transaction, step_ids: Iterable[str | None]) -> list[str | None]:
    """Map step ids (as a result lists them) to the actions of those steps."""
    by_id = {step.step_id: step.action for step in tx.steps}
    return [None if step_id is None else by_id[step_id] for step_id in step_ids]


def completed_actions(tx: Transaction, result: TransactionResult) -> list[str | None]:
    """``result.completed_steps`` as action names."""
    return actions_of(tx, result.completed_steps)


ROOT = Path(__file__).resolve().parent.parent


def run_python_files(
    files: Mapping[str, Path], cwd: Path, timeout: float = 120
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run each file with this interpreter, all at once, each in its own directory under cwd."""

    def run(name: str, path: Path) -> subprocess.CompletedProcess[str]:
        workdir = cwd / name
        workdir.mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            [sys.executable, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=workdir,
            check=False,
        )

    with ThreadPoolExecutor(max_workers=max(1, len(files))) as pool:
        futures = {name: pool.submit(run, name, path) for name, path in files.items()}
        return {name: future.result() for name, future in futures.items()}


README = ROOT / "README.md"
DOCS = ROOT / "docs"

# Put on the line right before a fence, this keeps a ```python block from being run by
# the snippet tests; the reason is required (tests/test_docs.py checks it says one).
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>.*?) -->")
# An info string after backticks holds no backtick (CommonMark), so a line that starts
# with inline code such as ```` ```python ```` opens no block.
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}(?=[^`]*$)|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class CodeBlock:
    """A fenced code block of a markdown file, with the section it sits in."""

    language: str
    code: str
    section: str
    index: int
    path: Path = README
    line: int = 0
    """The line of the opening fence, counted from 1."""
    not_run: str | None = None
    """The reason given by a ``<!-- not run: ... -->`` marker right before the block."""

    @property
    def where(self) -> str:
        """``docs/page.md:12`` (a test id that says where to look)."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_pages() -> list[Path]:
    """The README and every page of the documentation site, in a stable order."""
    return [README, *sorted(DOCS.glob("**/*.md"))]


def markdown_blocks(path: Path) -> list[CodeBlock]:
    """Every fenced code block of the markdown file ``path``, in order.

    A fence may be indented (inside a list item): the indentation is taken off the
    block's lines. It closes at a line of the same character, at least as long.
    """
    blocks: list[CodeBlock] = []
    section = ""
    previous = ""  # the last non-blank line outside a block
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        opening = _FENCE.match(line)
        if opening is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            if line.strip():
                previous = line.strip()
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            closing = _FENCE.match(lines[i])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        marker = NOT_RUN.fullmatch(previous)
        blocks.append(
            CodeBlock(
                language=opening["info"].strip().split(" ")[0],
                code="\n".join(body) + "\n",
                section=section,
                index=len(blocks),
                path=path,
                line=start + 1,
                not_run=None if marker is None else marker["reason"].strip(),
            )
        )
        previous = ""
        i += 1
    return blocks


def output_after(block: CodeBlock) -> str | None:
    """The ``text`` block right after ``block`` in its file (what it prints), or None."""
    blocks = markdown_blocks(block.path)
    following = blocks[block.index + 1] if block.index + 1 < len(blocks) else None
    if following is not None and following.language == "text":
        return following.code
    return None


def readme_blocks() -> list[CodeBlock]:
    """Every fenced code block of README.md, in order."""
    return markdown_blocks(README)


def readme_output_after(block: CodeBlock) -> str | None:
    """The ``text`` block right after ``block`` (what it prints), or None."""
    return output_after(block)
