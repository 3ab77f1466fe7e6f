"""Forking: parallel and sequential targets, and failover between trunks.

alice calls through the proxy; the route names bob and carol (phones) or two
trunks whose far ends are endpoints at 10.0.1.1 and 10.0.1.2.
"""

from __future__ import annotations

import pytest

from sdpbx.b2bua.events import CallEnded, CallEvent
from sdpbx.routing import RouteDecision, RouteRequest
from sdpbx.routing.trunks import Trunk
from sdpbx.stack import IncomingRequest

from .rig import ALICE, BOB, CAROL, PROXY, Endpoint, Route, running

pytestmark = pytest.mark.anyio

BOB_URI = f"sip:bob@{BOB[0]}:{BOB[1]}"
CAROL_URI = f"sip:carol@{CAROL[0]}:{CAROL[1]}"
CALLED = f"sip:group@{PROXY.host}"
TRUNK_A = ("10.0.1.1", 5060)
TRUNK_B = ("10.0.1.2", 5060)
TRUNKS = {
    "a": Trunk("a", "sip", TRUNK_A[0], TRUNK_A[1], networks=()),
    "b": Trunk("b", "sip", TRUNK_B[0], TRUNK_B[1], networks=()),
}


def forward(*targets: str, **options: object) -> Route:
    async def route(request: RouteRequest) -> RouteDecision:
        return RouteDecision.forward(*targets, **options)  # type: ignore[arg-type]

    return route


def via_trunks(**options: object) -> Route:
    """Dial 100 through trunk a, then trunk b."""
    return forward(
        TRUNKS["a"].target_uri("100"),
        TRUNKS["b"].target_uri("100"),
        target_trunks=("a", "b"),
        **options,
    )


def ended(events: list[CallEvent]) -> tuple[str, int]:
    last = events[-1]
    assert isinstance(last, CallEnded)
    return last.reason, last.status


# -- parallel -------------------------------------------------------------------------


async def test_parallel_first_200_wins_and_the_other_is_cancelled() -> None:
    async with running(forward(BOB_URI, CAROL_URI, strategy="parallel")) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="ring")
        carol = await rig.endpoint("carol", CAROL, on_invite="ring")
        out = alice.invite(CALLED)
        await out.until(180)
        await bob.wait_for("INVITE")
        await carol.wait_for("INVITE")
        carol.answer()
        final = await out.final()
        assert final.status == 200
        assert final.body == carol.sdp
        dialog = out.ack(final)
        await bob.wait_for("CANCEL")
        await carol.wait_for("ACK")
        await rig.settle()
        # Both rang, alice heard one 180: the same ringing twice is relayed once.
        assert rig.wire(alice) == ["100 INVITE", "180 INVITE", "200 INVITE"]
        assert rig.wire(bob) == ["INVITE", "CANCEL", "ACK"]
        [call] = list(rig.proxy.calls)
        assert call.winner is not None and call.winner.target == CAROL_URI
        assert (await alice.send(dialog, "BYE")).status == 200
        await carol.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(carol) == ["INVITE", "ACK", "BYE"]
        await rig.expire()
        rig.assert_clean()


async def test_parallel_two_200s_at_once_the_loser_gets_ack_and_bye() -> None:
    """Both answer in the same instant: one is bridged, the other's 200 is ACKed and its
    dialog ended with BYE (a UAC must ACK every 2xx, RFC 3261 §13.2.2.4)."""
    async with running(forward(BOB_URI, CAROL_URI, strategy="parallel")) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="ring")
        carol = await rig.endpoint("carol", CAROL, on_invite="ring")
        out = alice.invite(CALLED)
        await out.until(180)
        await bob.wait_for("INVITE")
        await carol.wait_for("INVITE")
        bob.answer()
        carol.answer()
        final = await out.final()
        assert final.status == 200
        dialog = out.ack(final)
        winner, loser = (bob, carol) if final.body == bob.sdp else (carol, bob)
        await loser.wait_for("BYE")
        await winner.wait_for("ACK")
        # The loser may have seen the proxy's CANCEL too (answered 200, no effect).
        assert [m for m in loser.methods() if m != "CANCEL"] == ["INVITE", "ACK", "BYE"]
        assert winner.methods() == ["INVITE", "ACK"]
        assert (await alice.send(dialog, "BYE")).status == 200
        await winner.wait_for("BYE")
        await rig.calls_over()
        await rig.expire()
        rig.assert_clean()


@pytest.mark.parametrize(
    ("bob_says", "carol_says", "alice_gets"),
    [
        (486, 500, 486),  # the lowest class wins (RFC 3261 §16.7)
        (500, 404, 404),
        (486, 603, 603),  # a 6xx wins over everything
        (486, 407, 403),  # a target's challenge is not the caller's to answer
    ],
)
async def test_parallel_all_fail_the_best_failure_is_relayed(
    bob_says: int, carol_says: int, alice_gets: int
) -> None:
    async with running(forward(BOB_URI, CAROL_URI, strategy="parallel")) as rig:
        alice = await rig.endpoint("alice", ALICE)
        await rig.endpoint("bob", BOB, on_invite=bob_says)
        await rig.endpoint("carol", CAROL, on_invite=carol_says)
        out = alice.invite(CALLED)
        assert (await out.final()).status == alice_gets
        await rig.calls_over()
        assert rig.wire(BOB) == ["INVITE", "ACK"]
        assert rig.wire(CAROL) == ["INVITE", "ACK"]
        await rig.expire()
        rig.assert_clean()


async def test_parallel_ring_timeout_cancels_every_target() -> None:
    async with running(forward(BOB_URI, CAROL_URI, strategy="parallel", timeout=20.0)) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        await rig.endpoint("bob", BOB, on_invite="ring")
        await rig.endpoint("carol", CAROL, on_invite="ring")
        assert (await alice.invite(CALLED).final()).status == 408
        await rig.calls_over()
        assert rig.wire(BOB) == ["INVITE", "CANCEL", "ACK"]
        assert rig.wire(CAROL) == ["INVITE", "CANCEL", "ACK"]
        assert ended(events) == ("noAnswer", 408)
        await rig.expire()
        rig.assert_clean()


async def test_parallel_caller_cancel_cancels_every_target() -> None:
    async with running(forward(BOB_URI, CAROL_URI, strategy="parallel")) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="ring")
        carol = await rig.endpoint("carol", CAROL, on_invite="ring")
        out = alice.invite(CALLED)
        await out.until(180)
        await bob.wait_for("INVITE")
        await carol.wait_for("INVITE")
        assert (await out.cancel()).status == 200
        assert (await out.final()).status == 487
        await rig.calls_over()
        assert rig.wire(bob) == ["INVITE", "CANCEL", "ACK"]
        assert rig.wire(carol) == ["INVITE", "CANCEL", "ACK"]
        await rig.expire()
        rig.assert_clean()


# -- sequential -----------------------------------------------------------------------


async def test_sequential_busy_then_the_next_target_answers() -> None:
    async with running(forward(BOB_URI, CAROL_URI)) as rig:
        alice = await rig.endpoint("alice", ALICE)
        await rig.endpoint("bob", BOB, on_invite=486)
        carol = await rig.endpoint("carol", CAROL)
        _out, dialog = await alice.call(CALLED)
        assert (await alice.send(dialog, "BYE")).status == 200
        await carol.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(alice) == ["100 INVITE", "180 INVITE", "200 INVITE", "200 BYE"]
        assert rig.wire(BOB) == ["INVITE", "ACK"]
        assert rig.wire(carol) == ["INVITE", "ACK", "BYE"]
        await rig.expire()
        rig.assert_clean()


async def test_sequential_no_answer_then_the_next_target_answers() -> None:
    """bob rings past the route's timeout: CANCEL to bob, then carol is dialled."""
    async with running(forward(BOB_URI, CAROL_URI, timeout=15.0)) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB, on_invite="ring")
        carol = await rig.endpoint("carol", CAROL)
        out, dialog = await alice.call(CALLED)
        assert out.statuses() == [100, 180, 200]
        assert rig.wire(bob) == ["INVITE", "CANCEL", "ACK"]
        assert bob.pending == []
        [call] = list(rig.proxy.calls)
        assert [(m.code, m.target) for m in call.hangup_messages] == [(408, BOB_URI)]
        assert (await alice.send(dialog, "BYE")).status == 200
        await carol.wait_for("BYE")
        await rig.calls_over()
        await rig.expire()
        rig.assert_clean()


async def test_sequential_a_6xx_stops_the_hunt() -> None:
    async with running(forward(BOB_URI, CAROL_URI)) as rig:
        alice = await rig.endpoint("alice", ALICE)
        await rig.endpoint("bob", BOB, on_invite=603)
        await rig.endpoint("carol", CAROL)
        assert (await alice.invite(CALLED).final()).status == 603
        await rig.calls_over()
        assert rig.wire(CAROL) == []
        await rig.expire()
        rig.assert_clean()


async def test_sequential_every_target_fails() -> None:
    async with running(forward(BOB_URI, CAROL_URI)) as rig:
        alice = await rig.endpoint("alice", ALICE)
        await rig.endpoint("bob", BOB, on_invite=480)
        await rig.endpoint("carol", CAROL, on_invite=486)
        assert (await alice.invite(CALLED).final()).status == 480
        await rig.calls_over()
        assert rig.wire(BOB) == ["INVITE", "ACK"]
        assert rig.wire(CAROL) == ["INVITE", "ACK"]
        await rig.expire()
        rig.assert_clean()


# -- trunks ---------------------------------------------------------------------------


async def test_trunk_failover_on_a_5xx() -> None:
    async with running(via_trunks(), trunks=TRUNKS) as rig:
        alice = await rig.endpoint("alice", ALICE)
        await rig.endpoint("a", TRUNK_A, on_invite=503)
        carrier_b = await rig.endpoint("b", TRUNK_B)
        _out, dialog = await alice.call(CALLED)
        [call] = list(rig.proxy.calls)
        assert call.outbound_trunk == "b"
        assert call.direction == "outbound"
        limiter = rig.proxy.limiter
        assert limiter is not None
        assert (limiter.active("a"), limiter.active("b")) == (0, 1)
        assert (await alice.send(dialog, "BYE")).status == 200
        await carrier_b.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(TRUNK_A) == ["INVITE", "ACK"]
        assert rig.wire(carrier_b) == ["INVITE", "ACK", "BYE"]
        assert limiter.active("b") == 0
        await rig.expire()
        rig.assert_clean()


async def test_no_trunk_failover_on_a_busy_callee() -> None:
    """A carrier's 486 is about the callee, not the trunk: the next trunk is not tried."""
    async with running(via_trunks(), trunks=TRUNKS) as rig:
        alice = await rig.endpoint("alice", ALICE)
        await rig.endpoint("a", TRUNK_A, on_invite=486)
        await rig.endpoint("b", TRUNK_B)
        assert (await alice.invite(CALLED).final()).status == 486
        await rig.calls_over()
        assert rig.wire(TRUNK_B) == []
        await rig.expire()
        rig.assert_clean()


async def test_trunk_failover_when_the_first_trunk_is_dead() -> None:
    """Nobody at trunk a: Timer B (FakeClock) gives 408 for that leg, and trunk b answers."""
    async with running(via_trunks(), trunks=TRUNKS) as rig:
        alice = await rig.endpoint("alice", ALICE)
        carrier_b = await rig.endpoint("b", TRUNK_B)
        out = alice.invite(CALLED)
        assert (await out.next()).status == 100
        await rig.settle()
        rig.tick(rig.proxy.stack.layer.timers.timer_b + 1)  # Timer A's copies and Timer B
        final = await out.final()
        assert final.status == 200
        dialog = out.ack(final)
        assert rig.sent_to(*TRUNK_A)[0] == "INVITE"
        assert (await alice.send(dialog, "BYE")).status == 200
        await carrier_b.wait_for("BYE")
        await rig.calls_over()
        await rig.expire()
        rig.assert_clean()


async def test_trunk_failover_when_the_first_trunk_is_full() -> None:
    async with running(via_trunks(), trunks={**TRUNKS, "a": _limited("a", TRUNK_A)}) as rig:
        limiter = rig.proxy.limiter
        assert limiter is not None
        assert limiter.try_acquire("a", rig.clock())  # another call holds trunk a's only slot
        alice = await rig.endpoint("alice", ALICE)
        await rig.endpoint("b", TRUNK_B)
        _out, dialog = await alice.call(CALLED)
        assert rig.wire(TRUNK_A) == []
        [call] = list(rig.proxy.calls)
        assert [(m.code, m.reason) for m in call.hangup_messages] == [(503, "Trunk Limit")]
        assert (await alice.send(dialog, "BYE")).status == 200
        await rig.calls_over()
        assert limiter.active("a") == 1  # the other call's slot, untouched
        await rig.expire()
        rig.assert_clean()


def _limited(name: str, address: tuple[str, int]) -> Trunk:
    return Trunk(name, "sip", address[0], address[1], networks=(), max_calls=1)


def _challenge_once(endpoint: Endpoint, incoming: IncomingRequest) -> None:
    if "proxy-authorization" in incoming.request.headers:
        endpoint.ring(incoming)
        endpoint.answer(incoming)
    else:
        incoming.respond(
            407, headers=[("Proxy-Authenticate", 'Digest realm="carrier", nonce="n1"')]
        )


async def test_a_trunk_challenge_is_answered_with_its_credentials() -> None:
    trunk = Trunk("a", "sip", TRUNK_A[0], TRUNK_A[1], networks=(), username="u", password="p")
    route = forward(trunk.target_uri("100"), target_trunks=("a",))
    async with running(route, trunks={"a": trunk}) as rig:
        alice = await rig.endpoint("alice", ALICE)
        carrier = await rig.endpoint("a", TRUNK_A, on_invite=_challenge_once)
        out, dialog = await alice.call(CALLED)
        first, second = [r for r in carrier.received if r.method == "INVITE"]
        assert "proxy-authorization" not in first.headers
        assert 'username="u"' in (second.headers.get("proxy-authorization") or "")
        assert second.cseq.number == first.cseq.number + 1
        assert out.statuses() == [100, 180, 200]  # the 407 stays between proxy and trunk
        assert (await alice.send(dialog, "BYE")).status == 200
        await carrier.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(carrier) == ["INVITE", "ACK", "INVITE", "ACK", "BYE"]
        await rig.expire()
        rig.assert_clean()
