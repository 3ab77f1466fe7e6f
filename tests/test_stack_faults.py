"""Fault containment: nothing one message, one handler or one timer does ends the stack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from helpers.inbox import Inbox

from sdpbx.exchanges import IncomingRequest
from sdpbx.sip import parse_message
from sdpbx.stack import RequestHandler, SipStack
from sdpbx.transport import MemoryNetwork, Peer, TcpTransport, UdpTransport

pytestmark = pytest.mark.anyio

PHONE = Peer("UDP", "127.0.0.1", 5070)

#: Headers the parser accepts lazily today but that raise when read (RFC 4475 baddn & co).
BAD_HEADERS = [
    ("To", '"Watson, Thomas" < sip:t.watson@example.org >'),
    ("To", "<sip:bob@127.0.0.1>;tag="),
    ("CSeq", "2147483648 {method}"),
    ("CSeq", "-1 {method}"),
    ("CSeq", "x {method}"),
]


def request(
    method: str, branch: str, bad: tuple[str, str] | None = None, port: int = 5070
) -> bytes:
    headers = {
        "To": "<sip:bob@127.0.0.1>",
        "CSeq": f"1 {method}",
    }
    if bad is not None:
        headers[bad[0]] = bad[1].format(method=method)
    return (
        f"{method} sip:bob@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@127.0.0.1>;tag=a1\r\n"
        f"To: {headers['To']}\r\n"
        f"Call-ID: {branch}\r\n"
        f"CSeq: {headers['CSeq']}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Faulty(RequestHandler):
    """Reads the lazily parsed headers (raising), or raises on purpose for INFO."""

    async def handle_request(self, incoming: IncomingRequest) -> None:
        method = incoming.request.method
        if method == "INFO":
            raise RuntimeError("handler bug")
        if method == "MESSAGE":
            _ = incoming.request.to, incoming.request.cseq
        await super().handle_request(incoming)


@pytest.fixture
async def memory_rig() -> AsyncIterator[tuple[SipStack, Inbox]]:
    network = MemoryNetwork()
    stack = SipStack([network.transport("UDP", "127.0.0.1", 5060)], Faulty())
    inbox = Inbox()
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        await tg.start(network.transport("UDP", PHONE.host, PHONE.port).serve, inbox)
        yield stack, inbox
        tg.cancel_scope.cancel()


def statuses(messages: list[bytes]) -> list[int]:
    """Status codes from the start lines: a 400 copies the bad header it refused."""
    out = []
    for data in messages:
        version, status, _ = data.split(b"\r\n", 1)[0].split(b" ", 2)
        assert version == b"SIP/2.0"
        out.append(int(status))
    return out


@pytest.mark.parametrize("method", ["MESSAGE", "INFO"])
@pytest.mark.parametrize("bad", BAD_HEADERS, ids=lambda b: f"{b[0]}:{b[1]}")
async def test_bad_headers_in_handler_leave_the_stack_serving(
    memory_rig: tuple[SipStack, Inbox], method: str, bad: tuple[str, str]
) -> None:
    stack, inbox = memory_rig
    stack.message_received(request(method, "z9hG4bKbad1", bad), PHONE)
    stack.message_received(request("OPTIONS", "z9hG4bKok1"), PHONE)
    messages = await inbox.wait_for(2)
    assert 200 in statuses(messages)
    assert set(statuses(messages)) <= {200, 400, 500}
    assert stack.stats.parse_errors + stack.stats.handler_errors >= 1
    assert len(stack.layer) <= 1  # only the OPTIONS, waiting out Timer J


async def test_every_failure_is_counted_and_answered(memory_rig: tuple[SipStack, Inbox]) -> None:
    stack, inbox = memory_rig
    stack.message_received(request("INFO", "z9hG4bKinfo1"), PHONE)
    messages = await inbox.wait_for(1)
    assert statuses(messages) == [500]
    assert stack.stats.handler_errors == 1


class Boom:
    def __init__(self) -> None:
        self.fired = 0

    def next_deadline(self) -> float | None:
        return 0.0

    def handle_timer(self, now: float) -> None:
        self.fired += 1
        raise RuntimeError("timer bug")


async def test_a_failing_timer_client_does_not_stop_transactions(
    memory_rig: tuple[SipStack, Inbox],
) -> None:
    stack, inbox = memory_rig
    boom = Boom()
    stack.add_timer_client(boom)
    stack.message_received(request("OPTIONS", "z9hG4bKok2"), PHONE)
    assert statuses(await inbox.wait_for(1)) == [200]
    stack.timer.clients.clear()  # the failing client fires in a loop otherwise
    assert boom.fired >= 1
    assert stack.stats.timer_errors >= 1


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_real_sockets_survive_bad_headers(transport: str) -> None:
    stack = SipStack([UdpTransport("127.0.0.1", 0), TcpTransport("127.0.0.1", 0)], Faulty())
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        port = stack.transports[0 if transport == "UDP" else 1].local_port
        if transport == "UDP":
            sock = await anyio.create_connected_udp_socket(
                "127.0.0.1", port, local_host="127.0.0.1"
            )
            local = sock.extra(anyio.abc.SocketAttribute.local_port)
            async with sock:
                for i, bad in enumerate(BAD_HEADERS):
                    await sock.send(request("MESSAGE", f"z9hG4bKu{i}", bad, local))
                await sock.send(request("INFO", "z9hG4bKuinfo", None, local))
                await sock.send(request("OPTIONS", "z9hG4bKuok", None, local))
                got = []
                with anyio.fail_after(10):
                    while 200 not in got:
                        got.extend(statuses([await sock.receive()]))
        else:
            stream = await anyio.connect_tcp("127.0.0.1", port)
            local = stream.extra(anyio.abc.SocketAttribute.local_port)
            async with stream:
                for i, bad in enumerate(BAD_HEADERS):
                    await stream.send(request("MESSAGE", f"z9hG4bKt{i}", bad, local))
                await stream.send(request("INFO", "z9hG4bKtinfo", None, local))
                await stream.send(request("OPTIONS", "z9hG4bKtok", None, local))
                buffer = b""
                with anyio.fail_after(10):
                    while b"SIP/2.0 200" not in buffer:
                        buffer += await stream.receive()
        assert stack.stats.handler_errors >= 1
        tg.cancel_scope.cancel()


async def test_send_async_survives_any_transport_error(
    memory_rig: tuple[SipStack, Inbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 item 4: a WS handshake answered with garbage raised out of _send_async."""
    stack, inbox = memory_rig
    transport = stack.transports[0]
    failed = anyio.Event()

    async def broken_send(data: bytes, destination: Peer) -> None:
        failed.set()
        raise ValueError("malformed handshake answer")

    monkeypatch.setattr(transport, "send_nowait", lambda data, destination: False)
    monkeypatch.setattr(transport, "send", broken_send)
    stack.message_received(request("OPTIONS", "z9hG4bKws1"), PHONE)
    with anyio.fail_after(10):
        await failed.wait()
    monkeypatch.undo()
    stack.message_received(request("OPTIONS", "z9hG4bKws2"), PHONE)
    assert statuses(await inbox.wait_for(1)) == [200]
    assert stack.stats.send_errors == 1


@pytest.mark.parametrize(
    "bad",
    [
        "sip:bob@127.0.0.1:99999",  # unparsable Request-URI
        "REQUIRE",  # Require: a,,b
    ],
)
async def test_rejected_before_dispatch_leaves_no_transaction(
    memory_rig: tuple[SipStack, Inbox], bad: str
) -> None:
    """Issue 13 item 5: answered 400 statelessly, but the transaction stayed forever."""
    stack, inbox = memory_rig
    n = 50
    for i in range(n):
        data = request("OPTIONS", f"z9hG4bKleak{i}")
        if bad == "REQUIRE":
            data = data.replace(b"Max-Forwards", b"Require: a,,b\r\nMax-Forwards")
        else:
            data = data.replace(b"sip:bob@127.0.0.1 SIP", f"{bad} SIP".encode())
        stack.message_received(data, PHONE)
    answers = statuses(await inbox.wait_for(n))
    assert all(400 <= status < 500 for status in answers)
    assert len(stack.layer) == 0
    assert not stack.layer._server and stack.layer.next_deadline() is None


async def test_options_advertises_only_implemented_methods(
    memory_rig: tuple[SipStack, Inbox],
) -> None:
    """PRACK (RFC 3262) is not implemented: advertising it invites 100rel calls we break."""
    stack, inbox = memory_rig
    stack.message_received(request("OPTIONS", "z9hG4bKallow"), PHONE)
    (data,) = await inbox.wait_for(1)
    answer = parse_message(data)
    allow = {m.strip() for m in (answer.headers.get("allow") or "").split(",")}
    assert "PRACK" not in allow
    assert {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER"} <= allow
