"""RouteRequest.callee_user and caller_user: the numbers a router compares, without URI parsing."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdpbx import Proxy, RouteDecision, RouteRequest
from sdpbx.sip import parse_message
from sdpbx.stack import SipStack
from sdpbx.testing import CallFailed, Phone
from sdpbx.transport import Peer, UdpTransport


def _request(
    *,
    uri: str = "sip:1002@pbx.example.com",
    to: str = "sip:1002@pbx.example.com",
    from_: str = "sip:1001@pbx.example.com",
) -> RouteRequest:
    return RouteRequest(
        call_id="c1", from_=from_, to=to, source_addr="192.0.2.10:5060",
        direction="internal", uri=uri,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("uri", "to", "callee"),
    [
        ("sip:1002@pbx.example.com", "sip:1002@pbx.example.com", "1002"),
        # The Request-URI is where the call goes; To may still name the number first dialled.
        ("sip:+4930123@carrier.example;user=phone", "sip:0301@pbx.example.com", "+4930123"),
        ("sips:bob@pbx.example.com:5061;transport=tls", "sip:x@y", "bob"),
        ("sip:%2A97@pbx.example.com", "sip:x@y", "*97"),  # unescaped, as dialled
        ("tel:+4930123456;phone-context=example.com", "sip:x@y", "+4930123456"),
        # No user in the Request-URI: the To URI says who is called.
        ("sip:pbx.example.com", "sip:1002@pbx.example.com", "1002"),
        ("", "<sip:1002@pbx.example.com>", "1002"),  # a router service may send <>
        ("sip:pbx.example.com", "sip:pbx.example.com", None),
        ("", "", None),
        ("http://example.com/", "not a uri at all", None),
    ],
)
def test_callee_user(uri: str, to: str, callee: str | None) -> None:
    assert _request(uri=uri, to=to).callee_user == callee


@pytest.mark.parametrize(
    ("from_", "caller"),
    [
        ("sip:1001@pbx.example.com", "1001"),
        ('"Alice" <sip:alice@pbx.example.com>', "alice"),
        ("sip:%2B4930@pbx.example.com", "+4930"),
        ("tel:+4930123", "+4930123"),
        ("sip:pbx.example.com", None),
        ("sip:anonymous@anonymous.invalid", "anonymous"),
        ("", None),
        ("<<garbage", None),
    ],
)
def test_caller_user(from_: str, caller: str | None) -> None:
    assert _request(from_=from_).caller_user == caller


@given(st.text(max_size=80), st.text(max_size=80))
def test_accessors_never_raise(text: str, other: str) -> None:
    """A router reads them on any request the parser let through, or any JSON a service sent."""
    request = _request(uri=text, to=other, from_=text)
    for value in (request.callee_user, request.caller_user):
        assert value is None or isinstance(value, str)


def test_from_a_parsed_invite() -> None:
    invite = parse_message(
        b"INVITE sip:%2A97@127.0.0.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
        b"Max-Forwards: 70\r\n"
        b'f: "Alice" <sip:alice@127.0.0.1>;tag=1\r\n'
        b"t: <sip:voicemail@127.0.0.1>\r\n"
        b"i: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    request = RouteRequest.from_request(invite, "127.0.0.1:5070", "internal")
    assert (request.caller_user, request.callee_user) == ("alice", "*97")


@pytest.mark.anyio
async def test_a_router_routes_on_callee_user_over_the_wire() -> None:
    """A Proxy without authentication rejects by callee_user; the Phone sees the status."""
    seen: list[tuple[str | None, str | None]] = []

    async def route(request: RouteRequest) -> RouteDecision:
        seen.append((request.caller_user, request.callee_user))
        if request.callee_user == "0900":
            return RouteDecision.reject(403, "Premium numbers barred")
        return RouteDecision.reject(404, "Not Found")

    proxy = Proxy.from_parts(SipStack([UdpTransport("127.0.0.1", 0)]), router=route)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        server = Peer("UDP", "127.0.0.1", proxy.stack.transports[0].local_port)
        phone = Phone(SipStack([UdpTransport("127.0.0.1", 0)]), "sip:1001@127.0.0.1", server=server)
        await tg.start(phone.stack.serve)
        with pytest.raises(CallFailed) as barred:
            await phone.call("sip:0900@127.0.0.1")
        with pytest.raises(CallFailed) as other:
            await phone.call("sip:1002@127.0.0.1")
        tg.cancel_scope.cancel()
    assert (barred.value.status, other.value.status) == (403, 404)
    assert seen == [("1001", "0900"), ("1001", "1002")]
