"""Answered calls: who hangs up, and what each side and the proxy saw and kept.

alice (caller) -> proxy (B2BUA) -> bob (callee), all on one MemoryNetwork.
"""

from __future__ import annotations

import anyio
import pytest

from sdpbx.b2bua.events import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRinging,
    CallStarted,
    CallState,
)
from sdpbx.testing import AnsweringUas, CallFailed, Phone

from .rig import ALICE, BOB, PROXY, Endpoint, running, to

pytestmark = pytest.mark.anyio


async def test_answer_then_caller_hangs_up_with_the_public_kit() -> None:
    """Phone -> proxy -> AnsweringUas: 180 and 200 relayed, ACK on both legs, BYE relayed."""
    async with running(to(f"sip:uas@{BOB[0]}:{BOB[1]}")) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        uas = AnsweringUas()
        await rig.stack(BOB, uas)
        phone = Phone(await rig.stack(ALICE), f"sip:alice@{ALICE[0]}", server=PROXY)
        call = await phone.call(f"sip:bob@{PROXY.host}")
        assert call.remote_sdp.startswith(b"v=0")
        [live] = list(rig.proxy.calls)
        assert live.state is CallState.TALKING
        assert (await call.hang_up()).status == 200
        await rig.calls_over()
        assert rig.wire(BOB) == ["INVITE", "ACK", "BYE"]
        assert uas.stats.invites == uas.stats.acks == uas.stats.byes == 1
        assert rig.wire(ALICE) == ["100 INVITE", "180 INVITE", "200 INVITE", "200 BYE"]
        assert [type(e) for e in events] == [CallStarted, CallRinging, CallAnswered, CallEnded]
        ended = events[-1]
        assert isinstance(ended, CallEnded)
        assert (ended.reason, ended.status) == ("byCaller", 200)
        await rig.expire()
        rig.assert_clean()


async def test_answer_then_callee_hangs_up() -> None:
    """bob's BYE is answered by the proxy and a BYE of its own goes to alice."""
    async with running(to(f"sip:bob@{BOB[0]}:{BOB[1]}")) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        out, _ = await alice.call(f"sip:bob@{PROXY.host}")
        assert out.statuses() == [100, 180, 200]
        assert out.responses[-1].body == bob.sdp  # passthrough media: bob's answer as sent
        # Two dialogs that share nothing but the SDP.
        [invite] = [r for r in bob.received if r.method == "INVITE"]
        assert invite.call_id != out.invite.call_id
        assert invite.max_forwards == 69
        assert str(invite.from_.uri) == f"sip:alice@{ALICE[0]}"
        assert invite.body == alice.sdp
        await rig.settle()
        assert (await bob.send(bob.only_dialog(), "BYE")).status == 200
        await alice.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(alice) == ["100 INVITE", "180 INVITE", "200 INVITE", "BYE"]
        assert rig.wire(bob) == ["INVITE", "ACK", "200 BYE"]
        assert alice.only_dialog().is_terminated
        ended = events[-1]
        assert isinstance(ended, CallEnded)
        assert (ended.reason, ended.status) == ("byCallee", 200)
        assert len(rig.proxy.stack.layer) > 0  # the INVITE and BYE transactions, for now
        await rig.expire()
        rig.assert_clean()


async def test_busy_is_relayed() -> None:
    """bob answers 486: the proxy ACKs it (its transaction does) and alice gets 486."""
    async with running(to(f"sip:bob@{BOB[0]}:{BOB[1]}")) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        await rig.endpoint("bob", BOB, on_invite=486)
        phone = Phone(await rig.stack(ALICE), f"sip:alice@{ALICE[0]}", server=PROXY)
        with pytest.raises(CallFailed) as failed:
            await phone.call(f"sip:bob@{PROXY.host}")
        assert failed.value.status == 486
        await rig.calls_over()
        assert rig.wire(BOB) == ["INVITE", "ACK"]
        assert rig.wire(ALICE) == ["100 INVITE", "486 INVITE"]
        ended = events[-1]
        assert isinstance(ended, CallEnded)
        assert (ended.reason, ended.status) == ("rejected", 486)
        await rig.expire()
        rig.assert_clean()


async def test_both_sides_hang_up_at_once() -> None:
    """BYEs cross: each side's BYE gets 200, neither leg is left up."""
    async with running(to(f"sip:bob@{BOB[0]}:{BOB[1]}")) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        await alice.call(f"sip:bob@{PROXY.host}")
        await rig.settle()
        statuses: list[int] = []

        async def hang_up(endpoint: Endpoint) -> None:
            statuses.append((await endpoint.send(endpoint.only_dialog(), "BYE")).status)

        async with anyio.create_task_group() as tg:
            tg.start_soon(hang_up, alice)
            tg.start_soon(hang_up, bob)
        await rig.calls_over()
        assert statuses == [200, 200]
        # The BYE handled second may find its own BYE from the proxy on the way (which
        # that side answers 481, its dialog being over): in any order, nothing else.
        assert rig.wire(alice)[:3] == ["100 INVITE", "180 INVITE", "200 INVITE"]
        assert sorted(rig.wire(alice)[3:]) in (["200 BYE"], ["200 BYE", "BYE"])
        assert rig.wire(bob)[:2] == ["INVITE", "ACK"]
        assert sorted(rig.wire(bob)[2:]) in (["200 BYE"], ["200 BYE", "BYE"])
        assert len(rig.wire(alice) + rig.wire(bob)) <= 8  # at most one side got a BYE
        await rig.expire()
        rig.assert_clean()


async def test_delayed_offer_answer_travels_in_the_acks() -> None:
    """INVITE without SDP: bob's 200 carries the offer, alice's ACK the answer, which the
    proxy puts in its ACK to bob (RFC 3264 §5 / RFC 3261 §13.2.1)."""
    async with running(to(f"sip:bob@{BOB[0]}:{BOB[1]}")) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        out = alice.invite(f"sip:bob@{PROXY.host}", body=b"")
        final = await out.final()
        assert final.status == 200
        assert final.body == bob.sdp
        [invite] = [r for r in bob.received if r.method == "INVITE"]
        assert invite.body == b""
        await rig.settle()
        assert "ACK" not in bob.methods()  # held until alice's answer comes
        out.ack(final, body=alice.sdp)
        ack = await bob.wait_for("ACK")
        assert ack.body == alice.sdp
        assert (await alice.send(alice.only_dialog(), "BYE")).status == 200
        await bob.wait_for("BYE")
        await rig.expire()
        rig.assert_clean()


async def test_hangup_from_python_ends_both_legs() -> None:
    """Call.hangup() on a talking call: a BYE to each side, the CDR says who."""
    async with running(to(f"sip:bob@{BOB[0]}:{BOB[1]}")) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        await alice.call(f"sip:bob@{PROXY.host}")
        await rig.settle()
        [call] = list(rig.proxy.calls)
        await call.hangup("bySystem")
        await alice.wait_for("BYE")
        await bob.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(alice)[-1] == "BYE"
        assert rig.wire(bob) == ["INVITE", "ACK", "BYE"]
        ended = events[-1]
        assert isinstance(ended, CallEnded)
        assert (ended.reason, ended.status) == ("bySystem", 200)
        await rig.expire()
        rig.assert_clean()
