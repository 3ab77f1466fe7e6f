"""What an operator reads: the INFO lines a registration and a call leave, and the
DEBUG trace of every SIP message.

The end-to-end tests run ``examples/full_pbx.py`` in its own process and drive it
with SIPp (a phone registering, a phone calling it) and raw datagrams, then read
the process's log. The expiry and lost-connection lines come from the registrar
in-process, where time is an argument.
"""

from __future__ import annotations

import logging
import re
import socket
import uuid
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskGroup
from helpers.pbx_process import MD5_ONLY, pbx_toml, running_pbx, status_of, udp_exchange
from helpers.sipp import SippResult, free_port, run_sipp

from sdpbx.locator import Binding, MemoryLocator
from sdpbx.registrar import Registrar
from sdpbx.sip.auth import DigestChallenge, build_authorization, choose_challenge
from sdpbx.sip.message import Response, parse_message
from sdpbx.transport.base import Peer

TESTS = Path(__file__).resolve().parent
REGISTER_SCENARIO = TESTS / "scenarios_register" / "register_self.xml"
CALLER_SCENARIO = TESTS / "scenarios" / "uac_auth_call.xml"
CALLEE_SCENARIO = TESTS / "scenarios" / "uas_answer.xml"

USERS = """\
[[proxy.user_backends]]
type = "memory"
users = [
    { username = "1001", password = "secret" },
    { username = "1002", password = "secret" },
]
"""

#: ``2026-12-02 17:27:18,865 INFO sdpbx.registrar: registered ...``
LINE = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "


def _lines(log: str, logger: str, level: str = "INFO") -> list[str]:
    """The messages ``logger`` wrote at ``level``, in order."""
    pattern = re.compile(LINE + rf"{level} {re.escape(logger)}: (.*)$", re.MULTILINE)
    return pattern.findall(log)


def _udp_bound(port: int) -> bool:
    """Whether something listens on UDP 127.0.0.1:``port`` (read from /proc, never
    probed, so the check cannot take the port from SIPp starting up)."""
    wanted = f"0100007F:{port:04X}"
    rows = Path("/proc/net/udp").read_text().splitlines()[1:]
    return any(row.split()[1] == wanted for row in rows)


# -- a registration and a call, end to end ---------------------------------------------------


async def _register_1002(sipp: str, tmp_path: Path, pbx_port: int, phone_port: int) -> SippResult:
    injection = tmp_path / "register.csv"
    injection.write_text("SEQUENTIAL\n1002;[authentication username=1002 password=secret]\n")
    args = [
        "-sf", str(REGISTER_SCENARIO), f"127.0.0.1:{pbx_port}", "-i", "127.0.0.1",
        "-p", str(phone_port), "-inf", str(injection), "-m", "1", "-recv_timeout", "5000",
    ]  # fmt: skip
    return await run_sipp(sipp, args, cwd=tmp_path, timeout=30)


async def _answer_on(
    tg: TaskGroup, sipp: str, tmp_path: Path, phone_port: int, results: list[SippResult]
) -> anyio.Event:
    done = anyio.Event()

    async def run() -> None:
        try:
            args = [
                "-sf", str(CALLEE_SCENARIO), "-i", "127.0.0.1", "-p", str(phone_port),
                "-m", "1", "-timeout", "30s",
            ]  # fmt: skip
            results.append(await run_sipp(sipp, args, cwd=tmp_path, timeout=40))
        finally:
            done.set()

    tg.start_soon(run)
    with anyio.fail_after(10):
        while not _udp_bound(phone_port):
            assert not done.is_set(), f"the callee SIPp did not start: {results}"
            await anyio.sleep(0.05)
    return done


def _unregister_all(pbx_port: int, user: str) -> int | None:
    """``Contact: *`` with ``Expires: 0``, answering the 401 (raw datagrams)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        local = int(sock.getsockname()[1])
        call_id = uuid.uuid4().hex
        uri = "sip:127.0.0.1"

        def register(cseq: int, auth: str = "") -> Response:
            sock.sendto(
                (
                    f"REGISTER {uri} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{call_id[:10]}{cseq}\r\n"
                    "Max-Forwards: 70\r\n"
                    f"From: <sip:{user}@127.0.0.1>;tag={call_id[:8]}\r\n"
                    f"To: <sip:{user}@127.0.0.1>\r\n"
                    f"Call-ID: {call_id}\r\n"
                    f"CSeq: {cseq} REGISTER\r\n"
                    "Contact: *\r\nExpires: 0\r\n"
                    f"{auth}Content-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", pbx_port),
            )
            while True:
                message = parse_message(sock.recv(65535))
                if isinstance(message, Response) and message.status >= 200:
                    return message

        challenge = register(1)
        assert challenge.status == 401
        offered = [DigestChallenge.parse(v) for v in challenge.headers.get_all("www-authenticate")]
        credentials = build_authorization(
            choose_challenge(offered), username=user, password="secret",
            method="REGISTER", uri=uri,
        )  # fmt: skip
        return register(2, f"Authorization: {credentials.to_header_value()}\r\n").status


@pytest.mark.sipp
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_registration_and_call_leave_info_lines(sipp: str, tmp_path: Path) -> None:
    port = free_port()
    phone_port = free_port()
    config = pbx_toml(port, proxy=MD5_ONLY, backends=USERS)
    callee_results: list[SippResult] = []
    with running_pbx(tmp_path, port, config) as pbx:
        registered = await _register_1002(sipp, tmp_path, port, phone_port)
        assert (registered.successful, registered.failed) == (1, 0), registered.output[-3000:]
        # The same phone again from the same place: a refresh, said at DEBUG only.
        again = await _register_1002(sipp, tmp_path, port, phone_port)
        assert (again.successful, again.failed) == (1, 0), again.output[-3000:]
        async with anyio.create_task_group() as tg:
            callee_done = await _answer_on(tg, sipp, tmp_path, phone_port, callee_results)
            caller = await run_sipp(
                sipp,
                ["-sf", str(CALLER_SCENARIO), f"127.0.0.1:{port}", "-i", "127.0.0.1",
                 "-p", str(free_port()), "-s", "1002", "-au", "1001", "-ap", "secret",
                 "-m", "1", "-recv_timeout", "10000"],
                cwd=tmp_path,
                timeout=30,
            )  # fmt: skip
            with anyio.fail_after(20):
                await callee_done.wait()
        assert (caller.successful, caller.failed) == (1, 0), caller.output[-3000:]
        assert callee_results and callee_results[0].successful == 1, callee_results
        assert _unregister_all(port, "1002") == 200
    log = pbx.log()

    contact = f"sip:1002@127.0.0.1:{phone_port};transport=UDP"
    source = f"(UDP 127.0.0.1:{phone_port})"
    assert _lines(log, "sdpbx.registrar") == [
        f"registered 1002@127.0.0.1 -> {contact} {source} for 3600 s, sdpbx-test-register",
        f"unregistered 1002@127.0.0.1 -> {contact} {source}: Contact: *",
    ], log

    calls = _lines(log, "sdpbx.call")
    assert len(calls) == 4, log
    started, routed, answered, ended = calls
    match = re.fullmatch(
        r"call (\S+) started: sip:1001@127\.0\.0\.1:\d+ -> "
        rf"sip:1002@127\.0\.0\.1:{port} from UDP 127\.0\.0\.1:\d+ \(internal\)",
        started,
    )
    assert match, started
    call_id = match.group(1)
    target = f"sip:1002@127.0.0.1:{phone_port}"  # the binding's Contact, as routed
    assert routed == f"call {call_id} routed: forward to {target} (parallel)"
    assert re.fullmatch(
        rf"call {re.escape(call_id)} answered by {target} after \d+\.\d s", answered
    )
    assert re.fullmatch(
        rf"call {re.escape(call_id)} ended: byCaller, status 200, lasted \d+\.\d s, "
        r"talked \d+\.\d s",
        ended,
    ), ended
    # At INFO, no message trace.
    assert not _lines(log, "sdpbx.wire", "DEBUG")


def test_debug_traces_every_message_in_and_out(tmp_path: Path) -> None:
    port = free_port()
    with running_pbx(tmp_path, port, pbx_toml(port), extra_args=("--log-level", "debug")) as pbx:
        assert status_of(udp_exchange(port)) == 200
    trace = _lines(pbx.log(), "sdpbx.wire", "DEBUG")
    options = rf"OPTIONS sip:127\.0\.0\.1:{port} SIP/2\.0"
    assert any(
        re.fullmatch(rf"recv UDP 127\.0\.0\.1:\d+ \(\d+ bytes\): {options}", line) for line in trace
    ), trace
    assert any(
        re.fullmatch(r"send UDP 127\.0\.0\.1:\d+ \(\d+ bytes\): SIP/2\.0 200 OK", line)
        for line in trace
    ), trace


def test_log_level_flag_overrides_the_config(tmp_path: Path) -> None:
    """``log_level = "info"`` in the file, ``--log-level warn`` on the command line:
    the start-up INFO lines are gone, and so is the trace."""
    port = free_port()
    with running_pbx(tmp_path, port, pbx_toml(port), extra_args=("--log-level", "warn")) as pbx:
        assert status_of(udp_exchange(port)) == 200
    log = pbx.log()
    assert "serving SIP on" not in log
    assert "sdpbx.wire" not in log


# -- the lines the registrar writes on its own ---------------------------------------------


def _binding(connection_id: int | None = None) -> Binding:
    return Binding(
        aor="alice@example.com",
        contact="sip:alice@192.0.2.1:5062",
        transport="UDP" if connection_id is None else "TCP",
        host="192.0.2.1",
        port=5062,
        expires_at=1_000.0 + 60,
        registered_at=1_000.0,
        call_id="c1",
        cseq=1,
        connection_id=connection_id,
    )


@pytest.mark.anyio
async def test_expired_binding_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    locator = MemoryLocator()
    registrar = Registrar(locator, clock=lambda: 1_000.0)
    await locator.save(_binding())
    with caplog.at_level(logging.INFO, logger="sdpbx.registrar"):
        registrar.timer_client.handle_timer(1_061.0)
    assert [r.getMessage() for r in caplog.records] == [
        "expired alice@example.com -> sip:alice@192.0.2.1:5062 (UDP 192.0.2.1:5062)"
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records)


@pytest.mark.anyio
async def test_binding_lost_with_its_connection_is_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    locator = MemoryLocator()
    registrar = Registrar(locator, clock=lambda: 1_000.0)
    await locator.save(_binding(connection_id=7))
    with caplog.at_level(logging.INFO, logger="sdpbx.registrar"):
        registrar.connection_lost(Peer("TCP", "192.0.2.1", 5062, 7))
    assert [r.getMessage() for r in caplog.records] == [
        "unregistered alice@example.com -> sip:alice@192.0.2.1:5062 (TCP 192.0.2.1:5062)"
        ": its connection closed"
    ]
