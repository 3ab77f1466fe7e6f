"""Hostile credentials: replays, foreign URIs, malformed fields and floods of them.

Each test here was written against a defect a security probe found in the
running PBX; see the docstrings for which one.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdpbx.authn import Authenticated, Authenticator, Challenge, Reject, answer_refusal
from sdpbx.sip.auth import (
    AuthResult,
    DigestChallenge,
    DigestCredentials,
    DigestServer,
    NonceManager,
    UserSecret,
    build_authorization,
    digest_uri_matches,
)
from sdpbx.sip.errors import SipParseError
from sdpbx.sip.message import Request, parse_message
from sdpbx.transport.base import Peer
from sdpbx.users import MemoryUserBackend, SipUser

REALM = "example.com"
SECRET = b"0123456789abcdef0123456789abcdef"
#: These tests exercise SHA-256 and MD5 alike (the default offers MD5 alone).
BOTH = ("SHA-256", "MD5")
PEER = Peer("UDP", "127.0.0.1", 5099)
NOW = 1_700_000_000.0


def request(
    auth: tuple[str, ...] = (),
    *,
    user: str = "alice",
    method: str = "REGISTER",
    uri: str = f"sip:{REALM}",
    raw_auth: tuple[bytes, ...] = (),
) -> Request:
    header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK{secrets.token_hex(6)}",
        f"From: <sip:{user}@{REALM}>;tag=1",
        f"To: <sip:{user}@{REALM}>",
        f"Call-ID: {secrets.token_hex(8)}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:{user}@127.0.0.1:5099>",
        *(f"{header}: {value}" for value in auth),
    ]
    head = "\r\n".join(lines).encode() + b"".join(
        b"\r\n" + header.encode() + b": " + value for value in raw_auth
    )
    message = parse_message(head + b"\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(message, Request)
    return message


def make(**kwargs: Any) -> Authenticator:
    users = MemoryUserBackend([SipUser("alice", "s3cret"), SipUser("bob", "b0b")])
    return Authenticator(
        users, realm_for=REALM, nonces=NonceManager(SECRET), clock=lambda: NOW, **kwargs
    )


async def challenge_for(auth: Authenticator, algorithm: str = "MD5") -> DigestChallenge:
    outcome = await auth.authenticate(request(), PEER, proxy=False)
    assert isinstance(outcome, Challenge)
    found = [DigestChallenge.parse(v) for _, v in outcome.headers]
    return next(c for c in found if c.algorithm == algorithm)


def creds(
    challenge: DigestChallenge,
    *,
    user: str = "alice",
    password: str = "s3cret",
    uri: str = f"sip:{REALM}",
    method: str = "REGISTER",
    nc: int = 1,
    qop: bool = True,
) -> DigestCredentials:
    if not qop:
        challenge = DigestChallenge(
            challenge.realm, challenge.nonce, challenge.algorithm, (), challenge.opaque
        )
    return build_authorization(
        challenge, username=user, password=password, method=method, uri=uri, nc=nc
    )


# --- item 1: replay without qop, digest-uri never compared -----------------------------


@pytest.mark.anyio
async def test_qop_less_credentials_are_refused_by_default() -> None:
    """Probe: qop-less credentials were accepted and replayable from anywhere."""
    auth = make()
    value = creds(await challenge_for(auth), qop=False).to_header_value()
    outcome = await auth.authenticate(request((value,)), PEER, proxy=False)
    assert isinstance(outcome, Challenge)
    assert all("qop=" in v for _, v in outcome.headers)


@pytest.mark.anyio
async def test_qop_less_nonce_is_single_use_when_allowed() -> None:
    """With allow_qop_less (old phones) a nonce answers exactly one request."""
    auth = make(allow_qop_less=True)
    value = creds(await challenge_for(auth), qop=False).to_header_value()
    first = await auth.authenticate(request((value,)), PEER, proxy=False)
    assert isinstance(first, Authenticated)
    for host in ("127.0.0.2", "127.0.0.3", "127.0.0.1"):
        peer = Peer("UDP", host, 5060)
        again = await auth.authenticate(request((value,)), peer, proxy=False)
        assert isinstance(again, Challenge), host


@pytest.mark.anyio
async def test_digest_uri_must_match_the_request_uri() -> None:
    """Probe: uri="sip:evil.example" got 200 (RFC 7616 §3.4.6: 400)."""
    auth = make()
    value = creds(await challenge_for(auth), uri="sip:evil.example").to_header_value()
    outcome = await auth.authenticate(request((value,)), PEER, proxy=False)
    assert isinstance(outcome, Reject)
    assert outcome.status == 400


@pytest.mark.anyio
async def test_equivalent_digest_uri_is_accepted() -> None:
    auth = make()
    value = creds(await challenge_for(auth), uri="SIP:Example.COM").to_header_value()
    outcome = await auth.authenticate(request((value,)), PEER, proxy=False)
    assert isinstance(outcome, Authenticated)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("sip:example.com", "sip:example.com", True),
        ("sip:alice@EXAMPLE.com", "sip:alice@example.com", True),
        ("sip:%61lice@example.com", "sip:alice@example.com", True),
        ("sip:Alice@example.com", "sip:alice@example.com", False),
        ("sip:example.com", "sip:example.com:5060", False),
        ("sip:example.com", "sips:example.com", False),
        ("sip:example.com;transport=udp", "sip:example.com", False),
        ("sip:example.com;transport=UDP", "sip:example.com;transport=udp", True),
        ("sip:example.com;foo=1;lr", "sip:example.com;lr;foo=1", True),
        ("sip:example.com;foo=1", "sip:example.com;foo=2", False),
        ("sip:example.com;foo=1", "sip:example.com", True),
        ("sip:example.com?h=1", "sip:example.com", False),
        ("sip:evil.example", "sip:example.com", False),
        ("tel:+123", "tel:+123", True),
        ("tel:+123", "tel:+124", False),
        ("garbage", "sip:example.com", False),
        ("*", "*", True),
    ],
)
def test_digest_uri_equivalence(a: str, b: str, same: bool) -> None:
    assert digest_uri_matches(a, b, strict=True) is same
    assert digest_uri_matches(b, a, strict=True) is same


@pytest.mark.parametrize(
    ("digest", "request_uri", "lenient"),
    [
        ("sip:127.0.0.1:5060", "sip:bob@127.0.0.1:5060", True),  # SIPp's default auth uri
        ("sip:PBX.example.com", "sip:bob@pbx.example.com", True),
        ("sip:127.0.0.1", "sip:bob@127.0.0.1:5060", False),
        ("sip:evil.example", "sip:bob@pbx.example.com", False),
        ("sip:pbx.example.com;x=1", "sip:bob@pbx.example.com", False),
        ("sips:pbx.example.com", "sip:bob@pbx.example.com", False),
        ("sip:mallory@pbx.example.com", "sip:bob@pbx.example.com", False),
    ],
)
def test_digest_uri_may_name_the_server(digest: str, request_uri: str, lenient: bool) -> None:
    assert digest_uri_matches(digest, request_uri) is lenient
    assert digest_uri_matches(digest, request_uri, strict=True) is False


# --- item 3: malformed fields are a 400, never a 500 --------------------------------------


_GOOD = (
    'Digest username="alice", realm="example.com", nonce="n", uri="sip:example.com",'
    ' response="0123456789abcdef0123456789abcdef", algorithm=MD5, qop=auth, nc=00000001,'
    ' cnonce="c", opaque="o"'
)


@pytest.mark.parametrize(
    "value",
    [
        _GOOD.replace('response="0123456789abcdef0123456789abcdef"', 'response="ümlaut"'),
        _GOOD.replace('response="0123456789abcdef0123456789abcdef"', 'response="zz"'),
        _GOOD.replace('uri="sip:example.com"', 'uri="sip:\udcff"'),
        _GOOD.replace('cnonce="c"', 'cnonce="\udc80\udc81"'),
        _GOOD.replace('username="alice"', 'username="\ud800"'),
    ],
)
def test_malformed_fields_are_parse_errors(value: str) -> None:
    with pytest.raises(SipParseError) as info:
        DigestCredentials.parse(value)
    assert info.value.status == 400


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raw",
    [
        b'response="\xc3\xbcml"',
        b'opaque="\xff\xfe"',
        b'uri="sip:\xff\xfe"',
        b'cnonce="\xff"',
        b'nonce="\xff"',
        b'username="\xff"',
    ],
)
async def test_wire_bytes_in_any_field_are_a_400(raw: bytes) -> None:
    """Probe: non-ASCII response/opaque and invalid UTF-8 in uri/cnonce were a 500."""
    auth = make()
    challenge = await challenge_for(auth)
    good = creds(challenge)
    name = raw.split(b"=", 1)[0].decode()
    fields = {
        "username": good.username,
        "realm": good.realm,
        "nonce": good.nonce,
        "uri": good.uri,
        "response": good.response,
        "cnonce": good.cnonce,
        "opaque": good.opaque,
    }
    del fields[name]
    text = ", ".join(f'{k}="{v}"' for k, v in fields.items())
    header = b"Digest " + text.encode() + b", qop=auth, nc=00000001, algorithm=MD5, " + raw
    outcome = await auth.authenticate(request(raw_auth=(header,)), PEER, proxy=False)
    assert isinstance(outcome, Reject)
    assert outcome.status == 400


_MUTATIONS = st.sampled_from(
    ["\x00", "\udcff", "ü", '"', "\\", ",", "=", " ", "\r\n", "€", "0", "ff", "\x7f", ""]
)


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(0, 400),
    insert=_MUTATIONS,
    drop=st.integers(0, 5),
    qop=st.booleans(),
)
def test_mutated_credentials_only_raise_parse_errors(
    cut: int, insert: str, drop: int, qop: bool
) -> None:
    """Every field is validated when parsed, so verifying never raises anything else."""
    nonces = NonceManager(SECRET)
    server = DigestServer(nonces, algorithms=BOTH)
    challenge = server.challenges(REALM, NOW)[1]
    good = creds(challenge, qop=qop).to_header_value()
    cut = min(cut, len(good))
    value = good[:cut] + insert + good[cut + drop :]
    status = 0
    try:
        parsed = DigestCredentials.parse(value)
    except SipParseError as exc:
        status = exc.status
    if status:
        assert status in (400, 401)
        return
    result = server.verify(
        parsed,
        method="REGISTER",
        secret=UserSecret(password="s3cret"),
        now=NOW,
        expected_realm=REALM,
        request_uri=f"sip:{REALM}",
    )
    assert isinstance(result, AuthResult)


@pytest.mark.anyio
async def test_non_ascii_opaque_is_a_foreign_opaque() -> None:
    """Probe: a non-ASCII opaque (legal quoted-string text) was a 500 (TypeError)."""
    auth = make()
    good = creds(await challenge_for(auth))
    value = good.to_header_value().replace(f'opaque="{good.opaque}"', 'opaque="ö€"')
    assert 'opaque="ö€"' in value
    outcome = await auth.authenticate(request((value,)), PEER, proxy=False)
    assert isinstance(outcome, Challenge)


# --- item 4: counts per (nonce, user); opaque required -----------------------------------


def test_nonce_counts_are_per_user() -> None:
    """alice's high nonce-count must not make bob's first use of the same nonce a replay."""
    server = DigestServer(NonceManager(SECRET), algorithms=BOTH)
    challenge = server.challenges(REALM, NOW)[1]
    kwargs: dict[str, Any] = {"method": "REGISTER", "now": NOW, "expected_realm": REALM}
    alice = creds(challenge, nc=7)
    assert server.verify(alice, secret=UserSecret("s3cret"), **kwargs) is AuthResult.OK
    bob = creds(challenge, user="bob", password="b0b", nc=1)
    assert server.verify(bob, secret=UserSecret("b0b"), **kwargs) is AuthResult.OK
    assert server.verify(bob, secret=UserSecret("b0b"), **kwargs) is AuthResult.REPLAY


def test_missing_opaque_is_refused() -> None:
    server = DigestServer(NonceManager(SECRET), algorithms=BOTH)
    challenge = server.challenges(REALM, NOW)[1]
    answer = creds(challenge)
    bare = DigestCredentials(
        answer.username,
        answer.realm,
        answer.nonce,
        answer.uri,
        answer.response,
        answer.algorithm,
        answer.cnonce,
        answer.nc,
        answer.qop,
        None,
    )
    result = server.verify(
        bare, method="REGISTER", secret=UserSecret("s3cret"), now=NOW, expected_realm=REALM
    )
    assert result is AuthResult.INVALID_NONCE


# --- item 5: challenges are answered statelessly ----------------------------------------


class _Recorder:
    answered = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def respond(self, status: int, reason: str | None = None, **_: object) -> None:
        self.calls.append(("respond", status))

    def respond_stateless(self, status: int, reason: str | None = None, **_: object) -> None:
        self.calls.append(("stateless", status))

    def drop(self) -> None:
        self.calls.append(("drop", 0))


@pytest.mark.parametrize("status", [401, 407])
def test_challenges_are_answered_statelessly(status: int) -> None:
    """Probe: each unauthenticated INVITE drew 11 retransmitted 407s (Timer G)."""
    recorder = _Recorder()
    outcome = Challenge(status, (("WWW-Authenticate", "Digest realm=x"),))  # type: ignore[arg-type]
    assert answer_refusal(recorder, outcome) is True  # type: ignore[arg-type]
    assert recorder.calls == [("stateless", status)]


# --- item 2: failures lock out the (source, user), not the whole source -------------------


@pytest.mark.anyio
async def test_failures_for_another_user_do_not_lock_out_alice_and_bob() -> None:
    """Probe: 10 wrong-password REGISTERs for a non-existent user blocked everyone there."""
    from sdpbx.sip.throttle import FailureThrottle

    auth = make(check_username=False, throttle=FailureThrottle(limit=10, window=60))
    for _ in range(10):
        bad = creds(await challenge_for(auth), user="nobody", password="guess")
        await auth.authenticate(request((bad.to_header_value(),)), PEER, proxy=False)
    assert auth.stats.failures == 10
    for user, password in (("alice", "s3cret"), ("bob", "b0b")):
        good = creds(await challenge_for(auth), user=user, password=password)
        outcome = await auth.authenticate(
            request((good.to_header_value(),), user=user), PEER, proxy=False
        )
        assert isinstance(outcome, Authenticated), user


@pytest.mark.anyio
async def test_a_source_spraying_names_is_dropped_except_for_users_proven_there() -> None:
    from sdpbx.authn import Drop
    from sdpbx.sip.throttle import FailureThrottle

    auth = make(throttle=FailureThrottle(limit=5, source_limit=10))
    good = creds(await challenge_for(auth))
    assert isinstance(
        await auth.authenticate(request((good.to_header_value(),)), PEER, proxy=False),
        Authenticated,
    )
    for i in range(10):
        bad = creds(await challenge_for(auth), user=f"u{i}", password="guess")
        await auth.authenticate(request((bad.to_header_value(),), user=f"u{i}"), PEER, proxy=False)
    assert auth.throttle is not None and auth.throttle.is_source_blocked(PEER.host, NOW)
    # Strangers from there are dropped, even without credentials ...
    assert isinstance(await auth.authenticate(request(user="bob"), PEER, proxy=False), Drop)
    # ... alice, who proved herself from there, is still challenged and let in.
    challenge = await challenge_for(auth)
    good = creds(challenge, nc=1)
    outcome = await auth.authenticate(request((good.to_header_value(),)), PEER, proxy=False)
    assert isinstance(outcome, Authenticated)


# --- item 6: state expires ---------------------------------------------------------------


def test_nonce_counts_expire() -> None:
    nonces = NonceManager(SECRET, lifetime=10.0)
    for i in range(100):
        nonces.check(nonces.issue(NOW), 1, NOW, user=f"u{i}")
    assert len(nonces) == 100
    nonces.expire(NOW + 5.0)
    assert len(nonces) == 100
    nonces.expire(NOW + 11.0)
    assert len(nonces) == 0
