"""Run SIPp as a real, independent SIP peer from async tests."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import anyio
from attrs import frozen


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port that is free right now for UDP and TCP on ``host``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@frozen
class SippResult:
    returncode: int
    successful: int
    failed: int
    output: str


def _count(label: str, text: str) -> int:
    matches = re.findall(rf"{label}\s*\|\s*\d+\s*\|\s*(\d+)", text)
    return int(matches[-1]) if matches else -1


async def run_sipp(
    sipp: str, args: list[str], *, cwd: Path | None = None, timeout: float = 120.0
) -> SippResult:
    """Run ``sipp`` with ``args`` (``-nostdin`` added) and parse its final statistics."""
    cmd = [sipp, *args, "-nostdin"]
    with anyio.fail_after(timeout):
        proc = await anyio.run_process(cmd, check=False, cwd=cwd)
    text = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    return SippResult(
        proc.returncode, _count("Successful call", text), _count("Failed call", text), text
    )
