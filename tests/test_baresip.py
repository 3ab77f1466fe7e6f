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

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pbx.toml"

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


def _call_and_hear(
    tmp_path: Path, check_tone: Path, port: int, config: str, db: Path, a: str, b: str
) -> None:
    """``b`` registers and auto-answers, ``a`` calls it through the PBX for about
    5 s; each must hear the other's tone (A 440 Hz, B 1000 Hz)."""
    with running_pbx(tmp_path, port, config) as pbx:
        b_dir = _peer(tmp_path, b, port, 1000, "answermode=auto;regint=60")
        callee = BaresipPeer(b_dir, lifetime=25)
        try:
            assert callee.wait_for_log("200 OK", 10), callee.log()
            assert _wait_for_binding(db, f"{b}@127.0.0.1", 5)
            a_dir = _peer(tmp_path, a, port, 440, "regint=0")
            # A dials, talks for about 5 s, then hangs up when -t expires.
            caller = BaresipPeer(a_dir, lifetime=6, commands=(f"/dial sip:{b}@127.0.0.1:{port}",))
            caller.wait(20)
            assert "Call established" in caller.log(), caller.log()[-3000:]
            # B sees the BYE (relayed by the PBX) and closes its call and its dumps.
            assert callee.wait_for_log("session closed", 10), callee.log()[-3000:]
        finally:
            callee.stop()
    a_log, b_log = caller.log(), callee.log()
    assert "SIGTERM: draining calls" in pbx.log()

    heard_by_a, heard_by_b = caller.received_audio(), callee.received_audio()
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


def test_baresip_call_through_pbx_carries_audio_both_ways(tmp_path: Path, shared_dir: Path) -> None:
    port = free_port()
    db = tmp_path / "data" / "pbx.sqlite3"
    check_tone = shared_dir / "sip-tools" / "check_tone.py"
    _call_and_hear(tmp_path, check_tone, port, _config(port), db, "a", "b")


def test_baresip_1001_calls_1002_on_the_sample_config(tmp_path: Path, shared_dir: Path) -> None:
    """examples/pbx.toml as shipped, only its ports moved to free ones (tests run
    side by side): 1001 and 1002 register with "secret" and hear each other."""
    port = free_port()
    text = SAMPLE.read_text()
    moved = {"udp_port = 5060": port, "tcp_port = 5060": port, "ws_port = 5066": 0}
    for line, value in moved.items():
        assert line in text
        text = text.replace(line, f"{line.split(' = ')[0]} = {value}")
    db = tmp_path / "sdpbx-data" / "sdpbx.sqlite3"
    check_tone = shared_dir / "sip-tools" / "check_tone.py"
    _call_and_hear(tmp_path, check_tone, port, text, db, "1001", "1002")
