"""Memory held by the authentication state after a flood of failures, and after expiry.

20,000 wrong-password REGISTERs with random user names (each answering a fresh,
valid nonce, so every one reaches digest verification and the throttle) go
through an :class:`~sdpbx.authn.Authenticator` with the default throttle, first
from one source, then from 20,000 spoofed sources. tracemalloc reports what the
sans-IO objects (throttle tables, nonce-count table) still hold, then what is
left once :meth:`Authenticator.expire` runs after the block and window ended.

Run: .venv/bin/python benchmarks/bench_auth_flood.py
"""

from __future__ import annotations

import gc
import secrets
import tracemalloc

import anyio

from sdpbx.authn import Authenticator, Challenge
from sdpbx.sip.auth import DigestChallenge, NonceManager, build_authorization
from sdpbx.sip.message import Request, parse_message
from sdpbx.sip.throttle import FailureThrottle
from sdpbx.transport.base import Peer
from sdpbx.users import MemoryUserBackend, SipUser

REALM = "pbx.example.com"
FLOOD = 20_000
OURS = ("*sdpbx/sip/throttle.py", "*sdpbx/sip/nonce.py", "*sdpbx/sip/auth.py", "*sdpbx/authn.py")


class Clock:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def register(user: str, auth: str | None) -> Request:
    lines = [
        f"REGISTER sip:{REALM} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{secrets.token_hex(6)}",
        f"From: <sip:{user}@{REALM}>;tag=1",
        f"To: <sip:{user}@{REALM}>",
        f"Call-ID: {secrets.token_hex(8)}",
        "CSeq: 1 REGISTER",
        "Contact: <sip:x@192.0.2.1:5060>",
    ]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    message = parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def held() -> int:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, pattern) for pattern in OURS]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def flood(spoofed: bool) -> None:
    clock = Clock()
    auth = Authenticator(
        MemoryUserBackend([SipUser("alice", "s3cret")]),
        realm_for=REALM,
        nonces=NonceManager(secrets.token_bytes(32)),
        throttle=FailureThrottle(limit=10, block_for=300, source_limit=50),
        clock=clock,
    )
    before = held()
    for i in range(FLOOD):
        user = secrets.token_hex(6)
        host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" if spoofed else "192.0.2.1"
        peer = Peer("UDP", host, 5060)
        outcome = auth.challenge(register(user, None), proxy=False)
        assert isinstance(outcome, Challenge)
        challenge = DigestChallenge.parse(outcome.headers[-1][1])
        creds = build_authorization(
            challenge,
            username=user,
            password="guess",
            method="REGISTER",
            uri=f"sip:{REALM}",
        )
        await auth.authenticate(register(user, creds.to_header_value()), peer, proxy=False)
        clock.now += 0.00025  # 4,000 requests a second, as the probe sent them
    after = held()
    throttle = auth.throttle
    assert throttle is not None
    entries = len(throttle)
    clock.now += 400.0  # past the block and the window
    auth.expire(clock.now)
    expired = held()
    label = "20,000 spoofed sources" if spoofed else "one source"
    print(
        f"{label:24} failures={auth.stats.failures:6} drops={auth.stats.drops:6}"
        f" entries={entries:6}  held after flood {(after - before) / 1024:8.1f} KiB"
        f"  after expiry {(expired - before) / 1024:6.1f} KiB  (throttle now {len(throttle)})"
    )


async def main() -> None:
    tracemalloc.start()
    await flood(spoofed=False)
    await flood(spoofed=True)


if __name__ == "__main__":
    anyio.run(main)
