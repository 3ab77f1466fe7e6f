"""IncomingRequest / ClientRequest: the handles the transaction user holds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest
from helpers.inbox import Inbox

from sdpbx.errors import SdpbxError, TransactionClosed
from sdpbx.exchanges import IncomingRequest, TransactionTimedOut
from sdpbx.sip import LocalProtocolError, Request, Response, parse_message
from sdpbx.sip.transaction import TransactionState
from sdpbx.stack import RequestHandler, SipStack
from sdpbx.testing import FakeClock
from sdpbx.transport import MemoryNetwork, Peer, TcpTransport

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


class TryingThenFinal(RequestHandler):
    """A UAS that sends 100 and a final response back to back."""

    async def handle_request(self, incoming: IncomingRequest) -> None:
        if incoming.request.method == "ACK":
            return
        incoming.respond(100)
        incoming.respond(486 if incoming.request.method == "INVITE" else 200)


def outgoing(method: str, n: int, port: int) -> Request:
    return Request.create(
        method,
        f"sip:bob@127.0.0.1:{port}",
        [
            ("From", f"<sip:alice@127.0.0.1>;tag=f{n}"),
            ("To", "<sip:bob@127.0.0.1>"),
            ("Call-ID", f"tcp-{method}-{n}"),
            ("CSeq", f"1 {method}"),
            ("Max-Forwards", "70"),
        ],
    )


@pytest.mark.parametrize("real", [False, True], ids=["memory", "loopback"])
@pytest.mark.parametrize("method", ["OPTIONS", "INVITE"])
async def test_tcp_final_response_is_delivered_after_termination(real: bool, method: str) -> None:
    """Over TCP the transaction ends at once with the final response: the TU must still
    see every response buffered before it (a callee's 486 became 408 before)."""
    if real:
        uas = SipStack([TcpTransport("127.0.0.1", 0)], TryingThenFinal())
        uac = SipStack([TcpTransport("127.0.0.1", 0)])
    else:
        network = MemoryNetwork()
        uas = SipStack([network.transport("TCP", "127.0.0.1", 5080)], TryingThenFinal())
        uac = SipStack([network.transport("TCP", "127.0.0.1", 5081)])
    async with anyio.create_task_group() as tg:
        await tg.start(uas.serve)
        await tg.start(uac.serve)
        port = uas.transports[0].local_port
        statuses = []
        for n in range(5):
            client = uac.send_request(outgoing(method, n, port), Peer("TCP", "127.0.0.1", port))
            with anyio.fail_after(10):
                # Let the whole exchange finish before reading, as a busy TU would.
                while client.transaction.state is not TransactionState.TERMINATED:
                    await anyio.lowlevel.checkpoint()
                async for response in client:
                    statuses.append(response.status)
            assert client.final is not None
        tg.cancel_scope.cancel()
    final = 486 if method == "INVITE" else 200
    assert statuses == [100, final] * 5


async def test_closed_without_final_is_not_a_timeout() -> None:
    network = MemoryNetwork()
    uac = SipStack([network.transport("UDP", "127.0.0.1", 5082)])
    async with anyio.create_task_group() as tg:
        await tg.start(uac.serve)
        client = uac.send_request(outgoing("OPTIONS", 1, 5083), Peer("UDP", "127.0.0.1", 5083))
        uac.layer.forget(client.transaction)
        uac._flush()
        with pytest.raises(TransactionClosed) as info:
            await client.final_response()
        assert not isinstance(info.value, TransactionTimedOut)
        assert not client.timed_out
        tg.cancel_scope.cancel()


def test_exception_tree() -> None:
    assert issubclass(TransactionTimedOut, TransactionClosed)
    assert issubclass(TransactionClosed, SdpbxError)
