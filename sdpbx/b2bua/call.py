"""One logical call bridged as a B2BUA: the caller's leg and its targets' legs.

A :class:`Call` owns its legs and its tasks. It lives from the caller's
INVITE to the last BYE: it asks the router where to go, forks to the targets
(in parallel, or one after the other), relays provisional responses, bridges
the first 2xx and CANCELs the rest, and then relays in-dialog requests
(:mod:`.relay`) between the two dialogs until one side hangs up. Everything
it does is visible to Python code as :mod:`~sdpbx.b2bua.events` and as the
attributes the console and the CDR writer read (state, timestamps, legs,
status, hangup reason).

What a call starts in the background (a CANCEL, a BYE, a delayed ACK) runs in
the call's own task group: the call leaves the registry only once those have
finished, which the stack's timers bound (64*T1), and a grace bounds again.
Every client request a call opens is closed on every way out.

What it does not do yet, said plainly: PRACK and requests inside early
dialogs, REFER, re-INVITEs without SDP (our ACK to the far side carries no
answer), and RFC 3263 SRV lookups for target hosts.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from attrs import define, field

from ..errors import TransactionClosed
from ..routing import RouteDecision, RouterError
from ..sip import Dialog, DialogId, Response, reason_phrase
from ..stack import IncomingRequest, SipStack
from .dial import candidates
from .events import (
    CallAnswered,
    CallEnded,
    CallRinging,
    CallStarted,
    CallState,
    HangupReason,
)
from .fork import HangupMessage, best_failure, fork
from .leg import ACK_WAIT, Leg, transact
from .registry import CallRegistry
from .relay import CALL_ALLOW, RELAYED_METHODS, relay
from .salvage import ack_unusable_2xx

if TYPE_CHECKING:
    from ..media import MediaBackend
    from ..routing.trunks import Trunk, TrunkLimiter

__all__ = ["Call", "CallServices", "HangupMessage"]

log = logging.getLogger("sdpbx.call")

#: Beyond the stack's own bounds, how long an ended call's tasks may take.
_GRACE_MARGIN = 8.0


@define
class CallServices:
    """What a call needs from the proxy that owns it."""

    stack: SipStack
    registry: CallRegistry
    media: MediaBackend
    spawn: Callable[[Callable[[], Awaitable[None]]], None]
    dialogs: MutableMapping[DialogId, tuple[Call, Leg]] = field(factory=dict)
    trunks: Mapping[str, Trunk] = field(factory=dict)
    limiter: TrunkLimiter | None = None
    ring_timeout: float = 60.0
    user_agent: str | None = None
    clock: Callable[[], float] = time.time
    #: Told of every fault a call contained (the proxy counts them in its stats).
    on_error: Callable[[], None] = lambda: None


class Call:
    """A bridged call. Created by the proxy for each new out-of-dialog INVITE."""

    def __init__(
        self,
        services: CallServices,
        incoming: IncomingRequest,
        *,
        direction: str = "internal",
        inbound_trunk: str | None = None,
    ) -> None:
        self._svc = services
        self.incoming = incoming
        request = incoming.request
        self.id = request.call_id
        self.direction = direction
        self.inbound_trunk = inbound_trunk
        self.caller = str(request.from_.uri)
        self.callee = str(request.uri)
        self.caller_name = request.from_.display_name_unquoted
        self.state = CallState.RINGING
        self.started_at = services.clock()
        self.ringing_at: float | None = None
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.status_code = 0
        self.hangup_reason: HangupReason | None = None
        self.hangup_messages: list[HangupMessage] = []
        self.decision: RouteDecision | None = None
        self.caller_leg = Leg("caller", incoming.peer, target=self.caller, invite=request)
        # The caller's first 2xx is ours: its leg awaits that ACK from the start.
        self.caller_leg.ack_pending = anyio.Event()
        self.callee_legs: list[Leg] = []
        self.winner: Leg | None = None
        self.metadata: dict[str, Any] = {}
        self._contact = services.stack.contact_for(incoming.peer.transport)
        self._setup_scope: anyio.CancelScope | None = None
        self._tasks: TaskGroup | None = None
        self._done = anyio.Event()
        #: The SDP answer in the caller's ACK (delayed offer), for the callee's ACK.
        self._caller_ack_body: tuple[bytes, str | None] = (b"", None)
        self._cancelled = False
        self._relayed_ringing: tuple[int, bytes] | None = None
        self._forced_reason: HangupReason | None = None
        self._announced = False

    # -- what the console and CDRs read ------------------------------------------
    @property
    def record(self) -> bool:
        return bool(self.decision and self.decision.record)

    @property
    def media_proxy(self) -> str | None:
        return self.decision.media_proxy if self.decision else None

    @property
    def outbound_trunk(self) -> str | None:
        if self.winner is not None:
            return self.winner.trunk
        return self.decision.trunk if self.decision else None

    @property
    def route_name(self) -> str | None:
        return self.decision.route_name if self.decision else None

    @property
    def legs(self) -> list[Leg]:
        return [self.caller_leg, *self.callee_legs]

    def other(self, leg: Leg) -> Leg | None:
        if leg is self.caller_leg:
            return self.winner
        return self.caller_leg if leg is self.winner else None

    # -- lifecycle ----------------------------------------------------------------
    async def run(self, route: Callable[[], Awaitable[RouteDecision]]) -> None:
        """The whole call: routing, forking, talking, then what it started, then cleanup."""
        svc = self._svc
        svc.registry.add(self)
        if log.isEnabledFor(logging.INFO):  # nothing is formatted with INFO off
            peer = self.incoming.peer
            trunk = f", trunk {self.inbound_trunk}" if self.inbound_trunk else ""
            log.info(
                "call %s started: %s -> %s from %s %s (%s%s)",
                self.id,
                self.caller,
                self.callee,
                peer.transport,
                peer.address,
                self.direction,
                trunk,
            )
        svc.registry.emit(
            CallStarted(self.id, self.started_at, self.caller, self.callee, self.direction)
        )
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                try:
                    await self._lifetime(route)
                except Exception as exc:
                    self._crashed(exc)
                self._announce()
                # Over: its CANCELs and BYEs may finish (the stack's timers bound
                # each of them), and the grace bounds them all.
                tasks.cancel_scope.deadline = anyio.current_time() + self._grace()
        finally:
            self._tasks = None
            with anyio.CancelScope(shield=True):
                await self._cleanup()

    async def _lifetime(self, route: Callable[[], Awaitable[RouteDecision]]) -> None:
        with anyio.CancelScope() as scope:
            self._setup_scope = scope
            await self._setup(route)
        self._setup_scope = None
        if self._cancelled and self.winner is None:
            self._fail(487, self._forced_reason or "canceled")
        if self.winner is not None:
            await self._done.wait()

    def _grace(self) -> float:
        return ACK_WAIT + self._svc.stack.layer.timers.timer_b + _GRACE_MARGIN

    def _crashed(self, exc: Exception) -> None:
        """The one guard of a call: whatever broke, log it, count it, answer the
        caller (500) or hang up both legs, and let cleanup free the rest.

        Runs in an ``except`` block, so nothing in here may raise.
        """
        try:
            log.error("call %s from %s failed", self.id, self.incoming.peer.address, exc_info=exc)
            self._svc.on_error()
        except Exception:  # a broken log handler or counter must not stop the cleanup
            pass
        for leg in self.callee_legs:
            try:
                if leg is not self.winner and not leg.answered and not leg.cancelled:
                    client = leg.client
                    if client is not None and client.final is None:
                        leg.cancelled = True
                        self._spawn(functools.partial(self._cancel_leg, leg))
            except Exception:
                log.exception("call %s: cannot cancel %s", self.id, leg.label)
        try:
            if self.winner is not None:
                self._spawn(functools.partial(self._bye, self.winner))
            if self.winner is not None and self.incoming.answered:
                self._spawn(functools.partial(self._bye, self.caller_leg))
                self._end("bySystem", self.status_code or 500)
            else:
                # Broken before the caller had its 200 (even after the callee's):
                # the caller has no dialog to BYE and is still owed a final answer.
                self._fail(500, "failed", text="Internal Error")
        except Exception:
            log.exception("call %s: cannot end the call", self.id)
            self._end("bySystem", 500)

    def _spawn(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Run ``fn`` in the call's task group (the proxy's once the call is gone)."""
        tasks = self._tasks
        if tasks is None:
            self._svc.spawn(functools.partial(self._guarded, fn))
        else:
            tasks.start_soon(self._guarded, fn)

    async def _guarded(self, fn: Callable[[], Awaitable[object]]) -> None:
        try:
            await fn()
        except Exception as exc:
            try:
                log.error("call %s: a background task failed", self.id, exc_info=exc)
                self._svc.on_error()
            except Exception:
                pass

    async def _setup(self, route: Callable[[], Awaitable[RouteDecision]]) -> None:
        try:
            decision = await route()
        except RouterError as exc:
            log.warning("call %s: routing failed: %s", self.id, exc)
            self._fail(503, "failed", text="Routing Failed")
            return
        except Exception as exc:
            # A router is user code: its bug is this call's failure, not the server's.
            log.error("call %s: the router failed", self.id, exc_info=exc)
            self._svc.on_error()
            self._fail(500, "failed", text="Router Error")
            return
        if not isinstance(decision, RouteDecision):
            log.error(
                "call %s: the router returned %s, not a RouteDecision",
                self.id,
                type(decision).__name__,
            )
            self._svc.on_error()
            self._fail(500, "failed", text="Router Error")
            return
        self.decision = decision
        if log.isEnabledFor(logging.INFO):
            log.info("call %s routed: %s", self.id, _decision_text(decision))
        if decision.caller:
            self.caller = decision.caller
        if decision.action == "spam":
            log.info("call %s from %s dropped as spam", self.id, self.incoming.peer.address)
            self.incoming.drop()
            self._svc.registry.spam_calls += 1
            self._end("rejected", 0)
            return
        if decision.action in ("reject", "abort"):
            status = decision.final_status
            self._fail(status, "rejected", text=decision.reason or reason_phrase(status))
            return
        if decision.action != "forward" or not decision.targets:
            self._fail(404, "failed", text="No Route")
            return
        timeout = decision.timeout or self._svc.ring_timeout
        rang_out = await fork(self, self._svc, candidates(decision), decision.strategy, timeout)
        if self.winner is not None or self._cancelled or self.ended_at is not None:
            return
        if rang_out:
            self._fail(408, "noAnswer")
        else:
            self._fail(*best_failure(self.hangup_messages))

    @property
    def _settled(self) -> bool:
        return self.winner is not None or self._cancelled

    def _cancel_later(self, leg: Leg) -> None:
        self._spawn(functools.partial(self._cancel_leg, leg))

    async def _on_provisional(self, leg: Leg, response: Response) -> None:
        if self.winner is not None or self._cancelled:
            return
        body = response.body
        if body:
            body = await self._svc.media.answer(self.id, leg.label, body)
        key = (response.status, body)
        if self._relayed_ringing == key:
            return
        self._relayed_ringing = key
        headers = [("Contact", self._contact)]
        if body and response.content_type:
            headers.append(("Content-Type", response.content_type))
        if self.incoming.answered:
            return
        self.incoming.respond(response.status, response.reason, headers=headers, body=body)
        if self.ringing_at is None:
            self.ringing_at = self._svc.clock()
            self._svc.registry.emit(CallRinging(self.id, self.ringing_at, response.status))

    def _accept_2xx(self, leg: Leg, response: Response, contact: str | None) -> Dialog | None:
        """The dialog a callee's 2xx creates, or ``None`` when it cannot make one
        (no or several Contacts, a bad To tag or Record-Route): that 2xx is
        still ACKed and BYEd, with requests built from raw header text."""
        assert leg.invite is not None and leg.client is not None
        try:
            return Dialog.as_uac(leg.invite, response, local_contact=contact)
        except Exception as exc:
            log.warning("call %s: unusable 2xx from %s: %s", self.id, leg.peer.address, exc)
        self.hangup_messages.append(HangupMessage(502, "Bad 2xx", leg.target))
        stack = self._svc.stack
        try:
            bye = ack_unusable_2xx(stack, leg, response)
        except Exception:
            log.exception("call %s: cannot ACK the unusable 2xx", self.id)
            return None
        self._spawn(functools.partial(transact, stack, bye, leg.peer))
        return None

    async def _on_2xx(self, leg: Leg, response: Response) -> bool:
        """The first 2xx wins: ACK it, answer the caller, bridge the dialogs.

        False when the 2xx is not one we can bridge (the leg counts as a 502).
        """
        svc = self._svc
        with anyio.CancelScope(shield=True):
            assert leg.invite is not None and leg.client is not None
            if self.winner is not None or self._cancelled or self.incoming.answered:
                # A late 2xx of another fork: acknowledge it and hang it up.
                leg.dialog = self._accept_2xx(leg, response, None)
                if leg.dialog is not None:
                    leg.ack(svc.stack)
                    self._spawn(functools.partial(self._bye, leg))
                return False
            dialog = self._accept_2xx(leg, response, self._contact)
            if dialog is None:
                return False
            self.winner = leg
            leg.answered = True
            leg.dialog = dialog
            if self.incoming.request.body:
                leg.ack(svc.stack)
            else:
                self._spawn(functools.partial(self._ack_late_offer, leg))
            body = response.body
            if body:
                body = await svc.media.answer(self.id, leg.label, body)
            headers = [("Contact", self._contact), ("Allow", CALL_ALLOW)]
            if body and response.content_type:
                headers.append(("Content-Type", response.content_type))
            a_request = self.incoming.request
            self.incoming.respond(200, headers=headers, body=body)
            a_dialog = Dialog.as_uas(
                a_request, self.incoming.to_tag, local_contact=self._contact, confirmed=True
            )
            self.caller_leg.dialog = a_dialog
            self.caller_leg.answered = True
            svc.dialogs[a_dialog.id] = (self, self.caller_leg)
            svc.dialogs[leg.dialog.id] = (self, leg)
            self.state = CallState.TALKING
            self.status_code = 200
            self.answered_at = svc.clock()
            log.info(
                "call %s answered by %s after %.1f s",
                self.id,
                leg.target,
                self.answered_at - self.started_at,
            )
            svc.registry.answered_calls += 1
            svc.registry.emit(CallAnswered(self.id, self.answered_at, leg.target))
            return True
        return False  # not reached: the scope is shielded, never cancelled

    async def _ack_late_offer(self, leg: Leg) -> None:
        """Delayed offer: the caller's INVITE had no SDP, so the callee's 200
        carried the offer and the caller's ACK carries the answer; the
        callee's ACK must wait for it (at most 64*T1, then it goes bare)."""
        await self.caller_leg.acked()
        body, content_type = self._caller_ack_body
        if body:
            body = await self._svc.media.answer(self.id, self.caller_leg.label, body)
        leg.ack(self._svc.stack, body, content_type)

    async def _cancel_leg(self, leg: Leg) -> None:
        """CANCEL a ringing leg; a 2xx that crossed the CANCEL gets ACK and BYE.

        Bounded by the stack: the CANCEL ends by Timer F, and the INVITE 64*T1
        after the CANCEL when its final response never comes (RFC 3261 §9.1).
        """
        client = leg.client
        cancel = leg.cancel_request()
        if client is None or cancel is None:
            return
        try:
            # §9.1: no CANCEL before a provisional. Sent earlier over UDP it may
            # overtake its INVITE, get 481, and leave the phone ringing; wait for
            # one (or the final response, or Timer B) instead.
            while not leg.provisional:
                response = await client.next_response()
                if response.status < 200:
                    leg.provisional = True
                elif await self._end_crossed_leg(leg, response):
                    return
            await transact(self._svc.stack, cancel, leg.peer)
            while True:
                response = await client.next_response()
                if await self._end_crossed_leg(leg, response):
                    return
        except TransactionClosed:
            return
        finally:
            client.close()

    async def _end_crossed_leg(self, leg: Leg, response: Response) -> bool:
        """A final response on a leg being cancelled ends it (a 2xx with ACK and
        BYE); ``True`` once it is final."""
        if response.status < 200:
            return False
        if response.status < 300:
            leg.dialog = self._accept_2xx(leg, response, None)
            if leg.dialog is not None:
                leg.ack(self._svc.stack)
                await self._bye(leg)
        return True

    async def _bye(self, leg: Leg, reason: str | None = None) -> None:
        failure = await leg.bye(self._svc.stack, reason)
        if failure is not None:
            log.info("call %s: BYE to %s failed: %s", self.id, leg.label, failure)

    # -- requests from either side ---------------------------------------------------
    def cancel(self) -> None:
        """The caller sent CANCEL: stop routing and forking, answer 487."""
        if self.winner is not None or self._cancelled:
            return
        self._cancelled = True
        if self._setup_scope is not None:
            self._setup_scope.cancel()

    async def handle_in_dialog(self, leg: Leg, incoming: IncomingRequest) -> None:
        """Answer or relay a request that arrived in ``leg``'s dialog."""
        request = incoming.request
        method = request.method
        dialog = leg.dialog
        if dialog is None:
            incoming.respond(481)
            return
        if method == "ACK":
            # Our 2xx were acknowledged; re-INVITE ACKs are sent by us directly.
            if leg is self.caller_leg and request.body:
                self._caller_ack_body = (request.body, request.content_type)
            leg.got_ack()
            return
        if method != "BYE" and method not in RELAYED_METHODS:
            incoming.respond(501, headers=[("Allow", CALL_ALLOW)])
            return
        if not dialog.receive_request(request):
            incoming.respond(500, "CSeq Out of Order")
            return
        other = self.other(leg)
        if method == "BYE":
            incoming.respond(200)
            if other is not None:
                self._spawn(functools.partial(self._bye, other))
            self._end("byCaller" if leg is self.caller_leg else "byCallee", self.status_code or 200)
            return
        if (
            self.ended_at is not None
            or other is None
            or other.dialog is None
            or other.dialog.is_terminated
        ):
            incoming.respond(481)
            return
        svc = self._svc
        await relay(
            incoming,
            leg,
            other,
            stack=svc.stack,
            media=svc.media,
            call_id=self.id,
            contact=self._contact,
        )

    async def hangup(self, reason: HangupReason = "bySystem") -> None:
        """End the call from Python (the console's hangup command).

        A ringing call is cancelled towards its targets and answered 487; a
        talking one gets a BYE on both legs (sent by the call's own tasks).
        """
        winner = self.winner
        if winner is None:
            self._forced_reason = reason
            self.cancel()
            return
        if self.ended_at is None:
            self._spawn(functools.partial(self._bye, self.caller_leg))
            self._spawn(functools.partial(self._bye, winner))
        self._end(reason, self.status_code or 200)

    # -- ending --------------------------------------------------------------------
    def _fail(self, status: int, reason: HangupReason, *, text: str | None = None) -> None:
        """Answer the caller with a failure (once) and end the call."""
        headers = []
        if text:
            headers.append(("Reason", f'SIP;cause={status};text="{_quote(text)}"'))
        if not self.incoming.answered and self.incoming.transaction is not None:
            self.incoming.respond(status, text, headers=headers)
        self._end(reason, status)

    def _end(self, reason: HangupReason, status: int) -> None:
        if self.ended_at is not None:
            return
        self.ended_at = self._svc.clock()
        self.hangup_reason = reason
        if status:
            self.status_code = status
        self.state = CallState.ENDED
        self._done.set()

    def _announce(self) -> None:
        """The call is over: say so once (CallEnded), while its last tasks finish."""
        if self.ended_at is None:
            self._end("bySystem", self.status_code or 500)
        if self._announced:
            return
        self._announced = True
        assert self.hangup_reason is not None and self.ended_at is not None
        if log.isEnabledFor(logging.INFO):
            answered = self.answered_at
            talk = f", talked {self.ended_at - answered:.1f} s" if answered is not None else ""
            log.info(
                "call %s ended: %s, status %d, lasted %.1f s%s",
                self.id,
                self.hangup_reason,
                self.status_code,
                self.ended_at - self.started_at,
                talk,
            )
        self._svc.registry.emit(
            CallEnded(self.id, self.ended_at, self.hangup_reason, self.status_code)
        )

    async def _cleanup(self) -> None:
        svc = self._svc
        try:
            self._announce()
        except Exception:
            log.exception("call %s: cannot announce its end", self.id)
        for leg in self.legs:
            if leg.dialog is not None:
                svc.dialogs.pop(leg.dialog.id, None)
            if leg.client is not None:
                leg.client.close()
        winner = self.winner
        if winner is not None and winner.trunk and svc.limiter is not None:
            svc.limiter.release(winner.trunk)
        try:
            await svc.media.release(self.id)
        except Exception:
            log.exception("call %s: media release failed", self.id)
        svc.registry.remove(self)


def _decision_text(decision: RouteDecision) -> str:
    """The router's answer in one phrase, for the call's INFO line."""
    if decision.action == "forward":
        targets = ", ".join(decision.targets) or "no target"
        via = f" via trunk {decision.trunk}" if decision.trunk else ""
        name = f" (route {decision.route_name})" if decision.route_name else ""
        return f"forward to {targets} ({decision.strategy}){via}{name}"
    if decision.action in ("reject", "abort"):
        reason = f" {decision.reason}" if decision.reason else ""
        return f"{decision.action} {decision.final_status}{reason}"
    return decision.action


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
