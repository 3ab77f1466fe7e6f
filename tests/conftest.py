"""Fixtures shared by the whole suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: Test data that travels with the repository: the RFC 4475/5118 torture
#: corpus, SIPp scenarios and the tone checker, laid out as in ``shared/``.
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
