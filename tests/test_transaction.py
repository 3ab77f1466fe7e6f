"""Server transactions (§17.2, RFC 6026), request matching (§17.2.3, §9.2) and leaks.

Client transactions are in test_transaction_client.py; the random-interleaving property test
in test_transaction_property.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sdpbx.sip import LocalProtocolError, Request, Response, make_response, parse_message
from sdpbx.sip.transaction import (
    AckForInvite,
    NewTransaction,
    Retransmission,
    ServerTransaction,
    StrayAck,
    TimerConfig,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
    TransactionTimeout,
)

S = TransactionState
SRC = ("10.0.0.1", 5060)


def req(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bKsrv1",
    sent_by: str = "10.0.0.1:5060",
    call_id: str = "call-1",
    cseq: int = 1,
    cseq_method: str | None = None,
    from_tag: str = "ft1",
    to_tag: str | None = None,
    uri: str = "sip:bob@example.com",
) -> Request:
    via = f"Via: SIP/2.0/UDP {sent_by}" + (f";branch={branch}" if branch else "")
    text = "\r\n".join(
        [
            f"{method} {uri} SIP/2.0",
            via,
            "Max-Forwards: 70",
            f"From: <sip:alice@example.com>;tag={from_tag}",
            "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {cseq_method or method}",
            "Content-Length: 0",
            "",
            "",
        ]
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def resp(request: Request, status: int, tag: str = "tt1") -> Response:
    return make_response(request, status, to_tag=tag)


def ack_for(invite: Request, response: Response, *, branch: str | None = None) -> Request:
    """An ACK as a UAC builds it: same branch for a non-2xx, a new one for a 2xx."""
    return req(
        "ACK",
        branch=branch if branch is not None else invite.top_via.branch,
        sent_by=invite.top_via.sent_by,
        call_id=invite.call_id,
        cseq=invite.cseq.number,
        from_tag=invite.from_.tag or "",
        to_tag=response.to.tag,
        uri=str(invite.uri),
    )


def sent(layer: TransactionLayer) -> list[str]:
    """Start lines of what the layer queued, checking every server reply goes to SRC."""
    out = []
    for data, destination in layer.datagrams_to_send():
        assert destination == SRC
        out.append(data.split(b"\r\n", 1)[0].decode())
    return out


def kinds(layer: TransactionLayer) -> list[str]:
    return [type(e).__name__ for e in layer.events()]


#: The request of every transaction the tests started: the layer lets go of it once a final
#: response is sent, and the tests, like a TU, keep their own reference.
_REQUESTS: dict[ServerTransaction, Request] = {}


def req_of(txn: ServerTransaction) -> Request:
    return _REQUESTS[txn]


def receive(
    layer: TransactionLayer, request: Request, now: float = 0.0, *, reliable: bool = False
) -> NewTransaction | Retransmission | AckForInvite | StrayAck:
    outcome = layer.receive_request(
        request, source=SRC, response_destination=SRC, reliable=reliable, now=now
    )
    if isinstance(outcome, NewTransaction):
        _REQUESTS[outcome.transaction] = request
    return outcome


def new_server(
    layer: TransactionLayer, request: Request, now: float = 0.0, *, reliable: bool = False
) -> ServerTransaction:
    outcome = receive(layer, request, now, reliable=reliable)
    assert isinstance(outcome, NewTransaction)
    return outcome.transaction


def fire_all(layer: TransactionLayer, until: float) -> list[tuple[float, list[str], list[str]]]:
    """Step through every deadline up to ``until``: (time, sent, events) per step."""
    steps = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        steps.append((deadline, sent(layer), kinds(layer)))
    return steps


# ---------------------------------------------------------------------------------------------
# non-INVITE server (§17.2.2): (state, input) -> (state, sent start lines, outcome/raise)

OK = "SIP/2.0 200 OK"
RINGING = "SIP/2.0 180 Ringing"


def _nist(state: S, reliable: bool = False) -> tuple[TransactionLayer, ServerTransaction]:
    layer = TransactionLayer()
    txn = new_server(layer, req("OPTIONS"), reliable=reliable)
    if state in (S.PROCEEDING, S.COMPLETED):
        layer.respond(txn, resp(req_of(txn), 180), now=0.0)
    if state is S.COMPLETED:
        layer.respond(txn, resp(req_of(txn), 200), now=0.0)
    sent(layer)
    kinds(layer)
    assert txn.state is state
    return layer, txn


Action = Callable[[TransactionLayer, ServerTransaction], object]


def _retransmit(layer: TransactionLayer, txn: ServerTransaction) -> object:
    return type(receive(layer, req_of(txn), 1.0, reliable=txn.reliable)).__name__


def _send(status: int) -> Action:
    def action(layer: TransactionLayer, txn: ServerTransaction) -> object:
        layer.respond(txn, resp(req_of(txn), status), now=1.0)
        return None

    return action


NIST_TABLE = [
    (S.TRYING, _retransmit, S.TRYING, [], "Retransmission"),
    (S.TRYING, _send(100), S.PROCEEDING, ["SIP/2.0 100 Trying"], None),
    (S.TRYING, _send(200), S.COMPLETED, [OK], None),
    (S.TRYING, _send(404), S.COMPLETED, ["SIP/2.0 404 Not Found"], None),
    (S.PROCEEDING, _retransmit, S.PROCEEDING, [RINGING], "Retransmission"),
    (S.PROCEEDING, _send(183), S.PROCEEDING, ["SIP/2.0 183 Session Progress"], None),
    (S.PROCEEDING, _send(200), S.COMPLETED, [OK], None),
    (S.COMPLETED, _retransmit, S.COMPLETED, [OK], "Retransmission"),
]


@pytest.mark.parametrize(("state", "action", "new_state", "wire", "result"), NIST_TABLE)
def test_non_invite_server_transitions(
    state: S, action: Action, new_state: S, wire: list[str], result: object
) -> None:
    layer, txn = _nist(state)
    assert action(layer, txn) == result
    assert txn.state is new_state
    assert sent(layer) == wire
    assert layer.events() == []


@pytest.mark.parametrize("status", [100, 180, 200, 500])
def test_non_invite_server_rejects_responses_after_final(status: int) -> None:
    layer, txn = _nist(S.COMPLETED)
    with pytest.raises(LocalProtocolError):
        layer.respond(txn, resp(req_of(txn), status), now=1.0)


def test_timer_j_ends_completed_non_invite_after_64_t1_exactly() -> None:
    layer, txn = _nist(S.COMPLETED)
    assert layer.next_deadline() == 32.0
    layer.handle_timer(31.999)
    assert txn.state is S.COMPLETED
    layer.handle_timer(32.0)
    assert txn.state is S.TERMINATED
    assert kinds(layer) == ["TransactionTerminated"]
    assert len(layer) == 0
    assert _retransmit(layer, txn) == "NewTransaction"  # forgotten: a new transaction


def test_reliable_non_invite_ends_on_final_response() -> None:
    layer, txn = _nist(S.TRYING, reliable=True)
    layer.respond(txn, resp(req_of(txn), 200), now=0.0)
    assert txn.state is S.TERMINATED
    assert sent(layer) == [OK]
    assert kinds(layer) == ["TransactionTerminated"]
    assert layer.next_deadline() is None
    assert len(layer) == 0


def test_non_invite_server_has_no_timers_before_the_final() -> None:
    layer, _txn = _nist(S.PROCEEDING)
    assert layer.next_deadline() is None
    assert len(layer) == 1


# ---------------------------------------------------------------------------------------------
# INVITE server (§17.2.1 + RFC 6026)

TRYING100 = "SIP/2.0 100 Trying"
BUSY = "SIP/2.0 486 Busy Here"


def _ist(state: S, reliable: bool = False) -> tuple[TransactionLayer, ServerTransaction]:
    layer = TransactionLayer()
    txn = new_server(layer, req("INVITE"), reliable=reliable)
    if state is S.COMPLETED or state is S.CONFIRMED:
        layer.respond(txn, resp(req_of(txn), 486), now=0.0)
    if state is S.CONFIRMED:
        assert isinstance(txn.last_response, Response)
        receive(layer, ack_for(req_of(txn), txn.last_response), 0.0, reliable=reliable)
    if state is S.ACCEPTED:
        layer.respond(txn, resp(req_of(txn), 200), now=0.0)
    sent(layer)
    kinds(layer)
    assert txn.state is state
    return layer, txn


def _ack(layer: TransactionLayer, txn: ServerTransaction) -> object:
    last = txn.last_response
    assert last is not None
    branch = None if last.status >= 300 else "z9hG4bKackbranch"
    return type(receive(layer, ack_for(req_of(txn), last, branch=branch), 1.0)).__name__


IST_TABLE = [
    (S.PROCEEDING, _retransmit, S.PROCEEDING, [], "Retransmission"),
    (S.PROCEEDING, _send(180), S.PROCEEDING, [RINGING], None),
    (S.PROCEEDING, _send(200), S.ACCEPTED, [OK], None),
    (S.PROCEEDING, _send(486), S.COMPLETED, [BUSY], None),
    (S.COMPLETED, _retransmit, S.COMPLETED, [BUSY], "Retransmission"),
    (S.COMPLETED, _ack, S.CONFIRMED, [], "Retransmission"),
    (S.CONFIRMED, _retransmit, S.CONFIRMED, [], "Retransmission"),
    (S.CONFIRMED, _ack, S.CONFIRMED, [], "Retransmission"),
    (S.ACCEPTED, _retransmit, S.ACCEPTED, [OK], "Retransmission"),
    (S.ACCEPTED, _ack, S.ACCEPTED, [], "AckForInvite"),
    (S.ACCEPTED, _send(200), S.ACCEPTED, [OK], None),
]


@pytest.mark.parametrize(("state", "action", "new_state", "wire", "result"), IST_TABLE)
def test_invite_server_transitions(
    state: S, action: Action, new_state: S, wire: list[str], result: object
) -> None:
    layer, txn = _ist(state)
    assert action(layer, txn) == result
    assert txn.state is new_state
    assert sent(layer) == wire
    assert layer.events() == []


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (S.COMPLETED, 200),
        (S.COMPLETED, 486),
        (S.COMPLETED, 180),
        (S.CONFIRMED, 200),
        (S.ACCEPTED, 180),
        (S.ACCEPTED, 486),
    ],
)
def test_invite_server_misuse_raises(state: S, status: int) -> None:
    layer, txn = _ist(state)
    with pytest.raises(LocalProtocolError):
        layer.respond(txn, resp(req_of(txn), status), now=1.0)


def test_respond_checks_status_method_and_owner() -> None:
    layer, txn = _ist(S.PROCEEDING)
    with pytest.raises(LocalProtocolError):
        layer.respond(txn, resp(req_of(txn), 700), now=0.0)
    with pytest.raises(LocalProtocolError):
        layer.respond(txn, resp(req("BYE"), 200), now=0.0)
    with pytest.raises(LocalProtocolError):
        TransactionLayer().respond(txn, resp(req_of(txn), 200), now=0.0)
    assert txn.state is S.PROCEEDING


def test_100_trying_after_200_ms_and_resent_on_retransmission() -> None:
    layer = TransactionLayer()
    txn = new_server(layer, req("INVITE"))
    assert layer.next_deadline() == pytest.approx(0.2)
    layer.handle_timer(0.199)
    assert sent(layer) == []
    layer.handle_timer(0.2)
    assert sent(layer) == [TRYING100]
    assert txn.last_response is not None and txn.last_response.status == 100
    assert isinstance(receive(layer, req_of(txn), 0.3), Retransmission)
    assert sent(layer) == [TRYING100]
    layer.respond(txn, resp(req_of(txn), 200), now=0.4)
    assert sent(layer) == [OK]


@pytest.mark.parametrize("status", [100, 180, 486])
def test_early_response_cancels_the_100_timer(status: int) -> None:
    layer = TransactionLayer()
    txn = new_server(layer, req("INVITE"))
    layer.respond(txn, resp(req_of(txn), status), now=0.1)
    assert [line.split()[1] for line in sent(layer)] == [str(status)]
    layer.handle_timer(0.3)
    assert TRYING100 not in sent(layer)
    assert txn.last_response is not None and txn.last_response.status == status


def test_timer_g_schedule_capped_at_t2_then_timer_h() -> None:
    layer, txn = _ist(S.COMPLETED)
    steps = fire_all(layer, 100.0)
    resends = [t for t, wire, _ in steps if wire == [BUSY]]
    assert resends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert steps[-1] == (32.0, [], ["TransactionTimeout", "TransactionTerminated"])
    assert txn.state is S.TERMINATED
    assert len(layer) == 0


def test_timer_h_runs_on_reliable_transport_without_g() -> None:
    layer, _txn = _ist(S.COMPLETED, reliable=True)
    steps = fire_all(layer, 100.0)
    assert steps == [(32.0, [], ["TransactionTimeout", "TransactionTerminated"])]


def test_ack_stops_g_and_timer_i_ends_confirmed() -> None:
    layer, _txn = _ist(S.CONFIRMED)
    steps = fire_all(layer, 100.0)
    assert steps == [(5.0, [], ["TransactionTerminated"])]
    assert len(layer) == 0


def test_reliable_ack_ends_invite_transaction_at_once() -> None:
    layer, txn = _ist(S.COMPLETED, reliable=True)
    assert isinstance(txn.last_response, Response)
    ack = ack_for(req_of(txn), txn.last_response)
    assert isinstance(receive(layer, ack, 1.0, reliable=True), Retransmission)
    assert txn.state is S.TERMINATED
    assert kinds(layer) == ["TransactionTerminated"]
    assert layer.next_deadline() is None


def test_2xx_retransmitted_until_ack_then_timer_l() -> None:
    layer, txn = _ist(S.ACCEPTED)
    steps = fire_all(layer, 10.0)
    assert [t for t, wire, _ in steps if wire == [OK]] == [0.5, 1.5, 3.5, 7.5]
    assert isinstance(txn.last_response, Response)
    ack = ack_for(req_of(txn), txn.last_response, branch="z9hG4bKnewbranch")
    outcome = receive(layer, ack, 10.0)
    assert isinstance(outcome, AckForInvite)
    assert outcome.transaction is txn and outcome.request is ack
    assert isinstance(receive(layer, ack, 10.5), Retransmission)  # a copy of the ACK
    steps = fire_all(layer, 100.0)
    assert steps == [(32.0, [], ["TransactionTerminated"])]
    assert isinstance(receive(layer, ack, 40.0), StrayAck)


def test_timer_l_without_ack_reports_timeout() -> None:
    layer, _txn = _ist(S.ACCEPTED)
    steps = fire_all(layer, 100.0)
    resends = [t for t, wire, _ in steps if wire == [OK]]
    assert resends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert steps[-1] == (32.0, [], ["TransactionTimeout", "TransactionTerminated"])
    assert len(layer) == 0


def test_reliable_2xx_is_not_retransmitted() -> None:
    layer, _txn = _ist(S.ACCEPTED, reliable=True)
    assert fire_all(layer, 100.0) == [(32.0, [], ["TransactionTimeout", "TransactionTerminated"])]


def test_two_2xx_from_forks_each_wait_for_their_ack() -> None:
    layer, txn = _ist(S.ACCEPTED)
    second = resp(req_of(txn), 200, tag="tt2")
    layer.respond(txn, second, now=0.1)
    assert sent(layer) == [OK]
    layer.handle_timer(0.5)
    assert sent(layer) == [OK, OK]
    first_ack = ack_for(req_of(txn), resp(req_of(txn), 200), branch="z9hG4bKa1")
    assert isinstance(receive(layer, first_ack, 0.6), AckForInvite)
    layer.handle_timer(1.5)
    (only,) = layer.datagrams_to_send()
    assert b";tag=tt2" in only[0]
    second_ack = ack_for(req_of(txn), second, branch="z9hG4bKa2")
    assert isinstance(receive(layer, second_ack, 1.6), AckForInvite)
    assert fire_all(layer, 100.0) == [(32.0, [], ["TransactionTerminated"])]


def test_tu_resending_an_acked_2xx_sends_it_without_waiting_again() -> None:
    layer, txn = _ist(S.ACCEPTED)
    ok = resp(req_of(txn), 200)
    assert isinstance(
        receive(layer, ack_for(req_of(txn), ok, branch="z9hG4bKa1"), 0.1), AckForInvite
    )
    layer.respond(txn, ok, now=0.2)
    assert sent(layer) == [OK]
    assert fire_all(layer, 100.0) == [(32.0, [], ["TransactionTerminated"])]


def test_stray_ack_is_returned_to_the_tu() -> None:
    layer = TransactionLayer()
    ack = req("ACK", branch="z9hG4bKnothing", to_tag="x")
    outcome = receive(layer, ack)
    assert outcome == StrayAck(ack) or (isinstance(outcome, StrayAck) and outcome.request is ack)
    assert len(layer) == 0


# ---------------------------------------------------------------------------------------------
# matching (§17.2.3, §9.2)


def test_same_branch_different_sent_by_or_method_are_different_transactions() -> None:
    layer = TransactionLayer()
    first = new_server(layer, req("INVITE"))
    other_host = new_server(layer, req("INVITE", sent_by="10.0.0.2:5060"))
    cancel = new_server(layer, req("CANCEL"))
    assert len({id(first), id(other_host), id(cancel)}) == 3
    assert len(layer) == 3
    assert layer.find_invite_for_cancel(cancel.request) is first
    assert layer.find_invite_for_cancel(req("CANCEL", branch="z9hG4bKother")) is None


def test_sent_by_host_matches_case_insensitively() -> None:
    layer = TransactionLayer()
    new_server(layer, req("OPTIONS", sent_by="Host.Example.COM:5060"))
    again = receive(layer, req("OPTIONS", sent_by="host.example.com:5060"))
    assert isinstance(again, Retransmission)


@pytest.mark.parametrize("branch", [None, "1234abcd", "z9hG4bK"])
def test_rfc2543_fallback_matching(branch: str | None) -> None:
    layer = TransactionLayer()
    invite = req("INVITE", branch=branch)
    txn = new_server(layer, invite)
    assert isinstance(receive(layer, req("INVITE", branch=branch)), Retransmission)
    # Any part of the identity that differs makes it a new request.
    for changed in (
        req("INVITE", branch=branch, cseq=2),
        req("INVITE", branch=branch, from_tag="other"),
        req("INVITE", branch=branch, call_id="call-2"),
        req("INVITE", branch=branch, uri="sip:carol@example.com"),
        req("INVITE", branch=branch, sent_by="10.0.0.9:5060"),
    ):
        assert isinstance(receive(layer, changed), NewTransaction)
    cancel = req("CANCEL", branch=branch)
    assert layer.find_invite_for_cancel(cancel) is txn
    layer.respond(txn, resp(invite, 486, tag="busytag"), now=0.0)
    sent(layer)
    # The ACK of a non-2xx carries the response's To tag; a wrong tag is no match.
    wrong = req("ACK", branch=branch, to_tag="othertag")
    assert isinstance(receive(layer, wrong), StrayAck)
    right = req("ACK", branch=branch, to_tag="busytag")
    assert isinstance(receive(layer, right), Retransmission)
    assert txn.state is S.CONFIRMED
    layer.handle_timer(5.0)
    assert txn.state is S.TERMINATED
    assert txn.key not in layer._server and all(t is not txn for t in layer._server.values())


def test_rfc2543_ack_for_2xx_goes_through_the_ack_index() -> None:
    layer = TransactionLayer()
    txn = new_server(layer, req("INVITE", branch=None))
    layer.respond(txn, resp(req_of(txn), 200, tag="t9"), now=0.0)
    outcome = receive(layer, req("ACK", branch=None, to_tag="t9"), 0.1)
    assert isinstance(outcome, AckForInvite) and outcome.transaction is txn


def test_context_slot_is_free_for_the_tu() -> None:
    layer = TransactionLayer()
    txn = new_server(layer, req("OPTIONS"))
    assert txn.context is None
    txn.context = {"call": 1}
    assert txn.method == "OPTIONS" and not txn.is_invite and not txn.reliable
    assert txn.source == SRC and txn.response_destination == SRC


# ---------------------------------------------------------------------------------------------
# no leaks


def test_ten_thousand_transactions_leave_nothing_behind() -> None:
    layer = TransactionLayer(TimerConfig())
    now = 0.0
    peak_heap = 0
    ended: list[object] = []
    timeouts = 0
    for i in range(10_000):
        now += 0.001
        kind = i % 4
        reliable = i % 3 == 0
        if kind == 0:  # non-INVITE
            txn = new_server(layer, req("OPTIONS", branch=f"z9hG4bKn{i}"), now, reliable=reliable)
            layer.respond(txn, resp(req_of(txn), 200), now=now)
        elif kind == 1:  # INVITE rejected and ACKed
            txn = new_server(layer, req("INVITE", branch=f"z9hG4bKr{i}"), now, reliable=reliable)
            busy = resp(req_of(txn), 486)
            layer.respond(txn, busy, now=now)
            receive(layer, ack_for(req_of(txn), busy), now, reliable=reliable)
        elif kind == 2:  # INVITE answered and ACKed
            txn = new_server(layer, req("INVITE", branch=f"z9hG4bKa{i}", call_id=f"c{i}"), now)
            ok = resp(req_of(txn), 200)
            layer.respond(txn, ok, now=now)
            outcome = receive(layer, ack_for(req_of(txn), ok, branch=f"z9hG4bKack{i}"), now)
            assert isinstance(outcome, AckForInvite)
        else:  # INVITE timed out waiting for the ACK
            txn = new_server(layer, req("INVITE", branch=f"z9hG4bKt{i}"), now)
            layer.respond(txn, resp(req_of(txn), 603), now=now)
        layer.handle_timer(now)
        layer.datagrams_to_send()
        for event in layer.events():
            ended += [event.transaction] if isinstance(event, TransactionTerminated) else []
            timeouts += isinstance(event, TransactionTimeout)
        peak_heap = max(peak_heap, len(layer._heap))
    live_peak = len(layer)
    # Every live transaction holds at most three timers; cancelled ones are compacted away.
    assert peak_heap <= 2 * 3 * live_peak + 200
    layer.handle_timer(now + 64.0)
    layer.handle_timer(now + 200.0)
    for event in layer.events():
        ended += [event.transaction] if isinstance(event, TransactionTerminated) else []
        timeouts += isinstance(event, TransactionTimeout)
    assert len(layer) == 0
    assert layer.next_deadline() is None
    assert layer._heap == []
    assert layer._server == {} and layer._acks == {} and layer._client == {}
    assert len(ended) == len({id(t) for t in ended}) == 10_000
    assert timeouts == 2_500  # the 603s never ACKed: Timer H
