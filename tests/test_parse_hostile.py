"""Hostile wire data: the parser lets nothing but SipParseError escape.

Outside probes killed the PBX with single datagrams: Unicode digits that
``str.isdigit()`` accepts and ``int()`` refuses, numbers out of range, and
a To header nobody parsed until the error path needed it for the 400 (so the
error path raised again). The classes tested here:

- every number read from the wire is ASCII digits in a bounded range;
- every message :func:`parse_message` returns can be answered
  (:func:`make_response` never raises) and matched (the headers the
  transaction layer reads never raise);
- every public accessor of a parsed message, and of the header values it
  returns, raises :class:`SipParseError` or nothing;
- header count and list lengths are bounded before the expensive work.

``SDPBX_FUZZ_EXAMPLES`` raises the number of fuzz examples for a local run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdpbx.sip import (
    CSeq,
    NameAddr,
    ParseLimits,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    Via,
    make_response,
    parse_message,
    parse_uri,
)

FUZZ_EXAMPLES = int(os.environ.get("SDPBX_FUZZ_EXAMPLES", "300"))

OPTIONS = (
    b"OPTIONS sip:bob@biloxi.example.com:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;rport;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 63104 OPTIONS\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>;expires=60;q=0.5\r\n"
    b"Expires: 3600\r\n"
    b"Require: timer\r\n"
    b"Supported: replaces, 100rel\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds8;received=192.0.2.1;rport=5070\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4:5062>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def _parse_error(data: bytes, status: int = 400) -> SipParseError:
    """Parsing ``data`` (and reading every header) gives SipParseError(status)."""
    with pytest.raises(SipParseError) as info:
        parse_message(data).validate()
    assert info.value.status == status
    return info.value


# -- 1. numbers: ASCII digits only, bounded ---------------------------------

UNICODE_DIGITS = ["\u00b2", "\u0663", "\uff11", "\u2460", "\U0001d7d9"]


@pytest.mark.parametrize("digit", UNICODE_DIGITS)
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Content-Length: 0", b"Content-Length: {d}"),
        (b"CSeq: 63104 OPTIONS", b"CSeq: 6310{d} OPTIONS"),
        (b"Max-Forwards: 70", b"Max-Forwards: 7{d}"),
        (b"Expires: 3600", b"Expires: 360{d}"),
        (b"pc33.atlanta.example.com:5060", b"pc33.atlanta.example.com:506{d}"),
        (b"rport;", b"rport=506{d};"),
        (b"biloxi.example.com:5060", b"biloxi.example.com:506{d}"),
        (b"<sip:alice@atlanta.example.com>", b"<sip:alice@atlanta.example.com:50{d}>"),
        (b"expires=60", b"expires=6{d}"),
        (b"q=0.5", b"q=0.{d}"),
    ],
)
def test_unicode_digits_are_not_numbers(digit: str, old: bytes, new: bytes) -> None:
    data = OPTIONS.replace(old, new.replace(b"{d}", digit.encode()), 1)
    assert data != OPTIONS
    with pytest.raises(SipParseError) as info:
        message = parse_message(data)
        message.validate()
        _ = message.contacts[0].expires, message.contacts[0].q, message.top_via.rport
    assert info.value.status == 400


@pytest.mark.parametrize("digit", UNICODE_DIGITS)
def test_unicode_digits_in_status_code(digit: str) -> None:
    data = RESPONSE.replace(b"200 OK", f"20{digit} OK".encode())
    _parse_error(data)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"CSeq: 63104", b"CSeq: 4294967296"),
        (b"CSeq: 63104", b"CSeq: 2147483648"),
        (b"CSeq: 63104", b"CSeq: -1"),
        (b"CSeq: 63104", b"CSeq: x"),
        (b"CSeq: 63104", b"CSeq: +5"),
        (b"CSeq: 63104", b"CSeq: " + b"9" * 5000),
        (b"Max-Forwards: 70", b"Max-Forwards: 256"),
        (b"Max-Forwards: 70", b"Max-Forwards: " + b"9" * 5000),
        (b"Expires: 3600", b"Expires: -1"),
        (b"Content-Length: 0", b"Content-Length: " + b"0" * 5000),
        (b"Content-Length: 0", b"Content-Length: -0"),
        (b"example.com:5060;rport", b"example.com:65536;rport"),
        (b"example.com:5060;rport", b"example.com:0;rport"),
        (b"example.com:5060;rport", b"example.com:" + b"1" * 5000 + b";rport"),
        (b"rport;", b"rport=0;"),
        (b"rport;", b"rport=65536;"),
        (b"rport;", b"rport=" + b"1" * 5000 + b";"),
        (b"biloxi.example.com:5060", b"biloxi.example.com:65536"),
        (b"biloxi.example.com:5060", b"biloxi.example.com:0"),
        (b"q=0.5", b"q=nan"),
        (b"q=0.5", b"q=1_0"),
        (b"q=0.5", b"q=1e-1"),
        (b"q=0.5", b"q=" + b"0." + b"1" * 5000),
    ],
)
def test_numbers_out_of_range(old: bytes, new: bytes) -> None:
    data = OPTIONS.replace(old, new, 1)
    assert data != OPTIONS
    with pytest.raises(SipParseError) as info:
        message = parse_message(data)
        message.validate()
        _ = message.contacts[0].expires, message.contacts[0].q, message.top_via.rport
    assert info.value.status == 400


@pytest.mark.parametrize("code", [b"099", b"700", b"999", b"1000", b"20", b"4294967301"])
def test_status_code_range(code: bytes) -> None:
    _parse_error(RESPONSE.replace(b"200", code, 1))


def test_overlarge_expires_is_capped_without_a_huge_int() -> None:
    """RFC 3261 §20.19: capped at 2**32-1 (the registrar relies on it), never int("9"*5000)."""
    for text in (b"4294967296", b"9" * 5000, b"0" * 5000 + b"7"):
        data = OPTIONS.replace(b"Expires: 3600", b"Expires: " + text).replace(
            b"expires=60", b"expires=" + text
        )
        message = parse_message(data)
        expected = 7 if text.endswith(b"7") else 2**32 - 1
        assert message.expires == message.contacts[0].expires == expected


def test_number_edges_accepted() -> None:
    data = (
        OPTIONS.replace(b"CSeq: 63104", b"CSeq: 2147483647")
        .replace(b"Max-Forwards: 70", b"Max-Forwards: 255")
        .replace(b"Expires: 3600", b"Expires: 4294967295")
        .replace(b"atlanta.example.com:5060;rport", b"atlanta.example.com:65535;rport=1")
        .replace(b"expires=60;q=0.5", b"expires=0;q=1.000")
    )
    message = parse_message(data)
    assert message.cseq.number == 2**31 - 1
    assert message.max_forwards == 255
    assert message.expires == 2**32 - 1
    assert (message.top_via.port, message.top_via.rport) == (65535, 1)
    assert (message.contacts[0].expires, message.contacts[0].q) == (0, 1.0)


def test_field_types_reject_unicode_digits() -> None:
    for text in ("SIP/2.0/UDP host:5\u00b2", "SIP/2.0/UDP host;rport=5\u00b2"):
        with pytest.raises(SipParseError):
            Via.parse(text)
    with pytest.raises(SipParseError):
        CSeq.parse("1\u00b2 INVITE")
    with pytest.raises(SipParseError):
        parse_uri("sip:a@b:5\u00b2")
    with pytest.raises(SipParseError):
        _ = NameAddr.parse("<sip:a@b>;expires=1\u00b2").expires
    with pytest.raises(SipParseError):
        _ = NameAddr.parse("<sip:a@b>;q=\u0661").q


# -- 2./3a. every parsed message can be answered and matched -----------------------


@pytest.mark.parametrize(
    "to",
    [
        b'To: "Watson, Thomas" < sip:t.watson@example.org >',
        b"To: Watson, Thomas <sip:t.watson@example.org>",
        b"To: <sip:bob@biloxi.example.com>;tag=",
        b"To: <sip:bob@biloxi.example.com>;tag=a\x00b",
        b"To: <sip:bob@biloxi.example.com>;ta\x00g=ab",
        b"To: <sip:bob@biloxi.example.com:5\xc2\xb2>",
        b"To: <sip:bob@biloxi.example.com",
        b"To: ",
    ],
)
def test_unparsable_to_rejected_at_parse(to: bytes) -> None:
    data = OPTIONS.replace(b'To: "Bob" <sip:bob@biloxi.example.com>', to)
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"From: Alice <sip:alice@atlanta.example.com>", b"From: Alice <sip:alice@>"),
        (b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com", b"Call-ID: "),
        (b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com", b"Call-ID: a\x00b"),
        (b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com", b"Call-ID: a b"),
        (b"Via: SIP/2.0/UDP pc33", b"Via: SIP/2.0/UDP pc\x0033"),
        (b"Via: SIP/2.0/UDP pc33", b"Via: SIP/3.0/UDP pc33"),
        (b"z9hG4bK776asdhds", b"z9hG4bK776asdhds;branch"),
        (b"OPTIONS sip:bob@biloxi", b"OPTIONS sip:bob@bil\x00oxi"),
        (b"OPTIONS sip:bob@biloxi", b"OPTIONS sip:@biloxi"),
    ],
)
def test_request_headers_a_response_needs_are_checked_at_parse(old: bytes, new: bytes) -> None:
    data = OPTIONS.replace(old, new, 1)
    assert data != OPTIONS
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"CSeq: 314159", b"CSeq: 4294967296"),
        (b"Call-ID: a84b4c76e66710", b"Call-ID: a\x00"),
        (b"Via: SIP/2.0/UDP 192.0.2.4:5060", b"Via: SIP/2.0/UDP 192.0.2.4:5\xc2\xb2"),
        (b"rport=5070", b"rport=x"),
    ],
)
def test_response_headers_matching_needs_are_checked_at_parse(old: bytes, new: bytes) -> None:
    data = RESPONSE.replace(old, new, 1)
    assert data != RESPONSE
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf", b"To: Bob <sip:bob@>;tag=x"),
        (b"From: Alice", b'From: "Alice'),
    ],
)
def test_a_response_with_a_bad_from_or_to_still_reaches_its_transaction(
    old: bytes, new: bytes
) -> None:
    """Matched on Via and CSeq only: a broken 2xx must still be ACKed by its INVITE;
    whoever reads From or To gets a SipParseError, never anything else."""
    data = RESPONSE.replace(old, new, 1)
    assert data != RESPONSE
    message = parse_message(data)
    assert isinstance(message, Response)
    assert message.top_via.branch and message.cseq.number == 314159
    with pytest.raises(SipParseError):
        _ = message.to if old.startswith(b"To") else message.from_


def test_eager_values_are_cached() -> None:
    message = parse_message(OPTIONS)
    assert isinstance(message, Request)
    assert message.to is message.to and message.top_via is message.top_via
    assert message.uri is message.uri and message.cseq is message.cseq
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


# -- 3b. the class: mutation fuzz over every public accessor ------------------------

_SKIP = frozenset({"validate", "replace", "create", "start_line", "parse"})


def _public_values(obj: object) -> Iterator[Any]:
    """Every public property of ``obj``, read one by one (SipParseError skipped)."""
    for name in dir(type(obj)):
        if name.startswith("_") or name in _SKIP:
            continue
        attribute = getattr(type(obj), name, None)
        if isinstance(attribute, property) or hasattr(obj, "__attrs_attrs__"):
            try:
                value = getattr(obj, name)
            except SipParseError:
                continue
            if not callable(value):
                yield value


def _touch(value: object, depth: int = 0) -> None:
    """Read ``value`` and, for header values, their own accessors too."""
    if depth > 3:
        return
    if isinstance(value, (tuple, list)):
        for item in value:
            _touch(item, depth + 1)
        return
    str(value)
    if hasattr(type(value), "__attrs_attrs__"):
        for inner in _public_values(value):
            _touch(inner, depth + 1)
        param = getattr(value, "param", None)
        if callable(param):
            param("tag")
            param("expires")


def _exercise(data: bytes) -> None:
    """Parse ``data`` and read everything; only SipParseError may escape.

    Once parsing succeeded, answering a request and reading the matching
    headers must not raise at all.
    """
    try:
        message = parse_message(data)
    except SipParseError:
        return
    # Never raise: what the transaction layer matches on, and the answers.
    _ = (message.top_via.branch, message.cseq, message.call_id, bytes(message))
    if isinstance(message, Request):
        _ = (message.from_.tag, message.to.tag, message.uri)
        for status in (100, 400, 500):
            bytes(make_response(message, status))
        bytes(make_response(message, 200, to_tag="abc", headers=[("X-A", "b")], body=b"x"))
    else:
        _ = message.method
        for name in ("from_", "to"):  # lazy in a response: a broken 2xx must still match
            try:
                _touch(getattr(message, name))
            except SipParseError:
                pass
    for value in _public_values(message):
        try:
            _touch(value)
        except SipParseError:
            pass
    for name in ("contacts", "routes", "record_routes", "paths", "via"):
        try:
            _touch(getattr(message, name))
        except SipParseError:
            pass
    try:
        message.validate()
    except SipParseError:
        pass


def _seeds(shared: Path) -> list[bytes]:
    corpus = sorted((shared / "sip-torture" / "rfc4475").glob("*.dat"))
    return [OPTIONS, RESPONSE, *(p.read_bytes() for p in corpus)]


_INSERTS = [
    b"\r\n",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b":",
    b" ",
    b"=",
    b"\x00",
    b"\xc2\xb2",
    b"\xd9\xa3",
    b"\xef\xbc\x91",
    b"\xff",
    b"9" * 12,
    b"9" * 5000,
    b"-1",
    b";tag=",
    b";rport=",
    b";expires=",
    b";q=",
    b";branch=",
    b"[",
    b"]",
    b"@",
    b"?",
    b"%00",
    b"\r\nVia: SIP/2.0/UDP a;rport=\xc2\xb2\r\n",
    b"\r\nContact: *\r\n",
    b"\r\nl: 1\xc2\xb2\r\n",
]


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutation_fuzz_every_accessor(shared_dir: Path, data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from(_seeds(shared_dir))))
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "digit"]))
        pos = data.draw(st.integers(0, max(len(seed) - 1, 0)))
        if op == "flip" and seed:
            seed[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            seed[pos:pos] = data.draw(st.sampled_from(_INSERTS))
        elif op == "digit":
            # Replace an ASCII digit by a Unicode one, or a run of digits by a huge number.
            digits = [i for i, b in enumerate(seed) if 48 <= b <= 57]
            if digits:
                i = data.draw(st.sampled_from(digits))
                seed[i : i + 1] = data.draw(
                    st.sampled_from([b"\xc2\xb2", b"\xd9\xa3", b"99999999999", b"0" * 30])
                )
        elif seed:
            del seed[pos]
    _exercise(bytes(seed))


def test_every_seed_is_answerable(shared_dir: Path) -> None:
    """The unmutated seeds run the same checks (and most of them parse)."""
    parsed = 0
    for seed in _seeds(shared_dir):
        _exercise(seed)
        try:
            parse_message(seed)
            parsed += 1
        except SipParseError:
            pass
    assert parsed > 30


# -- 4. limits before the expensive work ---------------------------------------------


def _with(lines: list[bytes], base: bytes = OPTIONS) -> bytes:
    return base.replace(b"Content-Length: 0\r\n", b"".join(lines) + b"Content-Length: 0\r\n")


def test_default_limits_accept_a_large_real_message() -> None:
    lines = [f"X-H{i}: v\r\n".encode() for i in range(150)]
    lines += [b"Via: SIP/2.0/UDP p%d.example.com;branch=z9hG4bK%d\r\n" % (i, i) for i in range(60)]
    lines.append(b"Supported: " + b", ".join(b"ext%d" % i for i in range(100)) + b"\r\n")
    message = parse_message(_with(lines))
    assert len(message.via) == 61 and len(message.supported) == 102


def test_too_many_header_lines() -> None:
    limits = ParseLimits()
    lines = [b"X-H: v\r\n"] * limits.max_headers
    error = _parse_error(_with(lines))
    assert "header" in error.reason
    assert parse_message(_with(lines), limits=ParseLimits(max_headers=1000)).headers


def test_too_many_vias_in_lines_and_commas() -> None:
    limits = ParseLimits()
    one = b"Via: SIP/2.0/UDP p.example.com;branch=z9hG4bKx\r\n"
    _parse_error(_with([one] * limits.max_vias))
    many = b"Via: " + b", ".join([b"SIP/2.0/UDP p;branch=z9hG4bKx"] * limits.max_vias) + b"\r\n"
    _parse_error(_with([many]))
    assert parse_message(_with([one] * 2), limits=ParseLimits(max_vias=3))


def test_custom_limits_apply() -> None:
    one = b"Via: SIP/2.0/UDP p.example.com;branch=z9hG4bKx\r\n"
    with pytest.raises(SipParseError):
        parse_message(_with([one] * 4), limits=ParseLimits(max_vias=4))
    with pytest.raises(SipParseError):
        parse_message(_with([b"Require: a, b, c\r\n"]), limits=ParseLimits(max_list_elements=2))
    with pytest.raises(SipParseError):
        parse_message(OPTIONS, limits=ParseLimits(max_headers=5))
    with pytest.raises(SipParseError) as info:
        parse_message(OPTIONS, limits=ParseLimits(max_message_size=100))
    assert info.value.status == 513


@pytest.mark.parametrize("name", [b"Require", b"Supported", b"Allow", b"Contact", b"Route"])
def test_long_lists_refused(name: bytes) -> None:
    limits = ParseLimits()
    element = b"<sip:a@b>" if name in (b"Contact", b"Route") else b"a"
    line = name + b": " + b",".join([element] * (limits.max_list_elements + 1)) + b"\r\n"
    _parse_error(_with([line]))
    # Spread over several header lines it counts the same.
    half = name + b": " + b",".join([element] * (limits.max_list_elements // 2 + 1)) + b"\r\n"
    _parse_error(_with([half, half]))


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ParseLimits(max_headers=0)
    with pytest.raises(ValueError, match="too small"):
        ParseLimits(max_message_size=10)


def test_framer_refuses_too_many_header_lines_early() -> None:
    framer = StreamFramer(limits=ParseLimits(max_headers=10))
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 12)
    with pytest.raises(SipParseError) as info:
        framer.next_message()
    assert info.value.status == 400


def test_framer_accepts_a_message_within_limits() -> None:
    framer = StreamFramer(limits=ParseLimits(max_headers=20))
    framer.feed(OPTIONS)
    assert framer.next_message() == OPTIONS


def test_response_parse_keeps_status() -> None:
    message = parse_message(RESPONSE)
    assert isinstance(message, Response) and message.status == 200
    assert message.top_via.rport == 5070
