"""Fault containment per call: whatever a router does, the caller gets a final response
and the call leaves nothing behind (registry, dialog table).

The caller is a plain UDP socket on loopback speaking just enough SIP to send
an INVITE and read what comes back; the proxy runs in-process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from helpers.sipp import free_port

from sdpbx.media import PassthroughMedia
from sdpbx.proxy import Proxy
from sdpbx.routing import RouteDecision, RouteRequest
from sdpbx.sip import Response, parse_message
from sdpbx.stack import SipStack
from sdpbx.transport import UdpTransport

pytestmark = pytest.mark.anyio

Route = Callable[[RouteRequest], Awaitable[Any]]


@asynccontextmanager
async def running(route: Route, **options: Any) -> AsyncIterator[Proxy]:
    port = free_port()
    stack = SipStack([UdpTransport("127.0.0.1", port)])
    proxy = Proxy.from_parts(stack, router=route, **options)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        yield proxy
        tg.cancel_scope.cancel()


SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


def invite(port: int, call_id: str, body: str = "") -> bytes:
    content_type = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"INVITE sip:bob@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port + 1};branch=z9hG4bK-{call_id};rport\r\n"
        "From: <sip:alice@127.0.0.1>;tag=a1\r\n"
        f"To: <sip:bob@127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@127.0.0.1>\r\n"
        "Max-Forwards: 70\r\n"
        f"{content_type}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def final_status(proxy: Proxy, call_id: str, body: str = "") -> int:
    """Send an INVITE to ``proxy`` and return the status of the final response."""
    port = proxy.stack.transports[0].local_port
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as sock:
        await sock.sendto(invite(port, call_id, body), "127.0.0.1", port)
        with anyio.fail_after(10):
            while True:
                data, _ = await sock.receive()
                message = parse_message(data)
                assert isinstance(message, Response)
                if message.status >= 200:
                    return message.status


async def settled(proxy: Proxy) -> None:
    with anyio.fail_after(10):
        while len(proxy.calls):
            await anyio.sleep(0.01)
    assert proxy._dialogs == {}


async def raises(request: RouteRequest) -> RouteDecision:
    raise ValueError("a bug in the router")


async def returns_none(request: RouteRequest) -> RouteDecision:
    return None  # type: ignore[return-value]


async def returns_text(request: RouteRequest) -> RouteDecision:
    return "sip:bob@127.0.0.1"  # type: ignore[return-value]


async def bad_target(request: RouteRequest) -> RouteDecision:
    return RouteDecision.forward("echo@host")


@pytest.mark.parametrize(
    ("router", "logged"),
    [
        (raises, "a bug in the router"),
        (returns_none, "not a RouteDecision"),
        (returns_text, "not a RouteDecision"),
        (bad_target, "targets[0]"),
    ],
)
async def test_a_broken_router_gets_the_caller_a_500(
    router: Route, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(router) as proxy:
        assert await final_status(proxy, "broken-router-1") == 500
        await settled(proxy)
    assert proxy.stats.call_errors == 1
    # One warning or error names the call (its INFO lines, started/ended, do too).
    [record] = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "broken-router-1" in r.getMessage()
    ]
    text = record.getMessage() + (record.exc_text or "")
    assert logged in text


async def test_many_broken_calls_leave_nothing_behind() -> None:
    async with running(raises) as proxy:
        for n in range(20):
            assert await final_status(proxy, f"broken-{n}") == 500
        await settled(proxy)
    assert proxy.stats.call_errors == 20
    assert proxy.calls.total_calls == 20


class BrokenMedia(PassthroughMedia):
    async def offer(self, call_id: str, leg: str, sdp: bytes) -> bytes:
        raise RuntimeError("media backend bug")


async def test_a_fault_anywhere_in_a_call_answers_500(caplog: pytest.LogCaptureFixture) -> None:
    """Not the router this time: the call's own machinery fails while dialling."""
    target = f"sip:nobody@127.0.0.1:{free_port()}"

    async def route(request: RouteRequest) -> RouteDecision:
        return RouteDecision.forward(target)

    async with running(route, media=BrokenMedia()) as proxy:
        assert await final_status(proxy, "broken-media-1", SDP) == 500
        await settled(proxy)
    assert proxy.stats.call_errors == 1
    assert any(
        "broken-media-1" in r.getMessage() and "media backend bug" in (r.exc_text or "")
        for r in caplog.records
    )
