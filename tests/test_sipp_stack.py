"""SIPp against the bare SipStack: real SIP peers over real loopback sockets."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from helpers.sipp import free_port, run_sipp

from sdpbx.stack import SipStack
from sdpbx.testing import AnsweringUas
from sdpbx.transport import TcpTransport, UdpTransport

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sipp_uac_calls_minimal_uas(sipp: str, tmp_path: Path, transport: str) -> None:
    """SIPp's uac places 500 calls at 200 calls/s; every one must succeed."""
    port = free_port()
    uas = AnsweringUas()
    transports = [UdpTransport("127.0.0.1", port), TcpTransport("127.0.0.1", port)]
    stack = SipStack(transports, uas)
    mode = ["-t", "t1"] if transport == "tcp" else []
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        result = await run_sipp(
            sipp,
            [
                "-sn",
                "uac",
                f"127.0.0.1:{port}",
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port()),
                "-m",
                "500",
                "-r",
                "200",
                "-recv_timeout",
                "5000",
                *mode,
            ],
            cwd=tmp_path,
        )
        tg.cancel_scope.cancel()
    assert result.returncode == 0, result.output[-3000:]
    assert result.successful == 500
    assert result.failed == 0
    assert uas.stats.invites == 500
    assert uas.stats.byes == 500
    assert len(stack.layer) <= 1000  # only transactions still in their wait states


async def test_sipp_options_and_garbage(sipp: str, tmp_path: Path) -> None:
    """A malformed request gets 400, and the stack keeps answering afterwards."""
    port = free_port()
    stack = SipStack([UdpTransport("127.0.0.1", port)])
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        sock = await anyio.create_connected_udp_socket("127.0.0.1", port)
        async with sock:
            await sock.send(
                b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n"
                b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\n"
                b"CSeq: 1 INVITE\r\nContent-Length: 999\r\n\r\n"
            )
            reply = await sock.receive()
        assert reply.startswith(b"SIP/2.0 400 ")
        assert stack.stats.malformed_requests_answered == 1
        scenario = tmp_path / "options.xml"
        scenario.write_text(OPTIONS_SCENARIO)
        result = await run_sipp(
            sipp,
            [
                "-sf",
                str(scenario),
                f"127.0.0.1:{port}",
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port()),
                "-m",
                "20",
                "-r",
                "50",
            ],
            cwd=tmp_path,
        )
        tg.cancel_scope.cancel()
    assert result.returncode == 0, result.output[-3000:]
    assert result.successful == 20


OPTIONS_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options">
  <send retrans="500"><![CDATA[
OPTIONS sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:sipp@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""
