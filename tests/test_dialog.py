"""RFC 3261 §12 dialogs: creation on both sides, in-dialog requests on the wire, state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdpbx.sip import LocalProtocolError, Request, Response, SipParseError, parse_message
from sdpbx.sip.dialog import (
    Dialog,
    DialogId,
    DialogState,
    dialog_id_for_request,
    dialog_id_for_response,
)
from sdpbx.sip.message import make_response
from sdpbx.sip.uri import SipUri, parse_uri


def req(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def resp(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    return msg


# Alice calls Bob through two record-routing proxies: p1 (next to Alice) then p2.
# The INVITE as Alice sends it (no Record-Route yet) ...
ALICE_INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# ... and as Bob receives it: p2 put its Record-Route above p1's.
BOB_INVITE = (
    b"INVITE sip:bob@192.0.2.4 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bK2\r\n"
    b"Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 68\r\n"
    b"Record-Route: <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def alice_response(status: str, contact: bytes, record_route: bytes) -> bytes:
    """A response to Alice's INVITE as it reaches her (Via of p1/p2 already popped)."""
    return (
        b"SIP/2.0 " + status.encode() + b"\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
        + record_route
        + b'To: "Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n'
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        b"CSeq: 314159 INVITE\r\n" + contact + b"Content-Length: 0\r\n\r\n"
    )


VIA = "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKv"
RR_BOTH = b"Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\r\n"
BOB_CONTACT = b"Contact: <sip:bob@192.0.2.4>\r\n"


def alice_dialog() -> Dialog:
    return Dialog.as_uac(req(ALICE_INVITE), resp(alice_response("200 OK", BOB_CONTACT, RR_BOTH)))


def bob_dialog() -> Dialog:
    return Dialog.as_uas(
        req(BOB_INVITE), "a6c85cf", local_contact="<sip:bob@192.0.2.4>", confirmed=True
    )


# -- creation -----------------------------------------------------------------------


def test_uac_dialog_from_180_then_200_record_route_reversed() -> None:
    invite = req(ALICE_INVITE)
    ringing = resp(
        alice_response(
            "180 Ringing",
            b"Contact: <sip:bob@early.example.com>\r\n",
            b"Record-Route: <sip:p1.example.com;lr>\r\n",
        )
    )
    d = Dialog.as_uac(invite, ringing)
    assert d.state is DialogState.EARLY
    assert d.id == DialogId("a84b4c76e66710@pc33.atlanta.example.com", "1928301774", "a6c85cf")
    assert [str(r) for r in d.route_set] == ["<sip:p1.example.com;lr>"]
    assert str(d.remote_target) == "sip:bob@early.example.com"
    assert d.local_cseq == 314159
    assert d.remote_cseq is None
    assert d.local_contact == "<sip:alice@pc33.atlanta.example.com>"
    assert str(d.local_uri) == "Alice <sip:alice@atlanta.example.com>"
    assert str(d.remote_uri) == '"Bob" <sip:bob@biloxi.example.com>'
    assert d.secure is False

    # The 2xx recomputes the route set (early dialog) and moves the target.
    d.receive_response(invite, resp(alice_response("200 OK", BOB_CONTACT, RR_BOTH)))
    assert d.state is DialogState.CONFIRMED
    assert [str(r) for r in d.route_set] == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
    ]
    assert str(d.remote_target) == "sip:bob@192.0.2.4"
    assert d.next_hop() == parse_uri("sip:p1.example.com;lr")

    bye = d.create_request("BYE", via="SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKbye")
    assert bytes(bye) == (
        b"BYE sip:bob@192.0.2.4 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKbye\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:p1.example.com;lr>\r\n"
        b"Route: <sip:p2.example.com;lr>\r\n"
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b'To: "Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n'
        b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        b"CSeq: 314160 BYE\r\n"
        b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


def test_uac_early_provisional_without_contact_keeps_target() -> None:
    invite = req(ALICE_INVITE)
    d = Dialog.as_uac(invite, resp(alice_response("183 Session Progress", BOB_CONTACT, RR_BOTH)))
    d.receive_response(invite, resp(alice_response("180 Ringing", b"", RR_BOTH)))
    assert d.state is DialogState.EARLY
    assert str(d.remote_target) == "sip:bob@192.0.2.4"


def test_uas_dialog_route_set_in_order() -> None:
    invite = req(BOB_INVITE)
    d = Dialog.as_uas(invite, "a6c85cf", local_contact="<sip:bob@192.0.2.4>")
    assert d.state is DialogState.EARLY
    assert d.id == DialogId("a84b4c76e66710@pc33.atlanta.example.com", "a6c85cf", "1928301774")
    assert [str(r) for r in d.route_set] == [
        "<sip:p2.example.com;lr>",
        "<sip:p1.example.com;lr>",
    ]
    assert d.remote_cseq == 314159
    assert d.local_cseq == 0
    d.confirm()
    assert d.state is DialogState.CONFIRMED
    bye = d.create_request("BYE")
    assert bytes(bye) == (
        b"BYE sip:alice@pc33.atlanta.example.com SIP/2.0\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:p2.example.com;lr>\r\n"
        b"Route: <sip:p1.example.com;lr>\r\n"
        b'From: "Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n'
        b"To: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        b"CSeq: 1 BYE\r\n"
        b"Contact: <sip:bob@192.0.2.4>\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


def test_uas_response_carries_the_dialog_both_sides_agree_on() -> None:
    """make_response copies Record-Route into the 2xx, so both route sets are mirrors."""
    bob = bob_dialog()
    ok = resp(
        bytes(
            make_response(
                req(BOB_INVITE), 200, to_tag=bob.local_tag, headers=[("Contact", "<sip:bob@x>")]
            )
        )
    )
    alice = Dialog.as_uac(req(ALICE_INVITE), ok)
    assert alice.id == bob.id.reversed()
    assert alice.route_set == tuple(reversed(bob.route_set))
    assert dialog_id_for_response(ok) == alice.id


def test_uas_confirmed_flag_and_ack_confirms() -> None:
    d = Dialog.as_uas(req(BOB_INVITE), "t1")
    assert d.local_contact is None
    assert d.state is DialogState.EARLY
    ack = alice_dialog().create_ack(314159)
    assert d.receive_request(ack) is True
    assert d.state is DialogState.CONFIRMED
    assert Dialog.as_uas(req(BOB_INVITE), "t1", confirmed=True).state is DialogState.CONFIRMED


def test_uas_request_already_in_another_dialog() -> None:
    in_dialog = req(BOB_INVITE.replace(b'"Bob" <sip:bob@biloxi.example.com>', b"<sip:b@x>;tag=zz"))
    with pytest.raises(LocalProtocolError):
        Dialog.as_uas(in_dialog, "other")
    assert Dialog.as_uas(in_dialog, "zz").local_tag == "zz"


def test_uas_without_from_tag_has_null_remote_tag() -> None:
    old = req(BOB_INVITE.replace(b";tag=1928301774", b""))
    d = Dialog.as_uas(old, "abc")
    assert d.remote_tag == ""
    bye = d.create_request("BYE")
    assert bye.to.tag is None
    assert bye.headers.get("to") == "Alice <sip:alice@atlanta.example.com>"


def test_uac_2xx_without_to_tag_has_null_remote_tag() -> None:
    data = alice_response("200 OK", BOB_CONTACT, b"").replace(b";tag=a6c85cf", b"")
    d = Dialog.as_uac(req(ALICE_INVITE), resp(data))
    assert d.remote_tag == ""
    assert d.state is DialogState.CONFIRMED


@pytest.mark.parametrize(
    "status",
    ["100 Trying", "180 Ringing", "486 Busy Here"],
)
def test_uac_responses_that_create_no_dialog(status: str) -> None:
    data = alice_response(status, BOB_CONTACT, b"")
    if status.startswith(("100", "180")):
        data = data.replace(b";tag=a6c85cf", b"")
    with pytest.raises(LocalProtocolError):
        Dialog.as_uac(req(ALICE_INVITE), resp(data))


def test_uac_request_without_from_tag() -> None:
    invite = req(ALICE_INVITE.replace(b";tag=1928301774", b""))
    with pytest.raises(LocalProtocolError):
        Dialog.as_uac(invite, resp(alice_response("200 OK", BOB_CONTACT, b"")))


@pytest.mark.parametrize(
    "contact",
    [
        b"",
        b"Contact: *\r\n",
        b"Contact: <sip:a@x>, <sip:b@y>\r\n",
        b"Contact: <tel:+15551234>\r\n",
        b"Contact: <sip:a@@x>\r\n",
    ],
)
def test_dialog_creating_message_needs_one_sip_contact(contact: bytes) -> None:
    with pytest.raises(SipParseError) as info:
        Dialog.as_uac(req(ALICE_INVITE), resp(alice_response("200 OK", contact, b"")))
    assert info.value.status == 400
    invite = req(BOB_INVITE.replace(b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n", contact))
    with pytest.raises(SipParseError) as info:
        Dialog.as_uas(invite, "t")
    assert info.value.status == 400


def test_explicit_local_contact_overrides_the_requests() -> None:
    d = Dialog.as_uac(
        req(ALICE_INVITE),
        resp(alice_response("200 OK", BOB_CONTACT, b"")),
        local_contact="<sip:alice@10.0.0.1:5070;transport=tcp>",
    )
    assert d.create_request("INFO").headers.get("contact") == (
        "<sip:alice@10.0.0.1:5070;transport=tcp>"
    )


# -- secure flag ----------------------------------------------------------------------


def sips_invite(transport: bytes, via: bool = True) -> Request:
    data = ALICE_INVITE.replace(b"INVITE sip:bob", b"INVITE sips:bob").replace(
        b"<sip:alice@pc33", b"<sips:alice@pc33"
    )
    data = data.replace(b"SIP/2.0/UDP", b"SIP/2.0/" + transport)
    if not via:
        data = data.replace(
            b"Via: SIP/2.0/" + transport + b" pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n",
            b"",
        )
        assert b"Via" not in data
        return Request.create("INVITE", "sips:bob@biloxi.example.com", req_headers(data))
    return req(data)


def req_headers(data: bytes) -> list[tuple[str, str]]:
    """The header list of ``data``'s request, for building one without a Via."""
    head = data.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
    return [(n, v.strip()) for n, _, v in (line.partition(":") for line in head)]


@pytest.mark.parametrize(
    ("transport", "secure"),
    [(b"TLS", True), (b"WSS", True), (b"UDP", False), (b"TCP", False)],
)
def test_secure_needs_sips_and_tls(transport: bytes, secure: bool) -> None:
    ok = resp(alice_response("200 OK", b"Contact: <sips:bob@192.0.2.4>\r\n", b""))
    assert Dialog.as_uac(sips_invite(transport), ok).secure is secure
    assert Dialog.as_uas(sips_invite(transport), "t").secure is secure


def test_secure_overrides_and_plain_sip() -> None:
    ok = resp(alice_response("200 OK", BOB_CONTACT, b""))
    assert Dialog.as_uac(sips_invite(b"UDP"), ok, over_tls=True).secure is True
    assert Dialog.as_uas(sips_invite(b"TLS"), "t", over_tls=False).secure is False
    # A SIPS Request-URI not yet sent can only leave over TLS.
    assert Dialog.as_uac(sips_invite(b"TLS", via=False), ok).secure is True
    tls_sip = req(ALICE_INVITE.replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS"))
    assert Dialog.as_uac(tls_sip, ok).secure is False
    assert Dialog.as_uac(tls_sip, ok, over_tls=True).secure is False


# -- routing of in-dialog requests ------------------------------------------------------


def test_loose_routing_request() -> None:
    d = alice_dialog()
    invite = d.create_request(
        "INVITE", headers=[("Content-Type", "application/sdp")], body=b"v=0\r\n"
    )
    assert str(invite.uri) == "sip:bob@192.0.2.4"
    assert invite.headers.get_all("route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert bytes(invite).endswith(
        b"CSeq: 314160 INVITE\r\n"
        b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
        b"v=0\r\n"
    )


def test_no_route_set_sends_to_the_target() -> None:
    d = Dialog.as_uac(req(ALICE_INVITE), resp(alice_response("200 OK", BOB_CONTACT, b"")))
    assert d.route_set == ()
    assert d.next_hop() == parse_uri("sip:bob@192.0.2.4")
    r = d.create_request("OPTIONS", max_forwards=5)
    assert bytes(r).startswith(
        b"OPTIONS sip:bob@192.0.2.4 SIP/2.0\r\nMax-Forwards: 5\r\nFrom: Alice <sip:alice@"
    )
    assert "route" not in r.headers


def test_strict_routing_request() -> None:
    rr = (
        b"Record-Route: <sip:p2.example.com;lr>\r\n"
        b"Record-Route: <sip:strict.example.com;maddr=192.0.2.9;method=INVITE?X=1>\r\n"
    )
    d = Dialog.as_uac(req(ALICE_INVITE), resp(alice_response("200 OK", BOB_CONTACT, rr)))
    assert d.next_hop() == parse_uri("sip:strict.example.com;maddr=192.0.2.9;method=INVITE?X=1")
    bye = d.create_request("BYE")
    # The strict router is the Request-URI (less what a Request-URI cannot carry),
    # the rest of the route set follows, the remote target goes last.
    assert bytes(bye) == (
        b"BYE sip:strict.example.com;maddr=192.0.2.9 SIP/2.0\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:p2.example.com;lr>\r\n"
        b"Route: <sip:bob@192.0.2.4>\r\n"
        b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        b'To: "Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n'
        b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        b"CSeq: 314160 BYE\r\n"
        b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )


def test_strict_router_alone() -> None:
    rr = b"Record-Route: <sip:strict.example.com>\r\n"
    d = Dialog.as_uac(req(ALICE_INVITE), resp(alice_response("200 OK", BOB_CONTACT, rr)))
    r = d.create_request("INFO")
    assert str(r.uri) == "sip:strict.example.com"
    assert r.headers.get_all("route") == ["<sip:bob@192.0.2.4>"]


# -- CSeq --------------------------------------------------------------------------------


def test_cseq_increments_but_not_for_ack_and_cancel() -> None:
    d = alice_dialog()
    reinvite = d.create_request("INVITE")
    assert reinvite.headers.get("cseq") == "314160 INVITE"
    ack = d.create_ack(reinvite.cseq.number, via="SIP/2.0/UDP h;branch=z9hG4bKa")
    assert bytes(ack).startswith(
        b"ACK sip:bob@192.0.2.4 SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n"
    )
    assert ack.headers.get("cseq") == "314160 ACK"
    assert d.create_request("ACK").headers.get("cseq") == "314160 ACK"
    assert d.create_request("CANCEL").headers.get("cseq") == "314160 CANCEL"
    assert d.create_request("BYE").headers.get("cseq") == "314161 BYE"
    assert d.local_cseq == 314161
    # The ACK of the initial INVITE's 2xx reuses its number, whatever came after.
    assert d.create_ack(314159).headers.get("cseq") == "314159 ACK"


def test_cseq_exhausted() -> None:
    d = alice_dialog()
    d.local_cseq = 2**31 - 1
    with pytest.raises(LocalProtocolError):
        d.create_request("BYE")
    assert d.local_cseq == 2**31 - 1


def test_uac_cseq_zero_starts_at_zero() -> None:
    invite = req(ALICE_INVITE.replace(b"314159 INVITE", b"0 INVITE"))
    d = Dialog.as_uac(
        invite, resp(alice_response("200 OK", BOB_CONTACT, b"").replace(b"314159", b"0"))
    )
    assert d.local_cseq == 0
    assert d.create_ack(0).headers.get("cseq") == "0 ACK"
    assert d.create_request("BYE").headers.get("cseq") == "1 BYE"


def test_request_cseq_going_backwards_is_rejected() -> None:
    bob = bob_dialog()
    alice = alice_dialog()
    info = alice.create_request("INFO")  # 314160
    assert bob.receive_request(info) is True
    assert bob.remote_cseq == 314160
    stale = info.replace(
        headers=info.headers.set("CSeq", "314150 INFO").set("Contact", "<sip:evil@x>")
    )
    assert bob.receive_request(stale) is False
    assert bob.remote_cseq == 314160
    # The same number again (a CANCEL, an ACK) is in order.
    assert bob.receive_request(alice.create_ack(314160)) is True


def test_first_request_on_uac_dialog_accepts_any_cseq() -> None:
    alice = alice_dialog()
    bob = bob_dialog()
    bye = bob.create_request("BYE")
    zero = bye.replace(headers=bye.headers.set("CSeq", "0 BYE"))
    assert alice.remote_cseq is None
    assert alice.receive_request(zero) is True
    assert alice.remote_cseq == 0
    assert alice.state is DialogState.TERMINATED


# -- target refresh -----------------------------------------------------------------------


def test_target_refresh_on_received_reinvite() -> None:
    bob = bob_dialog()
    alice = alice_dialog()
    alice.local_contact = "<sip:alice@198.51.100.7:5062>"
    reinvite = alice.create_request("INVITE")
    assert bob.receive_request(reinvite) is True
    assert bob.remote_target == parse_uri("sip:alice@198.51.100.7:5062")
    # Route set fixed once the dialog exists: the BYE still goes through p2 then p1.
    bye = bob.create_request("BYE")
    assert bytes(bye).startswith(
        b"BYE sip:alice@198.51.100.7:5062 SIP/2.0\r\nMax-Forwards: 70\r\n"
        b"Route: <sip:p2.example.com;lr>\r\nRoute: <sip:p1.example.com;lr>\r\n"
    )


def test_non_refresh_request_does_not_move_target() -> None:
    bob = bob_dialog()
    alice = alice_dialog()
    alice.local_contact = "<sip:alice@elsewhere>"
    assert bob.receive_request(alice.create_request("INFO")) is True
    assert bob.remote_target == parse_uri("sip:alice@pc33.atlanta.example.com")
    alice.local_contact = None
    assert bob.receive_request(alice.create_request("UPDATE")) is True
    assert bob.remote_target == parse_uri("sip:alice@pc33.atlanta.example.com")


def test_bad_contact_in_refresh_changes_nothing() -> None:
    bob = bob_dialog()
    alice = alice_dialog()
    alice.local_contact = "<tel:+1555>"
    with pytest.raises(SipParseError):
        bob.receive_request(alice.create_request("UPDATE"))
    assert bob.remote_cseq == 314159
    assert bob.remote_target == parse_uri("sip:alice@pc33.atlanta.example.com")


def test_target_refresh_on_2xx_to_reinvite_keeps_route_set() -> None:
    alice = alice_dialog()
    routes = alice.route_set
    reinvite = alice.create_request("INVITE", via=VIA)
    ok = make_response(
        reinvite,
        200,
        headers=[
            ("Record-Route", "<sip:new.example.com;lr>"),
            ("Contact", "<sip:bob@203.0.113.5>"),
        ],
    )
    alice.receive_response(reinvite, resp(bytes(ok)))
    assert alice.remote_target == parse_uri("sip:bob@203.0.113.5")
    assert alice.route_set == routes
    assert alice.state is DialogState.CONFIRMED
    update = alice.create_request("UPDATE", via=VIA)
    alice.receive_response(
        update, resp(bytes(make_response(update, 200, headers=[("Contact", "<sip:b@z>")])))
    )
    assert alice.remote_target == parse_uri("sip:b@z")
    info = alice.create_request("INFO", via=VIA)
    alice.receive_response(
        info, resp(bytes(make_response(info, 200, headers=[("Contact", "<sip:q@q>")])))
    )
    assert alice.remote_target == parse_uri("sip:b@z")


def test_response_from_another_dialog_raises() -> None:
    invite = req(ALICE_INVITE)
    d = Dialog.as_uac(invite, resp(alice_response("180 Ringing", BOB_CONTACT, b"")))
    fork = resp(alice_response("200 OK", BOB_CONTACT, b"").replace(b"a6c85cf", b"fork2"))
    with pytest.raises(LocalProtocolError):
        d.receive_response(invite, fork)
    assert d.state is DialogState.EARLY
    other = Dialog.as_uac(invite, fork)
    assert other.id != d.id


# -- termination ---------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "ends"), [(481, True), (408, True), (487, False), (491, False)])
def test_failures_to_reinvite(status: int, ends: bool) -> None:
    d = alice_dialog()
    reinvite = d.create_request("INVITE", via=VIA)
    d.receive_response(reinvite, resp(bytes(make_response(reinvite, status))))
    assert d.is_terminated is ends
    assert d.state is (DialogState.TERMINATED if ends else DialogState.CONFIRMED)


def test_failure_to_initial_invite_ends_early_dialog() -> None:
    invite = req(ALICE_INVITE)
    d = Dialog.as_uac(invite, resp(alice_response("180 Ringing", BOB_CONTACT, b"")))
    cancel_ok = resp(alice_response("200 OK", b"", b"").replace(b"INVITE", b"CANCEL"))
    cancel = invite.replace(method="CANCEL")
    d.receive_response(cancel, cancel_ok)
    trying = resp(alice_response("100 Trying", b"", b""))
    d.receive_response(invite, trying)
    assert d.state is DialogState.EARLY
    d.receive_response(invite, resp(alice_response("487 Request Terminated", b"", b"")))
    assert d.state is DialogState.TERMINATED
    # Nothing brings it back, and nothing more may be sent on it but an ACK.
    d.receive_response(invite, resp(alice_response("200 OK", BOB_CONTACT, b"")))
    assert d.state is DialogState.TERMINATED
    with pytest.raises(LocalProtocolError):
        d.create_request("BYE")
    assert d.create_ack(314159).method == "ACK"


def test_bye_ends_the_dialog_both_ways() -> None:
    alice = alice_dialog()
    bob = bob_dialog()
    bye = alice.create_request("BYE", via=VIA)
    assert alice.state is DialogState.CONFIRMED
    assert bob.receive_request(bye) is True
    assert bob.state is DialogState.TERMINATED
    alice.receive_response(bye, resp(bytes(make_response(bye, 200))))
    assert alice.state is DialogState.TERMINATED

    alice = alice_dialog()
    bye = alice.create_request("BYE", via=VIA)
    alice.receive_response(bye, resp(bytes(make_response(bye, 500))))
    assert alice.state is DialogState.TERMINATED


def test_terminate() -> None:
    d = bob_dialog()
    d.terminate()
    assert d.state is DialogState.TERMINATED
    d.confirm()
    assert d.state is DialogState.TERMINATED
    assert "TERMINATED" in repr(d)


# -- ids ---------------------------------------------------------------------------------


def test_ids_from_messages() -> None:
    invite = req(BOB_INVITE)
    assert dialog_id_for_request(invite) == DialogId(
        "a84b4c76e66710@pc33.atlanta.example.com", "", "1928301774"
    )
    ok = resp(alice_response("200 OK", BOB_CONTACT, b""))
    rid = dialog_id_for_response(ok)
    assert rid == DialogId("a84b4c76e66710@pc33.atlanta.example.com", "1928301774", "a6c85cf")
    assert rid == alice_dialog().id
    assert rid.reversed() == bob_dialog().id
    assert {rid: 1}[DialogId(rid.call_id, rid.local_tag, rid.remote_tag)] == 1
    # In-dialog requests land on the receiver's id, responses on the sender's.
    bye = alice_dialog().create_request("BYE", via=VIA)
    assert dialog_id_for_request(req(bytes(bye))) == bob_dialog().id
    assert dialog_id_for_response(resp(bytes(make_response(bye, 200)))) == alice_dialog().id


# -- property: both sides of one exchange agree ---------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12)
_host = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True)
_route = st.tuples(_host, st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    call_id=_token,
    from_tag=_token,
    to_tag=_token,
    caller=_token,
    callee=_token,
    cseq=st.integers(min_value=0, max_value=2**31 - 16),
    routes=st.lists(_route, max_size=4),
    alice_host=_host,
    bob_host=_host,
    methods=st.lists(st.sampled_from(["INFO", "UPDATE", "INVITE", "OPTIONS"]), max_size=4),
)
def test_both_sides_of_one_exchange_agree(
    call_id: str,
    from_tag: str,
    to_tag: str,
    caller: str,
    callee: str,
    cseq: int,
    routes: list[tuple[str, bool]],
    alice_host: str,
    bob_host: str,
    methods: list[str],
) -> None:
    # Proxies nearest Bob record-route last, i.e. their line ends up on top.
    record_route = [(f"<sip:{h};lr>" if lr else f"<sip:{h}>") for h, lr in routes]
    headers = [("Via", f"SIP/2.0/UDP {alice_host};branch=z9hG4bKx")]
    headers += [("Record-Route", rr) for rr in reversed(record_route)]
    headers += [
        ("From", f"<sip:{caller}@{alice_host}>;tag={from_tag}"),
        ("To", f"<sip:{callee}@{bob_host}>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} INVITE"),
        ("Contact", f"<sip:{caller}@{alice_host}:5060>"),
    ]
    invite = req(bytes(Request.create("INVITE", f"sip:{callee}@{bob_host}", headers)))
    bob_contact = f"<sip:{callee}@{bob_host}:5070>"
    bob = Dialog.as_uas(invite, to_tag, local_contact=bob_contact)
    ok = resp(bytes(make_response(invite, 200, to_tag=to_tag, headers=[("Contact", bob_contact)])))
    bob.confirm()
    alice = Dialog.as_uac(invite, ok)

    assert alice.id == dialog_id_for_response(ok) == bob.id.reversed()
    assert alice.route_set == tuple(reversed(bob.route_set))
    assert alice.remote_target == parse_uri(f"sip:{callee}@{bob_host}:5070")
    assert bob.remote_target == parse_uri(f"sip:{caller}@{alice_host}:5060")

    ack = req(bytes(alice.create_ack(cseq, via=VIA)))
    assert dialog_id_for_request(ack) == bob.id
    assert bob.receive_request(ack) is True

    def check_route(sent: Request, sender: Dialog, target: str) -> None:
        if not sender.route_set:
            assert str(sent.uri) == target
            assert "route" not in sent.headers
        elif isinstance(first := sender.route_set[0].uri, SipUri) and first.param("lr") is not None:
            assert str(sent.uri) == target
            assert sent.routes == sender.route_set
        else:
            assert sent.uri == sender.route_set[0].uri
            assert sent.routes[-1].uri == parse_uri(target)

    for i, method in enumerate(methods):
        sent = req(bytes(alice.create_request(method, via=VIA)))
        assert dialog_id_for_request(sent) == bob.id
        assert sent.cseq.number == cseq + 1 + i
        check_route(sent, alice, f"sip:{callee}@{bob_host}:5070")
        assert bob.receive_request(sent) is True
        answer = resp(bytes(make_response(sent, 200)))
        assert dialog_id_for_response(answer) == alice.id
        alice.receive_response(sent, answer)

    sent = req(bytes(bob.create_request("BYE", via=VIA)))
    assert sent.cseq.number == 1
    assert dialog_id_for_request(sent) == alice.id
    check_route(sent, bob, f"sip:{caller}@{alice_host}:5060")
    assert isinstance(sent.uri, SipUri)
    assert alice.receive_request(sent) is True
    assert alice.state is DialogState.TERMINATED
    bob.receive_response(sent, resp(bytes(make_response(sent, 200))))
    assert bob.state is DialogState.TERMINATED
