"""Forking: a route's targets, dialled in parallel or one after the other, to one winner.

Each target gets a leg and an INVITE client transaction; provisional
responses and the first 2xx go to the call (a :class:`Dialler`), which
decides what the caller sees. The fork ends when a leg wins, when the call is
cancelled, when the ring timeout expires, or when every target failed; each
failure is kept as a :class:`HangupMessage` for the caller's final status and
the CDR. A leg interrupted while ringing is handed to the call to CANCEL;
every other leg's client request is closed here, whatever ended it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import anyio
from attrs import define

from ..errors import TransactionClosed, TransactionTimedOut
from ..sip import Response, SipParseError, parse_uri
from .dial import Candidate, build_invite, transport_name
from .events import HangupReason
from .leg import Leg, resolve_uri
from .uac_auth import add_credentials

if TYPE_CHECKING:
    from ..routing import RouteDecision
    from ..stack import IncomingRequest
    from .call import CallServices

__all__ = ["Dialler", "HangupMessage", "best_failure", "fork"]

#: Failures after which a sequential fork stops instead of trying the next target.
_GLOBAL_FAILURE = range(600, 700)


@define
class HangupMessage:
    """One final failure seen on the way (``hangupMessages`` in the CDR)."""

    code: int
    reason: str
    target: str


class Dialler(Protocol):
    """What a fork needs from its call (a :class:`~sdpbx.b2bua.call.Call`)."""

    id: str
    incoming: IncomingRequest
    caller: str
    decision: RouteDecision | None
    hangup_messages: list[HangupMessage]
    callee_legs: list[Leg]
    winner: Leg | None

    # Private to the b2bua package: a Call's users never call these.
    @property
    def _settled(self) -> bool:
        """A leg won or the caller cancelled: dialling stops."""
        ...

    async def _on_provisional(self, leg: Leg, response: Response) -> None: ...

    async def _on_2xx(self, leg: Leg, response: Response) -> bool:
        """A 2xx on ``leg``; True if it won the call."""
        ...

    def _cancel_later(self, leg: Leg) -> None:
        """CANCEL ``leg`` in the background (its client request is the CANCEL's now)."""
        ...


async def fork(
    call: Dialler, svc: CallServices, targets: list[Candidate], strategy: str, timeout: float
) -> bool:
    """Dial ``targets``; True when the ring timeout ended it with no winner."""
    with anyio.CancelScope() as scope:
        if strategy == "parallel" and len(targets) > 1:
            with anyio.move_on_after(timeout) as ring:
                async with anyio.create_task_group() as tg:
                    for n, candidate in enumerate(targets):
                        tg.start_soon(_attempt, call, svc, candidate, n, scope)
            return ring.cancelled_caught and call.winner is None
        for n, candidate in enumerate(targets):
            with anyio.move_on_after(timeout) as ring:
                await _attempt(call, svc, candidate, n, scope)
            if call._settled:
                return False
            if ring.cancelled_caught:
                call.hangup_messages.append(HangupMessage(408, "Ring Timeout", candidate.uri))
                if n == len(targets) - 1:
                    return True
                continue
            last = call.hangup_messages[-1].code if call.hangup_messages else 0
            if last in _GLOBAL_FAILURE:
                return False
            if candidate.trunk and not (last == 408 or 500 <= last < 600):
                # A carrier's 486 or 404 is an answer about the callee, not
                # about the trunk: failing over would only ring them twice.
                return False
    return False


async def _attempt(
    call: Dialler, svc: CallServices, candidate: Candidate, n: int, scope: anyio.CancelScope
) -> None:
    """One target: INVITE it (once more with credentials if its trunk is challenged)."""
    limiter = svc.limiter
    trunk_name = candidate.trunk
    trunk = svc.trunks.get(trunk_name) if trunk_name else None
    acquired: str | None = None
    if limiter is not None and trunk_name:
        if not limiter.try_acquire(trunk_name, svc.clock()):
            call.hangup_messages.append(HangupMessage(503, "Trunk Limit", candidate.uri))
            return
        acquired = trunk_name
    failures = call.hangup_messages
    leg: Leg | None = None
    try:
        try:
            uri = parse_uri(candidate.uri)
            # Without a transport parameter, a target is reached the way the
            # caller reached us (a TCP phone calls TCP peers), or by the trunk's.
            default = transport_name(trunk.transport if trunk is not None else None)
            peer = candidate.peer or await resolve_uri(
                uri, default_transport=default or call.incoming.peer.transport
            )
        except (SipParseError, OSError) as exc:
            failures.append(HangupMessage(502, f"Bad Target: {exc}", candidate.uri))
            return
        leg = Leg(f"callee-{n}", peer, target=candidate.uri, trunk=candidate.trunk)
        call.callee_legs.append(leg)
        invite = leg.invite = await build_invite(
            call.incoming.request,
            uri,
            leg,
            call_id=call.id,
            caller=call.caller,
            decision=call.decision,
            stack=svc.stack,
            media=svc.media,
            user_agent=svc.user_agent,
        )
        auth_tried = False
        while True:
            try:
                leg.client = svc.stack.send_request(invite, peer)
            except OSError as exc:
                failures.append(HangupMessage(503, f"Cannot Send: {exc}", leg.target))
                return
            try:
                final = await _final(call, leg)
            except TransactionClosed as exc:
                why = "Request Timeout" if isinstance(exc, TransactionTimedOut) else "No Answer"
                failures.append(HangupMessage(408, why, leg.target))
                return
            if final.status < 300:
                if await call._on_2xx(leg, final):
                    scope.cancel()
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
                    leg.client.close()
                    invite = leg.invite = retry
                    continue
            failures.append(HangupMessage(final.status, final.reason, leg.target))
            return
    except anyio.get_cancelled_exc_class():
        if leg is not None and not leg.answered and leg.client is not None:
            leg.cancelled = True
            call._cancel_later(leg)
        raise
    finally:
        if leg is not None and leg.client is not None and not leg.cancelled:
            leg.client.close()  # a winner's ACK still goes out: it lives in the transaction
        if acquired and limiter is not None and call.winner is not leg:
            limiter.release(acquired)


async def _final(call: Dialler, leg: Leg) -> Response:
    client = leg.client
    assert client is not None
    while True:
        response = await client.next_response()
        if response.status < 200:
            leg.provisional = True
        if response.status == 100:
            continue
        if response.status < 200:
            leg.early = True
            await call._on_provisional(leg, response)
            continue
        return response


def best_failure(messages: list[HangupMessage]) -> tuple[int, HangupReason]:
    """RFC 3261 §16.7-ish: a 6xx wins, else the lowest-class failure seen.

    A 401/407 of a target is a challenge for the trunk's account, which the
    caller cannot answer (and we would relay without its mandatory
    WWW-/Proxy-Authenticate): the caller gets 403; the CDR keeps the original.
    Returns the status and the CDR's hangup reason.
    """
    codes = [403 if m.code in (401, 407) else m.code for m in messages]
    if not codes:
        return 480, "failed"
    six = [c for c in codes if c >= 600]
    best = six[0] if six else min(codes, key=lambda c: (c // 100 != 4, c // 100, c))
    if best == 408:
        return best, "noAnswer"
    return best, "rejected" if best in (486, 600, 603) else "failed"
