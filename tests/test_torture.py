"""Every RFC 4475 and RFC 5118 torture message, with the outcome the RFC asks for.

The expected outcomes (``helpers/torture.py``) are taken from the RFCs' text
(see ``tests/data/sip-torture/README.md``), not from what our parser does:

- ``VALID``: parse, ``validate()`` cleanly, and survive a serialise/parse
  round trip unchanged.
- ``REJECT(status)``: the parser (or ``validate()``, for a header no one
  reads until needed) raises :class:`SipParseError` with that status.
- ``WELL_FORMED``: syntactically fine; the *application* answers it
  (416 for an unknown scheme, 420, 415, 483, ...). Those answers are tested
  where the application lives; here they must parse and validate.

Where the RFC allows either rejecting or tolerating, the comment says which
we chose and why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.torture import RFC4475, RFC5118, load

from sdpbx.sip import Request, Response, SipParseError, SipUri, parse_message


def _check(data: bytes, expected: object) -> None:
    if isinstance(expected, tuple):
        _, status = expected
        with pytest.raises(SipParseError) as info:
            message = parse_message(data)
            message.validate()
        assert info.value.status == status
        return
    message = parse_message(data)
    message.validate()
    again = parse_message(bytes(message))
    assert again == message
    # A re-serialisation from the structured form parses to the same message.
    rebuilt = message.replace(headers=message.headers)
    assert parse_message(bytes(rebuilt)) == message


def test_tables_cover_the_corpus(shared_dir: Path) -> None:
    on_disk = {p.stem for p in (shared_dir / "sip-torture" / "rfc4475").glob("*.dat")}
    assert on_disk == set(RFC4475)
    on_disk = {p.stem for p in (shared_dir / "sip-torture" / "rfc5118").glob("*.dat")}
    assert on_disk == set(RFC5118)
    assert len(RFC4475) + len(RFC5118) == 61


@pytest.mark.parametrize(("name", "expected"), sorted(RFC4475.items()))
def test_rfc4475(shared_dir: Path, name: str, expected: object) -> None:
    _check(load(shared_dir, "rfc4475", name), expected)


@pytest.mark.parametrize(("name", "expected"), sorted(RFC5118.items()))
def test_rfc5118(shared_dir: Path, name: str, expected: object) -> None:
    _check(load(shared_dir, "rfc5118", name), expected)


# The details the RFC singles out for some messages.


def test_esc01_user_unescapes(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc4475", "esc01"))
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert msg.uri.user_unescaped == "sips:user@example.com"


def test_escnull_keeps_nul(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc4475", "escnull"))
    uri = msg.to.uri
    assert isinstance(uri, SipUri) and uri.user_unescaped == "null-\x00-null"


def test_esc02_method_is_not_register(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc4475", "esc02"))
    assert isinstance(msg, Request)
    assert msg.method == "RE%47IST%45R"
    assert len(msg.contacts) == 2


def test_dblreq_ignores_trailing_octets(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc4475", "dblreq"))
    assert isinstance(msg, Request) and msg.method == "REGISTER" and msg.body == b""


def test_semiuri_user_part(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc4475", "semiuri"))
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert msg.uri.user == "user;par=u%40example.net"
    assert msg.uri.params == ()


def test_transports_vias(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc4475", "transports"))
    assert [v.transport for v in msg.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc4475", "mpart01"))
    assert len(msg.body) == int(msg.headers.get("content-length") or 0)


def test_noreason(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc4475", "noreason"))
    assert isinstance(msg, Response) and msg.status == 100 and msg.reason == ""


def test_inv2543_body_is_rest_of_datagram(shared_dir: Path) -> None:
    data = load(shared_dir, "rfc4475", "inv2543")
    msg = parse_message(data)
    assert msg.body and data.endswith(msg.body)
    assert msg.top_via.branch is None


def test_wsinv_folded_headers(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc4475", "wsinv"))
    assert msg.max_forwards == 68
    assert msg.cseq.number == 9 and msg.cseq.method == "INVITE"
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.from_.display_name_unquoted == 'J Rosenberg \\"'
    assert [v.branch for v in msg.via] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert msg.contacts[0].q == 0.33
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"


def test_ipv6_ports(shared_dir: Path) -> None:
    amb = parse_message(load(shared_dir, "rfc5118", "port-ambiguous"))
    assert isinstance(amb, Request) and isinstance(amb.uri, SipUri)
    assert (amb.uri.host, amb.uri.port) == ("2001:db8::10:5070", None)
    unamb = parse_message(load(shared_dir, "rfc5118", "port-unambiguous"))
    assert isinstance(unamb, Request) and isinstance(unamb.uri, SipUri)
    assert (unamb.uri.host, unamb.uri.port) == ("2001:db8::10", 5070)


def test_ipv6_received(shared_dir: Path) -> None:
    for name in ("via-received-param-with-delim", "via-received-param-no-delim"):
        msg = parse_message(load(shared_dir, "rfc5118", name))
        assert msg.top_via.received == "2001:db8::9:255"
        assert msg.top_via.branch is not None and msg.top_via.branch.startswith("z9hG4bKas3")


def test_three_colons_tolerated(shared_dir: Path) -> None:
    msg = parse_message(load(shared_dir, "rfc5118", "ipv6-bug-abnf-3-colons"))
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert msg.uri.host == "2001:db8::192.0.2.1"
