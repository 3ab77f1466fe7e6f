"""Requests inside a bridged call: re-INVITE (hold) both ways, INFO, and the refusals
(481 for a dialog the proxy does not know, 501, out-of-order CSeq, a far side that
never answers)."""

from __future__ import annotations

import pytest

from sdpbx.sip import DialogState, Request, Response

from .rig import ALICE, BOB, PROXY, Endpoint, Rig, running, sdp, to

pytestmark = pytest.mark.anyio

BOB_URI = f"sip:bob@{BOB[0]}:{BOB[1]}"
CALLED = f"sip:bob@{PROXY.host}"


async def bridged(rig: Rig) -> tuple[Endpoint, Endpoint]:
    """alice and bob in a call through the proxy, both ACKs delivered."""
    alice = await rig.endpoint("alice", ALICE)
    bob = await rig.endpoint("bob", BOB)
    await alice.call(CALLED)
    await bob.wait_for("ACK")
    await rig.settle()
    return alice, bob


def in_dialog(endpoint: Endpoint, method: str) -> list[Request]:
    return [r for r in endpoint.received if r.method == method and r.to.tag is not None]


@pytest.mark.parametrize("holder", ["alice", "bob"])
async def test_hold_and_resume_by_reinvite(holder: str) -> None:
    """A re-INVITE with a=sendonly reaches the other side in its own dialog and the
    answer (a=recvonly) comes back; resuming works the same; the call then ends normally."""
    async with running(to(BOB_URI)) as rig:
        alice, bob = await bridged(rig)
        me, peer = (alice, bob) if holder == "alice" else (bob, alice)
        dialog = me.only_dialog()
        held = await me.send(dialog, "INVITE", sdp(me.user, me.host, "sendonly"))
        assert held.status == 200
        assert b"a=recvonly" in held.body
        [reinvite] = in_dialog(peer, "INVITE")
        assert b"a=sendonly" in reinvite.body
        assert reinvite.call_id == peer.only_dialog().call_id  # the peer's own dialog
        assert reinvite.call_id != dialog.call_id
        resumed = await me.send(dialog, "INVITE", sdp(me.user, me.host))
        assert resumed.status == 200
        assert b"a=sendrecv" in resumed.body
        second = in_dialog(peer, "INVITE")[1]
        assert b"a=sendrecv" in second.body
        assert second.cseq.number == reinvite.cseq.number + 1
        assert (await me.send(dialog, "BYE")).status == 200
        await peer.wait_for("BYE")
        await rig.calls_over()
        await rig.expire()
        rig.assert_clean()


@pytest.mark.parametrize("holder", ["alice", "bob"])
async def test_the_far_side_gets_the_ack_of_a_relayed_reinvite(holder: str) -> None:
    """RFC 3261 §13.2.2.4: the UAC of a re-INVITE (the proxy, on the far leg) ACKs its 2xx.
    Without a Via the ACK does not parse and is dropped: the far side resends its 200
    until Timer H and then, by §13.3.1.4, should hang up the call, ~32 s after a hold."""
    async with running(to(BOB_URI)) as rig:
        alice, bob = await bridged(rig)
        me, peer = (alice, bob) if holder == "alice" else (bob, alice)
        before = rig.wire(peer)
        held = await me.send(me.only_dialog(), "INVITE", sdp(me.user, me.host, "sendonly"))
        assert held.status == 200
        await rig.settle()
        assert rig.wire(peer)[len(before) :] == ["INVITE", "ACK"]
        [ack] = in_dialog(peer, "ACK")[-1:]
        assert ack.cseq.method == "ACK"


async def test_a_refused_reinvite_keeps_the_call() -> None:
    """bob answers the relayed re-INVITE 488: alice gets 488 and the call stays up."""
    async with running(to(BOB_URI)) as rig:
        alice, bob = await bridged(rig)
        bob.on_reinvite = 488
        dialog = alice.only_dialog()
        refused = await alice.send(dialog, "INVITE", sdp("alice", ALICE[0], "sendonly"))
        assert refused.status == 488
        await rig.settle()
        [call] = list(rig.proxy.calls)
        assert call.ended_at is None
        assert (await alice.send(dialog, "INFO")).status == 200
        assert (await alice.send(dialog, "BYE")).status == 200
        await bob.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(bob)[2:] == ["INVITE", "ACK", "INFO", "BYE"]
        await rig.expire()
        rig.assert_clean()


async def test_info_is_relayed_with_its_body_and_type() -> None:
    async with running(to(BOB_URI)) as rig:
        alice, bob = await bridged(rig)
        dialog = alice.only_dialog()
        request = dialog.create_request(
            "INFO",
            headers=[("Content-Type", "application/dtmf-relay"), ("X-Secret", "no")],
            body=b"Signal=5\r\nDuration=160\r\n",
        )
        async with alice.stack.request(request, PROXY) as client:
            assert (await client.final_response()).status == 200
        [info] = in_dialog(bob, "INFO")
        assert info.body == b"Signal=5\r\nDuration=160\r\n"
        assert info.content_type == "application/dtmf-relay"
        assert "x-secret" not in info.headers  # only the listed headers cross the bridge
        assert (await alice.send(dialog, "BYE")).status == 200
        await rig.calls_over()
        await rig.expire()
        rig.assert_clean()


async def test_an_unknown_dialog_gets_481() -> None:
    async with running(to(BOB_URI)) as rig:
        alice = await rig.endpoint("alice", ALICE)
        request = Request.create(
            "BYE",
            CALLED,
            [
                ("Max-Forwards", "70"),
                ("From", f"<sip:alice@{ALICE[0]}>;tag=nobody"),
                ("To", f"<{CALLED}>;tag=nothing"),
                ("Call-ID", "no-such-call"),
                ("CSeq", "2 BYE"),
            ],
        )
        async with alice.stack.request(request, PROXY) as client:
            assert (await client.final_response()).status == 481
        assert rig.proxy.stats.unknown_dialogs == 1
        await rig.expire()
        rig.assert_clean()


async def test_a_request_in_an_ended_call_gets_481() -> None:
    async with running(to(BOB_URI)) as rig:
        alice, bob = await bridged(rig)
        dialog = bob.only_dialog()
        assert (await bob.send(dialog, "BYE")).status == 200
        await alice.wait_for("BYE")
        await rig.calls_over()
        # alice's side of the dialog is over too; she tries anyway with a copy of it.
        stale = alice.only_dialog()
        stale.state = DialogState.CONFIRMED
        assert (await alice.send(stale, "INFO")).status == 481
        await rig.expire()
        rig.assert_clean()


async def test_a_method_the_call_does_not_implement_is_501() -> None:
    async with running(to(BOB_URI)) as rig:
        alice, bob = await bridged(rig)
        refer = await alice.send(alice.only_dialog(), "REFER")
        assert refer.status == 501
        assert "INVITE" in (refer.headers.get("allow") or "")
        assert in_dialog(bob, "REFER") == []
        assert (await alice.send(alice.only_dialog(), "BYE")).status == 200
        await rig.calls_over()
        await rig.expire()
        rig.assert_clean()


async def test_an_out_of_order_cseq_is_500_and_not_relayed() -> None:
    """RFC 3261 §12.2.2: a CSeq lower than the last one is answered 500."""
    async with running(to(BOB_URI)) as rig:
        alice, bob = await bridged(rig)
        dialog = alice.only_dialog()
        assert (await alice.send(dialog, "INFO")).status == 200  # CSeq 2
        dialog.local_cseq = 0
        late = await alice.send(dialog, "INFO")  # CSeq 1
        assert late.status == 500
        assert len(in_dialog(bob, "INFO")) == 1
        dialog.local_cseq = 5
        assert (await alice.send(dialog, "BYE")).status == 200
        await rig.calls_over()
        await rig.expire()
        rig.assert_clean()


async def test_a_reinvite_the_far_side_never_answers_is_408() -> None:
    """bob goes silent (everything to him is lost): Timer B ends the relayed re-INVITE
    and alice gets 408; her BYE then ends the call (the BYE to bob times out too)."""
    async with running(to(BOB_URI)) as rig:
        alice, _ = await bridged(rig)
        rig.network.drop = lambda data, source, destination: destination.host == BOB[0]
        dialog = alice.only_dialog()
        out = dialog.create_request(
            "INVITE",
            headers=[("Content-Type", "application/sdp")],
            body=sdp("alice", ALICE[0], "sendonly"),
        )
        client = alice.stack.send_request(out, PROXY)
        await rig.settle()
        rig.tick(1.0)  # the proxy's 100 Trying to alice (stops her own Timer B)
        await rig.settle()
        assert (await client.next_response()).status == 100
        rig.tick(rig.proxy.stack.layer.timers.timer_b)
        final: Response = await client.final_response()
        client.close()
        assert final.status == 408
        assert (await alice.send(dialog, "BYE")).status == 200
        await rig.settle()
        rig.tick(rig.proxy.stack.layer.timers.timer_f + 1)
        await rig.calls_over()
        await rig.expire()
        rig.assert_clean()
