"""What the proxy puts on the wire for requests it will not bridge, counted packet by packet.

The peer is a plain UDP socket on loopback; the proxy's stack runs on a
:class:`~sdpbx.testing.FakeClock`, so "no retransmission ever comes" is shown
by moving its timers past every RFC 3261 deadline and then asking an OPTIONS:
on one loopback socket pair, whatever the proxy sent before its answer to the
OPTIONS has arrived before that answer. Nothing here waits on a wall clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, UDPSocket
from helpers.sipp import free_port

from sdpbx.authn import Authenticator
from sdpbx.proxy import Proxy
from sdpbx.routing import RouteDecision, RouteRequest
from sdpbx.sip import Response, parse_message
from sdpbx.sip.auth import DigestChallenge, NonceManager, build_authorization
from sdpbx.sip.throttle import FailureThrottle
from sdpbx.stack import SipStack
from sdpbx.testing import FakeClock
from sdpbx.transport import UdpTransport
from sdpbx.users import MemoryUserBackend, SipUser

pytestmark = pytest.mark.anyio


async def nowhere(request: RouteRequest) -> RouteDecision:
    raise AssertionError("nothing here may reach the router")


@asynccontextmanager
async def running(clock: FakeClock, **options: Any) -> AsyncIterator[tuple[Proxy, int]]:
    port = free_port()
    stack = SipStack([UdpTransport("127.0.0.1", port)], clock=clock)
    proxy = Proxy.from_parts(stack, router=nowhere, **options)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        yield proxy, port
        tg.cancel_scope.cancel()


def request(
    method: str, port: int, local: int, n: int, *, to_tag: str = "", cseq_method: str = ""
) -> bytes:
    to = f"<sip:1002@127.0.0.1:{port}>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:1002@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-wire-{method}-{n};rport\r\n"
        f"From: <sip:1001@127.0.0.1>;tag=w{n}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: wire-{method}-{n}\r\n"
        f"CSeq: 1 {cseq_method or method}\r\n"
        f"Contact: <sip:1001@127.0.0.1:{local}>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def responses_until_options(sock: UDPSocket, port: int, local: int) -> list[Response]:
    """Everything that arrives before the answer to a fresh OPTIONS (that answer excluded)."""
    await sock.sendto(request("OPTIONS", port, local, 0), "127.0.0.1", port)
    seen: list[Response] = []
    with anyio.fail_after(10):
        while True:
            data, _ = await sock.receive()
            message = parse_message(data)
            assert isinstance(message, Response)
            if message.call_id == "wire-OPTIONS-0":
                return seen
            seen.append(message)


def expire(proxy: Proxy, clock: FakeClock) -> None:
    """Move the stack past Timer G/H/J (64*T1) twice, firing whatever was due."""
    for _ in range(2):
        clock.advance(40.0)
        proxy.stack._timer_tick()


async def test_an_unauthenticated_invite_costs_one_packet() -> None:
    """Issue 13 item 13: 500 INVITEs without credentials, never ACKed, brought back 500 × 100
    and 5,500 × 407. Each must bring back exactly one packet, its 407 -- no 100 Trying first,
    no retransmission later -- and leave no transaction behind."""
    clock = FakeClock()
    auth = Authenticator(
        MemoryUserBackend([SipUser("1001", password="secret")]),
        realm_for="127.0.0.1",
        nonces=NonceManager(b"proxy-wire-test-secret-000000000"),
    )
    invites = 50
    async with (
        running(clock, authenticator=auth) as (proxy, port),
        await anyio.create_udp_socket(local_host="127.0.0.1") as sock,
    ):
        local = sock.extra(SocketAttribute.local_port)
        for n in range(invites):
            await sock.sendto(request("INVITE", port, local, n), "127.0.0.1", port)
        first: list[Response] = []
        with anyio.fail_after(10):
            while len({r.call_id for r in first if r.status == 407}) < invites:
                data, _ = await sock.receive()
                message = parse_message(data)
                assert isinstance(message, Response)
                first.append(message)
        expire(proxy, clock)
        assert len(proxy.stack.layer) == 0
        later = await responses_until_options(sock, port, local)
    answers = first + later
    assert sorted((r.call_id, r.status) for r in answers) == sorted(
        (f"wire-INVITE-{n}", 407) for n in range(invites)
    )
    assert auth.stats.challenges == invites
    assert proxy.stats.invites == invites
    assert len(proxy.calls) == 0


async def test_wrong_passwords_and_a_blocked_source_keep_no_state() -> None:
    """Issue 13 item 8: a guesser's requests must cost no memory. Wrong passwords are
    re-challenged, the fifth blocks the (source, user) pair with one 403, and everything
    after that is dropped unanswered -- all without a transaction left to wait out 64*T1
    (20,000 such REGISTERs held ~25 MB for 32 s when the drops were absorbed)."""
    clock = FakeClock()
    auth = Authenticator(
        MemoryUserBackend([SipUser("1001", password="secret")]),
        realm_for="127.0.0.1",
        nonces=NonceManager(b"proxy-wire-test-secret-000000000"),
        throttle=FailureThrottle(limit=5),
    )
    guesses = 40
    async with (
        running(clock, authenticator=auth) as (proxy, port),
        await anyio.create_udp_socket(local_host="127.0.0.1") as sock,
    ):
        local = sock.extra(SocketAttribute.local_port)
        await sock.sendto(request("INVITE", port, local, 0), "127.0.0.1", port)
        with anyio.fail_after(10):
            first = parse_message((await sock.receive())[0])
        assert isinstance(first, Response) and first.status == 407
        challenge = DigestChallenge.parse(first.headers.get("Proxy-Authenticate") or "")
        uri = f"sip:1002@127.0.0.1:{port}"
        for n in range(1, guesses + 1):
            credentials = build_authorization(
                challenge, username="1001", password="guess", method="INVITE", uri=uri, nc=n
            )
            data = request("INVITE", port, local, n).replace(
                b"Max-Forwards",
                f"Proxy-Authorization: {credentials.to_header_value()}\r\n".encode()
                + b"Max-Forwards",
            )
            await sock.sendto(data, "127.0.0.1", port)
        answers = await responses_until_options(sock, port, local)
        # No timer has run: whatever is still stored would be waiting for one.
        assert len(proxy.stack.layer) == 0
        expire(proxy, clock)
        assert await responses_until_options(sock, port, local) == []
    statuses = [r.status for r in answers]
    assert statuses == [407] * (5 - 1) + [403]
    assert auth.stats.drops == guesses - 5
    assert len(proxy.calls) == 0


@pytest.mark.parametrize(
    ("method", "status"),
    [
        ("FOO", 501),  # §21.5.2: a method nobody here recognises
        ("REFER", 501),  # recognised, implemented for no one: no transfer support
        ("SUBSCRIBE", 501),
        ("PRACK", 501),  # RFC 3262 is not implemented (not in Allow)
        ("MESSAGE", 405),  # §8.2.1: a method we handle, but only inside a dialog
        ("INFO", 405),
    ],
)
async def test_methods_it_does_not_take_out_of_dialog(method: str, status: int) -> None:
    clock = FakeClock()
    async with (
        running(clock) as (_, port),
        await anyio.create_udp_socket(local_host="127.0.0.1") as sock,
    ):
        local = sock.extra(SocketAttribute.local_port)
        await sock.sendto(request(method, port, local, 1), "127.0.0.1", port)
        [answer] = await _answers(sock, 1)
    assert answer.status == status
    allow = {m.strip() for m in (answer.headers.get("allow") or "").split(",")}
    assert "INVITE" in allow
    assert not allow & {"REFER", "PRACK", "SUBSCRIBE"}


async def test_an_unimplemented_method_in_a_dialog_is_501_before_481() -> None:
    """§8.2.1 inspects the method before any dialog is looked up: a REFER or FOO with a To
    tag is 501 whether or not the dialog exists; an implemented one for no dialog is 481."""
    clock = FakeClock()
    async with (
        running(clock) as (proxy, port),
        await anyio.create_udp_socket(local_host="127.0.0.1") as sock,
    ):
        local = sock.extra(SocketAttribute.local_port)
        for n, method in enumerate(("REFER", "FOO", "INFO")):
            await sock.sendto(request(method, port, local, n, to_tag="x"), "127.0.0.1", port)
        answers = await _answers(sock, 3)
    assert sorted((a.call_id, a.status) for a in answers) == [
        ("wire-FOO-1", 501),
        ("wire-INFO-2", 481),
        ("wire-REFER-0", 501),
    ]
    assert proxy.stats.unknown_dialogs == 1


async def _answers(sock: UDPSocket, count: int) -> list[Response]:
    out: list[Response] = []
    with anyio.fail_after(10):
        while len(out) < count:
            data, _ = await sock.receive()
            message = parse_message(data)
            assert isinstance(message, Response)
            out.append(message)
    return out
