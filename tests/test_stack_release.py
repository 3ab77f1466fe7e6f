"""The stack lets go of a request once its transaction only absorbs copies (issue 13 item 8).

A 10 KB request answered over UDP (an OPTIONS, then) used to stay in memory for Timer J's
32 s, through the transaction and the IncomingRequest hung on it; here a weak reference to
the request is dead once the handler is done, and a copy of the request still gets the
stored answer.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator

import anyio
import pytest
from helpers.inbox import Inbox

from sdpbx.errors import TransactionClosed
from sdpbx.exchanges import IncomingRequest
from sdpbx.sip import Request, parse_message
from sdpbx.stack import RequestHandler, SipStack
from sdpbx.testing import FakeClock
from sdpbx.transport import MemoryNetwork, Peer

pytestmark = pytest.mark.anyio

PBX = Peer("UDP", "127.0.0.1", 5060)
PHONE = Peer("UDP", "127.0.0.1", 5070)


def request(method: str, branch: str, *, cseq: str | None = None) -> bytes:
    return (
        f"{method} sip:bob@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@127.0.0.1>;tag=a1\r\n"
        "To: <sip:bob@127.0.0.1>\r\n"
        f"Call-ID: {branch}\r\n"
        f"CSeq: {cseq or '1 ' + method}\r\n"
        f"X-Pad: {'x' * 10_000}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Recorder(RequestHandler):
    """Answers MESSAGE 200 (statefully) and INVITE 486, keeping only weak references
    to requests; the rest as a bare stack does."""

    def __init__(self) -> None:
        self.seen: list[weakref.ref[Request]] = []
        self.methods: list[str] = []

    async def handle_request(self, incoming: IncomingRequest) -> None:
        self.seen.append(weakref.ref(incoming.request))
        self.methods.append(incoming.request.method)
        if incoming.request.method == "INVITE":
            incoming.respond(486)
        elif incoming.request.method == "MESSAGE":
            incoming.respond(200)
        else:
            await super().handle_request(incoming)


@pytest.fixture
async def rig() -> AsyncIterator[tuple[SipStack, Recorder, Inbox, MemoryNetwork]]:
    network = MemoryNetwork()
    handler = Recorder()
    # A FakeClock: Timer J, H and K never fire while the test looks.
    stack = SipStack([network.transport("UDP", PBX.host, PBX.port)], handler, clock=FakeClock())
    inbox = Inbox()
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        await tg.start(network.transport("UDP", PHONE.host, PHONE.port).serve, inbox)
        yield stack, handler, inbox, network
        tg.cancel_scope.cancel()


async def test_answered_request_keeps_no_request_for_timer_j(
    rig: tuple[SipStack, Recorder, Inbox, MemoryNetwork],
) -> None:
    stack, handler, inbox, _ = rig
    data = request("MESSAGE", "z9hG4bKmem1")
    stack.message_received(data, PHONE)
    [answer] = await inbox.wait_for(1)
    await anyio.wait_all_tasks_blocked()  # the worker is back waiting for work
    gc.collect()
    assert len(stack.layer) == 1  # Timer J runs ...
    assert handler.seen[0]() is None  # ... without the request
    stack.message_received(data, PHONE)
    assert (await inbox.wait_for(2))[1] == answer
    assert handler.methods == ["MESSAGE"]  # the copy was absorbed, not handled again


async def test_cancel_after_a_final_response_gets_200_with_its_tag(
    rig: tuple[SipStack, Recorder, Inbox, MemoryNetwork],
) -> None:
    stack, handler, inbox, _ = rig
    stack.message_received(request("INVITE", "z9hG4bKmem2"), PHONE)
    [busy] = await inbox.wait_for(1)
    await anyio.wait_all_tasks_blocked()
    gc.collect()
    assert handler.seen[0]() is None
    stack.message_received(request("CANCEL", "z9hG4bKmem2", cseq="1 CANCEL"), PHONE)
    ok = parse_message((await inbox.wait_for(2))[1])
    final = parse_message(busy)
    assert ok.start_line() == "SIP/2.0 200 OK" and ok.cseq.method == "CANCEL"
    assert ok.to.tag is not None and ok.to.tag == final.to.tag
    assert handler.methods == ["INVITE"]  # §9.2: the CANCEL changes nothing, the stack says so


async def test_client_request_is_let_go_when_timer_k_starts() -> None:
    network = MemoryNetwork()
    clock = FakeClock()
    stack = SipStack([network.transport("UDP", PHONE.host, PHONE.port)], clock=clock)
    peer = SipStack([network.transport("UDP", PBX.host, PBX.port)], clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        await tg.start(peer.serve)
        message = parse_message(request("OPTIONS", "z9hG4bKmem3"))
        assert isinstance(message, Request)
        client = stack.send_request(message, PBX)
        txn = client.transaction
        final = await client.final_response()
        assert final.status == 200
        # Timer K runs on the transaction; the TU's handle is no longer hung on it.
        assert len(stack.layer) == 1 and txn.context is None and stack._clients == set()
        with pytest.raises(TransactionClosed):
            await client.next_response()
        tg.cancel_scope.cancel()
