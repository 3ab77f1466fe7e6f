"""abandon(): a request judged to be spam or from a blocked source is never answered."""

from __future__ import annotations

import pytest

from sdpbx.sip import LocalProtocolError, NewTransaction, Request, make_response
from sdpbx.sip.transaction import Retransmission, TimerConfig, TransactionLayer


def _request(method: str) -> Request:
    return Request.create(
        method,
        "sip:pbx@127.0.0.1",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKspam1"),
            ("From", "<sip:scan@192.0.2.9>;tag=1"),
            ("To", "<sip:pbx@127.0.0.1>"),
            ("Call-ID", "spam-1"),
            ("CSeq", f"1 {method}"),
            ("Max-Forwards", "70"),
        ],
    )


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_abandoned_transaction_absorbs_then_ends(method: str) -> None:
    layer = TransactionLayer(TimerConfig())
    request = _request(method)
    outcome = layer.receive_request(
        request, source="peer", response_destination="peer", reliable=False, now=0.0
    )
    assert isinstance(outcome, NewTransaction)
    layer.abandon(outcome.transaction, now=0.0)
    # No 100 Trying, ever; retransmissions are absorbed without output.
    layer.handle_timer(1.0)
    again = layer.receive_request(
        request, source="peer", response_destination="peer", reliable=False, now=2.0
    )
    assert isinstance(again, Retransmission)
    assert layer.datagrams_to_send() == []
    assert len(layer) == 1
    layer.handle_timer(64 * 0.5 + 0.1)
    assert len(layer) == 0
    assert layer.datagrams_to_send() == []


def test_abandon_after_answer_is_misuse() -> None:
    layer = TransactionLayer(TimerConfig())
    request = _request("REGISTER")
    outcome = layer.receive_request(
        request, source="peer", response_destination="peer", reliable=False, now=0.0
    )
    assert isinstance(outcome, NewTransaction)
    layer.respond(outcome.transaction, make_response(request, 200), now=0.0)
    with pytest.raises(LocalProtocolError):
        layer.abandon(outcome.transaction, now=0.0)


def test_answer_after_abandon_ends_once() -> None:
    """A TU that changes its mind still ends the transaction exactly once."""
    layer = TransactionLayer(TimerConfig())
    request = _request("REGISTER")
    outcome = layer.receive_request(
        request, source="peer", response_destination="peer", reliable=False, now=0.0
    )
    assert isinstance(outcome, NewTransaction)
    layer.abandon(outcome.transaction, now=0.0)
    layer.respond(outcome.transaction, make_response(request, 403), now=1.0)
    assert len(layer.datagrams_to_send()) == 1
    layer.handle_timer(100.0)
    assert len(layer) == 0


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
def test_respond_stateless_sends_once_and_forgets(method: str) -> None:
    layer = TransactionLayer(TimerConfig())
    request = _request(method)
    outcome = layer.receive_request(
        request, source="peer", response_destination="peer", reliable=False, now=0.0
    )
    assert isinstance(outcome, NewTransaction)
    txn = outcome.transaction
    layer.respond_stateless(txn, make_response(request, 407, to_tag="t"))
    assert [d for _, d in layer.datagrams_to_send()] == ["peer"]
    assert len(layer) == 0 and layer.next_deadline() is None
    # The retransmission is new: the TU answers it again, statelessly.
    again = layer.receive_request(
        request, source="peer", response_destination="peer", reliable=False, now=0.5
    )
    assert isinstance(again, NewTransaction)
    with pytest.raises(LocalProtocolError):
        layer.respond(txn, make_response(request, 200), now=1.0)


def test_respond_stateless_needs_a_final_response() -> None:
    layer = TransactionLayer(TimerConfig())
    request = _request("INVITE")
    outcome = layer.receive_request(
        request, source="peer", response_destination="peer", reliable=False, now=0.0
    )
    assert isinstance(outcome, NewTransaction)
    with pytest.raises(LocalProtocolError):
        layer.respond_stateless(outcome.transaction, make_response(request, 100))


def test_forget_is_idempotent_and_silent() -> None:
    layer = TransactionLayer(TimerConfig())
    outcome = layer.receive_request(
        _request("INVITE"), source="peer", response_destination="peer", reliable=False, now=0.0
    )
    assert isinstance(outcome, NewTransaction)
    layer.forget(outcome.transaction)
    layer.forget(outcome.transaction)
    assert len(layer) == 0 and layer.next_deadline() is None
    assert layer.datagrams_to_send() == []
