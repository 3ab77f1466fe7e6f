"""A transaction that only absorbs copies keeps its key, last response and destination.

Issue 13 item 8: every answered UDP request kept its whole request (and the TU's
context) for Timer J's 32 s, so a flood of 10 KB OPTIONS held 565 MB. Each test holds
a weak reference to the request and checks it is gone once the final response is sent,
while a retransmission is still answered with the stored response.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from sdpbx.sip import LocalProtocolError, Request, make_response, parse_message
from sdpbx.sip.transaction import (
    NewTransaction,
    Retransmission,
    ServerTransaction,
    TransactionLayer,
    TransactionState,
)

S = TransactionState
SRC = ("127.0.0.1", 5060)
DST = ("127.0.0.1", 5070)
PAD = "x" * 10_000  # what made the request 10 KB


def wire(method: str, branch: str, *, to_tag: str | None = None, cseq: str | None = None) -> bytes:
    to = "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    return "\r\n".join(
        [
            f"{method} sip:bob@example.com SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}",
            "Max-Forwards: 70",
            "From: <sip:alice@example.com>;tag=ft1",
            to,
            "Call-ID: release-1",
            f"CSeq: {cseq or '1 ' + method}",
            f"X-Pad: {PAD}",
            "Content-Length: 0",
            "",
            "",
        ]
    ).encode()


def parsed(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


def start_server(layer: TransactionLayer, data: bytes) -> tuple[ServerTransaction, object]:
    """A server transaction and a TU context standing for the stack's IncomingRequest."""
    outcome = layer.receive_request(
        parsed(data), source=SRC, response_destination=SRC, reliable=False, now=0.0
    )
    assert isinstance(outcome, NewTransaction)
    txn = outcome.transaction
    txn.context = Context(txn.request)
    return txn, txn.context


class Context:
    """What a TU hangs on a transaction: here, like IncomingRequest, the request itself."""

    def __init__(self, request: Request) -> None:
        self.request = request


def retransmit(layer: TransactionLayer, data: bytes) -> list[bytes]:
    outcome = layer.receive_request(
        parsed(data), source=SRC, response_destination=SRC, reliable=False, now=1.0
    )
    assert outcome == Retransmission()
    return [d for d, _ in layer.datagrams_to_send()]


@pytest.mark.parametrize("status", [200, 404])
def test_non_invite_lets_go_of_its_request_in_completed(status: int) -> None:
    layer = TransactionLayer()
    data = wire("OPTIONS", "z9hG4bKrel1")
    txn, context = start_server(layer, data)
    request = weakref.ref(txn.request)
    holder = weakref.ref(context)
    response = make_response(txn.request, status, to_tag="tt1")
    del context
    layer.respond(txn, response, now=0.0)
    first = [d for d, _ in layer.datagrams_to_send()]
    gc.collect()
    assert txn.state is S.COMPLETED
    assert request() is None and holder() is None and txn.context is None
    # Timer J still runs, and a copy of the request gets the same bytes back.
    assert layer.next_deadline() == 32.0
    assert retransmit(layer, data) == first == [bytes(response)]
    assert len(first[0]) < 1_000  # the 10 KB header was never copied into the answer
    with pytest.raises(LocalProtocolError):
        _ = txn.request


def test_invite_lets_go_of_its_request_in_completed_and_confirmed() -> None:
    layer = TransactionLayer()
    data = wire("INVITE", "z9hG4bKrel2")
    txn, context = start_server(layer, data)
    request = weakref.ref(txn.request)
    busy = make_response(txn.request, 486, to_tag="tt1")
    del context
    layer.respond(txn, busy, now=0.0)
    layer.datagrams_to_send()
    gc.collect()
    assert txn.state is S.COMPLETED and request() is None and txn.context is None
    assert retransmit(layer, data) == [bytes(busy)]  # Timer G's copies go on from here
    ack = wire("ACK", "z9hG4bKrel2", to_tag="tt1", cseq="1 ACK")
    ack_outcome = layer.receive_request(
        parsed(ack), source=SRC, response_destination=SRC, reliable=False, now=1.0
    )
    assert ack_outcome == Retransmission()
    assert txn.state is S.CONFIRMED
    layer.handle_timer(1.0 + 5.0)  # Timer I
    assert txn.state is S.TERMINATED and len(layer) == 0


def test_invite_keeps_its_request_while_a_2xx_waits_for_its_ack() -> None:
    """ACCEPTED may still send 2xx of other forks, built from the request: it stays."""
    layer = TransactionLayer()
    txn, _ = start_server(layer, wire("INVITE", "z9hG4bKrel3"))
    layer.respond(txn, make_response(txn.request, 200, to_tag="tt1"), now=0.0)
    assert txn.state is S.ACCEPTED
    assert txn.request.method == "INVITE" and txn.context is not None


def test_abandoned_non_invite_lets_go_of_its_request() -> None:
    layer = TransactionLayer()
    data = wire("OPTIONS", "z9hG4bKrel4")
    txn, context = start_server(layer, data)
    request = weakref.ref(txn.request)
    del context
    layer.abandon(txn, now=0.0)
    gc.collect()
    assert request() is None and txn.context is None
    assert retransmit(layer, data) == []  # still absorbed in silence


def test_client_lets_go_of_its_request_in_completed() -> None:
    layer = TransactionLayer()
    sent = parsed(wire("OPTIONS", "z9hG4bKrel5"))
    txn = layer.create_client(sent, destination=DST, reliable=False, now=0.0)
    request = weakref.ref(sent)
    ok = make_response(sent, 200, to_tag="tt1")
    del sent
    layer.receive_response(ok, now=0.1)
    layer.datagrams_to_send()
    gc.collect()
    assert txn.state is S.COMPLETED and request() is None
    assert layer.receive_response(ok, now=0.2) is txn  # a copy is still absorbed
    assert layer.datagrams_to_send() == [] and layer.events()[-1].transaction is txn


def test_invite_client_keeps_only_the_ack_in_completed() -> None:
    layer = TransactionLayer()
    sent = parsed(wire("INVITE", "z9hG4bKrel6"))
    txn = layer.create_client(sent, destination=DST, reliable=False, now=0.0)
    layer.datagrams_to_send()  # the INVITE itself
    request = weakref.ref(sent)
    busy = make_response(sent, 486, to_tag="tt1")
    del sent
    layer.receive_response(busy, now=0.1)
    ack = layer.datagrams_to_send()
    gc.collect()
    assert txn.state is S.COMPLETED and request() is None
    # The final again: the stored ACK again, byte for byte (Timer D absorbs it).
    layer.receive_response(busy, now=0.2)
    assert layer.datagrams_to_send() == ack and ack[0][0].startswith(b"ACK ")


def test_a_released_final_is_read_back_from_the_bytes_sent() -> None:
    layer = TransactionLayer()
    txn, _ = start_server(layer, wire("INVITE", "z9hG4bKrel7"))
    busy = make_response(txn.request, 486, to_tag="tt1")
    layer.respond(txn, busy, now=0.0)
    again = txn.last_response
    assert again is not None and again is not busy  # rebuilt: only the bytes were kept
    assert (again.status, again.to.tag, bytes(again)) == (486, "tt1", bytes(busy))


def test_a_final_the_parser_refuses_still_reads_back_its_status() -> None:
    layer = TransactionLayer()
    txn, _ = start_server(layer, wire("OPTIONS", "z9hG4bKrel8"))
    odd = make_response(txn.request, 404, to_tag="tt1", headers=[("Bad Name", "x")])
    layer.respond(txn, odd, now=0.0)
    again = txn.last_response
    assert again is not None and (again.status, again.reason) == (404, "Not Found")
    assert bytes(again) == bytes(odd)
