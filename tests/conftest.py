"""Fixtures shared by the whole suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: Test data that travels with the repository: the RFC 4475/5118 torture
#: corpus, SIPp scenarios and the tone checker, laid out as in ``shared/``.
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio (DESIGN.md: one timer path, any backend).

    A module whose tests drive live subprocess peers (SIPp, baresip, full_pbx) defines its
    own ``anyio_backend`` fixture returning ``"asyncio"``: twice their minutes would break
    CI's time budget, and they test the peers, not the backend.
    """
    return str(request.param)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The test data folder (``tests/data``), laid out as the project's ``shared/``."""
    return DATA


@pytest.fixture(scope="session")
def sipp() -> str:
    """Path of the SIPp binary (Debian package ``sip-tester``)."""
    path = shutil.which("sipp")
    if path is None:
        pytest.skip("sipp not installed: apt-get install -y sip-tester")
    return path
