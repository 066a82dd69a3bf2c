"""The README, the front door: its set-up commands, its tutorial and its links.

Its snippets run in tests/test_docs.py with those of every page of the site.
"""

from __future__ import annotations

import re

import pytest

from ._support import DOCS, README, ROOT, markdown_blocks, readme_blocks

BLOCKS = readme_blocks()
PYTHON = [b for b in BLOCKS if b.language == "python"]
EXAMPLE_FILES = {
    (ROOT / "examples" / name).read_text(): name for name in ("onboarding.py", "onboarding_sync.py")
}
TEXT = README.read_text(encoding="utf-8")


def test_the_two_set_up_commands_are_there_exactly() -> None:
    # .ci/run runs these two, in this form: keep them verbatim.
    bash = [b.code for b in BLOCKS if b.language == "bash" and b.section == "Set up"]
    assert bash[:2] == [
        'pip install -e ".[dev]" && python examples/onboarding.py\n',
        'pip install -e ".[dev]" && pytest\n',
    ]


def test_a_user_installs_from_the_checkout_with_or_without_the_postgres_extra() -> None:
    bash = [b.code for b in BLOCKS if b.language == "bash" and b.section == "Set up"]
    assert bash[2:] == ["pip install -e .\n", 'pip install -e ".[postgres]"\n']


def test_the_tutorial_is_the_onboarding_example_in_both_forms() -> None:
    # The async form in the README, the blocking one on the site's tutorial page.
    shown = {EXAMPLE_FILES[b.code]: b.section for b in PYTHON if b.code in EXAMPLE_FILES}
    assert shown == {"onboarding.py": "Tutorial: onboarding a user"}
    page = [b for b in markdown_blocks(DOCS / "tutorial.md") if b.language == "python"]
    assert [(EXAMPLE_FILES.get(b.code), b.section) for b in page] == [
        ("onboarding_sync.py", "The same tutorial without async")
    ]


@pytest.mark.parametrize(
    "heading",
    [
        "## Set up",
        "## Tutorial: onboarding a user",
        "### The same tutorial without async",
        "## Coming from aumai-transactions 0.1",
        "## Documentation",
    ],
)
def test_the_readme_has_the_section(heading: str) -> None:
    assert f"\n{heading}\n" in TEXT


def test_the_readme_links_every_page_of_the_site_and_each_link_resolves() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", TEXT)
    for target in targets:
        assert not target.startswith(("http:", "https:")), target
        assert (ROOT / target).is_file(), target
    # Home is the README's own text.
    pages = {f"docs/{p.relative_to(DOCS)}" for p in DOCS.glob("**/*.md")}
    assert pages - set(targets) == {"docs/index.md"}


def test_the_readme_is_a_front_door() -> None:
    # About 300 lines, the tutorial's program shown whole among them.
    assert len(TEXT.splitlines()) <= 300
