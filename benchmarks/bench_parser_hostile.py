"""CPU per message for a plain OPTIONS against the worst 60 KB datagrams.

Issue 13 item 16: many Via values, a 30,000-token Require and 3,000 header
lines cost 5-7 ms each against ~0.5 ms for an OPTIONS through the whole
stack. This measures the parser's share: parse_message plus the accessors a
server reads (top Via, CSeq, Require/Supported, every Via), with
SipParseError counted as the (cheap) outcome it should be.

Usage: python benchmarks/bench_parser_hostile.py [ROUNDS]
"""

from __future__ import annotations

import sys
import time

from sdpbx.sip import SipParseError, parse_message

HEAD = (
    b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=1\r\n"
    b"To: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: hostile-1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\n"
)
END = b"Content-Length: 0\r\n\r\n"
SIZE = 60_000


def fill(line: bytes) -> bytes:
    return HEAD + line * ((SIZE - len(HEAD)) // len(line)) + END


CASES = {
    "plain OPTIONS": HEAD + END,
    "many Via lines": fill(b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n"),
    "one Via line, many values": HEAD
    + b"Via: "
    + b",".join([b"SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx"] * 1600)
    + b"\r\n"
    + END,
    "30,000-token Require": HEAD + b"Require: " + b",".join([b"a"] * 29_000) + b"\r\n" + END,
    "3,000 header lines": fill(b"X-Hostile-Header: a\r\n"),
}


def handle(data: bytes) -> None:
    try:
        m = parse_message(data)
        _ = (m.top_via.branch, m.cseq.method, m.require, m.supported, m.via)
    except SipParseError:
        pass


def per_message_us(data: bytes, rounds: int) -> float:
    start = time.process_time()
    for _ in range(rounds):
        handle(data)
    return (time.process_time() - start) / rounds * 1e6


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for name, data in CASES.items():
        outcome = "parsed"
        try:
            parse_message(data)
        except SipParseError as exc:
            outcome = f"{exc.status} {exc.reason[:40]}"
        print(f"{name:<28} {len(data):>6} B {per_message_us(data, rounds):>9.1f} us  {outcome}")
