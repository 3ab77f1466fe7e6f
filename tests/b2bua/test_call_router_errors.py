"""What the caller gets when routing does not give a call somewhere to go, and INVITEs the
proxy refuses before routing (483, 503 while draining).

Whatever the router does (raise, return garbage, name a target that cannot be
reached), the caller gets one final response and the call leaves nothing
behind; faults in user code are counted in ``proxy.stats.call_errors``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from sdpbx.b2bua.events import CallEnded, CallEvent
from sdpbx.media import PassthroughMedia
from sdpbx.routing import RouteDecision, RouteRequest, RouterError

from .rig import ALICE, BOB, PROXY, Route, running, to

pytestmark = pytest.mark.anyio

BOB_URI = f"sip:bob@{BOB[0]}:{BOB[1]}"
CALLED = f"sip:bob@{PROXY.host}"


def router(make: Callable[[], object]) -> Route:
    async def route(request: RouteRequest) -> RouteDecision:
        return make()  # type: ignore[return-value]

    return route


def raise_(exc: Exception) -> Callable[[], object]:
    def make() -> object:
        raise exc

    return make


@pytest.mark.parametrize(
    ("make", "status", "text", "counted"),
    [
        (raise_(ValueError("a bug in the router")), 500, "Router Error", 1),
        (lambda: None, 500, "Router Error", 1),
        (lambda: BOB_URI, 500, "Router Error", 1),  # a URI, not a decision
        # An invalid decision raises while the router builds it: a router bug too.
        (lambda: RouteDecision.forward("echo@host"), 500, "Router Error", 1),
        # RouterError is the documented "cannot decide now": not a fault of ours.
        (raise_(RouterError("webhook down")), 503, "Routing Failed", 0),
        (RouteDecision.not_handled, 404, "No Route", 0),
        (lambda: RouteDecision.reject(403, "Not Allowed"), 403, "Not Allowed", 0),
        (lambda: RouteDecision.abort(486), 486, "Busy Here", 0),
    ],
    ids=["raises", "none", "text", "invalid", "router-error", "not-handled", "reject", "abort"],
)
async def test_a_call_the_router_does_not_place_gets_a_final_error(
    make: Callable[[], object], status: int, text: str, counted: int
) -> None:
    async with running(router(make)) as rig:
        events: list[CallEvent] = []
        rig.proxy.calls.subscribe(events.append)
        alice = await rig.endpoint("alice", ALICE)
        out = alice.invite(CALLED)
        final = await out.final()
        assert final.status == status
        assert f'text="{text}"' in (final.headers.get("reason") or "")
        await rig.calls_over()
        assert rig.wire(alice) == ["100 INVITE", f"{status} INVITE"]
        last = events[-1]
        assert isinstance(last, CallEnded) and last.status == status
        await rig.expire()
        rig.assert_clean(errors=counted)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        # The proxy has no TCP transport: the INVITE cannot be sent.
        (f"sip:bob@{BOB[0]}:{BOB[1]};transport=tcp", 503),
        # A sips: target needs TLS, which the proxy has not either.
        (f"sips:bob@{BOB[0]}:5061", 503),
    ],
    ids=["no-tcp", "no-tls"],
)
async def test_an_unreachable_target_gets_the_caller_a_5xx(target: str, status: int) -> None:
    async with running(to(target)) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        assert (await alice.invite(CALLED).final()).status == status
        await rig.calls_over()
        assert rig.wire(bob) == []
        await rig.expire()
        rig.assert_clean()


async def test_a_name_addr_target_the_decision_accepts_is_dialled() -> None:
    """routing/base.py validates targets with "a name-addr (<sip:...>) is a common slip;
    accept it", but the fork parses each target with parse_uri and gives 502 Bad Target."""
    async with running(to(f"<{BOB_URI}>")) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        out = alice.invite(CALLED)
        final = await out.final()
        assert final.status == 200, final.status
        assert (await alice.send(out.ack(final), "BYE")).status == 200
        await bob.wait_for("BYE")
        await rig.calls_over()
        await rig.expire()
        rig.assert_clean()


async def test_a_dead_target_times_out_408() -> None:
    """Nobody at the target: Timer B on the FakeClock, then 408 to the caller."""
    async with running(to("sip:bob@10.0.0.99:5060")) as rig:
        alice = await rig.endpoint("alice", ALICE)
        out = alice.invite(CALLED)
        assert (await out.next()).status == 100
        await rig.settle()
        rig.tick(rig.proxy.stack.layer.timers.timer_b + 1)
        assert (await out.final()).status == 408
        await rig.expire()
        rig.assert_clean()


async def test_spam_gets_no_answer_and_leaves_nothing_after_64_t1() -> None:
    async with running(router(RouteDecision.spam)) as rig:
        alice = await rig.endpoint("alice", ALICE)
        out = alice.invite(CALLED)
        assert (await out.next()).status == 100
        await rig.calls_over()
        # A CANCEL learns nothing either: it is dropped while the INVITE's transaction
        # absorbs retransmissions (64*T1; after that a CANCEL matches nothing: 481).
        cancel = out.send_cancel()
        await rig.settle()
        cancel.close()
        assert rig.wire(alice) == ["100 INVITE"]
        assert rig.proxy.calls.spam_calls == 1
        await rig.expire()
        rig.assert_clean()


async def test_max_forwards_exhausted_is_483_before_routing() -> None:
    routed: list[RouteRequest] = []

    async def route(request: RouteRequest) -> RouteDecision:
        routed.append(request)
        return RouteDecision.forward(BOB_URI)

    async with running(route) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        out = alice.invite(CALLED, max_forwards=0)
        assert (await out.final()).status == 483
        assert routed == []
        assert rig.wire(alice) == ["483 INVITE"]
        assert rig.wire(bob) == []
        assert rig.proxy.calls.total_calls == 0
        await rig.expire()
        rig.assert_clean()


async def test_a_draining_proxy_answers_503() -> None:
    async with running(to(BOB_URI)) as rig:
        rig.proxy.accepting = False
        alice = await rig.endpoint("alice", ALICE)
        final = await alice.invite(CALLED).final()
        assert final.status == 503
        assert final.headers.get("retry-after") == "30"
        await rig.expire()
        rig.assert_clean()


class AnswerFails(PassthroughMedia):
    """A media backend whose answer() breaks: after bob answered, before alice is."""

    async def answer(self, call_id: str, leg: str, sdp: bytes) -> bytes:
        raise RuntimeError("media backend bug")


async def test_a_fault_after_the_callee_answered_hangs_up_the_callee(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The call breaks between bob's 200 and alice's: bob's leg is ACKed and hung up, the
    fault is logged and counted, and the call leaves the registry."""
    caplog.set_level(logging.ERROR)
    async with running(to(BOB_URI), media=AnswerFails()) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        alice.invite(CALLED)
        await bob.wait_for("BYE")
        await rig.calls_over()
        assert rig.wire(bob) == ["INVITE", "ACK", "BYE"]
        assert rig.proxy.stats.call_errors == 1
        assert any("media backend bug" in (r.exc_text or "") for r in caplog.records)


async def test_a_fault_after_the_callee_answered_still_answers_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Call._crashed() with a winner BYEs both legs, but the caller's leg has no dialog
    yet (its 200 was never sent), so alice gets no final response at all: she waits for
    ever, and the proxy's INVITE server transaction never ends (no timer runs in
    Proceeding). Expected: 500 to alice, as when there is no winner."""
    caplog.set_level(logging.CRITICAL)
    async with running(to(BOB_URI), media=AnswerFails()) as rig:
        alice = await rig.endpoint("alice", ALICE)
        bob = await rig.endpoint("bob", BOB)
        alice.invite(CALLED)
        await bob.wait_for("BYE")
        await rig.expire()
        assert rig.wire(alice)[-1] == "500 INVITE", rig.wire(alice)
        rig.assert_clean(errors=1)
