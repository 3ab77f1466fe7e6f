"""CANCEL at each stage of a call, and calls nobody answers.

alice (caller) -> proxy (B2BUA) -> bob (callee). RFC 3261 §9: a CANCEL asks a
UAS to stop a pending INVITE; the INVITE then ends in 487 (which the client
transaction ACKs), the CANCEL itself gets 200, and a 2xx that crossed the
CANCEL still makes a dialog, which its UAC must ACK and may end with BYE.
"""

from __future__ import annotations

import anyio
import pytest

from sdpbx.b2bua.events import CallEnded, CallEvent, CallState
from sdpbx.routing import RouteDecision, RouteRequest

from .rig import ALICE, BOB, PROXY, Outgoing, running, to

pytestmark = pytest.mark.anyio

BOB_URI = f"sip:bob@{BOB[0]}:{BOB[1]}"
CALLED = f"sip:bob@{PROXY.host}"


def ended(events: list[CallEvent]) -> tuple[str, int]:
    last = events[-1]
    assert isinstance(last, CallEnded)
    return last.reason, last.status


async def cancelled(out: Outgoing) -> None:
    """alice CANCELs: 200 for the CANCEL, then 487 for the INVITE."""
    assert (await out.cancel()).status == 200
    assert (await out.final()).status == 487


async def test_cancel_while_the_router_thinks() -> None:
    """Nothing was dialled yet: alice gets 487 and the router's late answer dials no one."""
    routed = anyio.Event()
    release = anyio.Event()

    async def slow(request: RouteRequest) -> RouteDecision:
        routed.set()
        await release.wait()
        return RouteDecision.forward(BOB_URI)

    async with running(slow) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        out = alice.invite(CALLED)
        assert (await out.next()).status == 100
        await routed.wait()
        await cancelled(out)
        release.set()
        await rig.calls_over()
        assert rig.wire(alice) == ["100 INVITE", "200 CANCEL", "487 INVITE"]
        assert rig.wire(bob) == []
        assert ended(events) == ("canceled", 487)
        await rig.expire()
        rig.assert_clean()


async def test_cancel_after_180() -> None:
    """The usual hang-up while ringing: the CANCEL goes on to bob, 487 comes back to alice."""
    async with running(to(BOB_URI)) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="ring")
        out = alice.invite(CALLED)
        await out.until(180)
        await cancelled(out)
        await bob.wait_for("CANCEL")
        await rig.calls_over()
        assert rig.wire(alice) == ["100 INVITE", "180 INVITE", "200 CANCEL", "487 INVITE"]
        # bob: the proxy's CANCEL, then its transaction's ACK of bob's 487.
        assert rig.wire(bob) == ["INVITE", "CANCEL", "ACK"]
        assert bob.pending == []
        assert ended(events) == ("canceled", 487)
        await rig.expire()
        rig.assert_clean()


async def test_cancel_before_the_callee_sent_anything() -> None:
    """bob has not answered the INVITE at all when alice CANCELs: alice is answered at once,
    and bob's INVITE ends in 487 whenever the proxy's CANCEL reaches it."""
    async with running(to(BOB_URI)) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="silent")
        out = alice.invite(CALLED)
        assert (await out.next()).status == 100
        await bob.wait_for("INVITE")
        await cancelled(out)
        await rig.settle()
        if bob.pending:  # a proxy that waits for a provisional before its CANCEL (§9.1)
            bob.ring(bob.pending[0])
        await bob.wait_for("CANCEL")
        await rig.calls_over()
        assert rig.wire(alice) == ["100 INVITE", "200 CANCEL", "487 INVITE"]
        assert rig.wire(bob) == ["INVITE", "CANCEL", "ACK"]
        assert bob.pending == []
        await rig.expire()
        rig.assert_clean()


async def test_no_cancel_goes_to_a_callee_before_its_first_provisional() -> None:
    """§9.1: "If no provisional response has been received, the CANCEL request MUST NOT be
    sent; rather, the client MUST wait for the arrival of a provisional response". Sent
    early over UDP it can overtake the INVITE (481), and the phone rings on, uncancelled."""
    async with running(to(BOB_URI)) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="silent")
        out = alice.invite(CALLED)
        assert (await out.next()).status == 100
        await bob.wait_for("INVITE")
        await cancelled(out)
        await rig.settle()
        assert "CANCEL" not in bob.methods()
        bob.ring(bob.pending[0])  # the first provisional: now the CANCEL may go
        await bob.wait_for("CANCEL")
        await rig.calls_over()
        assert rig.wire(bob) == ["INVITE", "CANCEL", "ACK"]
        await rig.expire()
        rig.assert_clean()


async def test_cancel_crossing_the_callees_200() -> None:
    """bob answers as the proxy's CANCEL arrives (the 200 goes out first, so it crossed
    the CANCEL on the wire). alice was not answered yet and gets 487; the proxy, as bob's
    UAC, must ACK that 200 and end the dialog with a BYE (RFC 3261 §9.1, §15)."""
    async with running(to(BOB_URI)) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="ring")
        bob.answer_on_cancel = True
        out = alice.invite(CALLED)
        await out.until(180)
        await cancelled(out)
        await bob.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(alice) == ["100 INVITE", "180 INVITE", "200 CANCEL", "487 INVITE"]
        assert bob.methods() == ["INVITE", "CANCEL", "ACK", "BYE"]
        assert rig.wire(bob) == ["INVITE", "CANCEL", "ACK", "BYE"]
        assert bob.only_dialog().is_terminated
        assert ended(events) == ("canceled", 487)
        await rig.expire()
        rig.assert_clean()


async def test_cancel_crossing_the_proxys_200() -> None:
    """The proxy answered alice before her CANCEL arrived: the CANCEL changes nothing
    (§9.2), the call is up, and alice, who got a 2xx after all, ACKs and hangs up."""
    async with running(to(BOB_URI)) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        out = alice.invite(CALLED)
        final = await out.final()
        assert final.status == 200
        cancel = await out.cancel()
        # §9.2: the INVITE's transaction still exists (it waits for the ACK), so the
        # CANCEL matches it and gets 200, with no effect on the call.
        assert cancel.status == 200
        assert cancel.to.tag == final.to.tag
        dialog = out.ack(final)
        await rig.settle()
        [call] = list(rig.proxy.calls)
        assert call.state is CallState.TALKING
        assert "CANCEL" not in bob.methods()
        assert (await alice.send(dialog, "BYE")).status == 200
        await bob.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(bob) == ["INVITE", "ACK", "BYE"]
        assert ended(events) == ("byCaller", 200)
        await rig.expire()
        rig.assert_clean()


async def test_hangup_from_python_while_ringing() -> None:
    """Call.hangup() before anyone answered: a CANCEL to bob, 487 to alice, and the CDR
    reason is the one given rather than "canceled"."""
    async with running(to(BOB_URI)) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="ring")
        out = alice.invite(CALLED)
        await out.until(180)
        [call] = list(rig.proxy.calls)
        await call.hangup("bySystem")
        assert (await out.final()).status == 487
        await bob.wait_for("CANCEL")
        await rig.calls_over()
        assert rig.wire(bob) == ["INVITE", "CANCEL", "ACK"]
        assert ended(events) == ("bySystem", 487)
        await rig.expire()
        rig.assert_clean()


async def test_ring_timeout() -> None:
    """bob rings for longer than the proxy's ring_timeout: bob gets a CANCEL, alice 408.

    The timeout is a cancel scope on the event loop's clock, which jumps here (conftest).
    """
    async with running(to(BOB_URI), ring_timeout=60.0) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="ring")
        started = anyio.current_time()
        out = alice.invite(CALLED)
        final = await out.final()
        assert final.status == 408
        assert anyio.current_time() - started >= 60.0
        await rig.calls_over()
        assert rig.wire(alice) == ["100 INVITE", "180 INVITE", "408 INVITE"]
        assert rig.wire(bob) == ["INVITE", "CANCEL", "ACK"]
        assert ended(events) == ("noAnswer", 408)
        await rig.expire()
        rig.assert_clean()


async def test_the_routes_timeout_wins_over_the_proxys() -> None:
    async def route(request: RouteRequest) -> RouteDecision:
        return RouteDecision.forward(BOB_URI, timeout=5.0)

    async with running(route, ring_timeout=60.0) as rig:
        alice = await rig.endpoint("alice", ALICE)
        await rig.endpoint("bob", BOB, on_invite="ring")
        started = anyio.current_time()
        assert (await alice.invite(CALLED).final()).status == 408
        assert 5.0 <= anyio.current_time() - started < 60.0
        await rig.expire()
        rig.assert_clean()


async def test_a_callee_that_never_responds_times_out_by_timer_b() -> None:
    """No 100, no 180 from the target (nobody there): Timer B (64*T1 on the FakeClock)
    ends bob's INVITE, and alice gets 408."""
    async with running(to("sip:bob@10.0.0.99:5060")) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        out = alice.invite(CALLED)
        assert (await out.next()).status == 100
        await rig.settle()
        assert rig.sent_to("10.0.0.99", 5060) == ["INVITE"]
        for n in range(7):  # Timer A doubles from T1 (UDP), until Timer B at 64*T1
            rig.tick(rig.proxy.stack.layer.timers.t1 * 2**n)
            await rig.settle()
        assert (await out.final()).status == 408
        assert rig.sent_to("10.0.0.99", 5060) == ["INVITE"] * 7
        assert ended(events)[1] == 408
        await rig.expire()
        rig.assert_clean()
