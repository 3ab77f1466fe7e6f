"""Client transactions (§17.1, RFC 6026): transitions, timers, retransmissions, ACKs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sdpbx.sip import LocalProtocolError, Request, Response, make_response, parse_message
from sdpbx.sip.transaction import (
    ClientTransaction,
    ResponseReceived,
    TimerConfig,
    TransactionLayer,
    TransactionState,
    build_ack,
    build_cancel,
)

S = TransactionState
DST = ("192.0.2.9", 5060)


def req(method: str = "INVITE", *, branch: str = "z9hG4bKcli1", routes: bool = False) -> Request:
    lines = [
        f"{method} sip:bob@example.com SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}",
        "Max-Forwards: 70",
        "From: Alice <sip:alice@example.com>;tag=ft1",
        "To: Bob <sip:bob@example.com>",
        "Call-ID: call-1@10.0.0.1",
        f"CSeq: 7 {method}",
    ]
    if routes:
        lines += ["Route: <sip:p1.example.com;lr>", "Route: <sip:p2.example.com;lr>"]
    lines += ["Contact: <sip:alice@10.0.0.1>", "Content-Length: 0", "", ""]
    message = parse_message("\r\n".join(lines).encode())
    assert isinstance(message, Request)
    return message


def resp(request: Request, status: int, tag: str = "tt1") -> Response:
    return make_response(request, status, to_tag=tag)


def sent(layer: TransactionLayer) -> list[str]:
    out = []
    for data, destination in layer.datagrams_to_send():
        assert destination == DST
        out.append(data.split(b"\r\n", 1)[0].decode())
    return out


def events(layer: TransactionLayer) -> list[str]:
    out = []
    for event in layer.events():
        name = type(event).__name__
        if isinstance(event, ResponseReceived):
            name += f" {event.response.status}"
        out.append(name)
    return out


#: The request of every transaction the tests started: the layer lets go of it in COMPLETED,
#: and the tests, like a TU, keep their own reference.
_REQUESTS: dict[ClientTransaction, Request] = {}


def req_of(txn: ClientTransaction) -> Request:
    return _REQUESTS[txn]


def start(
    method: str = "INVITE", *, reliable: bool = False, layer: TransactionLayer | None = None
) -> tuple[TransactionLayer, ClientTransaction]:
    layer = layer if layer is not None else TransactionLayer()
    request = req(method)
    txn = layer.create_client(request, destination=DST, reliable=reliable, now=0.0)
    _REQUESTS[txn] = request
    return layer, txn


def fire_all(layer: TransactionLayer, until: float) -> list[tuple[float, list[str], list[str]]]:
    steps = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        steps.append((deadline, sent(layer), events(layer)))
    return steps


INVITE_LINE = "INVITE sip:bob@example.com SIP/2.0"
OPTIONS_LINE = "OPTIONS sip:bob@example.com SIP/2.0"
ACK_LINE = "ACK sip:bob@example.com SIP/2.0"


# ---------------------------------------------------------------------------------------------
# INVITE client (§17.1.1 + RFC 6026): (state, response status) -> (state, sent, events)


def _ict(state: S, reliable: bool = False) -> tuple[TransactionLayer, ClientTransaction]:
    layer, txn = start("INVITE", reliable=reliable)
    assert sent(layer) == [INVITE_LINE]
    assert txn.state is S.CALLING
    feed = {S.PROCEEDING: 180, S.COMPLETED: 486, S.ACCEPTED: 200}.get(state)
    if feed is not None:
        layer.receive_response(resp(req_of(txn), feed), now=0.1)
    sent(layer)
    events(layer)
    assert txn.state is state
    return layer, txn


ICT_TABLE = [
    (S.CALLING, 100, S.PROCEEDING, [], ["ResponseReceived 100"]),
    (S.CALLING, 180, S.PROCEEDING, [], ["ResponseReceived 180"]),
    (S.CALLING, 200, S.ACCEPTED, [], ["ResponseReceived 200"]),
    (S.CALLING, 486, S.COMPLETED, [ACK_LINE], ["ResponseReceived 486"]),
    (S.CALLING, 302, S.COMPLETED, [ACK_LINE], ["ResponseReceived 302"]),
    (S.PROCEEDING, 183, S.PROCEEDING, [], ["ResponseReceived 183"]),
    (S.PROCEEDING, 200, S.ACCEPTED, [], ["ResponseReceived 200"]),
    (S.PROCEEDING, 603, S.COMPLETED, [ACK_LINE], ["ResponseReceived 603"]),
    (S.COMPLETED, 486, S.COMPLETED, [ACK_LINE], []),
    (S.COMPLETED, 180, S.COMPLETED, [], []),
    (S.COMPLETED, 200, S.COMPLETED, [], []),
    (S.ACCEPTED, 200, S.ACCEPTED, [], ["ResponseReceived 200"]),
    (S.ACCEPTED, 180, S.ACCEPTED, [], []),
    (S.ACCEPTED, 486, S.ACCEPTED, [], []),
]


@pytest.mark.parametrize(("state", "status", "new_state", "wire", "tu"), ICT_TABLE)
def test_invite_client_transitions(
    state: S, status: int, new_state: S, wire: list[str], tu: list[str]
) -> None:
    layer, txn = _ict(state)
    assert layer.receive_response(resp(req_of(txn), status), now=1.0) is txn
    assert txn.state is new_state
    assert sent(layer) == wire
    assert events(layer) == tu


def test_timer_a_doubles_without_cap_until_timer_b() -> None:
    layer, txn = _ict(S.CALLING)
    steps = fire_all(layer, 1000.0)
    assert [t for t, wire, _ in steps if wire == [INVITE_LINE]] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert steps[-1] == (32.0, [], ["TransactionTimeout", "TransactionTerminated"])
    assert txn.state is S.TERMINATED and len(layer) == 0


def test_timer_b_not_before_64_t1() -> None:
    layer, txn = _ict(S.CALLING, reliable=True)
    assert layer.next_deadline() == 32.0
    layer.handle_timer(31.99)
    assert txn.state is S.CALLING and events(layer) == []
    layer.handle_timer(32.0)
    assert events(layer) == ["TransactionTimeout", "TransactionTerminated"]


def test_timers_scale_with_t1() -> None:
    layer = TransactionLayer(TimerConfig(t1=0.1, t2=1.0, t4=2.0))
    txn = layer.create_client(req("INVITE"), destination=DST, reliable=False, now=10.0)
    steps = fire_all(layer, 1000.0)
    resends = [round(t, 6) for t, wire, _ in steps if wire]
    assert resends == [10.1, 10.3, 10.7, 11.5, 13.1, 16.3]
    assert steps[-1][0] == pytest.approx(16.4)
    assert txn.state is S.TERMINATED


def test_reliable_invite_is_never_retransmitted() -> None:
    layer, _ = _ict(S.CALLING, reliable=True)
    assert fire_all(layer, 100.0) == [(32.0, [], ["TransactionTimeout", "TransactionTerminated"])]


def test_proceeding_invite_has_no_timers() -> None:
    layer, txn = _ict(S.PROCEEDING)
    assert layer.next_deadline() is None
    assert fire_all(layer, 1000.0) == []
    assert txn.state is S.PROCEEDING


def test_timer_d_ends_completed_after_32_s() -> None:
    layer, txn = _ict(S.COMPLETED)
    assert fire_all(layer, 1000.0) == [(32.1, [], ["TransactionTerminated"])]
    assert txn.state is S.TERMINATED


def test_reliable_non_2xx_ends_at_once_after_the_ack() -> None:
    layer, txn = _ict(S.CALLING, reliable=True)
    layer.receive_response(resp(req_of(txn), 486), now=0.1)
    assert sent(layer) == [ACK_LINE]
    assert events(layer) == ["ResponseReceived 486", "TransactionTerminated"]
    assert layer.next_deadline() is None and len(layer) == 0


def test_timer_m_ends_accepted() -> None:
    layer, txn = _ict(S.ACCEPTED)
    assert fire_all(layer, 1000.0) == [(32.1, [], ["TransactionTerminated"])]
    assert layer.receive_response(resp(req_of(txn), 200), now=40.0) is None


def test_ack_for_non_2xx_byte_for_byte() -> None:
    layer = TransactionLayer()
    invite = req("INVITE", routes=True)
    txn = layer.create_client(invite, destination=DST, reliable=False, now=0.0)
    layer.datagrams_to_send()
    layer.receive_response(resp(invite, 486, tag="busy1"), now=0.2)
    ((data, destination),) = layer.datagrams_to_send()
    assert destination == DST
    assert data == (
        b"ACK sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKcli1\r\n"
        b"Route: <sip:p1.example.com;lr>\r\n"
        b"Route: <sip:p2.example.com;lr>\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: Alice <sip:alice@example.com>;tag=ft1\r\n"
        b"To: Bob <sip:bob@example.com>;tag=busy1\r\n"
        b"Call-ID: call-1@10.0.0.1\r\n"
        b"CSeq: 7 ACK\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    # The same ACK, byte for byte, answers every retransmission of the final response.
    layer.receive_response(resp(invite, 486, tag="busy1"), now=0.7)
    assert layer.datagrams_to_send() == [(data, DST)]
    assert txn.state is S.COMPLETED


def test_build_ack_keeps_only_the_top_via() -> None:
    invite = req("INVITE")
    invite = invite.replace(headers=invite.headers.add("Via", "SIP/2.0/UDP proxy.example.com"))
    ack = build_ack(invite, resp(invite, 404))
    assert ack.headers.get_all("via") == ["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKcli1"]
    assert ack.method == "ACK" and ack.cseq.number == 7 and ack.to.tag == "tt1"


def test_build_cancel_matches_the_invite_as_section_9_1_asks() -> None:
    invite = req("INVITE")
    invite = invite.replace(
        headers=invite.headers.add("Via", "SIP/2.0/UDP proxy.example.com")
        .add("Route", "<sip:edge.example.com;lr>")
        .add("Contact", "<sip:alice@10.0.0.1>")
    )
    cancel = build_cancel(invite)
    # Only the top Via (its branch pairs CANCEL and INVITE), the Route set, no Contact.
    assert cancel.headers.get_all("via") == ["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKcli1"]
    assert cancel.headers.get_all("route") == ["<sip:edge.example.com;lr>"]
    assert "contact" not in cancel.headers
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert (cancel.cseq.number, cancel.cseq.method) == (invite.cseq.number, "CANCEL")
    assert cancel.call_id == invite.call_id
    assert cancel.headers.get("from") == invite.headers.get("from")
    assert cancel.headers.get("to") == invite.headers.get("to")  # no tag of any response
    assert parse_message(bytes(cancel)).method == "CANCEL"  # type: ignore[union-attr]


def test_set_ack_resends_the_tu_ack_on_2xx_retransmission() -> None:
    layer, txn = _ict(S.ACCEPTED)
    ok = resp(req_of(txn), 200)
    ack = req("ACK", branch="z9hG4bKack2xx").replace(
        headers=req("ACK", branch="z9hG4bKack2xx").headers.set("To", "<sip:bob@x>;tag=tt1")
    )
    other = ("192.0.2.77", 5060)
    txn.set_ack(ack, other)
    assert layer.datagrams_to_send() == [(bytes(ack), other)]
    assert layer.receive_response(ok, now=1.0) is txn
    assert layer.datagrams_to_send() == [(bytes(ack), other)]
    assert events(layer) == []
    # A 2xx from another fork is the TU's business.
    layer.receive_response(resp(req_of(txn), 200, tag="fork2"), now=1.1)
    assert events(layer) == ["ResponseReceived 200"]
    assert layer.datagrams_to_send() == []


@pytest.mark.parametrize("state", [S.CALLING, S.PROCEEDING, S.COMPLETED])
def test_set_ack_outside_accepted_is_misuse(state: S) -> None:
    _, txn = _ict(state)
    with pytest.raises(LocalProtocolError):
        txn.set_ack(req("ACK"), DST)


def test_set_ack_needs_an_ack() -> None:
    _, txn = _ict(S.ACCEPTED)
    with pytest.raises(LocalProtocolError):
        txn.set_ack(req("BYE"), DST)


# ---------------------------------------------------------------------------------------------
# non-INVITE client (§17.1.2)


def _nict(state: S, reliable: bool = False) -> tuple[TransactionLayer, ClientTransaction]:
    layer, txn = start("OPTIONS", reliable=reliable)
    assert sent(layer) == [OPTIONS_LINE]
    if state in (S.PROCEEDING, S.COMPLETED):
        layer.receive_response(resp(req_of(txn), 100), now=0.1)
    if state is S.COMPLETED:
        layer.receive_response(resp(req_of(txn), 200), now=0.1)
    events(layer)
    assert txn.state is state
    return layer, txn


NICT_TABLE = [
    (S.TRYING, 100, S.PROCEEDING, ["ResponseReceived 100"]),
    (S.TRYING, 200, S.COMPLETED, ["ResponseReceived 200"]),
    (S.TRYING, 404, S.COMPLETED, ["ResponseReceived 404"]),
    (S.PROCEEDING, 180, S.PROCEEDING, ["ResponseReceived 180"]),
    (S.PROCEEDING, 200, S.COMPLETED, ["ResponseReceived 200"]),
    (S.PROCEEDING, 500, S.COMPLETED, ["ResponseReceived 500"]),
    (S.COMPLETED, 200, S.COMPLETED, []),
    (S.COMPLETED, 180, S.COMPLETED, []),
]


@pytest.mark.parametrize(("state", "status", "new_state", "tu"), NICT_TABLE)
def test_non_invite_client_transitions(state: S, status: int, new_state: S, tu: list[str]) -> None:
    layer, txn = _nict(state)
    assert layer.receive_response(resp(req_of(txn), status), now=1.0) is txn
    assert txn.state is new_state
    assert sent(layer) == []
    assert events(layer) == tu


def test_timer_e_doubles_to_t2_until_timer_f() -> None:
    layer, txn = _nict(S.TRYING)
    steps = fire_all(layer, 1000.0)
    resends = [t for t, wire, _ in steps if wire == [OPTIONS_LINE]]
    assert resends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert steps[-1] == (32.0, [], ["TransactionTimeout", "TransactionTerminated"])
    assert txn.state is S.TERMINATED and len(layer) == 0


def test_timer_e_in_proceeding_is_t2() -> None:
    layer, _ = _nict(S.TRYING)
    fire = fire_all(layer, 1.6)  # retransmissions at 0.5 and 1.5 while TRYING
    assert [t for t, wire, _ in fire if wire] == [0.5, 1.5]
    layer.receive_response(resp(req("OPTIONS"), 100), now=2.0)
    steps = fire_all(layer, 1000.0)
    # E was due at 3.5 (armed in TRYING); from then on every T2.
    assert [t for t, wire, _ in steps if wire] == [3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert steps[-1][2] == ["TransactionTimeout", "TransactionTerminated"]


def test_timer_k_ends_completed_after_t4() -> None:
    layer, _ = _nict(S.COMPLETED)
    assert fire_all(layer, 1000.0) == [(5.1, [], ["TransactionTerminated"])]


def test_reliable_non_invite_no_retransmission_and_no_wait() -> None:
    layer, txn = _nict(S.TRYING, reliable=True)
    assert layer.next_deadline() == 32.0
    layer.receive_response(resp(req_of(txn), 200), now=0.3)
    assert events(layer) == ["ResponseReceived 200", "TransactionTerminated"]
    assert layer.next_deadline() is None and len(layer) == 0


# ---------------------------------------------------------------------------------------------
# matching (§17.1.3) and misuse


def test_invite_and_cancel_with_the_same_branch_are_two_transactions() -> None:
    layer = TransactionLayer()
    _, invite = start("INVITE", layer=layer)
    cancel_request = req("CANCEL")
    cancel = layer.create_client(cancel_request, destination=DST, reliable=False, now=0.1)
    _REQUESTS[cancel] = cancel_request
    assert len(layer) == 2
    assert layer.receive_response(resp(req_of(cancel), 200), now=0.2) is cancel
    assert layer.receive_response(resp(req_of(invite), 487), now=0.3) is invite
    assert cancel.state is S.COMPLETED and invite.state is S.COMPLETED


@pytest.mark.parametrize(
    "mangle",
    [
        lambda r: r.replace(headers=r.headers.set("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKz")),
        lambda r: r.replace(headers=r.headers.set("Via", "SIP/2.0/UDP 10.0.0.1")),
        lambda r: r.replace(headers=r.headers.set("CSeq", "7 BYE")),
    ],
)
def test_unmatched_responses_return_none(mangle: Callable[[Response], Response]) -> None:
    layer, txn = _ict(S.CALLING)
    assert layer.receive_response(mangle(resp(req_of(txn), 200)), now=0.1) is None
    assert txn.state is S.CALLING and events(layer) == []


def test_create_client_misuse() -> None:
    layer = TransactionLayer()
    with pytest.raises(LocalProtocolError):
        layer.create_client(req("ACK"), destination=DST, reliable=False, now=0.0)
    with pytest.raises(LocalProtocolError):
        layer.create_client(req("INVITE", branch="old1234"), destination=DST, reliable=False, now=0)
    layer.create_client(req("INVITE"), destination=DST, reliable=False, now=0.0)
    with pytest.raises(LocalProtocolError):
        layer.create_client(req("INVITE"), destination=DST, reliable=False, now=0.0)
    assert len(layer) == 1


def test_send_stateless_and_transaction_attributes() -> None:
    layer, txn = _ict(S.CALLING)
    assert txn.is_invite and txn.method == "INVITE" and txn.destination == DST
    assert txn.key == ("z9hG4bKcli1", "INVITE") and txn.context is None
    ack = req("ACK", branch="z9hG4bKsl")
    layer.send_stateless(ack, DST)
    assert layer.datagrams_to_send() == [(bytes(ack), DST)]
    assert layer.next_event() is None


def test_timer_config_derived_values_and_validation() -> None:
    timers = TimerConfig(t1=0.25, t2=2.0, t4=3.0)
    assert (timers.timer_b, timers.timer_f, timers.timer_h, timers.timer_j) == (16, 16, 16, 16)
    assert (timers.timer_l, timers.timer_m, timers.timer_d) == (16, 16, 32.0)
    assert (timers.timer_i, timers.timer_k) == (3.0, 3.0)
    with pytest.raises(ValueError, match="t1"):
        TimerConfig(t1=0)


@pytest.mark.parametrize("reliable", [False, True])
def test_cancelled_invite_without_final_is_destroyed(reliable: bool) -> None:
    """Issue 13 item 7, RFC 3261 §9.1: the callee rang, went silent, the CANCEL went out."""
    from sdpbx.sip.transaction import TimerConfig, TransactionLayer

    layer = TransactionLayer(TimerConfig())
    via = ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcancel1")
    common = [via, ("From", "<sip:a@x>;tag=1"), ("To", "<sip:b@y>"), ("Call-ID", "c1")]
    invite = Request.create("INVITE", "sip:b@y", [*common, ("CSeq", "1 INVITE")])
    txn = layer.create_client(invite, destination="callee", reliable=reliable, now=0.0)
    layer.receive_response(make_response(invite, 180, to_tag="t"), now=0.1)
    layer.handle_timer(1000.0)  # PROCEEDING: no timer runs
    assert len(layer) == 1
    cancel = Request.create("CANCEL", "sip:b@y", [*common, ("CSeq", "1 CANCEL")])
    layer.create_client(cancel, destination="callee", reliable=reliable, now=1000.0)
    layer.receive_response(make_response(cancel, 200, to_tag="t"), now=1000.1)
    layer.handle_timer(1000.0 + 64 * 0.5 - 0.01)
    assert txn in layer._client.values()
    layer.handle_timer(1000.0 + 64 * 0.5 + 0.01)
    assert len(layer) == 0
    events = layer.events()
    assert [type(e).__name__ for e in events if e.transaction is txn] == [
        "ResponseReceived",
        "TransactionTimeout",
        "TransactionTerminated",
    ]


def test_cancel_in_calling_keeps_the_deadline_past_a_provisional() -> None:
    from sdpbx.sip.transaction import TimerConfig, TransactionLayer

    layer = TransactionLayer(TimerConfig())
    via = ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcancel2")
    common = [via, ("From", "<sip:a@x>;tag=1"), ("To", "<sip:b@y>"), ("Call-ID", "c2")]
    invite = Request.create("INVITE", "sip:b@y", [*common, ("CSeq", "1 INVITE")])
    layer.create_client(invite, destination="callee", reliable=True, now=0.0)
    cancel = Request.create("CANCEL", "sip:b@y", [*common, ("CSeq", "1 CANCEL")])
    layer.create_client(cancel, destination="callee", reliable=True, now=0.0)
    layer.receive_response(make_response(invite, 180, to_tag="t"), now=1.0)
    layer.handle_timer(100.0)
    assert len(layer) == 0
