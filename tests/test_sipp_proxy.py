"""SIPp -> Proxy (B2BUA) -> SIPp: calls bridged between two independent SIP peers."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from helpers.sipp import free_port, run_sipp

from sdpbx.proxy import Proxy
from sdpbx.routing import RouteDecision, RouteRequest
from sdpbx.stack import SipStack
from sdpbx.transport import TcpTransport, UdpTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # live SIPp peers: asyncio only, to keep CI in its time budget


async def to_request_uri(request: RouteRequest) -> RouteDecision:
    """The router of these tests: dial what the caller dialled."""
    return RouteDecision.forward(request.uri)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_uac_call_through_b2bua(
    sipp: str, shared_dir: Path, tmp_path: Path, transport: str
) -> None:
    pbx_port, uas_port, uac_port = free_port(), free_port(), free_port()
    stack = SipStack([UdpTransport("127.0.0.1", pbx_port), TcpTransport("127.0.0.1", pbx_port)])
    proxy = Proxy.from_parts(stack, router=to_request_uri)
    ended: list[object] = []
    proxy.calls.subscribe(ended.append)
    mode = ["-t", "t1"] if transport == "tcp" else []
    uac_scenario = shared_dir / "sip-tools" / "scenarios" / "uac_call.xml"
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        uas = tg.start_soon(
            run_sipp,
            sipp,
            ["-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1000", *mode],
        )
        del uas
        await anyio.sleep(0.3)
        result = await run_sipp(
            sipp,
            [
                "-sf",
                str(uac_scenario),
                f"127.0.0.1:{uas_port}",
                "-rsa",
                f"127.0.0.1:{pbx_port}",
                "-i",
                "127.0.0.1",
                "-p",
                str(uac_port),
                "-m",
                "1000",
                "-r",
                "200",
                "-recv_timeout",
                "10000",
                *mode,
            ],
            cwd=tmp_path,
        )
        with anyio.fail_after(10):
            while len(proxy.calls):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert result.returncode == 0, result.output[-3000:]
    assert result.successful == 1000
    assert result.failed == 0
    assert proxy.calls.total_calls == 1000
    assert proxy.calls.answered_calls == 1000
    assert proxy.calls.failed_calls == 0
    assert len(proxy._dialogs) == 0
