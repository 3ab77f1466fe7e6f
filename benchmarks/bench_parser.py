"""INVITE parse + serialise throughput of the sans-IO core.

Prints messages per second for three paths a proxy sees:

- parse + bytes() of an unchanged message (the raw bytes are reused);
- parse + the accessors routing needs (top Via, CSeq, Call-ID, tags);
- parse + a forwarding edit (new top Via, Max-Forwards - 1) + serialise.

Usage: python benchmarks/bench_parser.py [SECONDS_PER_CASE]
"""

from __future__ import annotations

import sys
import time

from sdpbx.sip import Request, parse_message

INVITE = (
    b"INVITE sip:service@127.0.0.1:5090 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5091;branch=z9hG4bK-27453-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5091>;tag=27453SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5090>\r\n"
    b"Call-ID: 1-27453@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:5091\r\n"
    b"Max-Forwards: 70\r\n"
    b"Subject: Performance Test\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 129\r\n"
    b"\r\n"
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def bench(name: str, fn: object, seconds: float) -> None:
    assert callable(fn)
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            fn()
        n += 1000
        now = time.perf_counter()
        if now >= deadline:
            break
    rate = n / (now - start)
    print(f"{name:<44} {rate:>10,.0f} msg/s  {1e6 / rate:6.2f} us/msg")


def unchanged() -> None:
    bytes(parse_message(INVITE))


def accessors() -> None:
    m = parse_message(INVITE)
    _ = (m.top_via.branch, m.cseq.method, m.call_id, m.from_.tag, m.to.tag, m.max_forwards)


def forwarded() -> None:
    m = parse_message(INVITE)
    assert isinstance(m, Request)
    headers = m.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabcdef")
    headers = headers.set("Max-Forwards", str((m.max_forwards or 70) - 1))
    bytes(m.replace(headers=headers))


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    print(f"INVITE of {len(INVITE)} bytes, Python {sys.version.split()[0]}")
    bench("parse + serialise (unchanged)", unchanged, secs)
    bench("parse + routing accessors", accessors, secs)
    bench("parse + forward edit + serialise", forwarded, secs)
