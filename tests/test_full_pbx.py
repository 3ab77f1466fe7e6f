"""The reference server as a user runs it: ``python examples/full_pbx.py`` in a process.

Each test starts the real script with a config file in its own temporary
directory, talks to it only over loopback sockets (raw datagrams, SIPp), reads
its SQLite file, and stops it with SIGTERM, which must end in exit code 0.
"""

from __future__ import annotations

import signal
import socket
import uuid
from pathlib import Path

import pytest
from helpers.pbx_process import (
    MD5_ONLY,
    locations,
    pbx_toml,
    run_pbx_once,
    running_pbx,
    status_of,
    tcp_options,
    udp_exchange,
)
from helpers.sipp import SippResult, free_port, run_sipp

from sdpbx.sip.auth import DigestChallenge, build_authorization, choose_challenge
from sdpbx.sip.message import Request, Response, parse_message

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # full_pbx and SIPp subprocesses: asyncio only, to keep CI in its time budget


SCENARIO = Path(__file__).resolve().parent / "scenarios_register" / "register_self.xml"


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


# -- starting and stopping -------------------------------------------------------------


def test_embedded_defaults_without_config(tmp_path: Path) -> None:
    """No --config: SIP on 127.0.0.1:5060, ./sdpbx-data/sdpbx.sqlite3, exit 0 on SIGTERM."""
    if not _port_free(5060):
        pytest.skip("127.0.0.1:5060 (UDP or TCP) is in use here; the defaults need it")
    with running_pbx(tmp_path, 5060, None) as pbx:
        assert status_of(tcp_options(5060)) == 200
        assert (tmp_path / "sdpbx-data" / "sdpbx.sqlite3").is_file()
    assert "serving SIP on UDP 127.0.0.1:5060, TCP 127.0.0.1:5060" in pbx.log()
    assert locations(tmp_path / "sdpbx-data" / "sdpbx.sqlite3") == []


def test_config_file_serves_udp_and_tcp(tmp_path: Path) -> None:
    port = free_port()
    with running_pbx(tmp_path, port, pbx_toml(port, database="db/pbx.sqlite3")) as pbx:
        reply = udp_exchange(port)
        assert status_of(reply) == 200
        assert reply is not None and "Server: sdpbx/" in reply
        assert status_of(tcp_options(port)) == 200
        assert (tmp_path / "db" / "pbx.sqlite3").is_file()
    log = pbx.log()
    assert f"serving SIP on UDP 127.0.0.1:{port}, TCP 127.0.0.1:{port}" in log
    assert "SIGTERM: draining calls" in log


def test_sigint_also_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    with running_pbx(tmp_path, port, pbx_toml(port)) as pbx:
        pbx.proc.send_signal(signal.SIGINT)
        assert pbx.proc.wait(20) == 0
    assert "SIGINT: draining calls" in pbx.log()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("[proxy]\nudpport = 5060\n", "proxy.udpport"),
        ("[proxy]\nudp_port = 70000\n", "proxy.udp_port"),
        ('log_level = "loud"\n[proxy]\nacl_rules = ["permit all"]\n', "proxy.acl_rules[0]"),
        ("[proxy.trunks.c]\ndest = 'sip:x'\nmax_calls = 'many'\n", "proxy.trunks.c.max_calls"),
        ("[proxy\nudp_port = 1\n", "invalid TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, config: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = run_pbx_once(tmp_path, "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "sdpbx-data").exists()


def test_port_in_use_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = int(squatter.getsockname()[1])
        config = tmp_path / "pbx.toml"
        config.write_text(pbx_toml(port))
        result = run_pbx_once(tmp_path, "--config", str(config))
    assert result.returncode == 1
    assert "cannot start" in result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_pbx_once(tmp_path, "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr
    assert "Traceback" not in result.stderr


# -- registrations with SIPp -----------------------------------------------------------


def _plain_users(tmp_path: Path, count: int) -> str:
    (tmp_path / "users.txt").write_text("".join(f"u{n}:secret\n" for n in range(1, count + 1)))
    return '[[proxy.user_backends]]\ntype = "plain"\npath = "users.txt"\n'


def _injection(tmp_path: Path, count: int, password: str) -> Path:
    path = tmp_path / f"register-{password}.csv"
    lines = [
        f"u{n};[authentication username=u{n} password={password}]\n" for n in range(1, count + 1)
    ]
    path.write_text("SEQUENTIAL\n" + "".join(lines))
    return path


async def _register(
    sipp: str,
    tmp_path: Path,
    port: int,
    *,
    calls: int,
    rate: int,
    password: str = "secret",
    local_port: int | None = None,
    extra: tuple[str, ...] = (),
) -> SippResult:
    args = [
        "-sf", str(SCENARIO), f"127.0.0.1:{port}", "-i", "127.0.0.1",
        "-p", str(local_port or free_port()),
        "-inf", str(_injection(tmp_path, calls, password)),
        "-m", str(calls), "-r", str(rate), "-l", str(rate * 3),
        "-recv_timeout", "3000", "-buff_size", "4194304", *extra,
    ]  # fmt: skip
    return await run_sipp(sipp, args, cwd=tmp_path, timeout=100)


@pytest.mark.sipp
async def test_sipp_2000_digest_registrations(sipp: str, tmp_path: Path) -> None:
    """2,000 users, each challenged then registered as itself at 500/s: none fails."""
    port = free_port()
    config = pbx_toml(port, proxy=MD5_ONLY, backends=_plain_users(tmp_path, 2000))
    with running_pbx(tmp_path, port, config):
        result = await _register(sipp, tmp_path, port, calls=2000, rate=500)
    assert result.returncode == 0, result.output[-3000:]
    assert (result.successful, result.failed) == (2000, 0)
    rows = locations(tmp_path / "data" / "pbx.sqlite3")
    assert len(rows) == 2000
    assert {aor for aor, _ in rows} == {f"u{n}@127.0.0.1" for n in range(1, 2001)}
    assert all(contact.startswith(f"sip:{aor}:") for aor, contact in rows)


@pytest.mark.sipp
async def test_sipp_wrong_password_never_registers(sipp: str, tmp_path: Path) -> None:
    """20 user names with a wrong password from one source: each is challenged again
    until the per-source limit (10 failures, any user names), whose failure is
    answered 403; the blocked source then gets silence."""
    port = free_port()
    config = pbx_toml(
        port,
        proxy=(
            f"{MD5_ONLY}\nauth_failure_limit = 5\nauth_source_failure_limit = 10\n"
            "auth_block_seconds = 60"
        ),
        backends=_plain_users(tmp_path, 20),
    )
    trace = tmp_path / "wrong-messages.log"
    with running_pbx(tmp_path, port, config) as pbx:
        result = await _register(
            sipp, tmp_path, port, calls=20, rate=20, password="wrong",
            extra=("-trace_msg", "-message_file", str(trace)),
        )  # fmt: skip
    assert (result.successful, result.failed) == (0, 20), result.output[-3000:]
    assert result.returncode != 0
    lines = trace.read_text().splitlines()
    statuses = {line.split()[1] for line in lines if line.startswith("SIP/2.0 ")}
    # (481: SIPp sends a BYE when it aborts a call on an unexpected response.)
    assert {"401", "403"} <= statuses <= {"401", "403", "481"}
    assert locations(tmp_path / "data" / "pbx.sqlite3") == []
    assert "from 127.0.0.1 for 60 s after repeated authentication failures" in pbx.log()


# -- a restart keeps the bindings --------------------------------------------------------


def _read(sock: socket.socket) -> Request | Response:
    return parse_message(sock.recv(65535))


def _final(sock: socket.socket) -> Response:
    while True:
        message = _read(sock)
        if isinstance(message, Response) and message.status >= 200:
            return message


def _invite(target: str, caller_port: int, call_id: str, cseq: int, auth: str = "") -> bytes:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    return (
        f"INVITE {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{caller_port};branch=z9hG4bK{call_id[:10]}{cseq}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:u1@127.0.0.1>;tag=caller{call_id[:6]}\r\n"
        f"To: <{target}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        f"Contact: <sip:u1@127.0.0.1:{caller_port}>\r\n"
        f"{auth}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def _ack(response: Response, target: str, caller_port: int, cseq: int) -> bytes:
    return (
        f"ACK {target} SIP/2.0\r\n"
        f"Via: {response.headers.get('via')}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {response.headers.get('from')}\r\n"
        f"To: {response.headers.get('to')}\r\n"
        f"Call-ID: {response.call_id}\r\n"
        f"CSeq: {cseq} ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.sipp
async def test_restart_keeps_bindings_and_routes_to_them(sipp: str, tmp_path: Path) -> None:
    port = free_port()
    phone_port = free_port()
    config = pbx_toml(port, proxy=MD5_ONLY, backends=_plain_users(tmp_path, 10))
    db = tmp_path / "data" / "pbx.sqlite3"
    with running_pbx(tmp_path, port, config):
        result = await _register(sipp, tmp_path, port, calls=10, rate=50, local_port=phone_port)
        assert (result.successful, result.failed) == (10, 0), result.output[-3000:]
    before = locations(db)
    assert [aor for aor, _ in before] == sorted(f"u{n}@127.0.0.1" for n in range(1, 11))

    with (
        running_pbx(tmp_path, port, config, name="pbx2") as pbx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller,
    ):
        assert "10 bindings restored" in pbx.log()
        # u3's phone is back on the address it registered from (SIPp has exited).
        phone.bind(("127.0.0.1", phone_port))
        phone.settimeout(10)
        caller.bind(("127.0.0.1", 0))
        caller.settimeout(10)
        caller_port = int(caller.getsockname()[1])
        target = "sip:u3@127.0.0.1"
        call_id = uuid.uuid4().hex

        caller.sendto(_invite(target, caller_port, call_id, 1), ("127.0.0.1", port))
        challenge_response = _final(caller)
        assert challenge_response.status == 407
        caller.sendto(_ack(challenge_response, target, caller_port, 1), ("127.0.0.1", port))
        challenges = [
            DigestChallenge.parse(v)
            for v in challenge_response.headers.get_all("proxy-authenticate")
        ]
        credentials = build_authorization(
            choose_challenge(challenges), username="u1", password="secret",
            method="INVITE", uri=target,
        )  # fmt: skip
        auth = f"Proxy-Authorization: {credentials.to_header_value()}\r\n"
        caller.sendto(_invite(target, caller_port, call_id, 2, auth), ("127.0.0.1", port))

        forwarded = _read(phone)
        assert isinstance(forwarded, Request)
        assert forwarded.method == "INVITE"
        assert str(forwarded.uri).startswith(f"sip:u3@127.0.0.1:{phone_port}")
        busy = (
            "SIP/2.0 486 Busy Here\r\n"
            + "".join(f"Via: {v}\r\n" for v in forwarded.headers.get_all("via"))
            + f"From: {forwarded.headers.get('from')}\r\n"
            + f"To: {forwarded.headers.get('to')};tag=busyphone\r\n"
            + f"Call-ID: {forwarded.call_id}\r\n"
            + f"CSeq: {forwarded.cseq.number} INVITE\r\n"
            + "Content-Length: 0\r\n\r\n"
        )
        phone.sendto(busy.encode(), ("127.0.0.1", port))
        final = _final(caller)
        assert final.status == 486
        caller.sendto(_ack(final, target, caller_port, 2), ("127.0.0.1", port))
    assert locations(db) == before


# -- malformed REGISTERs ---------------------------------------------------------------


def _register_datagram(local_port: int, contact: str, expires: str) -> bytes:
    call_id = uuid.uuid4().hex
    return (
        "REGISTER sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{call_id[:12]}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@127.0.0.1>;tag={call_id[:8]}\r\n"
        "To: <sip:alice@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: {contact}\r\n"
        f"Expires: {expires}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _send_register(port: int, contact: str, expires: str) -> int | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        local = int(sock.getsockname()[1])
        sock.sendto(_register_datagram(local, contact, expires), ("127.0.0.1", port))
        return status_of(sock.recv(65535).decode(errors="replace"))


@pytest.mark.parametrize(
    ("contact", "expires"),
    [
        ("<sip:alice@127.0.0.1:5999", "3600"),  # unterminated <
        ("<mailto:alice@example.com>", "3600"),  # not a SIP URI
        ("<sip:alice@127.0.0.1:5999>;expires=soon", "3600"),
        ("<sip:alice@127.0.0.1:5999>", "forever"),
        ("<sip:alice@127.0.0.1:5999>", "-5"),
        ("*", "3600"),  # * needs Expires: 0
    ],
)
def test_malformed_register_gets_400(tmp_path: Path, contact: str, expires: str) -> None:
    port = free_port()
    with running_pbx(tmp_path, port, pbx_toml(port)):
        assert _send_register(port, contact, expires) == 400
        assert _send_register(port, "<sip:alice@127.0.0.1:5999>", "3600") == 200
    assert locations(tmp_path / "data" / "pbx.sqlite3") == [
        ("alice@127.0.0.1", "sip:alice@127.0.0.1:5999")
    ]
