"""The README: its commands, its tutorial and every snippet of it work as shown."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ._support import ROOT, CodeBlock, readme_blocks, readme_output_after, run_python_files

BLOCKS = readme_blocks()
PYTHON = [b for b in BLOCKS if b.language == "python"]
EXAMPLE_FILES = {
    (ROOT / "examples" / name).read_text(): name for name in ("onboarding.py", "onboarding_sync.py")
}
SNIPPETS = [b for b in PYTHON if b.code not in EXAMPLE_FILES]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def snippet_id(block: CodeBlock) -> str:
    return f"{block.index}-{block.section}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, subprocess.CompletedProcess[str]]:
    """Run every snippet at once, each as a script in its own directory."""
    cwd = tmp_path_factory.mktemp("readme")
    files: dict[str, Path] = {}
    for block in SNIPPETS:
        path = cwd / f"snippet_{block.index}.py"
        path.write_text(block.code)
        files[str(block.index)] = path
    return {int(name): done for name, done in run_python_files(files, cwd).items()}


def test_the_two_set_up_commands_are_there_exactly() -> None:
    bash = [b.code for b in BLOCKS if b.language == "bash" and b.section == "Set up"]
    assert bash == [
        'pip install -e ".[dev]" && python examples/onboarding.py\n',
        'pip install -e ".[dev]" && pytest\n',
    ]


def test_the_tutorial_is_the_onboarding_example_in_both_forms() -> None:
    shown = {EXAMPLE_FILES[b.code]: b.section for b in PYTHON if b.code in EXAMPLE_FILES}
    assert shown == {
        "onboarding.py": "Tutorial: onboarding a user",
        "onboarding_sync.py": "The same tutorial without async",
    }


@pytest.mark.parametrize(
    "heading",
    [
        "## Set up",
        "## Tutorial: onboarding a user",
        "### The same tutorial without async",
        "### Saga orchestrator",
        "### A step without compensation",
        "### Dry run",
        "### Manual rollback",
        "### Persistence with `model_dump` / `model_validate`",
        "### Timeouts",
        "### Retries",
        "### StepContext: idempotency keys and earlier results",
        "## Coming from aumai-transactions 0.1",
        "## Agent-shaped transactions",
        "### Open transactions: the next step chosen from the last result",
        "### Parallel groups",
        "## Durability and crash recovery",
        "## Command line",
        "## Scaling out with PostgreSQL",
        "## Troubleshooting",
    ],
)
def test_the_readme_has_the_section(heading: str) -> None:
    assert f"\n{heading}\n" in README


def test_every_snippet_is_shown_with_its_output() -> None:
    assert len(SNIPPETS) >= 9
    for block in SNIPPETS:
        assert readme_output_after(block) is not None, snippet_id(block)


@pytest.mark.parametrize("block", SNIPPETS, ids=snippet_id)
def test_the_snippet_runs_and_prints_what_the_readme_shows(
    block: CodeBlock, runs: dict[int, subprocess.CompletedProcess[str]]
) -> None:
    done = runs[block.index]
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == readme_output_after(block)
