"""Transactions per second through the sans-IO transaction layer, and memory per transaction.

The budget (DESIGN.md): ~0.6 ms of CPU per B2BUA call for ~14 messages, so one transaction's
bookkeeping (create, match a retransmission, respond, expire) must stay in the microseconds.
Requests are parsed before the clock starts (parsing is bench_parser.py's job). "cold" runs
read the lazy accessors (top Via, CSeq, tags) for the first time inside the measured region,
as a bare receive path does; "warm" runs read them before, as when the dialog layer or the
router already did, so they time the transaction layer alone.
Run: python benchmarks/bench_transactions.py [count]
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable

from sdpbx.sip import Request, Response, make_response, parse_message
from sdpbx.sip.transaction import AckForInvite, NewTransaction, TransactionLayer

PEER = ("192.0.2.1", 5060)


def request(method: str, i: int, *, branch: str | None = None, to_tag: str = "") -> Request:
    text = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch or f'z9hG4bK{method[:3]}{i:08d}'}"
        ";rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag=from{i}\r\n"
        f"To: <sip:bob@example.com>{to_tag}\r\n"
        f"Call-ID: {i:016x}@192.0.2.1\r\n"
        f"CSeq: 1 {method}\r\n"
        "Contact: <sip:alice@192.0.2.1:5060>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def fresh(message: Request) -> Request:
    """The same request with empty accessor caches (as if just parsed)."""
    copy = parse_message(bytes(message))
    assert isinstance(copy, Request)
    return copy


def warm(item: tuple[object, ...]) -> None:
    """Read every accessor the layer uses, so only the layer's own work is timed."""
    for message in item:
        if isinstance(message, Request | Response):
            _ = (message.top_via, message.cseq, message.from_, message.to, message.call_id)
            bytes(message)


def run(
    label: str,
    n: int,
    prepare: Callable[[int], tuple[object, ...]],
    body: Callable[..., None],
    warmed: bool,
) -> None:
    items = [prepare(i) for i in range(n)]
    if warmed:
        for item in items:
            warm(item)
        label += " [warm]"
    layer = TransactionLayer()
    gc.collect()
    start = time.perf_counter()
    now = 0.0
    for item in items:
        now += 0.0001
        body(layer, now, *item)
    layer.handle_timer(now + 100.0)  # Timers J / I / L / K fire: everything ends
    layer.datagrams_to_send()
    layer.events()
    elapsed = time.perf_counter() - start
    assert len(layer) == 0
    print(f"{label:<65} {n / elapsed:>8,.0f} txn/s {elapsed / n * 1e6:6.1f} us/txn")


def non_invite_server(n: int, warmed: bool) -> None:
    def prepare(i: int) -> tuple[object, ...]:
        r = request("OPTIONS", i)
        return (r, fresh(r), make_response(r, 200, to_tag="t1"))

    def body(layer: TransactionLayer, now: float, r: Request, again: Request, ok: Response) -> None:
        outcome = layer.receive_request(
            r, source=PEER, response_destination=PEER, reliable=False, now=now
        )
        assert isinstance(outcome, NewTransaction)
        layer.respond(outcome.transaction, ok, now=now)
        layer.receive_request(
            again, source=PEER, response_destination=PEER, reliable=False, now=now
        )
        layer.datagrams_to_send()
        layer.handle_timer(now)

    run("non-INVITE server (new, 200, retransmission, Timer J)", n, prepare, body, warmed)


def invite_server_2xx(n: int, warmed: bool) -> None:
    def prepare(i: int) -> tuple[object, ...]:
        r = request("INVITE", i)
        ringing = make_response(r, 180, to_tag="t1")
        ok = make_response(r, 200, to_tag="t1")
        ack = request("ACK", i, branch=f"z9hG4bKack{i:08d}", to_tag=";tag=t1")
        return (r, ringing, ok, ack)

    def body(
        layer: TransactionLayer, now: float, r: Request, ring: Response, ok: Response, ack: Request
    ) -> None:
        outcome = layer.receive_request(
            r, source=PEER, response_destination=PEER, reliable=False, now=now
        )
        assert isinstance(outcome, NewTransaction)
        txn = outcome.transaction
        layer.respond(txn, ring, now=now)
        layer.respond(txn, ok, now=now)
        matched = layer.receive_request(
            ack, source=PEER, response_destination=PEER, reliable=False, now=now
        )
        assert isinstance(matched, AckForInvite)
        layer.datagrams_to_send()
        layer.handle_timer(now)

    run("INVITE server (new, 180, 200, ACK matched, Timer L)", n, prepare, body, warmed)


def invite_server_rejected(n: int, warmed: bool) -> None:
    def prepare(i: int) -> tuple[object, ...]:
        r = request("INVITE", i)
        busy = make_response(r, 486, to_tag="t1")
        ack = request("ACK", i, branch=r.top_via.branch, to_tag=";tag=t1")
        return (fresh(r), busy, ack)

    def body(layer: TransactionLayer, now: float, r: Request, busy: Response, ack: Request) -> None:
        outcome = layer.receive_request(
            r, source=PEER, response_destination=PEER, reliable=False, now=now
        )
        assert isinstance(outcome, NewTransaction)
        layer.respond(outcome.transaction, busy, now=now)
        layer.receive_request(ack, source=PEER, response_destination=PEER, reliable=False, now=now)
        layer.datagrams_to_send()
        layer.handle_timer(now)

    run("INVITE server (new, 486, ACK absorbed, Timer I)", n, prepare, body, warmed)


def non_invite_client(n: int, warmed: bool) -> None:
    def prepare(i: int) -> tuple[object, ...]:
        r = request("OPTIONS", i)
        ok = parse_message(bytes(make_response(r, 200, to_tag="t1")))
        return (r, ok)

    def body(layer: TransactionLayer, now: float, r: Request, ok: Response) -> None:
        layer.create_client(r, destination=PEER, reliable=False, now=now)
        layer.receive_response(ok, now=now)
        layer.datagrams_to_send()
        layer.handle_timer(now)

    run("non-INVITE client (create, 200, Timer K)", n, prepare, body, warmed)


def memory(n: int) -> None:
    """Bytes the layer holds per live transaction (messages themselves not counted)."""
    for label, method, status in (
        ("non-INVITE server in TRYING", "OPTIONS", None),
        ("INVITE server in PROCEEDING (100 timer armed)", "INVITE", None),
        ("INVITE server in ACCEPTED (2xx retransmitting)", "INVITE", 200),
    ):
        requests = [request(method, i) for i in range(n)]
        for r in requests:  # accessors parsed outside the measurement
            _ = (r.top_via, r.cseq, r.from_, r.to, r.call_id)
        responses = [make_response(r, status, to_tag="t1") for r in requests] if status else []
        for resp in responses:
            _ = (resp.to, bytes(resp))
        layer = TransactionLayer()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for i, r in enumerate(requests):
            outcome = layer.receive_request(
                r, source=PEER, response_destination=PEER, reliable=False, now=0.0
            )
            assert isinstance(outcome, NewTransaction)
            if status:
                layer.respond(outcome.transaction, responses[i], now=0.0)
            layer.datagrams_to_send()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        print(f"memory: {label:<50} {grown / n:8.0f} bytes/txn")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    print(f"python {sys.version.split()[0]}, {n} transactions per run")
    print("cold: the message accessors (Via, CSeq, tags) are parsed inside the timed region")
    print("warm: they were read before, so only the transaction layer is timed\n")
    for warmed in (False, True):
        non_invite_server(n, warmed)
        invite_server_2xx(n, warmed)
        invite_server_rejected(n, warmed)
        non_invite_client(n, warmed)
    memory(min(n, 20_000))


if __name__ == "__main__":
    main()
