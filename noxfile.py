"""Development sessions: ``nox -s tests lint typecheck docs bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The test suite (SIPp/baresip tests skip with a reason where not installed)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on sdpbx/ (configured in pyproject.toml)."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "-b", "html", "docs", "docs/_build/html")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks print figures; docs/performance.md records them."""
    session.install("-e", ".")
    for script in (
        "bench_parser.py",
        "bench_transactions.py",
        "bench_digest.py",
        "bench_locator_memory.py",
        "bench_udp_receive.py",
        "bench_uas_cps.py",
    ):
        session.run("python", f"benchmarks/{script}")
