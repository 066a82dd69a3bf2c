"""The documentation: every Python block of every page runs and prints what it shows.

Pages are the README and ``docs/**/*.md``, read as they are written (a page that
includes a region of the README with ``--8<--`` is tested through the README). The rules,
stated for writers in docs/development.md ("The snippet tests"):

- a ```python block followed by a ```text block must print exactly that, stderr empty;
- one with no output block after it must print nothing;
- one that is an example file verbatim is the example's, run by tests/test_examples.py;
- one marked ``<!-- not run: REASON -->`` on the line before its fence is only parsed.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ._support import (
    DOCS,
    NOT_RUN,
    README,
    ROOT,
    CodeBlock,
    markdown_blocks,
    markdown_pages,
    output_after,
    run_python_files,
)

PAGES = markdown_pages()
BLOCKS = [block for page in PAGES for block in markdown_blocks(page)]
PYTHON = [block for block in BLOCKS if block.language == "python"]
EXAMPLE_SOURCES = {path.read_text(encoding="utf-8") for path in (ROOT / "examples").glob("*.py")}
MARKED = [block for block in PYTHON if block.not_run is not None]
SNIPPETS = [b for b in PYTHON if b.not_run is None and b.code not in EXAMPLE_SOURCES]

# The README held this many snippets shown with their output before the site existed.
SNIPPETS_WITH_OUTPUT_AT_LEAST = 13


def where(block: CodeBlock) -> str:
    return block.where


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run every snippet at once, each as a script in its own directory."""
    cwd = tmp_path_factory.mktemp("snippets")
    files: dict[str, Path] = {}
    for number, block in enumerate(SNIPPETS):
        path = cwd / f"snippet_{number}.py"
        path.write_text(block.code, encoding="utf-8")
        files[block.where] = path
    return run_python_files(files, cwd)


@pytest.mark.parametrize("block", SNIPPETS, ids=where)
def test_the_snippet_runs_and_prints_what_the_page_shows(
    block: CodeBlock, runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    done = runs[block.where]
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    # No output block: the snippet must print nothing (else the page hides what it does).
    assert done.stdout == (output_after(block) or "")


def test_as_many_snippets_are_checked_against_their_output_as_the_readme_had() -> None:
    shown = [block for block in SNIPPETS if output_after(block) is not None]
    assert len(shown) >= SNIPPETS_WITH_OUTPUT_AT_LEAST, [b.where for b in shown]


def test_the_pages_of_the_site_have_snippets_that_run() -> None:
    pages = {block.path.name for block in SNIPPETS if output_after(block) is not None}
    assert {
        "migrating.md",
        "patterns.md",
        "agents.md",
        "durability.md",
        "postgres.md",
        "agent-frameworks.md",
        "observability.md",
    } <= pages


@pytest.mark.parametrize("block", MARKED, ids=where)
def test_a_block_that_is_not_run_says_why_and_still_parses(block: CodeBlock) -> None:
    assert block.not_run, "the marker must give a reason"
    # As a fragment of a coroutine may be shown, top-level await and async with parse.
    compile(
        block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    assert output_after(block) is None, "an output nobody checks is not shown"


def test_every_not_run_marker_stands_right_before_a_python_block() -> None:
    for page in PAGES:
        markers = len(NOT_RUN.findall(page.read_text(encoding="utf-8")))
        blocks = markdown_blocks(page)
        marked = [b for b in blocks if b.not_run is not None]
        # A marker inside a code block (as docs/development.md shows one) marks nothing.
        quoted = sum(len(NOT_RUN.findall(b.code)) for b in blocks)
        assert len(marked) == markers - quoted, page
        assert all(b.language == "python" for b in marked), page


def test_no_block_escapes_the_tests_by_its_language_tag() -> None:
    for block in BLOCKS:
        assert block.language, f"{block.where}: a block names its language"
        assert block.language.lower() not in {"py", "py3", "python3", "pycon", "ipython"}, (
            f"{block.where}: fence Python as python"
        )


def test_the_example_blocks_are_the_examples_of_test_examples() -> None:
    from .test_examples import NAMES

    sources = {(ROOT / "examples" / f"{name}.py").read_text(encoding="utf-8") for name in NAMES}
    for block in PYTHON:
        if block.code in EXAMPLE_SOURCES:
            assert block.code in sources, block.where


def test_the_sections_moved_from_the_readme_are_on_their_pages() -> None:
    headings = {
        "patterns.md": [
            "## Saga orchestrator",
            "## A step without compensation",
            "## Dry run",
            "## Manual rollback",
            "## Persistence with `model_dump` / `model_validate`",
            "## Timeouts",
            "## Retries",
            "## StepContext: idempotency keys and earlier results",
        ],
        "agents.md": [
            "# Agent-shaped transactions",
            "## Open transactions: the next step chosen from the last result",
            "## Parallel groups",
        ],
        "durability.md": ["# Durability and crash recovery", "## Recovery"],
        "cli.md": ["## Command line"],
        "postgres.md": ["# Scaling out with PostgreSQL"],
        "agent-frameworks.md": ["# Agent frameworks"],
        "observability.md": ["# Observability"],
        "troubleshooting.md": ["# Troubleshooting"],
        "benchmarks.md": ['--8<-- "benchmarks/RESULTS.md"'],
        "migrating.md": ["# Coming from aumai-transactions 0.1"],
        "tutorial.md": ["# Tutorial: onboarding a user"],
    }
    for page, wanted in headings.items():
        lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
        for heading in wanted:
            assert heading in lines, f"{page}: {heading}"


def test_the_navigation_lists_every_page_once() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = [next(iter(entry.values())) for entry in config["nav"]]
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.glob("**/*.md"))
    assert sorted(listed) == pages
    assert len(set(listed)) == len(listed)
    assert config["docs_dir"] == "docs"
    assert config["theme"]["name"] == "material"
    assert config["theme"]["font"] is False  # the theme's default fetches Google Fonts


def test_every_included_region_of_the_readme_is_marked_once() -> None:
    readme = README.read_text(encoding="utf-8")
    for page in DOCS.glob("**/*.md"):
        for name in re.findall(r'^--8<-- "README\.md:([\w-]+)"$', page.read_text(), re.M):
            for end in ("start", "end"):
                assert readme.count(f"<!-- --8<-- [{end}:{name}] -->") == 1, (page, name)


def test_no_command_installs_the_package_from_an_index() -> None:
    # It is installed from a checkout: pip install -e . (".[postgres]" for the extra).
    # (Prose may quote the command that fails, as troubleshooting.md does.)
    for block in BLOCKS:
        if block.language in {"bash", "console", "sh", "shell"}:
            assert not re.search(r"pip install ['\"]?aumai-transactions", block.code), block.where


# Loading from elsewhere: a stylesheet, script, font or image fetched by address.
EXTERNAL = re.compile(
    r"<(?:link|script|img|iframe|source)\b[^>]*\b(?:href|src)=[\"']?(?:https?:)?//"
    r"|@import\s+(?:url\()?[\"']?(?:https?:)?//"
    r"|fonts\.(?:googleapis|gstatic)\.com",
    re.I,
)


def test_the_site_builds_strictly_and_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pages = list(site.glob("**/*.html"))
    assert len(pages) > len(list(DOCS.glob("**/*.md")))  # every page, and 404.html
    for path in [*pages, *site.glob("**/*.css")]:
        match = EXTERNAL.search(path.read_text(encoding="utf-8"))
        assert match is None, f"{path.relative_to(site)}: {match and match.group(0)}"
    # An included README region is on the page, its markers are not.
    tutorial = (site / "tutorial" / "index.html").read_text(encoding="utf-8")
    assert "send_welcome_email" in tutorial
    assert "--8&lt;--" not in tutorial and "--8<--" not in tutorial
