"""The UAC's retry of a challenged request: wire bytes, verification, loop guards."""

from __future__ import annotations

import hashlib

import attrs
import pytest

from sdpbx.b2bua.uac_auth import add_credentials, credential_header_for
from sdpbx.sip import Request, Response, make_response, parse_message
from sdpbx.sip.auth import (
    AuthResult,
    DigestCredentials,
    DigestServer,
    NonceManager,
    UserSecret,
)

NOW = 1_700_000_000.0
SECRET = b"uac-auth-test-secret-0123456789!"


def invite(
    extra: str = "",
    via: str = "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKaaa;rport",
    body: bytes = b"",
) -> Request:
    text = (
        "INVITE sip:bob@carrier.example SIP/2.0\r\n"
        f"{via}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@pbx.example>;tag=f1\r\n"
        "To: <sip:bob@carrier.example>\r\n"
        "Call-ID: c1@pbx\r\n"
        "CSeq: 7 INVITE\r\n"
        "Contact: <sip:alice@10.0.0.1:5060>\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    message = parse_message(text)
    assert isinstance(message, Request)
    return message


def challenge_response(request: Request, status: int, *values: str) -> Response:
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    return make_response(request, status, to_tag="t9", headers=[(header, v) for v in values])


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_401_retry_bytes_are_exact() -> None:
    request = invite()
    response = challenge_response(
        request, 401, 'Digest realm="carrier.example", nonce="abc123", qop="auth", opaque="op"'
    )
    retry = add_credentials(
        request, response, username="alice", password="s3cret", cnonce="0a4f113b"
    )
    assert retry is not None
    ha1 = md5("alice:carrier.example:s3cret")
    ha2 = md5("INVITE:sip:bob@carrier.example")
    digest = md5(f"{ha1}:abc123:00000001:0a4f113b:auth:{ha2}")
    assert (
        bytes(retry)
        == (
            "INVITE sip:bob@carrier.example SIP/2.0\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:alice@pbx.example>;tag=f1\r\n"
            "To: <sip:bob@carrier.example>\r\n"
            "Call-ID: c1@pbx\r\n"
            "CSeq: 8 INVITE\r\n"
            "Contact: <sip:alice@10.0.0.1:5060>\r\n"
            'Authorization: Digest username="alice", realm="carrier.example", nonce="abc123", '
            f'uri="sip:bob@carrier.example", response="{digest}", algorithm=MD5, '
            'cnonce="0a4f113b", opaque="op", qop=auth, nc=00000001\r\n'
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    # The original is untouched (messages are values).
    assert request.cseq.number == 7
    assert "via" in request.headers


def test_rfc2069_challenge_without_qop() -> None:
    request = invite()
    response = challenge_response(request, 401, 'Digest realm="r", nonce="n0"')
    retry = add_credentials(request, response, username="alice", password="pw")
    assert retry is not None
    creds = DigestCredentials.parse(retry.authorization[0])
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)
    ha1, ha2 = md5("alice:r:pw"), md5("INVITE:sip:bob@carrier.example")
    assert creds.response == md5(f"{ha1}:n0:{ha2}")


@pytest.mark.parametrize(
    ("status", "header"), [(401, "authorization"), (407, "proxy-authorization")]
)
def test_verified_by_digest_server_sha256_preferred(status: int, header: str) -> None:
    server = DigestServer(NonceManager(SECRET), algorithms=("SHA-256", "MD5"))
    request = invite()
    challenges = server.challenges("carrier.example", NOW)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    # Offer MD5 first on the wire: the client must still pick SHA-256.
    response = challenge_response(
        request, status, *(c.to_header_value() for c in reversed(challenges))
    )
    retry = add_credentials(request, response, username="alice", password="s3cret")
    assert retry is not None
    other = "proxy-authorization" if header == "authorization" else "authorization"
    assert retry.headers.get_all(other) == []
    [value] = retry.headers.get_all(header)
    creds = DigestCredentials.parse(value)
    assert creds.algorithm == "SHA-256"
    result = server.verify(
        creds,
        method="INVITE",
        secret=UserSecret(password="s3cret"),
        now=NOW,
        expected_realm="carrier.example",
    )
    assert result is AuthResult.OK
    wrong = server.verify(
        creds,
        method="INVITE",
        secret=UserSecret(password="other"),
        now=NOW,
        expected_realm="carrier.example",
    )
    assert wrong is AuthResult.BAD_CREDENTIALS
    # A new transaction: no Via (the stack adds one), CSeq + 1, the rest unchanged.
    assert "via" not in retry.headers
    assert str(retry.cseq) == "8 INVITE"
    assert retry.call_id == request.call_id
    assert retry.from_.tag == "f1"
    assert retry.to.tag is None


def test_auth_int_covers_the_body() -> None:
    server = DigestServer(NonceManager(SECRET))
    body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\n"
    request = invite(extra="Content-Type: application/sdp\r\n", body=body)
    [challenge] = server.challenges("r", NOW, algorithms=["MD5"])
    challenge = attrs.evolve(challenge, qop=("auth-int",))
    response = challenge_response(request, 401, challenge.to_header_value())
    retry = add_credentials(request, response, username="alice", password="pw")
    assert retry is not None
    assert retry.body == body
    creds = DigestCredentials.parse(retry.authorization[0])
    assert creds.qop == "auth-int"
    secret = UserSecret(password="pw")
    ok = server.verify(
        creds, method="INVITE", secret=secret, now=NOW, expected_realm="r", body=body
    )
    assert ok is AuthResult.OK
    tampered = server.verify(
        creds, method="INVITE", secret=secret, now=NOW, expected_realm="r", body=body + b"x"
    )
    assert tampered is AuthResult.BAD_CREDENTIALS


def test_refused_credentials_are_not_retried() -> None:
    request = invite()
    first = challenge_response(request, 401, 'Digest realm="r", nonce="n1", qop="auth"')
    retry = add_credentials(request, first, username="alice", password="wrong")
    assert retry is not None
    # Same realm challenges again with a new nonce and no stale flag: the password is wrong.
    again = challenge_response(retry, 401, 'Digest realm="r", nonce="n2", qop="auth"')
    assert add_credentials(retry, again, username="alice", password="wrong") is None
    # ... and with the very same nonce, too.
    same = challenge_response(retry, 401, 'Digest realm="r", nonce="n1", qop="auth"')
    assert add_credentials(retry, same, username="alice", password="wrong") is None


def test_stale_nonce_earns_one_retry_with_the_new_nonce() -> None:
    request = invite()
    first = challenge_response(request, 407, 'Digest realm="r", nonce="n1", qop="auth"')
    retry = add_credentials(request, first, username="alice", password="pw")
    assert retry is not None
    stale = challenge_response(retry, 407, 'Digest realm="r", nonce="n2", qop="auth", stale=true')
    second = add_credentials(retry, stale, username="alice", password="pw")
    assert second is not None
    [value] = second.proxy_authorization
    assert DigestCredentials.parse(value).nonce == "n2"
    assert second.cseq.number == 9
    # A stale answer that repeats the nonce we just used is a loop: stop.
    loop = challenge_response(second, 407, 'Digest realm="r", nonce="n2", qop="auth", stale=true')
    assert add_credentials(second, loop, username="alice", password="pw") is None


def test_two_proxies_two_realms() -> None:
    request = invite()
    first = challenge_response(request, 407, 'Digest realm="edge", nonce="e1", qop="auth"')
    retry = add_credentials(request, first, username="alice", password="pw")
    assert retry is not None
    # The next proxy challenges for its own realm: both credentials travel on.
    second = challenge_response(retry, 407, 'Digest realm="core", nonce="c1", qop="auth"')
    final = add_credentials(retry, second, username="alice", password="pw")
    assert final is not None
    realms = [DigestCredentials.parse(v).realm for v in final.proxy_authorization]
    assert realms == ["edge", "core"]
    # One response challenging two realms at once gets two answers.
    both = challenge_response(
        request,
        407,
        'Digest realm="edge", nonce="e1", qop="auth"',
        'Digest realm="core", nonce="c1", algorithm=SHA-256, qop="auth"',
    )
    answered = add_credentials(request, both, username="alice", password="pw")
    assert answered is not None
    parsed = [DigestCredentials.parse(v) for v in answered.proxy_authorization]
    assert [(c.realm, c.algorithm) for c in parsed] == [("edge", "MD5"), ("core", "SHA-256")]


def test_only_the_top_via_is_removed() -> None:
    request = invite(
        via="Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKtop, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKb"
    )
    response = challenge_response(request, 401, 'Digest realm="r", nonce="n"')
    retry = add_credentials(request, response, username="u", password="p")
    assert retry is not None
    assert [v.branch for v in retry.via] == ["z9hG4bKb"]


@pytest.mark.parametrize(
    "value",
    [
        'Basic realm="r"',
        'Digest realm="r", nonce="n", algorithm=SHA-512-256',
        'Digest realm="r", nonce="n", qop="auth-conf"',
        "Digest garbage",
    ],
)
def test_unanswerable_challenges(value: str) -> None:
    request = invite()
    response = challenge_response(request, 401, value)
    assert add_credentials(request, response, username="u", password="p") is None


def test_basic_next_to_digest_is_ignored() -> None:
    request = invite()
    response = challenge_response(request, 401, 'Basic realm="r"', 'Digest realm="r", nonce="n"')
    retry = add_credentials(request, response, username="u", password="p")
    assert retry is not None
    assert len(retry.authorization) == 1


def test_not_a_challenge() -> None:
    request = invite()
    for status in (200, 403, 500):
        response = make_response(request, status, to_tag="t")
        assert add_credentials(request, response, username="u", password="p") is None
    # A 401 without WWW-Authenticate (a broken server) cannot be answered either.
    bare = make_response(request, 401, to_tag="t")
    assert add_credentials(request, bare, username="u", password="p") is None
    assert credential_header_for(401) == ("WWW-Authenticate", "Authorization")
    assert credential_header_for(407) == ("Proxy-Authenticate", "Proxy-Authorization")
    assert credential_header_for(403) is None
