"""Random interleavings of messages, TU calls and timers.

Whatever order things happen in, the layer raises nothing but LocalProtocolError (for a TU
call the state forbids), and once every pending request has been answered and enough time has
passed, nothing is left: no transaction, no index entry, no timer.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdpbx.sip import LocalProtocolError, Request, make_response, parse_message
from sdpbx.sip.transaction import (
    ClientTransaction,
    NewTransaction,
    ServerTransaction,
    Transaction,
    TransactionLayer,
    TransactionState,
)

S = TransactionState
METHODS = ("INVITE", "OPTIONS", "BYE", "CANCEL")
STATUSES = (100, 180, 183, 200, 202, 302, 404, 486, 500, 603)
PEER = ("10.0.0.1", 5060)


def request(method: str, branch: str | None, *, to_tag: str | None = None) -> Request:
    via = "Via: SIP/2.0/UDP 10.0.0.1:5060" + (f";branch={branch}" if branch else "")
    text = "\r\n".join(
        [
            f"{method} sip:bob@example.com SIP/2.0",
            via,
            "From: <sip:alice@example.com>;tag=f1",
            "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
            "Call-ID: prop-call",
            f"CSeq: 1 {method}",
            "Content-Length: 0",
            "",
            "",
        ]
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


action = st.one_of(
    st.tuples(st.just("client"), st.sampled_from(METHODS), st.booleans(), st.integers(0, 5)),
    st.tuples(st.just("response"), st.integers(0, 20), st.sampled_from(STATUSES), st.booleans()),
    st.tuples(
        st.just("request"),
        st.sampled_from(METHODS),
        st.booleans(),
        st.sampled_from(["z9hG4bKa", "z9hG4bKb", "z9hG4bKc", "legacy1", None]),
    ),
    st.tuples(st.just("respond"), st.integers(0, 20), st.sampled_from(STATUSES), st.booleans()),
    st.tuples(st.just("ack"), st.integers(0, 20), st.booleans(), st.booleans()),
    st.tuples(st.just("set_ack"), st.integers(0, 20), st.booleans(), st.booleans()),
    st.tuples(st.just("wait"), st.floats(0.0, 40.0), st.booleans(), st.booleans()),
)


#: Each transaction's request, kept as a TU keeps it: the layer lets go of it in COMPLETED.
_REQUESTS: dict[Transaction, Request] = {}


def _step(
    layer: TransactionLayer,
    clients: list[ClientTransaction],
    servers: list[ServerTransaction],
    step: tuple[Any, ...],
    now: float,
) -> float:
    kind = step[0]
    if kind == "client":
        _, method, reliable, n = step
        sent = request(method, f"z9hG4bKcl{len(clients)}x{n}")
        txn = layer.create_client(sent, destination=PEER, reliable=reliable, now=now)
        _REQUESTS[txn] = sent
        clients.append(txn)
    elif kind == "response" and clients:
        _, index, status, other_tag = step
        txn = clients[index % len(clients)]
        response = make_response(_REQUESTS[txn], status, to_tag="u2" if other_tag else "u1")
        assert layer.receive_response(response, now=now) in (txn, None)
    elif kind == "request":
        _, method, reliable, branch = step
        received = request(method, branch)
        outcome = layer.receive_request(
            received,
            source=PEER,
            response_destination=PEER,
            reliable=reliable,
            now=now,
        )
        if isinstance(outcome, NewTransaction):
            _REQUESTS[outcome.transaction] = received
            servers.append(outcome.transaction)
            if method == "CANCEL":
                layer.find_invite_for_cancel(received)
    elif kind == "respond" and servers:
        _, index, status, other_tag = step
        txn = servers[index % len(servers)]
        response = make_response(_REQUESTS[txn], status, to_tag="s2" if other_tag else "s1")
        layer.respond(txn, response, now=now)
    elif kind == "ack" and servers:
        _, index, same_branch, reliable = step
        txn = servers[index % len(servers)]
        last = txn.last_response
        tag = last.to.tag if last is not None else None
        branch = _REQUESTS[txn].top_via.branch if same_branch else "z9hG4bKack"
        ack = request("ACK", branch, to_tag=tag)
        layer.receive_request(
            ack, source=PEER, response_destination=PEER, reliable=reliable, now=now
        )
    elif kind == "set_ack" and clients:
        _, index, _, _ = step
        txn = clients[index % len(clients)]
        txn.set_ack(request("ACK", "z9hG4bKuacack", to_tag="u1"), PEER)
    elif kind == "wait":
        now += step[1]
    layer.handle_timer(now)
    return now


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(action, max_size=60))
def test_random_interleavings_end_clean(steps: list[tuple[Any, ...]]) -> None:
    layer = TransactionLayer()
    _REQUESTS.clear()
    clients: list[ClientTransaction] = []
    servers: list[ServerTransaction] = []
    now = 0.0
    for step in steps:
        try:
            now = _step(layer, clients, servers, step, now)
        except LocalProtocolError:
            pass
        layer.datagrams_to_send()
        while layer.next_event() is not None:
            pass
        deadline = layer.next_deadline()
        assert deadline is None or deadline > now
    # A TU answers every request it was given, and a UAS answers every INVITE it ringed.
    for server in servers:
        if server.state in (S.TRYING, S.PROCEEDING):
            layer.respond(server, make_response(_REQUESTS[server], 500, to_tag="end"), now=now)
    for client in clients:
        if client.state is S.PROCEEDING and client.is_invite:
            layer.receive_response(make_response(_REQUESTS[client], 487, to_tag="end"), now=now)
    for _ in range(3):
        now += 100.0
        layer.handle_timer(now)
    assert len(layer) == 0
    assert layer.next_deadline() is None and layer._heap == []
    assert layer._client == {} and layer._server == {} and layer._acks == {}
    assert all(t.state is S.TERMINATED for t in (*clients, *servers))
