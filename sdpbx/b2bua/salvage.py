"""Requests for a callee whose 2xx we cannot build a dialog from.

A 2xx with no usable Contact, To tag or Record-Route still means the callee
answered: it will resend its 2xx until it sees an ACK and it holds the call
until a BYE. The B2BUA then answers the caller 502 and ends that leg with
requests built from the raw header text it already has (the INVITE it sent
and the To line of the 2xx, copied verbatim), never by re-parsing what just
failed, and sends them where the INVITE went.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sip import Request, Response

if TYPE_CHECKING:
    from ..stack import SipStack
    from .leg import Leg

__all__ = ["ack_unusable_2xx", "raw_request"]


def raw_request(method: str, invite: Request, response: Response, cseq: int, via: str) -> Request:
    """``method`` (ACK or BYE) for the leg ``invite`` opened and ``response`` answered.

    Request-URI: the INVITE's (the callee's Contact is what may be broken); To:
    the 2xx's To line as received (it carries the callee's tag); the rest from
    the INVITE we built ourselves.
    """
    to = response.headers.get("to") or invite.headers.get("to") or ""
    headers = [
        ("Via", via),
        ("Max-Forwards", "70"),
        ("From", invite.headers.get("from") or ""),
        ("To", to),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    return Request.create(method, invite.uri, headers)


def ack_unusable_2xx(stack: SipStack, leg: Leg, response: Response) -> Request:
    """ACK ``response`` on ``leg`` now and return the BYE that ends it.

    The ACK goes through the INVITE's transaction, which resends it for each
    retransmitted 2xx; a To the transaction cannot key on gets it once,
    statelessly. Raises only if even the raw text cannot make a request.
    """
    invite, client = leg.invite, leg.client
    assert invite is not None and client is not None
    transport = leg.peer.transport
    ack = raw_request("ACK", invite, response, invite.cseq.number, stack.via_for(transport))
    try:
        client.ack(ack, leg.peer)
    except Exception:
        stack.send_ack(ack, leg.peer)
    return raw_request("BYE", invite, response, invite.cseq.number + 1, stack.via_for(transport))
