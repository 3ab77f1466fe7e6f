"""One logical call bridged as a B2BUA: the caller's leg and its targets' legs.

A :class:`Call` owns its legs and its tasks. It lives from the caller's
INVITE (after 100 Trying went out) to the last BYE: it asks the router where
to go, forks to the targets (in parallel, or one after the other), relays
provisional responses, bridges the first 2xx and CANCELs the rest, and then
relays in-dialog requests (re-INVITE, UPDATE, INFO, BYE) between the two
dialogs until one side hangs up. Everything it does is visible to Python
code as :mod:`~sdpbx.b2bua.events` and as the attributes the console and the
CDR writer read (state, timestamps, legs, status, hangup reason).

What it does not do yet, said plainly: PRACK and requests inside early
dialogs, re-INVITEs without SDP (our ACK to the far side carries no answer),
and RFC 3263 SRV lookups for target hosts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
from attrs import define, field

from ..routing import RouteDecision, RouterError
from ..sip import (
    Dialog,
    DialogId,
    Request,
    Response,
    SipParseError,
    SipUri,
    new_branch,
    new_call_id,
    new_tag,
    parse_uri,
    reason_phrase,
)
from ..stack import IncomingRequest, SipStack, TransactionTimedOut
from ..transport.base import Peer, TransportName
from .events import (
    CallAnswered,
    CallEnded,
    CallRinging,
    CallStarted,
    CallState,
    HangupReason,
)
from .leg import Leg, resolve_uri
from .registry import CallRegistry
from .salvage import raw_request
from .uac_auth import add_credentials

if TYPE_CHECKING:
    from ..locator import Binding
    from ..media import MediaBackend
    from ..routing.trunks import Trunk, TrunkLimiter

__all__ = ["Call", "CallServices", "HangupMessage"]

log = logging.getLogger("sdpbx.call")

#: Headers copied from one leg's in-dialog request to the other's.
_RELAYED_HEADERS = ("content-type", "content-disposition", "info-package", "event", "reason")
#: Failures after which a sequential fork stops instead of trying the next target.
_GLOBAL_FAILURE = range(600, 700)
_CLEANUP_TIMEOUT = 8.0
#: How long a request for a leg waits for that leg's ACK of our 2xx (64*T1).
_ACK_WAIT = 32.0


@define
class HangupMessage:
    """One final failure seen on the way (``hangupMessages`` in the CDR)."""

    code: int
    reason: str
    target: str


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


@define
class _Candidate:
    uri: str
    peer: Peer | None
    trunk: str | None


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
        self.callee_legs: list[Leg] = []
        self.winner: Leg | None = None
        self.metadata: dict[str, Any] = {}
        self._contact = services.stack.contact_for(incoming.peer.transport)
        self._setup_scope: anyio.CancelScope | None = None
        self._fork_scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        # Legs we answered an INVITE with 2xx and whose ACK has not come yet; the
        # caller's leg is in it from the start, since its first 2xx is ours.
        self._awaiting_ack: dict[Leg, anyio.Event] = {self.caller_leg: anyio.Event()}
        #: The SDP answer in the caller's ACK (delayed offer), for the callee's ACK.
        self._caller_ack_body: tuple[bytes, str | None] = (b"", None)
        self._cancelled = False
        self._relayed_ringing: tuple[int, bytes] | None = None
        self._forced_reason: HangupReason | None = None

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
        """The whole call: routing, forking, talking, cleanup."""
        svc = self._svc
        svc.registry.add(self)
        svc.registry.emit(
            CallStarted(self.id, self.started_at, self.caller, self.callee, self.direction)
        )
        try:
            try:
                with anyio.CancelScope() as scope:
                    self._setup_scope = scope
                    await self._setup(route)
                self._setup_scope = None
                if self._cancelled and self.winner is None:
                    self._fail(487, self._forced_reason or "canceled")
                if self.winner is not None:
                    await self._done.wait()
            except Exception as exc:
                self._crashed(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()

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
                        self._spawn(self._cancel_leg, leg)
            except Exception:
                log.exception("call %s: cannot cancel %s", self.id, leg.label)
        try:
            if self.winner is not None:
                self._spawn(self._bye, self.caller_leg)
                self._spawn(self._bye, self.winner)
                self._end("bySystem", self.status_code or 500)
            else:
                self._fail(500, "failed", text="Internal Error")
        except Exception:
            log.exception("call %s: cannot end the call", self.id)
            self._end("bySystem", 500)

    def _spawn(self, fn: Callable[[Leg], Awaitable[None]], leg: Leg) -> None:
        self._svc.spawn(lambda: fn(leg))

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
        candidates = self._candidates(decision)
        timeout = decision.timeout or self._svc.ring_timeout
        await self._fork(candidates, decision.strategy, timeout)
        if self.winner is None and not self._cancelled and self.ended_at is None:
            self._fail(*self._best_failure())

    def _candidates(self, decision: RouteDecision) -> list[_Candidate]:
        out: list[_Candidate] = []
        bindings: tuple[Binding, ...] = decision.target_bindings
        trunks = decision.target_trunks
        for i, uri in enumerate(decision.targets):
            binding = bindings[i] if i < len(bindings) else None
            trunk = trunks[i] if i < len(trunks) else decision.trunk
            out.append(_Candidate(uri, binding.peer if binding else None, trunk))
        return out

    async def _fork(self, candidates: list[_Candidate], strategy: str, timeout: float) -> None:
        with anyio.CancelScope() as fork_scope:
            self._fork_scope = fork_scope
            if strategy == "parallel" and len(candidates) > 1:
                with anyio.move_on_after(timeout) as ring:
                    async with anyio.create_task_group() as tg:
                        for n, candidate in enumerate(candidates):
                            tg.start_soon(self._attempt, candidate, n)
                if ring.cancelled_caught and self.winner is None:
                    self._fail(408, "noAnswer")
                return
            for n, candidate in enumerate(candidates):
                with anyio.move_on_after(timeout) as ring:
                    await self._attempt(candidate, n)
                if self.winner is not None or self._cancelled:
                    return
                if ring.cancelled_caught:
                    self.hangup_messages.append(HangupMessage(408, "Ring Timeout", candidate.uri))
                    if n == len(candidates) - 1:
                        self._fail(408, "noAnswer")
                        return
                    continue
                last = self.hangup_messages[-1].code if self.hangup_messages else 0
                if last in _GLOBAL_FAILURE:
                    return
                if candidate.trunk and not (last == 408 or 500 <= last < 600):
                    # A carrier's 486 or 404 is an answer about the callee, not
                    # about the trunk: failing over would only ring them twice.
                    return

    # -- one target ---------------------------------------------------------------
    async def _attempt(self, candidate: _Candidate, n: int) -> None:
        svc = self._svc
        limiter = svc.limiter
        trunk = svc.trunks.get(candidate.trunk) if candidate.trunk else None
        if (
            limiter is not None
            and candidate.trunk
            and not limiter.try_acquire(candidate.trunk, svc.clock())
        ):
            self.hangup_messages.append(HangupMessage(503, "Trunk Limit", candidate.uri))
            return
        acquired = candidate.trunk if limiter is not None and candidate.trunk else None
        try:
            uri = parse_uri(candidate.uri)
            transport = trunk.transport if trunk is not None else None
            # Without a transport parameter, a target is reached the way the
            # caller reached us (a TCP phone calls TCP peers), or by the trunk's.
            peer = candidate.peer or await resolve_uri(
                uri, default_transport=_transport(transport) or self.incoming.peer.transport
            )
        except (SipParseError, OSError) as exc:
            self.hangup_messages.append(HangupMessage(502, f"Bad Target: {exc}", candidate.uri))
            if acquired:
                limiter.release(acquired)  # type: ignore[union-attr]
            return
        leg = Leg(f"callee-{n}", peer, target=candidate.uri, trunk=candidate.trunk)
        self.callee_legs.append(leg)
        invite = await self._build_invite(uri, leg)
        leg.invite = invite
        auth_tried = False
        try:
            while True:
                leg.client = svc.stack.send_request(invite, peer)
                try:
                    final = await self._await_final(leg)
                except TransactionTimedOut:
                    self.hangup_messages.append(HangupMessage(408, "Request Timeout", leg.target))
                    return
                if final.status < 300:
                    if await self._answered(leg, final) and self._fork_scope is not None:
                        self._fork_scope.cancel()
                    return
                if (
                    final.status in (401, 407)
                    and trunk is not None
                    and trunk.username
                    and trunk.password
                    and not auth_tried
                ):
                    retry = add_credentials(
                        invite, final, username=trunk.username, password=trunk.password
                    )
                    if retry is not None:
                        auth_tried = True
                        invite = leg.invite = retry
                        continue
                self.hangup_messages.append(HangupMessage(final.status, final.reason, leg.target))
                return
        except anyio.get_cancelled_exc_class():
            if not leg.answered:
                leg.cancelled = True
                self._spawn(self._cancel_leg, leg)
            raise
        finally:
            if acquired and self.winner is not leg:
                limiter.release(acquired)  # type: ignore[union-attr]

    async def _await_final(self, leg: Leg) -> Response:
        client = leg.client
        assert client is not None
        while True:
            response = await client.next_response()
            if response.status == 100:
                continue
            if response.status < 200:
                leg.early = True
                await self._provisional(leg, response)
                continue
            return response

    async def _build_invite(self, uri: Any, leg: Leg) -> Request:
        a = self.incoming.request
        decision = self.decision
        caller_uri = self.caller
        display = a.from_.display_name
        from_value = f"{display + ' ' if display else ''}<{caller_uri}>;tag={new_tag()}"
        to_uri = uri.without_params("transport", "ob") if isinstance(uri, SipUri) else uri
        body = a.body
        if body:
            body = await self._svc.media.offer(self.id, leg.label, body)
        max_forwards = (a.max_forwards if a.max_forwards is not None else 70) - 1
        headers: list[tuple[str, str]] = [
            ("Via", self._svc.stack.via_for(leg.peer.transport, new_branch())),
            ("Max-Forwards", str(max_forwards)),
            ("From", from_value),
            ("To", f"<{to_uri}>"),
            ("Call-ID", new_call_id()),
            ("CSeq", "1 INVITE"),
            ("Contact", self._svc.stack.contact_for(leg.peer.transport)),
            ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER"),
        ]
        if self._svc.user_agent:
            headers.append(("User-Agent", self._svc.user_agent))
        content_type = a.content_type
        if body and content_type:
            headers.append(("Content-Type", content_type))
        if decision is not None:
            headers.extend(decision.headers.items())
        return Request.create("INVITE", uri, headers, body)

    async def _provisional(self, leg: Leg, response: Response) -> None:
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
        invite, client, stack = leg.invite, leg.client, self._svc.stack
        try:
            ack = raw_request(
                "ACK", invite, response, invite.cseq.number, stack.via_for(leg.peer.transport)
            )
            try:
                client.ack(ack, leg.peer)
            except Exception:  # a To the transaction cannot key on: send it once, stateless
                stack.send_ack(ack, leg.peer)
        except Exception:
            log.exception("call %s: cannot ACK the unusable 2xx", self.id)
            return None

        async def bye() -> None:
            request = raw_request(
                "BYE", invite, response, invite.cseq.number + 1, stack.via_for(leg.peer.transport)
            )
            with anyio.move_on_after(_CLEANUP_TIMEOUT):
                async with stack.request(request, leg.peer) as bye_client:
                    try:
                        await bye_client.final_response()
                    except TransactionTimedOut:
                        pass

        self._svc.spawn(bye)
        return None

    async def _answered(self, leg: Leg, response: Response) -> bool:
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
                    self._ack(leg)
                    self._spawn(self._bye, leg)
                return False
            dialog = self._accept_2xx(leg, response, self._contact)
            if dialog is None:
                return False
            self.winner = leg
            leg.answered = True
            leg.dialog = dialog
            if self.incoming.request.body:
                self._ack(leg)
            else:
                self._spawn(self._ack_late_offer, leg)
            body = response.body
            if body:
                body = await svc.media.answer(self.id, leg.label, body)
            headers = [("Contact", self._contact)]
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
            svc.registry.answered_calls += 1
            svc.registry.emit(CallAnswered(self.id, self.answered_at, leg.target))
            return True
        return False  # not reached: the scope is shielded, never cancelled

    def _ack(self, leg: Leg, body: bytes = b"", content_type: str | None = None) -> None:
        assert leg.dialog is not None and leg.invite is not None and leg.client is not None
        headers = [("Content-Type", content_type)] if body and content_type else []
        ack = leg.dialog.create_ack(
            leg.invite.cseq.number,
            via=self._svc.stack.via_for(leg.peer.transport),
            headers=headers,
            body=body,
        )
        leg.client.ack(ack, leg.peer)

    async def _ack_late_offer(self, leg: Leg) -> None:
        """Delayed offer: the caller's INVITE had no SDP, so the callee's 200
        carried the offer and the caller's ACK carries the answer; the
        callee's ACK must wait for it (at most 64*T1, then it goes bare)."""
        pending = self._awaiting_ack.get(self.caller_leg)
        if pending is not None:
            with anyio.move_on_after(_ACK_WAIT):
                await pending.wait()
        body, content_type = self._caller_ack_body
        if body:
            body = await self._svc.media.answer(self.id, self.caller_leg.label, body)
        self._ack(leg, body, content_type)

    async def _cancel_leg(self, leg: Leg) -> None:
        """CANCEL a ringing leg; a 2xx that crossed the CANCEL gets ACK and BYE."""
        invite, client = leg.invite, leg.client
        if invite is None or client is None:
            return
        headers = [
            (name, value)
            for name, value in invite.headers
            if name.lower() in ("via", "v", "from", "f", "to", "t", "call-id", "i", "route")
        ]
        headers.append(("CSeq", f"{invite.cseq.number} CANCEL"))
        headers.append(("Max-Forwards", "70"))
        cancel = Request.create("CANCEL", invite.uri, headers)
        stack = self._svc.stack
        with anyio.move_on_after(_CLEANUP_TIMEOUT):
            async with stack.request(cancel, leg.peer) as cancel_client:
                try:
                    await cancel_client.final_response()
                except TransactionTimedOut:
                    pass
            try:
                while True:
                    response = await client.next_response()
                    if response.status >= 300:
                        return
                    if response.status >= 200:
                        leg.dialog = self._accept_2xx(leg, response, None)
                        if leg.dialog is not None:
                            self._ack(leg)
                            await self._bye(leg)
                        return
            except TransactionTimedOut:
                return

    async def _acked(self, leg: Leg) -> None:
        """Hold a request for ``leg`` until it has ACKed our last 2xx to an INVITE.

        RFC 3261 §14.1 and §15: no new INVITE or BYE while an INVITE is still
        unacknowledged. We ACK the far side's 2xx at once, so that side may send
        its next request before this leg's ACK reaches us (a callee's BYE or
        re-INVITE right after answering); relayed straight away it would overtake
        the ACK, which phones answer 491 or take for an unexpected request.
        """
        pending = self._awaiting_ack.get(leg)
        if pending is not None:
            with anyio.move_on_after(_ACK_WAIT):
                await pending.wait()

    async def _bye(self, leg: Leg, reason: str | None = None) -> None:
        await self._acked(leg)
        dialog = leg.dialog
        if dialog is None or dialog.is_terminated:
            return
        headers = [("Reason", reason)] if reason else []
        bye = dialog.create_request("BYE", headers=headers)
        dialog.terminate()
        with anyio.move_on_after(_CLEANUP_TIMEOUT):
            try:
                destination = await leg.destination()
                async with self._svc.stack.request(bye, destination) as client:
                    await client.final_response()
            except (TransactionTimedOut, OSError) as exc:
                log.info("call %s: BYE to %s failed: %s", self.id, leg.label, exc)

    # -- requests from either side ---------------------------------------------------
    def cancel(self) -> None:
        """The caller sent CANCEL: stop routing and forking, answer 487."""
        if self.winner is not None or self._cancelled:
            return
        self._cancelled = True
        if self._setup_scope is not None:
            self._setup_scope.cancel()

    async def handle_in_dialog(self, leg: Leg, incoming: IncomingRequest) -> None:
        """Relay a request that arrived in ``leg``'s dialog to the other leg."""
        request = incoming.request
        dialog = leg.dialog
        if dialog is None:
            incoming.respond(481)
            return
        if request.method == "ACK":
            # Our 2xx were acknowledged; re-INVITE ACKs are sent by us directly.
            if leg is self.caller_leg and request.body:
                self._caller_ack_body = (request.body, request.content_type)
            acked = self._awaiting_ack.pop(leg, None)
            if acked is not None:
                acked.set()
            return
        if not dialog.receive_request(request):
            incoming.respond(500, "CSeq Out of Order")
            return
        if request.method == "BYE":
            incoming.respond(200)
            reason: HangupReason = "byCaller" if leg is self.caller_leg else "byCallee"
            other = self.other(leg)
            if other is not None:
                await self._bye(other)
            self._end(reason, self.status_code or 200)
            return
        other = self.other(leg)
        if other is None or other.dialog is None or other.dialog.is_terminated:
            incoming.respond(481)
            return
        await self._relay(leg, other, incoming)

    async def _relay(self, leg: Leg, other: Leg, incoming: IncomingRequest) -> None:
        request = incoming.request
        await self._acked(other)
        if other.dialog is None or other.dialog.is_terminated:
            incoming.respond(481)
            return
        headers = [(n, v) for n, v in request.headers if n.lower() in _RELAYED_HEADERS]
        body = request.body
        if body and request.method in ("INVITE", "UPDATE"):
            body = await self._svc.media.offer(self.id, other.label, body)
        out = other.dialog.create_request(request.method, headers=headers, body=body)
        destination = await other.destination()
        async with self._svc.stack.request(out, destination) as client:
            try:
                final = await client.final_response()
            except TransactionTimedOut:
                incoming.respond(408)
                return
            other.dialog.receive_response(out, final)
            answer = final.body
            if answer and out.method in ("INVITE", "UPDATE"):
                answer = await self._svc.media.answer(self.id, other.label, answer)
            reply_headers = [(n, v) for n, v in final.headers if n.lower() in _RELAYED_HEADERS]
            if final.status < 300 and out.method in ("INVITE", "UPDATE"):
                reply_headers.append(("Contact", self._contact))
            # Answer before we ACK: our ACK frees the far end to send its next
            # request (a BYE, say), which must not overtake this response.
            if out.method == "INVITE" and final.status < 300:
                self._awaiting_ack[leg] = anyio.Event()
            incoming.respond(final.status, final.reason, headers=reply_headers, body=answer)
            if out.method == "INVITE" and final.status < 300:
                ack = other.dialog.create_ack(out.cseq.number)
                client.ack(ack, destination)

    async def hangup(self, reason: HangupReason = "bySystem") -> None:
        """End the call from Python (the console's hangup command).

        A ringing call is cancelled towards its targets and answered 487; a
        talking one gets a BYE on both legs.
        """
        winner = self.winner
        if winner is None:
            self._forced_reason = reason
            self.cancel()
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._bye, self.caller_leg)
            tg.start_soon(self._bye, winner)
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

    def _best_failure(self) -> tuple[int, HangupReason]:
        """RFC 3261 §16.7-ish: a 6xx wins, else the lowest-class failure seen.

        A 401/407 of a target is a challenge for the trunk's account, which the
        caller cannot answer (and we would relay without its mandatory
        WWW-/Proxy-Authenticate): the caller gets 403; the CDR keeps the original.
        """
        codes = [403 if m.code in (401, 407) else m.code for m in self.hangup_messages]
        if not codes:
            return 480, "failed"
        six = [c for c in codes if c >= 600]
        best = six[0] if six else min(codes, key=lambda c: (c // 100 != 4, c // 100, c))
        reason: HangupReason = "rejected" if best in (486, 600, 603) else "failed"
        if best == 408:
            reason = "noAnswer"
        return best, reason

    async def _cleanup(self) -> None:
        svc = self._svc
        if self.ended_at is None:
            self._end("bySystem", self.status_code or 500)
        for leg in self.legs:
            if leg.dialog is not None:
                svc.dialogs.pop(leg.dialog.id, None)
        winner = self.winner
        if winner is not None and winner.trunk and svc.limiter is not None:
            svc.limiter.release(winner.trunk)
        try:
            await svc.media.release(self.id)
        except Exception:
            log.exception("call %s: media release failed", self.id)
        svc.registry.remove(self)
        assert self.hangup_reason is not None and self.ended_at is not None
        svc.registry.emit(CallEnded(self.id, self.ended_at, self.hangup_reason, self.status_code))


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def _transport(name: str | None) -> TransportName | None:
    if name is None:
        return None
    upper = name.upper()
    if upper in ("UDP", "TCP", "TLS", "WS", "WSS"):
        return upper  # type: ignore[return-value]
    return None
