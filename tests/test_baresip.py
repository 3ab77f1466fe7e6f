"""Real softphones through the reference server: baresip registers, calls, and hears.

B registers with digest auth and auto-answers; A calls B through full_pbx,
answering the 407 proxy challenge. Both send a sine tone (A 440 Hz, B
1000 Hz) and dump what they decode; the shared ``check_tone.py`` then proves
that each side heard the other's tone, i.e. the SDP went through unchanged
and the media flowed end to end in both directions.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.baresip import BaresipPeer, baresip_binary, module_dir, write_peer
from helpers.pbx_process import locations, pbx_toml, running_pbx
from helpers.sipp import free_port

pytestmark = pytest.mark.baresip

USERS = """\
[[proxy.user_backends]]
type = "memory"
users = [
    { username = "a", password = "secret" },
    { username = "b", password = "secret" },
]
"""


@pytest.fixture(autouse=True)
def _need_baresip() -> None:
    if baresip_binary() is None or module_dir() is None:
        pytest.skip("baresip not installed: apt-get install -y baresip-core")


def _config(port: int) -> str:
    # The default digest algorithms, on purpose: baresip 1.0 cannot register when
    # SHA-256 is offered at all, so this proves the default works with a real phone.
    return pbx_toml(port, backends=USERS)


def _peer(tmp_path: Path, name: str, pbx_port: int, tone: int, params: str) -> Path:
    return write_peer(
        tmp_path / name,
        sip_port=free_port(),
        console_port=free_port(),
        tone_hz=tone,
        account=f"<sip:{name}@127.0.0.1:{pbx_port}>;auth_pass=secret;{params}",
    )


def _wait_for_binding(db: Path, aor: str, timeout: float) -> list[tuple[str, str]]:
    """The rows of ``aor`` once the PBX has stored at least one (or [] on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            rows = [row for row in locations(db) if row[0] == aor]
            if rows:
                return rows
        time.sleep(0.05)
    return []


def test_baresip_registers_with_digest(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "data" / "pbx.sqlite3"
    with running_pbx(tmp_path, port, _config(port)) as pbx:
        b_dir = _peer(tmp_path, "b", port, 1000, "regint=60")
        b = BaresipPeer(b_dir, lifetime=20)
        try:
            assert b.wait_for_log("200 OK", 10), b.log()
            rows = _wait_for_binding(db, "b@127.0.0.1", 5)
            assert len(rows) == 1, locations(db)
            sip_listen = (b_dir / "config").read_text().split("sip_listen\t\t")[1].split()[0]
            assert f"@{sip_listen}" in rows[0][1]
        finally:
            b.stop()
    # baresip un-registers when it stops.
    assert locations(db) == []
    assert "Traceback" not in pbx.log()


def test_baresip_call_through_pbx_carries_audio_both_ways(tmp_path: Path, shared_dir: Path) -> None:
    check_tone = shared_dir / "sip-tools" / "check_tone.py"
    port = free_port()
    db = tmp_path / "data" / "pbx.sqlite3"
    with running_pbx(tmp_path, port, _config(port)) as pbx:
        b = BaresipPeer(_peer(tmp_path, "b", port, 1000, "answermode=auto;regint=60"), lifetime=25)
        try:
            assert b.wait_for_log("200 OK", 10), b.log()
            assert _wait_for_binding(db, "b@127.0.0.1", 5)
            a_dir = _peer(tmp_path, "a", port, 440, "regint=0")
            # A dials, talks for about 5 s, then hangs up when -t expires.
            a = BaresipPeer(a_dir, lifetime=6, commands=(f"/dial sip:b@127.0.0.1:{port}",))
            a.wait(20)
            assert "Call established" in a.log(), a.log()[-3000:]
            # B sees the BYE (relayed by the PBX) and closes its call and its dumps.
            assert b.wait_for_log("session closed", 10), b.log()[-3000:]
        finally:
            b.stop()
    a_log, b_log = a.log(), b.log()
    assert "SIGTERM: draining calls" in pbx.log()

    heard_by_a, heard_by_b = a.received_audio(), b.received_audio()
    assert heard_by_a and heard_by_b, (a_log[-2000:], b_log[-2000:])
    for wav, tone in ((heard_by_a[0], 1000), (heard_by_b[0], 440)):
        result = subprocess.run(
            [sys.executable, str(check_tone), str(wav), str(tone)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert result.returncode == 0, f"{wav.name}: {result.stdout}{result.stderr}"
        duration = float(result.stdout.split("duration=")[1].split("s")[0])
        assert duration > 2.0, result.stdout
