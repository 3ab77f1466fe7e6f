"""The stack's worker pool and the request boundary it runs handlers in."""

from __future__ import annotations

import logging

import anyio
import pytest

from sdpbx.authn import Challenge, answer_refusal
from sdpbx.exchanges import IncomingRequest
from sdpbx.stack import RequestHandler, SipStack
from sdpbx.transport import MemoryNetwork, Peer

PHONE = Peer("UDP", "127.0.0.1", 5070)

pytestmark = pytest.mark.anyio


def options(branch: str) -> bytes:
    return (
        "OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@127.0.0.1>;tag=a1\r\n"
        "To: <sip:pbx@127.0.0.1>\r\n"
        f"Call-ID: {branch}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Gate(RequestHandler):
    """Holds every request until opened, so each one needs its own worker."""

    def __init__(self) -> None:
        self.open = anyio.Event()
        self.waiting = 0

    async def handle_request(self, incoming: IncomingRequest) -> None:
        self.waiting += 1
        await self.open.wait()
        incoming.respond(200)


async def wait_until(condition: object) -> None:
    assert callable(condition)
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)


async def test_idle_workers_beyond_the_core_are_retired_after_a_surge() -> None:
    network = MemoryNetwork()
    gate = Gate()
    stack = SipStack([network.transport("UDP", "127.0.0.1", 5060)], gate)
    stack.retire_check = 0.05
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        for n in range(300):
            stack.message_received(options(f"surge{n}"), PHONE)
        await wait_until(lambda: gate.waiting == 300)
        assert stack._workers == 300
        gate.open.set()
        await wait_until(lambda: stack._workers <= 16)
        # The pool still serves, and grows again when it must.
        stack.message_received(options("after"), PHONE)
        await wait_until(lambda: gate.waiting == 301)
        assert stack.stats.handler_errors == 0
        tg.cancel_scope.cancel()


class AnsweredThenRefused(RequestHandler):
    """The fuzzer's case: a 487 went out while the user backend was asked,
    then the authenticator's verdict is a challenge."""

    def __init__(self) -> None:
        self.refused: list[bool] = []

    async def handle_request(self, incoming: IncomingRequest) -> None:
        incoming.respond(487)
        challenge = Challenge(407, (("Proxy-Authenticate", 'Digest realm="r", nonce="n"'),))
        self.refused.append(answer_refusal(incoming, challenge))


async def test_a_refusal_after_the_request_was_answered_sends_nothing_more() -> None:
    network = MemoryNetwork()
    handler = AnsweredThenRefused()
    stack = SipStack([network.transport("UDP", "127.0.0.1", 5060)], handler)
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        stack.message_received(options("refused"), PHONE)
        await wait_until(lambda: handler.refused == [True])
        assert stack.stats.handler_errors == 0
        tg.cancel_scope.cancel()


async def test_a_flood_of_malformed_requests_logs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each is answered 400; the log says so once per interval with a count, not 1,000 times."""
    network = MemoryNetwork()
    stack = SipStack([network.transport("UDP", "127.0.0.1", 5060)], Gate())
    bad = options("bad").replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS")
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        with caplog.at_level(logging.INFO, logger="sdpbx.stack"):
            for _ in range(1_000):
                stack.message_received(bad, PHONE)
        tg.cancel_scope.cancel()
    assert stack.stats.malformed_requests_answered == 1_000
    lines = [r for r in caplog.records if r.levelno >= logging.INFO and "malformed" in r.message]
    assert len(lines) == 1
