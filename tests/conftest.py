"""Fixtures shared by the whole suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``shared/`` folder that sits beside the repository."""
    if not SHARED.is_dir():
        pytest.skip(f"shared material not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def sipp() -> str:
    """Path of the SIPp binary (Debian package ``sip-tester``)."""
    path = shutil.which("sipp")
    if path is None:
        pytest.skip("sipp not installed: apt-get install -y sip-tester")
    return path
