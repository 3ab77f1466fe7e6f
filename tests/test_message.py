"""Unit and property tests of the SIP message core (URIs, headers, parser)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdpbx.sip import (
    AbsoluteUri,
    CSeq,
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipUri,
    TelUri,
    Via,
    make_response,
    parse_message,
    parse_uri,
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


# -- URIs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "user", "host", "port", "params"),
    [
        ("sip:alice@example.com", "alice", "example.com", None, ()),
        (
            "sip:alice:pw@example.com:5070;transport=tcp",
            "alice",
            "example.com",
            5070,
            (("transport", "tcp"),),
        ),
        ("sips:[2001:db8::1]:5061;lr", None, "2001:db8::1", 5061, (("lr", None),)),
        ("sip:192.0.2.1", None, "192.0.2.1", None, ()),
        ("SIP:Bob@Example.COM", "Bob", "Example.COM", None, ()),
    ],
)
def test_sip_uri_parse(
    text: str, user: str | None, host: str, port: int | None, params: tuple[object, ...]
) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    assert (uri.user, uri.host, uri.port, uri.params) == (user, host, port, params)
    assert parse_uri(str(uri)) == uri


def test_uri_helpers() -> None:
    uri = SipUri.parse("sip:%61lice@EXAMPLE.com;transport=tls?subject=hi")
    assert uri.aor == "alice@example.com"
    assert uri.transport == "TLS"
    assert uri.headers == (("subject", "hi"),)
    assert uri.param("TRANSPORT") == "tls"
    assert str(uri.with_params(lr=None)) == "sip:%61lice@EXAMPLE.com;transport=tls;lr?subject=hi"
    assert uri.without_params("transport").params == ()


def test_tel_and_absolute_uris() -> None:
    tel = parse_uri("tel:+1-201-555-0123;ext=1")
    assert isinstance(tel, TelUri) and tel.number == "+1-201-555-0123"
    assert tel.param("ext") == "1" and str(tel) == "tel:+1-201-555-0123;ext=1"
    other = parse_uri("mailto:bob@example.com")
    assert isinstance(other, AbsoluteUri) and str(other) == "mailto:bob@example.com"


@pytest.mark.parametrize(
    "text",
    [
        "<sip:a@b>",
        "sip:a@b c",
        "sip:",
        "sip:a@",
        "sip:a@b:99999",
        "sip:a@[2001:db8::1",
        "sip:a@b;",
        "sip:2001:db8::1",
        "nocolon",
        "tel:",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


# -- header values --------------------------------------------------------------


def test_via_fields() -> None:
    via = Via.parse("SIP/2.0/udp 10.0.0.1:5062;branch=z9hG4bKx;rport;received=1.2.3.4")
    assert via.transport == "UDP" and via.host == "10.0.0.1" and via.port == 5062
    assert via.branch == "z9hG4bKx" and via.wants_rport and via.rport is None
    assert via.received == "1.2.3.4" and via.is_rfc3261_branch
    filled = via.with_params(rport="4000")
    assert filled.rport == 4000 and str(filled).endswith(";rport=4000")
    assert Via.parse("SIP/2.0/TCP [::1]:5060").sent_by == "[::1]:5060"


@pytest.mark.parametrize(
    "value", ["SIP/2.0/UDP", "HTTP/1.1 host", "SIP/2.0/UDP host;;", "SIP/2.0/UDP ho st"]
)
def test_bad_vias(value: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(value)


def test_name_addr_forms() -> None:
    na = NameAddr.parse('"A \\"B\\"" <sip:a@b>;tag=x;q=0.5;expires=30')
    assert na.display_name_unquoted == 'A "B"' and na.tag == "x"
    assert na.q == 0.5 and na.expires == 30
    assert NameAddr.parse(str(na)) == na
    spec = NameAddr.parse("sip:a@b;tag=y")
    assert spec.tag == "y" and isinstance(spec.uri, SipUri) and spec.uri.params == ()
    tokens = NameAddr.parse("Alice Smith<sip:a@b>")
    assert tokens.display_name == "Alice Smith"
    with pytest.raises(SipParseError):
        _ = NameAddr.parse("<sip:a@b>;q=2").q


def test_cseq() -> None:
    assert CSeq.parse(" 0009   INVITE ") == CSeq(9, "INVITE")
    for bad in ("INVITE", "1", "-1 INVITE", "1 2 3", str(2**31) + " ACK"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


# -- Headers ---------------------------------------------------------------------


def test_headers_multidict() -> None:
    h = Headers([("v", "SIP/2.0/UDP a"), ("Via", "SIP/2.0/UDP b, SIP/2.0/UDP c"), ("i", "x")])
    assert h.get("VIA") == "SIP/2.0/UDP a"
    assert h.get_list("via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert h.get("Call-ID") == "x" and "call-id" in h and h.count("via") == 2
    assert h.remove_first("via").get("via") == "SIP/2.0/UDP b, SIP/2.0/UDP c"
    assert h.prepend("Via", "SIP/2.0/TCP z").get("v") == "SIP/2.0/TCP z"
    assert h.set("Via", "only").get_all("via") == ["only"]
    assert list(h.remove("via")) == [("i", "x")]
    assert h.replace_first("via", "new").get_all("via")[0] == "new"
    with pytest.raises(ValueError, match="not a comma-separated"):
        h.get_list("authorization")


def test_authorization_not_split() -> None:
    value = 'Digest username="a", realm="b", nonce="c", uri="sip:x", response="d"'
    h = Headers([("Authorization", value)])
    assert h.get_all("authorization") == [value]


# -- messages -----------------------------------------------------------------------


def test_parse_request_fields() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE" and str(msg.uri) == "sip:bob@biloxi.example.com"
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.from_.tag == "1928301774" and msg.to.tag is None
    assert msg.max_forwards == 70 and msg.body == b"v=0\n"
    assert msg.content_type == "application/sdp"
    assert bytes(msg) == INVITE


def test_modified_message_serialises_fresh() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    forwarded = msg.replace(headers=msg.headers.set("Max-Forwards", "69"))
    assert b"Max-Forwards: 69\r\n" in bytes(forwarded)
    again = parse_message(bytes(forwarded))
    assert isinstance(again, Request) and again.max_forwards == 69
    assert again.body == msg.body
    rebodied = msg.replace(body=b"")
    assert parse_message(bytes(rebodied)).headers.get("content-length") == "0"


def test_make_response_copies_what_rfc3261_says() -> None:
    msg = parse_message(INVITE.replace(b"Contact:", b"Record-Route: <sip:p1;lr>\r\nContact:"))
    assert isinstance(msg, Request)
    ringing = make_response(msg, 180, to_tag="abc")
    assert ringing.reason == "Ringing" and ringing.to.tag == "abc"
    assert ringing.headers.get("record-route") == "<sip:p1;lr>"
    assert ringing.top_via == msg.top_via and ringing.cseq == msg.cseq
    trying = make_response(msg, 100, to_tag="abc")
    assert trying.to.tag is None and "record-route" not in trying.headers
    busy = make_response(msg, 486, "Busy", headers=[("Retry-After", "30")])
    assert busy.reason == "Busy" and busy.headers.get("retry-after") == "30"
    assert isinstance(parse_message(bytes(busy)), Response)


def test_stream_message_needs_content_length() -> None:
    data = INVITE.replace(b"Content-Length: 4\r\n", b"")
    assert parse_message(data).body == b"v=0\n"
    with pytest.raises(SipParseError):
        parse_message(data, datagram=False)


def test_leading_keepalive_crlf_ignored() -> None:
    assert isinstance(parse_message(b"\r\n\r\n" + INVITE), Request)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"garbage\r\n\r\n", 400),
        (INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
        (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), 400),
        (INVITE.replace(b"Max-Forwards", b"Max Forwards"), 400),
        (INVITE.replace(b"Content-Length: 4", b"Content-Length: 40"), 400),
        (INVITE.replace(b"Content-Length: 4", b"Content-Length: x"), 400),
        (INVITE + b"x" * 70000, 513),
        (
            b"SIP/2.0 99 Odd\r\nVia: SIP/2.0/UDP a\r\nFrom: <sip:a@b>\r\nTo: <sip:a@b>\r\n"
            b"Call-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
            400,
        ),
    ],
)
def test_parse_errors(data: bytes, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == status


def test_sip_core_is_sans_io() -> None:
    """sdpbx/sip imports no clock, socket or event loop (DESIGN.md)."""
    forbidden = {"anyio", "asyncio", "trio", "socket", "time", "httpx", "selectors", "threading"}
    root = Path(__file__).resolve().parents[1] / "sdpbx" / "sip"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


# -- property tests -------------------------------------------------------------------

_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
_user = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=10)
_host = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True)
_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters=","),
    max_size=30,
).map(str.strip)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "REGISTER", "BYE", "MESSAGE"]))
    user = draw(_user)
    host = draw(_host)
    port = draw(st.none() | st.integers(1, 65535))
    uri = SipUri("sip", host, user, None, port)
    headers = [
        ("Via", f"SIP/2.0/UDP {draw(_host)};branch=z9hG4bK{draw(_user)}"),
        ("From", f"<sip:{draw(_user)}@{draw(_host)}>;tag={draw(_user)}"),
        ("To", f"<sip:{user}@{host}>"),
        ("Call-ID", draw(_user)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
    ]
    extra = draw(st.lists(st.tuples(_token.filter(lambda t: len(t) > 1), _value), max_size=5))
    headers.extend((f"X-{n}", v) for n, v in extra)
    body = draw(st.binary(max_size=200))
    return Request.create(method, uri, headers, body)


@given(requests())
def test_round_trip(request: Request) -> None:
    parsed = parse_message(bytes(request))
    assert parsed == request
    assert bytes(parsed) == bytes(request)
    parsed.validate()


def _corpus(shared: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((shared / "sip-torture" / "rfc4475").glob("*.dat"))]


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutation_fuzz_only_parse_errors(shared_dir: Path, data: st.DataObject) -> None:
    """Flip, insert and delete bytes of torture messages: only SipParseError escapes."""
    seed = bytearray(data.draw(st.sampled_from(_corpus(shared_dir))))
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(seed) - 1, 0)))
        if op == "flip" and seed:
            seed[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            seed[pos:pos] = data.draw(
                st.sampled_from([b"\r\n", b";", b",", b"<", b'"', b":", b" "])
            )
        elif seed:
            del seed[pos]
    try:
        message = parse_message(bytes(seed))
        message.validate()
        bytes(message)
    except SipParseError:
        pass
