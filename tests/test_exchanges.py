"""IncomingRequest / ClientRequest: the handles the transaction user holds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from sdpbx.exchanges import IncomingRequest
from sdpbx.sip import LocalProtocolError, Response, parse_message
from sdpbx.stack import RequestHandler, SipStack
from sdpbx.testing import FakeClock
from sdpbx.transport import MemoryNetwork, Peer

pytestmark = pytest.mark.anyio

PBX = ("127.0.0.1", 5060)
PHONE = Peer("UDP", "127.0.0.1", 5070)


def register(branch: str = "z9hG4bKreg1", method: str = "REGISTER") -> bytes:
    return (
        f"{method} sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@127.0.0.1>;tag=a1\r\n"
        "To: <sip:alice@127.0.0.1>\r\n"
        "Call-ID: reg-1\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Challenger(RequestHandler):
    """Answers every request with a stateless 407, as a registrar challenges."""

    def __init__(self) -> None:
        self.seen: list[IncomingRequest] = []
        self.misuse: list[Exception] = []

    async def handle_request(self, incoming: IncomingRequest) -> None:
        self.seen.append(incoming)
        response = incoming.respond_stateless(
            407, headers=[("Proxy-Authenticate", 'Digest realm="x", nonce="n"')]
        )
        assert response.status == 407
        assert incoming.answered
        try:
            incoming.respond(200)
        except LocalProtocolError as exc:
            self.misuse.append(exc)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.arrived = anyio.Event()

    def message_received(self, data: bytes, peer: Peer) -> None:
        self.messages.append(data)
        self.arrived.set()

    def connection_lost(self, peer: Peer) -> None:
        pass

    async def wait_for(self, count: int) -> list[bytes]:
        with anyio.fail_after(10):
            while len(self.messages) < count:
                self.arrived = anyio.Event()
                await self.arrived.wait()
        return self.messages


@pytest.fixture
async def rig() -> AsyncIterator[tuple[SipStack, Challenger, Inbox, FakeClock, MemoryNetwork]]:
    network = MemoryNetwork()
    clock = FakeClock()
    handler = Challenger()
    stack = SipStack([network.transport("UDP", *PBX)], handler, clock=clock)
    inbox = Inbox()
    phone = network.transport("UDP", PHONE.host, PHONE.port)
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        await tg.start(phone.serve, inbox)
        yield stack, handler, inbox, clock, network
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
async def test_respond_stateless_keeps_nothing_and_never_retransmits(
    rig: tuple[SipStack, Challenger, Inbox, FakeClock, MemoryNetwork], method: str
) -> None:
    stack, handler, inbox, clock, network = rig
    data = register(method=method)
    stack.message_received(data, PHONE)
    await inbox.wait_for(1)
    assert len(stack.layer) == 0
    assert stack.layer.next_deadline() is None
    # The retransmitted request is a new one and gets the same one answer.
    stack.message_received(data, PHONE)
    messages = await inbox.wait_for(2)
    answers = [parse_message(m) for m in messages]
    assert [a.status for a in answers if isinstance(a, Response)] == [407, 407]
    assert len(handler.seen) == 2
    assert len(handler.misuse) == 2  # a second answer on a forgotten transaction is misuse
    assert len(stack.layer) == 0
    # Time passes: no Timer G/J/H copy of the 407 ever goes out.
    sent = len(network.sent)
    clock.advance(64.0)
    stack._run_timers()
    stack._flush()
    assert len(network.sent) == sent
