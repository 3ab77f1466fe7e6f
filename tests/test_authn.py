"""The Authenticator's decisions, request by request (no stack needed: it does no I/O)."""

from __future__ import annotations

import secrets
from pathlib import Path

import anyio
import pytest

from sdpbx.authn import (
    EXPIRE_INTERVAL,
    Authenticated,
    Authenticator,
    Challenge,
    Drop,
    Reject,
    Unavailable,
    request_domain,
)
from sdpbx.config import ProxyConfig
from sdpbx.sip.auth import (
    DigestChallenge,
    DigestCredentials,
    NonceManager,
    build_authorization,
    compute_ha1,
)
from sdpbx.sip.message import Request, parse_message
from sdpbx.sip.throttle import FailureThrottle
from sdpbx.testing import FakeClock
from sdpbx.transport.base import Peer
from sdpbx.users import MemoryUserBackend, SipUser, UserBackendError, UserRejected

pytestmark = pytest.mark.anyio

REALM = "example.com"
PEER = Peer("UDP", "127.0.0.1", 5099)
SECRET = b"0123456789abcdef0123456789abcdef"
BOTH = ("SHA-256", "MD5")


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def register(
    *,
    user: str = "alice",
    auth: tuple[str, ...] = (),
    header: str = "Authorization",
    method: str = "REGISTER",
) -> Request:
    lines = [
        f"{method} sip:{REALM} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK{secrets.token_hex(6)}",
        f"From: <sip:{user}@{REALM}>;tag=1",
        f"To: <sip:{user}@{REALM}>",
        "Call-ID: authn-test",
        f"CSeq: 1 {method}",
        f"Contact: <sip:{user}@127.0.0.1:5099>",
        *(f"{header}: {value}" for value in auth),
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def make(
    users: list[SipUser] | None = None,
    *,
    clock: Clock | None = None,
    throttle: FailureThrottle | None = None,
    nonces: NonceManager | None = None,
    **kwargs: object,
) -> Authenticator:
    backend = MemoryUserBackend(users if users is not None else [SipUser("alice", "s3cret")])
    # These tests walk SHA-256 and MD5 flows alike; the default (MD5 alone) has its own test.
    kwargs.setdefault("algorithms", BOTH)
    return Authenticator(
        backend,
        realm_for=REALM,
        nonces=nonces if nonces is not None else NonceManager(SECRET),
        throttle=throttle,
        clock=clock or Clock(),
        **kwargs,  # type: ignore[arg-type]
    )


def challenges_of(outcome: object) -> list[DigestChallenge]:
    assert isinstance(outcome, Challenge), outcome
    return [DigestChallenge.parse(value) for _, value in outcome.headers]


def answer(
    challenge: DigestChallenge,
    password: str = "s3cret",
    *,
    username: str = "alice",
    nc: int = 1,
) -> str:
    creds = build_authorization(
        challenge,
        username=username,
        password=password,
        method="REGISTER",
        uri=f"sip:{REALM}",
        nc=nc,
    )
    return creds.to_header_value()


async def first_challenge(auth: Authenticator, algorithm: str | None = None) -> DigestChallenge:
    """The challenge for ``algorithm``, or the first one offered."""
    found = challenges_of(await auth.authenticate(register(), PEER, proxy=False))
    return next(c for c in found if algorithm is None or c.algorithm == algorithm)


async def test_default_challenge_is_md5_alone() -> None:
    """Kamailio's and Asterisk's default: baresip 1.0 fails when SHA-256 is offered
    at all, SIPp 3.6 and sipsak answer only the first challenge."""
    auth = Authenticator(
        MemoryUserBackend([SipUser("alice", "s3cret")]),
        realm_for=REALM,
        nonces=NonceManager(SECRET),
        clock=Clock(),
    )
    found = challenges_of(await auth.authenticate(register(), PEER, proxy=False))
    assert [c.algorithm for c in found] == ["MD5"]
    outcome = await auth.authenticate(register(auth=(answer(found[0]),)), PEER, proxy=False)
    assert isinstance(outcome, Authenticated)


async def test_python_and_config_defaults_agree() -> None:
    from_config = Authenticator.from_config(
        ProxyConfig(), MemoryUserBackend([]), nonces=NonceManager(SECRET)
    )
    plain = Authenticator(MemoryUserBackend([]), realm_for=REALM, nonces=NonceManager(SECRET))
    assert from_config.digest.algorithms == plain.digest.algorithms == ("MD5",)


async def test_no_credentials_challenges_sha256_then_md5() -> None:
    auth = make()
    outcome = await auth.authenticate(register(), PEER, proxy=False)
    assert isinstance(outcome, Challenge)
    assert outcome.status == 401
    assert [name for name, _ in outcome.headers] == ["WWW-Authenticate", "WWW-Authenticate"]
    found = challenges_of(outcome)
    assert [c.algorithm for c in found] == ["SHA-256", "MD5"]
    assert all(c.realm == REALM and c.qop == ("auth",) and not c.stale for c in found)
    assert found[0].nonce == found[1].nonce
    assert auth.stats.challenges == 1


async def test_proxy_challenge_is_407() -> None:
    auth = make()
    outcome = await auth.authenticate(register(method="INVITE"), PEER, proxy=True)
    assert isinstance(outcome, Challenge)
    assert outcome.status == 407
    assert {name for name, _ in outcome.headers} == {"Proxy-Authenticate"}


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
async def test_correct_password_authenticates(algorithm: str) -> None:
    auth = make()
    challenge = await first_challenge(auth, algorithm)
    outcome = await auth.authenticate(register(auth=(answer(challenge),)), PEER, proxy=False)
    assert isinstance(outcome, Authenticated)
    assert outcome.user.username == "alice"
    assert auth.stats.successes == 1
    assert auth.stats.failures == 0


async def test_proxy_authorization_is_read_for_proxy() -> None:
    auth = make()
    found = challenges_of(await auth.authenticate(register(), PEER, proxy=True))
    request = register(auth=(answer(found[0]),), header="Proxy-Authorization")
    assert isinstance(await auth.authenticate(request, PEER, proxy=True), Authenticated)
    # The same header is not looked at by a registrar (Authorization only).
    assert isinstance(await auth.authenticate(request, PEER, proxy=False), Challenge)


async def test_ha1_only_user_is_offered_what_its_hash_can_verify() -> None:
    ha1 = compute_ha1("alice", REALM, "s3cret", "MD5")
    auth = make([SipUser("alice", ha1=(("MD5", ha1),))])
    sha = await first_challenge(auth, "SHA-256")
    outcome = await auth.authenticate(register(auth=(answer(sha),)), PEER, proxy=False)
    assert [c.algorithm for c in challenges_of(outcome)] == ["MD5"]
    md5 = await first_challenge(auth, "MD5")
    outcome = await auth.authenticate(register(auth=(answer(md5),)), PEER, proxy=False)
    assert isinstance(outcome, Authenticated)


async def test_wrong_password_rechallenged_then_403_then_dropped() -> None:
    clock = Clock()
    auth = make(clock=clock, throttle=FailureThrottle(limit=3, window=60, block_for=300))
    outcomes = []
    for _ in range(3):
        challenge = await first_challenge(auth)
        request = register(auth=(answer(challenge, "wrong"),))
        outcomes.append(await auth.authenticate(request, PEER, proxy=False))
    assert isinstance(outcomes[0], Challenge)
    assert isinstance(outcomes[1], Challenge)
    assert outcomes[2] == Reject(403, "Too many authentication failures")
    # Blocked: even the right password is dropped now, and so is a bare request.
    challenge = next(c for c in challenges_of(outcomes[1]))
    dropped = await auth.authenticate(register(auth=(answer(challenge),)), PEER, proxy=False)
    assert isinstance(dropped, Drop)
    assert isinstance(await auth.authenticate(register(), PEER, proxy=False), Drop)
    # Another source is not affected.
    other = Peer("UDP", "127.0.0.2", 5099)
    assert isinstance(await auth.authenticate(register(), other, proxy=False), Challenge)
    assert auth.stats.failures == 3
    assert auth.stats.drops == 2
    # The block ends.
    clock.now += 301
    fresh = await first_challenge(auth)
    outcome = await auth.authenticate(register(auth=(answer(fresh),)), PEER, proxy=False)
    assert isinstance(outcome, Authenticated)


async def test_wrong_password_without_throttle_keeps_challenging() -> None:
    auth = make()
    for _ in range(20):
        challenge = await first_challenge(auth)
        outcome = await auth.authenticate(
            register(auth=(answer(challenge, "nope"),)), PEER, proxy=False
        )
        assert isinstance(outcome, Challenge)
    assert auth.stats.failures == 20


async def test_unknown_user_looks_like_wrong_password() -> None:
    auth = make(throttle=FailureThrottle(limit=5))
    challenge = await first_challenge(auth)
    request = register(user="mallory", auth=(answer(challenge, username="mallory"),))
    outcome = await auth.authenticate(request, PEER, proxy=False)
    assert isinstance(outcome, Challenge)
    assert auth.stats.failures == 1


async def test_replayed_nonce_count_gets_a_fresh_challenge() -> None:
    auth = make()
    challenge = await first_challenge(auth)
    value = answer(challenge, nc=1)
    assert isinstance(
        await auth.authenticate(register(auth=(value,)), PEER, proxy=False), Authenticated
    )
    replay = await auth.authenticate(register(auth=(value,)), PEER, proxy=False)
    fresh = challenges_of(replay)
    assert fresh[0].nonce != challenge.nonce
    assert not fresh[0].stale
    # The next count on the same nonce is fine.
    value2 = answer(challenge, nc=2)
    assert isinstance(
        await auth.authenticate(register(auth=(value2,)), PEER, proxy=False), Authenticated
    )
    assert auth.stats.failures == 0


async def test_expired_nonce_is_stale() -> None:
    clock = Clock()
    auth = make(clock=clock, nonces=NonceManager(SECRET, lifetime=2.0))
    challenge = await first_challenge(auth)
    clock.now += 10
    outcome = await auth.authenticate(register(auth=(answer(challenge),)), PEER, proxy=False)
    found = challenges_of(outcome)
    assert all(c.stale for c in found)
    assert "stale=TRUE" in dict([outcome.headers[0]])["WWW-Authenticate"]  # type: ignore[union-attr]
    # A stale nonce with a wrong password is a failure, not a stale.
    outcome = await auth.authenticate(register(auth=(answer(challenge, "bad"),)), PEER, proxy=False)
    assert not any(c.stale for c in challenges_of(outcome))
    assert auth.stats.failures == 1


async def test_nonce_we_never_issued_is_rechallenged_without_backend_lookup() -> None:
    class Counting(MemoryUserBackend):
        calls = 0

        async def get_user(self, username: str, realm: str) -> SipUser | None:
            Counting.calls += 1
            return await super().get_user(username, realm)

    auth = Authenticator(
        Counting([SipUser("alice", "s3cret")]), realm_for=REALM, nonces=NonceManager(SECRET)
    )
    forged = DigestChallenge(REALM, "not-our-nonce", "MD5", ("auth",))
    outcome = await auth.authenticate(register(auth=(answer(forged),)), PEER, proxy=False)
    assert isinstance(outcome, Challenge)
    assert Counting.calls == 0


async def test_unknown_scheme_is_rechallenged(shared_dir: Path) -> None:
    """RFC 4475 §3.3.9 regaut01: an unknown scheme gets a Digest challenge."""
    message = parse_message((shared_dir / "sip-torture/rfc4475/regaut01.dat").read_bytes())
    assert isinstance(message, Request)
    auth = Authenticator(
        MemoryUserBackend([SipUser("j.user", "pw")]),
        realm_for=request_domain,
        nonces=NonceManager(SECRET),
    )
    outcome = await auth.authenticate(message, PEER, proxy=False)
    found = challenges_of(outcome)
    assert found[0].realm == "example.com"


async def test_credentials_of_another_realm_are_ignored() -> None:
    auth = make()
    foreign = DigestChallenge("other.example", NonceManager(SECRET).issue(0), "MD5", ("auth",))
    mine = await first_challenge(auth)
    request = register(auth=(answer(foreign),))
    assert isinstance(await auth.authenticate(request, PEER, proxy=False), Challenge)
    # Several Authorization headers: the one for our realm is used.
    request = register(auth=(answer(foreign), answer(mine)))
    assert isinstance(await auth.authenticate(request, PEER, proxy=False), Authenticated)


async def test_malformed_digest_is_400() -> None:
    auth = make()
    request = register(auth=('Digest username="alice", username="bob"',))
    assert await auth.authenticate(request, PEER, proxy=False) == Reject(
        400, "malformed credentials: duplicate auth-param 'username'"
    )


async def test_username_must_match_the_to_user() -> None:
    auth = make([SipUser("alice", "s3cret"), SipUser("bob", "pw")])
    challenge = await first_challenge(auth)
    # bob's valid credentials, registering alice's AoR.
    request = register(user="alice", auth=(answer(challenge, "pw", username="bob"),))
    outcome = await auth.authenticate(request, PEER, proxy=False)
    assert outcome == Reject(403, "Username does not match the address")
    lenient = make([SipUser("bob", "pw")], check_username=False)
    challenge = await first_challenge(lenient)
    request = register(user="alice", auth=(answer(challenge, "pw", username="bob"),))
    outcome = await lenient.authenticate(request, PEER, proxy=False)
    assert isinstance(outcome, Authenticated)
    assert outcome.user.username == "bob"


class FailingBackend:
    async def get_user(self, username: str, realm: str) -> SipUser | None:
        raise UserBackendError("connection refused")


class HangingBackend:
    async def get_user(self, username: str, realm: str) -> SipUser | None:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


class RejectingBackend:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def get_user(self, username: str, realm: str) -> SipUser | None:
        raise UserRejected(self.reason, "from the test")


async def credentials_for(auth: Authenticator) -> Request:
    challenge = await first_challenge(auth)
    return register(auth=(answer(challenge),))


async def test_backend_error_is_503() -> None:
    auth = Authenticator(FailingBackend(), realm_for=REALM, nonces=NonceManager(SECRET))
    outcome = await auth.authenticate(await credentials_for(auth), PEER, proxy=False)
    assert outcome == Unavailable(503, "User backend unavailable")
    assert auth.stats.backend_errors == 1


async def test_hanging_backend_answers_within_the_timeout() -> None:
    auth = Authenticator(
        HangingBackend(), realm_for=REALM, nonces=NonceManager(SECRET), backend_timeout=0.2
    )
    request = await credentials_for(auth)
    with anyio.fail_after(10):
        outcome = await auth.authenticate(request, PEER, proxy=False)
    assert outcome == Unavailable(503, "User backend timeout")
    assert auth.stats.backend_errors == 1


async def test_one_source_holds_a_bounded_number_of_lookups() -> None:
    """A burst from one address beyond the cap is answered 503 at once, not queued
    behind a slow backend; other addresses and later requests are not affected."""
    auth = Authenticator(
        HangingBackend(),
        realm_for=REALM,
        nonces=NonceManager(SECRET),
        backend_timeout=0.5,
        max_lookups_per_source=3,
    )
    request = await credentials_for(auth)
    outcomes: list[object] = []

    async def attempt(peer: Peer) -> None:
        outcomes.append(await auth.authenticate(request, peer, proxy=False))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(attempt, PEER)
            tg.start_soon(attempt, Peer("UDP", "127.0.0.2", 5099))
    shed = Unavailable(503, "Too many requests from this address")
    timed_out = Unavailable(503, "User backend timeout")
    assert outcomes.count(shed) == 2
    assert outcomes.count(timed_out) == 4  # three from PEER, one from the other address
    assert auth.stats.shed == 2
    assert auth._lookups == {}  # every slot given back
    with anyio.fail_after(10):
        assert await auth.authenticate(request, PEER, proxy=False) == timed_out


async def test_backend_rejection_is_403_and_spam_is_dropped() -> None:
    auth = Authenticator(RejectingBackend("disabled"), realm_for=REALM, nonces=NonceManager(SECRET))
    outcome = await auth.authenticate(await credentials_for(auth), PEER, proxy=False)
    assert outcome == Reject(403, "User disabled")
    spam = Authenticator(RejectingBackend("spam"), realm_for=REALM, nonces=NonceManager(SECRET))
    outcome = await spam.authenticate(await credentials_for(spam), PEER, proxy=False)
    assert outcome == Drop("spam", absorb=True)
    assert spam.stats.drops == 1


async def test_disabled_memory_user_is_403() -> None:
    auth = make([SipUser("alice", "s3cret", enabled=False)])
    outcome = await auth.authenticate(await credentials_for(auth), PEER, proxy=False)
    assert outcome == Reject(403, "User disabled")


async def test_realm_from_request_domain() -> None:
    auth = Authenticator(
        MemoryUserBackend([SipUser("alice", "s3cret")]),
        realm_for=request_domain,
        nonces=NonceManager(SECRET),
    )
    found = challenges_of(await auth.authenticate(register(), PEER, proxy=False))
    assert found[0].realm == REALM
    creds = DigestCredentials.parse(answer(found[0]))
    assert creds.realm == REALM


async def test_from_config() -> None:
    config = ProxyConfig(realms=("pbx.example",), auth_failure_limit=4, auth_block_seconds=60)
    auth = Authenticator.from_config(config, MemoryUserBackend(), nonces=NonceManager(SECRET))
    assert auth.realm(register()) == "pbx.example"
    assert auth.throttle is not None
    assert (auth.throttle.limit, auth.throttle.block_for) == (4, 60)
    off = Authenticator.from_config(
        ProxyConfig(auth_failure_limit=0), MemoryUserBackend(), nonces=NonceManager(SECRET)
    )
    assert off.throttle is None
    assert off.realm(register()) == REALM  # no realms: the request's domain


async def test_from_config_wires_the_throttle_and_digest_switches() -> None:
    config = ProxyConfig(
        auth_failure_limit=3,
        auth_source_failure_limit=7,
        auth_trust_seconds=120,
        auth_max_tracked=50,
        auth_allow_qop_less=True,
        auth_strict_digest_uri=True,
    )
    auth = Authenticator.from_config(config, MemoryUserBackend(), nonces=NonceManager(SECRET))
    assert auth.throttle is not None
    throttle = auth.throttle
    assert (throttle.source_limit, throttle.trust_for, throttle.max_entries) == (7, 120, 50)
    assert (auth.digest.qop_required, auth.strict_digest_uri) == (False, True)
    default = Authenticator.from_config(
        ProxyConfig(auth_failure_limit=4), MemoryUserBackend(), nonces=NonceManager(SECRET)
    )
    assert default.throttle is not None
    assert default.throttle.source_limit == 20  # five times the per-user limit
    assert (default.digest.qop_required, default.strict_digest_uri) == (True, False)


async def test_the_timer_sweeps_aged_out_state() -> None:
    """Throttle histories and nonce counts go once they age out, not only on the next failure."""
    clock = FakeClock(1000.0)
    auth = Authenticator(
        MemoryUserBackend(),
        realm_for=REALM,
        nonces=NonceManager(SECRET, lifetime=30.0),
        throttle=FailureThrottle(limit=5, window=60.0),
        clock=clock,
    )
    assert auth.throttle is not None
    auth.throttle.record_failure("192.0.2.1", "alice", clock())
    auth.nonces.check(auth.nonces.issue(clock()), 1, clock(), user="alice")
    assert len(auth.throttle) > 0 and len(auth.nonces) == 1
    deadline = auth.next_deadline()
    assert deadline is not None and deadline <= clock() + EXPIRE_INTERVAL
    clock.advance(400.0)
    auth.handle_timer(clock())
    assert len(auth.throttle) == 0 and len(auth.nonces) == 0
    assert auth.next_deadline() == clock() + EXPIRE_INTERVAL
