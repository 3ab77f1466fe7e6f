"""Digest authentication: RFC vectors, header syntax, and the server/client flow."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdpbx.sip.auth import (
    ALGORITHMS,
    AuthResult,
    DigestChallenge,
    DigestCredentials,
    DigestServer,
    UnsupportedAuthScheme,
    UserSecret,
    build_authorization,
    choose_challenge,
    compute_ha1,
    compute_response,
)
from sdpbx.sip.errors import SipParseError
from sdpbx.sip.nonce import NonceManager, NonceStatus

SECRET = b"0123456789abcdef-test-secret"
REALM = "pbx.example.com"
URI = "sip:pbx.example.com"

# --- RFC test vectors -------------------------------------------------------------------


def test_rfc2617_md5_vector() -> None:
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    response = compute_response(
        ha1,
        algorithm="MD5",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc=1,
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_rfc2617_authorization_header_parses_and_rebuilds() -> None:
    challenge = DigestChallenge.parse(
        'Digest\r\n realm="testrealm@host.com",\r\n qop="auth,auth-int",\r\n'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n'
        ' opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge.qop == ("auth", "auth-int")
    creds = build_authorization(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
    )
    assert creds.response == "6629fae49393a05397450978507c4ef1"
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    parsed = DigestCredentials.parse(
        'Digest username="Mufasa", realm="testrealm@host.com",'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html",'
        ' qop=auth, nc=00000001, cnonce="0a4f113b",'
        ' response="6629fae49393a05397450978507c4ef1",'
        ' opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert parsed == creds


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_vectors(algorithm: str, expected: str) -> None:
    challenge = DigestChallenge(
        realm="http-auth@example.org",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        algorithm=algorithm,
        qop=("auth", "auth-int"),
        opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    )
    creds = build_authorization(
        challenge,
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert creds.qop == "auth"
    assert creds.nc == 1
    assert creds.response == expected
    assert "nc=00000001" in creds.to_header_value()


# --- header syntax ----------------------------------------------------------------------


def test_lenient_syntax() -> None:
    value = (
        '  dIgEsT , REALM = "a, \\"quoted\\" \\\\ realm" ,, Nonce=abc/def==,'
        'algorithm=sha-256, QOP="auth-int , AUTH", stale=true, domain="sip:x",'
    )
    challenge = DigestChallenge.parse(value)
    assert challenge.realm == 'a, "quoted" \\ realm'
    assert challenge.nonce == "abc/def=="
    assert challenge.algorithm == "SHA-256"
    assert challenge.qop == ("auth-int", "auth")
    assert challenge.stale is True
    assert challenge.opaque is None
    assert DigestChallenge.parse(challenge.to_header_value()) == challenge


def test_defaults_and_quoted_tokens() -> None:
    challenge = DigestChallenge.parse('Digest realm="r", nonce="n", stale=FALSE')
    assert (challenge.algorithm, challenge.qop, challenge.stale) == ("MD5", (), False)
    creds = DigestCredentials.parse(
        'Digest username="u", realm="r", nonce="n", uri="sip:r", response="ab",'
        ' algorithm="MD5-SESS", qop="auth", nc=0000000A, cnonce="c"'
    )
    assert (creds.algorithm, creds.qop, creds.nc) == ("MD5-sess", "auth", 10)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Digest",
        'Digest nonce="n"',
        'Digest realm="r"',
        'Digest realm="r", nonce="n", realm="r"',
        'Digest realm="r", nonce="n',
        'Digest realm="r" nonce="n"',
        'Digest realm="r", nonce=',
        'Digest realm="r", nonce="n", =x',
        'Digest realm="r\x00", nonce="n"',
        'Digest realm="r\nx", nonce="n"',
        'Digest realm="r", nonce="n", algorithm="SHA 256"',
        'Digest realm="r", nonce="n", qop="au th"',
        'Digest,realm="r", nonce="n"',
    ],
)
def test_malformed_challenges(value: str) -> None:
    with pytest.raises(SipParseError) as info:
        DigestChallenge.parse(value)
    assert info.type is SipParseError
    assert info.value.status == 400


_CRED_BASE = 'Digest username="u", realm="r", nonce="n", uri="sip:r", response="ab"'


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="r", nonce="n", uri="sip:r", response="ab"',
        _CRED_BASE + ", qop=auth",
        _CRED_BASE + ', qop=auth, cnonce="c"',
        _CRED_BASE + ', qop=auth, cnonce="c", nc=xyz',
        _CRED_BASE + ', qop=auth, cnonce="c", nc=123456789',
        _CRED_BASE + ', username="v"',
    ],
)
def test_malformed_credentials(value: str) -> None:
    with pytest.raises(SipParseError) as info:
        DigestCredentials.parse(value)
    assert info.type is SipParseError
    assert info.value.status == 400


@pytest.mark.parametrize(
    "value",
    [
        "NoOneKnowsThisScheme opaque-data=here",  # RFC 4475 regaut01
        'Basic realm="x"',
        "Bearer",
    ],
)
def test_unknown_scheme_is_distinct(value: str) -> None:
    for parse in (DigestChallenge.parse, DigestCredentials.parse):
        with pytest.raises(UnsupportedAuthScheme) as info:
            parse(value)
        assert info.value.status == 401


def test_constructors_refuse_header_injection() -> None:
    with pytest.raises(ValueError, match="control"):
        DigestChallenge(realm="r\r\nVia: evil", nonce="n")
    with pytest.raises(ValueError, match="token"):
        DigestChallenge(realm="r", nonce="n", algorithm="MD5, x=y")
    with pytest.raises(ValueError, match="qop requires"):
        DigestCredentials("u", "r", "n", "sip:r", "00", qop="auth")


# Values: any text without control characters, including quotes, backslashes, commas.
_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30)
_token = st.text(st.sampled_from("abcXYZ019-.!%*_+`'~"), min_size=1, max_size=12)
_hex = st.text(st.sampled_from("0123456789abcdefABCDEF"), min_size=1, max_size=64)


@given(
    realm=_text,
    nonce=_text,
    algorithm=st.one_of(st.sampled_from(ALGORITHMS), _token),
    qop=st.lists(_token.map(str.lower), max_size=3),
    opaque=st.none() | _text,
    stale=st.booleans(),
)
def test_challenge_round_trip(
    realm: str, nonce: str, algorithm: str, qop: list[str], opaque: str | None, stale: bool
) -> None:
    challenge = DigestChallenge(realm, nonce, algorithm, tuple(qop), opaque, stale)
    assert DigestChallenge.parse(challenge.to_header_value()) == challenge


@given(
    username=_text,
    realm=_text,
    nonce=_text,
    uri=_text,
    response=_hex,
    algorithm=st.one_of(st.sampled_from(ALGORITHMS), _token),
    qop=st.none() | _token.map(str.lower),
    cnonce=_text,
    nc=st.integers(0, 0xFFFFFFFF),
    opaque=st.none() | _text,
)
def test_credentials_round_trip(
    username: str,
    realm: str,
    nonce: str,
    uri: str,
    response: str,
    algorithm: str,
    qop: str | None,
    cnonce: str,
    nc: int,
    opaque: str | None,
) -> None:
    creds = DigestCredentials(
        username, realm, nonce, uri, response, algorithm, cnonce, nc, qop, opaque
    )
    assert DigestCredentials.parse(creds.to_header_value()) == creds


_fuzz_alphabet = st.sampled_from(list('Digest Dg=,"\\ \t\r\n\x00\x7fabc=rnqopealmuiv-é'))


@given(
    st.one_of(st.text(), st.text(_fuzz_alphabet), st.text(_fuzz_alphabet).map("Digest ".__add__))
)
def test_fuzz_only_parse_errors_escape(value: str) -> None:
    """Garbage may only raise SipParseError; whatever parses re-formats to itself."""
    for kind in (DigestChallenge, DigestCredentials):
        parsed: DigestChallenge | DigestCredentials | None = None
        status = 0
        try:
            parsed = kind.parse(value)
        except SipParseError as exc:
            status = exc.status
        if parsed is None:
            assert status in (400, 401)
        else:
            assert kind.parse(parsed.to_header_value()) == parsed


# --- server and client ------------------------------------------------------------------


def make_server(
    *,
    lifetime: float = 300.0,
    max_tracked: int = 100_000,
    algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
    qop_required: bool = True,
) -> DigestServer:
    nonces = NonceManager(SECRET, lifetime=lifetime, max_tracked=max_tracked)
    return DigestServer(nonces, algorithms=algorithms, qop_required=qop_required)


def answer(
    server: DigestServer,
    now: float,
    *,
    password: str = "secret",
    nc: int = 1,
    algorithms: tuple[str, ...] | None = None,
) -> DigestCredentials:
    """Challenge, send the challenges over the 'wire', answer, and parse the answer."""
    offered = server.challenges(REALM, now, algorithms=algorithms)
    wire = [DigestChallenge.parse(c.to_header_value()) for c in offered]
    creds = build_authorization(
        choose_challenge(wire),
        username="alice",
        password=password,
        method="REGISTER",
        uri=URI,
        nc=nc,
    )
    return DigestCredentials.parse(creds.to_header_value())


def verify(
    server: DigestServer,
    creds: DigestCredentials,
    now: float,
    secret: UserSecret | None = None,
    body: bytes = b"",
) -> AuthResult:
    return server.verify(
        creds,
        method="REGISTER",
        secret=UserSecret(password="secret") if secret is None else secret,
        now=now,
        expected_realm=REALM,
        body=body,
    )


def test_challenges_offer_sha256_then_md5() -> None:
    server = make_server()
    offered = server.challenges(REALM, 10.0)
    assert [c.algorithm for c in offered] == ["SHA-256", "MD5"]
    assert all(c.qop == ("auth",) and c.opaque == server.nonces.opaque for c in offered)
    assert len({c.nonce for c in offered}) == 1
    assert choose_challenge(reversed(offered)).algorithm == "SHA-256"
    assert all(c.stale for c in server.challenges(REALM, 10.0, stale=True))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_full_flow_each_algorithm(algorithm: str) -> None:
    server = make_server(algorithms=(algorithm,))
    creds = answer(server, 100.0)
    assert creds.algorithm == algorithm
    assert verify(server, creds, 101.0) is AuthResult.OK
    # The same secret stored as HA1 verifies too.
    hashed = UserSecret.hashed("alice", REALM, "secret")
    assert verify(server, answer(server, 102.0), 103.0, hashed) is AuthResult.OK


def test_nonce_reuse_with_increasing_nc_then_replay() -> None:
    server = make_server()
    first = answer(server, 0.0)
    assert verify(server, first, 1.0) is AuthResult.OK
    assert verify(server, first, 2.0) is AuthResult.REPLAY
    offered = server.challenges(REALM, 0.0)
    again = DigestChallenge(REALM, first.nonce, "SHA-256", ("auth",), first.opaque)
    assert offered  # a fresh challenge is independent of the reused nonce
    for nc in (2, 5):
        creds = build_authorization(
            again, username="alice", password="secret", method="REGISTER", uri=URI, nc=nc
        )
        assert verify(server, creds, 3.0) is AuthResult.OK
    lower = build_authorization(
        again, username="alice", password="secret", method="REGISTER", uri=URI, nc=4
    )
    assert verify(server, lower, 4.0) is AuthResult.REPLAY


def test_forged_request_does_not_burn_counts() -> None:
    server = make_server()
    good = answer(server, 0.0)
    forged = answer(server, 0.0, password="guess", nc=0xFFFFFFFF)
    forged = DigestCredentials(
        forged.username,
        forged.realm,
        good.nonce,
        forged.uri,
        forged.response,
        forged.algorithm,
        forged.cnonce,
        forged.nc,
        forged.qop,
        forged.opaque,
    )
    assert verify(server, forged, 1.0) is AuthResult.BAD_CREDENTIALS
    assert verify(server, good, 1.0) is AuthResult.OK


def test_stale_after_lifetime() -> None:
    server = make_server(lifetime=300.0)
    creds = answer(server, 1000.0)
    assert verify(server, creds, 1300.5) is AuthResult.STALE
    # A stale nonce with a wrong digest is still a wrong password, not a stale retry.
    wrong = answer(server, 1000.0, password="nope")
    assert verify(server, wrong, 1300.5) is AuthResult.BAD_CREDENTIALS
    assert server.nonces.check(creds.nonce, None, 1300.5) is NonceStatus.STALE
    assert server.nonces.check(creds.nonce, None, 1000.0 - 301) is NonceStatus.STALE


def test_wrong_password_and_unknown_user() -> None:
    server = make_server()
    assert verify(server, answer(server, 0.0, password="nope"), 1.0) is AuthResult.BAD_CREDENTIALS
    creds = answer(server, 0.0)
    result = server.verify(creds, method="REGISTER", secret=None, now=1.0, expected_realm=REALM)
    assert result is AuthResult.BAD_CREDENTIALS
    # The method is part of the digest.
    result = server.verify(
        creds, method="INVITE", secret=UserSecret("secret"), now=1.0, expected_realm=REALM
    )
    assert result is AuthResult.BAD_CREDENTIALS


def test_uppercase_hex_response_accepted() -> None:
    server = make_server()
    creds = answer(server, 0.0)
    upper = DigestCredentials.parse(
        creds.to_header_value().replace(creds.response, creds.response.upper())
    )
    assert verify(server, upper, 1.0) is AuthResult.OK


def _with_nonce(creds: DigestCredentials, nonce: str) -> DigestCredentials:
    return DigestCredentials.parse(creds.to_header_value().replace(creds.nonce, nonce))


def test_tampered_and_foreign_nonces() -> None:
    server = make_server()
    creds = answer(server, 0.0)
    nonce = creds.nonce
    flipped = nonce[:5] + ("A" if nonce[5] != "A" else "B") + nonce[6:]
    for bad in (flipped, "garbage", nonce + "x", nonce[:-1], "!" * 43):
        assert server.nonces.check(bad, 1, 1.0) is NonceStatus.INVALID
        assert verify(server, _with_nonce(creds, bad), 1.0) is AuthResult.INVALID_NONCE
    # A non-canonical base64 spelling of the same bytes is refused too.
    last = nonce[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sibling = nonce[:-1] + alphabet[alphabet.index(last) | 1]
    assert sibling != nonce
    assert server.nonces.check(sibling, 1, 1.0) is NonceStatus.INVALID
    other = NonceManager(b"another secret of 16+ bytes")
    assert other.check(nonce, 1, 1.0) is NonceStatus.INVALID


def test_opaque_must_match() -> None:
    server = make_server()
    creds = answer(server, 0.0)
    assert creds.opaque is not None
    forged = DigestCredentials.parse(creds.to_header_value().replace(creds.opaque, "0" * 32))
    assert verify(server, forged, 1.0) is AuthResult.INVALID_NONCE


def test_nonce_survives_restart_with_same_secret() -> None:
    creds = answer(make_server(), 0.0)
    restarted = make_server()
    assert verify(restarted, creds, 10.0) is AuthResult.OK


def test_realm_and_algorithm_policy() -> None:
    server = make_server()
    creds = answer(server, 0.0)
    result = server.verify(
        creds, method="REGISTER", secret=UserSecret("secret"), now=1.0, expected_realm="other"
    )
    assert result is AuthResult.REALM_MISMATCH
    sha_only = make_server(algorithms=("SHA-256",))
    md5 = answer(make_server(algorithms=("MD5",)), 0.0)
    assert verify(sha_only, md5, 1.0) is AuthResult.UNSUPPORTED_ALGORITHM
    odd = DigestCredentials.parse(md5.to_header_value().replace("qop=auth", "qop=auth-conf"))
    assert verify(make_server(), odd, 1.0) is AuthResult.UNSUPPORTED_ALGORITHM


def test_ha1_only_secret() -> None:
    secret = UserSecret.hashed("alice", REALM, "secret", algorithms=("MD5",))
    assert secret.password is None
    assert secret.algorithms() == ("MD5", "MD5-sess")
    assert UserSecret(password="x").algorithms() == ALGORITHMS
    server = make_server()
    offered = server.challenges(REALM, 0.0, algorithms=secret.algorithms())
    assert [c.algorithm for c in offered] == ["MD5"]
    md5 = answer(server, 0.0, algorithms=secret.algorithms())
    assert verify(server, md5, 1.0, secret) is AuthResult.OK
    sha = answer(server, 0.0)
    assert sha.algorithm == "SHA-256"
    assert verify(server, sha, 1.0, secret) is AuthResult.UNSUPPORTED_ALGORITHM
    # HA1 values given by hand are keyed by base hash and compared case-insensitively.
    manual = UserSecret(ha1={"md5": compute_ha1("alice", REALM, "secret").upper()})
    assert verify(server, answer(server, 0.0, algorithms=("MD5",)), 1.0, manual) is AuthResult.OK


def test_user_secret_validation() -> None:
    with pytest.raises(ValueError, match="either"):
        UserSecret()
    with pytest.raises(ValueError, match="either"):
        UserSecret(password="x", ha1={"MD5": "00"})
    with pytest.raises(ValueError, match="unsupported"):
        UserSecret(ha1={"SHA-512": "00"})


def test_auth_int_covers_the_body() -> None:
    server = make_server()
    challenge = server.challenges(REALM, 0.0)[0]
    challenge = DigestChallenge(
        challenge.realm, challenge.nonce, "SHA-256", ("auth-int",), challenge.opaque
    )
    creds = build_authorization(
        challenge,
        username="alice",
        password="secret",
        method="REGISTER",
        uri=URI,
        body=b"v=0\r\n",
    )
    assert creds.qop == "auth-int"
    assert verify(server, creds, 1.0, body=b"v=1\r\n") is AuthResult.BAD_CREDENTIALS
    assert verify(server, creds, 1.0, body=b"v=0\r\n") is AuthResult.OK


def test_rfc2069_no_qop() -> None:
    server = make_server()
    base = server.challenges(REALM, 0.0)[1]
    challenge = DigestChallenge(base.realm, base.nonce, base.algorithm, (), base.opaque)
    creds = build_authorization(
        challenge, username="alice", password="secret", method="REGISTER", uri=URI
    )
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)
    parsed = DigestCredentials.parse(creds.to_header_value())
    # Refused by default: without a nonce-count nothing tells a replay apart.
    assert verify(server, parsed, 1.0) is AuthResult.UNSUPPORTED_ALGORITHM
    lenient = make_server(qop_required=False)
    assert verify(lenient, parsed, 1.0) is AuthResult.OK
    # ... and then the nonce is good for that one request only.
    assert verify(lenient, parsed, 1.0) is AuthResult.REPLAY


def test_choose_challenge_skips_what_it_cannot_answer() -> None:
    unknown = DigestChallenge("r", "n", "SHA-512-256", ("auth",))
    conf = DigestChallenge("r", "n", "SHA-256", ("auth-conf",))
    md5 = DigestChallenge("r", "n", "MD5", ("auth",))
    assert choose_challenge([unknown, conf, md5]) is md5
    with pytest.raises(UnsupportedAuthScheme):
        choose_challenge([unknown, conf])
    with pytest.raises(UnsupportedAuthScheme):
        choose_challenge([])
    with pytest.raises(UnsupportedAuthScheme):
        build_authorization(unknown, username="u", password="p", method="REGISTER", uri="sip:r")


# --- nonce-count table bound ------------------------------------------------------------


def test_eviction_keeps_memory_bounded_and_answers_stale() -> None:
    manager = NonceManager(SECRET, lifetime=300.0, max_tracked=3)
    nonces = [manager.issue(float(i)) for i in range(6)]
    for nonce in nonces:
        assert manager.check(nonce, 1, 10.0) is NonceStatus.VALID
        assert len(manager) <= 3
    assert len(manager) == 3
    # The three oldest were evicted: their next use asks for a re-challenge.
    for nonce in nonces[:3]:
        assert manager.check(nonce, 2, 11.0) is NonceStatus.STALE
    # The tracked ones still detect replays.
    for nonce in nonces[3:]:
        assert manager.check(nonce, 1, 11.0) is NonceStatus.REPLAY
        assert manager.check(nonce, 2, 11.0) is NonceStatus.VALID
    # A nonce issued after the evictions is fine.
    fresh = manager.issue(12.0)
    assert manager.check(fresh, 1, 12.0) is NonceStatus.VALID


def test_expired_entries_are_dropped() -> None:
    manager = NonceManager(SECRET, lifetime=10.0, max_tracked=100)
    for i in range(50):
        assert manager.check(manager.issue(float(i)), 1, float(i)) is NonceStatus.VALID
    assert len(manager) <= 12
    # record=False checks never grow the table.
    manager.check(manager.issue(60.0), 1, 60.0, record=False)
    assert manager.check(manager.issue(60.0), None, 60.0) is NonceStatus.VALID
    assert len(manager) <= 12


def test_nonce_manager_arguments() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        NonceManager(b"short")
    with pytest.raises(ValueError, match="positive"):
        NonceManager(SECRET, lifetime=0)
