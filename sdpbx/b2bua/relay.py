"""In-dialog requests: what one leg's request becomes on the other leg.

Once a call is bridged, a request in one leg's dialog (a re-INVITE, UPDATE,
INFO, MESSAGE or OPTIONS) is sent again in the other leg's dialog, with a
few headers copied across and SDP passed through the media backend, and the
far side's final response comes back the same way. Headers are compared by
their canonical key, so compact forms (``c:`` for Content-Type, ``o:`` for
Event) travel like the long ones.

Methods outside :data:`RELAYED_METHODS` (REFER, PRACK, SUBSCRIBE, NOTIFY and
anything unknown) are not implemented: they are answered 501 with the
:data:`CALL_ALLOW` we advertise, never passed on half-understood.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import anyio

from ..errors import TransactionClosed
from ..sip.headers import canonical_key, pretty_name

if TYPE_CHECKING:
    from ..media import MediaBackend
    from ..stack import IncomingRequest, SipStack
    from .leg import Leg

__all__ = ["CALL_ALLOW", "RELAYED_METHODS", "relay", "relayed_headers"]

#: The methods a bridged call handles in its dialogs; its INVITEs and 2xx say so.
CALL_ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, MESSAGE"
#: Requests passed from one leg's dialog to the other's (BYE and ACK end or confirm).
RELAYED_METHODS = frozenset({"INVITE", "UPDATE", "INFO", "MESSAGE", "OPTIONS"})
#: Headers copied from one leg's request or response to the other's, by canonical key.
_RELAYED_HEADERS = frozenset(
    {"content-type", "content-disposition", "info-package", "event", "reason"}
)
#: Methods whose bodies are SDP offers and answers for the media backend.
_OFFERS = frozenset({"INVITE", "UPDATE"})


def relayed_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers that cross the bridge, under their long names."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        key = canonical_key(name)
        if key in _RELAYED_HEADERS:
            out.append((pretty_name(key), value))
    return out


async def relay(
    incoming: IncomingRequest,
    leg: Leg,
    other: Leg,
    *,
    stack: SipStack,
    media: MediaBackend,
    call_id: str,
    contact: str,
) -> None:
    """Send ``incoming`` (from ``leg``) in ``other``'s dialog and answer with what comes back."""
    request = incoming.request
    await other.acked()
    dialog = other.dialog
    if dialog is None or dialog.is_terminated:
        incoming.respond(481)
        return
    method = request.method
    body = request.body
    if body and method in _OFFERS:
        body = await media.offer(call_id, other.label, body)
    out = dialog.create_request(method, headers=relayed_headers(request.headers), body=body)
    try:
        destination = await other.destination()
    except OSError:
        incoming.respond(503, "Cannot Reach Peer")
        return
    async with stack.request(out, destination) as client:
        try:
            final = await client.final_response()
        except TransactionClosed:
            incoming.respond(408)
            return
        dialog.receive_response(out, final)
        answer = final.body
        if answer and method in _OFFERS:
            answer = await media.answer(call_id, other.label, answer)
        reply_headers = relayed_headers(final.headers)
        accepted_invite = method == "INVITE" and final.status < 300
        if final.status < 300 and method in _OFFERS:
            reply_headers.append(("Contact", contact))
        if accepted_invite:
            reply_headers.append(("Allow", CALL_ALLOW))
            # Answer before we ACK: our ACK frees the far end to send its next
            # request (a BYE, say), which must not overtake this response.
            leg.ack_pending = anyio.Event()
        incoming.respond(final.status, final.reason, headers=reply_headers, body=answer)
        if accepted_invite:
            client.ack(dialog.create_ack(out.cseq.number), destination)
