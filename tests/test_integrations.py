"""What the adapters share: the core never imports a framework, and a missing one says
which extra to install."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRAMEWORKS = ("pydantic_ai", "agents", "openai")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_core_never_imports_an_agent_framework() -> None:
    done = _python(
        "import sys, json\n"
        "import aumai_transactions, aumai_transactions.sync, aumai_transactions.cli\n"
        "import aumai_transactions.integrations, aumai_transactions.integrations._tool_calls\n"
        f"print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))\n"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [("pydantic_ai", "pydantic_ai", "pydantic-ai"), ("openai_agents", "agents", "openai-agents")],
)
def test_an_adapter_without_its_framework_names_the_extra_to_install(
    module: str, framework: str, extra: str
) -> None:
    done = _python(
        f"import sys; sys.modules[{framework!r}] = None\n"
        f"import aumai_transactions.integrations.{module}\n"
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: This adapter needs ")
    assert f"pip install 'aumai-transactions[{extra}]'" in last
