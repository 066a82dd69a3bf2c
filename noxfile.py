"""Development sessions: ``nox`` runs them all; ``nox -s tests`` runs one."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PACKAGE = "aumai_transactions"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (extra pytest arguments pass through: ``nox -s tests -- -k saga``)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", PACKAGE)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, built strictly (``nox -s docs -- serve`` serves it instead)."""
    session.install("-e", ".[dev]")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})
