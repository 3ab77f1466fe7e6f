"""How many Digest verifications per second one core sustains.

Every REGISTER refresh costs one verify, so this bounds registrar throughput.
Run: python benchmarks/bench_digest.py
"""

from __future__ import annotations

import time

from sdpbx.sip.auth import (
    DigestChallenge,
    DigestCredentials,
    DigestServer,
    NonceManager,
    UserSecret,
    build_authorization,
)

REALM = "pbx.example.com"
ROUNDS = 20_000


def bench(algorithm: str, secret: UserSecret, *, parse: bool) -> float:
    """Verifications per second of distinct valid responses (each nonce used once)."""
    server = DigestServer(NonceManager(b"benchmark secret 0123456789", max_tracked=ROUNDS))
    now = 1000.0
    headers: list[str] = []
    for _ in range(ROUNDS):
        offered = server.challenges(REALM, now)
        challenge = next(c for c in offered if c.algorithm == algorithm)
        creds = build_authorization(
            challenge,
            username="alice",
            password="secret",
            method="REGISTER",
            uri="sip:pbx.example.com",
            cnonce="0a4f113b",
        )
        headers.append(creds.to_header_value())
    parsed = [DigestCredentials.parse(h) for h in headers]
    start = time.perf_counter()
    if parse:
        for header in headers:
            server.verify(
                DigestCredentials.parse(header),
                method="REGISTER",
                secret=secret,
                now=now,
                expected_realm=REALM,
            )
    else:
        for creds in parsed:
            server.verify(creds, method="REGISTER", secret=secret, now=now, expected_realm=REALM)
    elapsed = time.perf_counter() - start
    return ROUNDS / elapsed


def bench_parse_challenge() -> float:
    value = DigestChallenge(REALM, "x" * 43, "SHA-256", ("auth",), "0" * 32).to_header_value()
    start = time.perf_counter()
    for _ in range(ROUNDS):
        DigestChallenge.parse(value)
    return ROUNDS / (time.perf_counter() - start)


def main() -> None:
    password = UserSecret(password="secret")
    hashed = UserSecret.hashed("alice", REALM, "secret")
    for algorithm in ("SHA-256", "MD5"):
        for label, secret in (("password", password), ("stored HA1", hashed)):
            rate = bench(algorithm, secret, parse=False)
            print(f"verify {algorithm:7} {label:10}          {rate:10,.0f} /s")
        rate = bench(algorithm, hashed, parse=True)
        print(f"verify {algorithm:7} stored HA1 + parse  {rate:10,.0f} /s")
    print(f"parse challenge header                {bench_parse_challenge():10,.0f} /s")


if __name__ == "__main__":
    main()
