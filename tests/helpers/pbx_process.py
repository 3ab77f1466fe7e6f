"""Run ``examples/full_pbx.py`` as a user does: a separate process, a config file, SIGTERM.

The process imports the ``sdpbx`` package that sits beside ``examples/`` (not
whatever happens to be installed), runs in its own working directory so the
relative paths of its config land there, and writes its output to a log file
(a pipe nobody reads would fill up and stall it under load).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FULL_PBX = REPO / "examples" / "full_pbx.py"

#: SIPp 3.6 and baresip 1.0 (libre) give up on the first challenge when it is not
#: MD5, so configs written for them offer MD5 alone.
MD5_ONLY = 'auth_algorithms = ["MD5"]'


def pbx_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_pbx_once(cwd: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run full_pbx.py to completion (for invocations that must exit by themselves)."""
    return subprocess.run(
        [sys.executable, str(FULL_PBX), *args],
        cwd=cwd,
        env=pbx_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pbx_toml(
    sip_port: int,
    *,
    database: str = "data/pbx.sqlite3",
    proxy: str = "",
    backends: str = "",
) -> str:
    """A config serving UDP and TCP on 127.0.0.1:``sip_port``; ``proxy`` adds lines
    to ``[proxy]``, ``backends`` appends ``[[proxy.user_backends]]`` tables."""
    return f"""\
database_url = "sqlite://{database}"
log_level = "info"

[proxy]
addr = "127.0.0.1"
udp_port = {sip_port}
tcp_port = {sip_port}
realms = ["127.0.0.1"]
{proxy}
{backends}
"""


def options_request(port: int, local_port: int, transport: str = "UDP") -> bytes:
    call_id = uuid.uuid4().hex
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{local_port};branch=z9hG4bK{call_id[:16]}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag={call_id[:8]}\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def udp_exchange(port: int, datagram: bytes | None = None, *, timeout: float = 2.0) -> str | None:
    """Send one datagram (an OPTIONS by default) and return the first reply, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        local = int(sock.getsockname()[1])
        sock.sendto(datagram or options_request(port, local), ("127.0.0.1", port))
        try:
            return sock.recv(65535).decode(errors="replace")
        except (TimeoutError, ConnectionRefusedError):
            return None


def tcp_options(port: int, *, timeout: float = 5.0) -> str:
    """Send an OPTIONS over a TCP connection and return the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(options_request(port, int(sock.getsockname()[1]), "TCP"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65535)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")


def status_of(response: str | None) -> int | None:
    if not response or not response.startswith("SIP/2.0 "):
        return None
    return int(response.split(" ", 2)[1])


class PbxProcess:
    """One running full_pbx.py; ``stop()`` sends SIGTERM and returns the exit code."""

    def __init__(self, cwd: Path, sip_port: int, args: list[str], name: str = "pbx") -> None:
        self.cwd = cwd
        self.sip_port = sip_port
        self.log_path = cwd / f"{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(FULL_PBX), *args],
            cwd=cwd,
            env=pbx_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the SIP port answers OPTIONS with 200 (or the process dies)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"full_pbx exited with {self.proc.returncode}:\n{self.log()}")
            if status_of(udp_exchange(self.sip_port, timeout=0.3)) == 200:
                return
        raise AssertionError(f"full_pbx did not answer OPTIONS in {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@contextmanager
def running_pbx(
    cwd: Path,
    sip_port: int,
    config: str | None,
    *,
    name: str = "pbx",
    extra_args: tuple[str, ...] = (),
) -> Iterator[PbxProcess]:
    """Write ``config`` (if any) to ``cwd/<name>.toml``, start the PBX, wait until it
    answers, and at the end stop it with SIGTERM, asserting a clean exit 0."""
    args = list(extra_args)
    if config is not None:
        path = cwd / f"{name}.toml"
        path.write_text(config)
        args = ["--config", str(path), *args]
    pbx = PbxProcess(cwd, sip_port, args, name)
    try:
        pbx.wait_ready()
        yield pbx
    except BaseException:
        pbx.kill()
        raise
    code = pbx.stop()
    assert code == 0, f"full_pbx exited with {code} on SIGTERM:\n{pbx.log()}"


def locations(db_path: Path) -> list[tuple[str, str]]:
    """``(aor, contact)`` of every row of the ``locations`` table, sorted."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0) as conn:
        rows = conn.execute("SELECT aor, contact FROM locations ORDER BY aor, contact").fetchall()
    conn.close()
    return [(str(aor), str(contact)) for aor, contact in rows]
