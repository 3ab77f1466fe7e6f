"""A user agent server that answers every call: the smallest useful SipStack user.

It is what SIPp's ``uac`` scenario calls in our interop tests and benchmarks,
and a starting point for users writing their own endpoint: INVITE gets 180
and 200 with an SDP answer, the ACK is taken, BYE and CANCEL get their
answers, OPTIONS gets 200.
"""

from __future__ import annotations

from attrs import define

from ..sip import Request
from ..stack import IncomingRequest, RequestHandler

__all__ = ["AnsweringUas", "UasStats"]

_SDP = (
    "v=0\r\no=sdpbx 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
)


@define
class UasStats:
    invites: int = 0
    acks: int = 0
    byes: int = 0
    cancels: int = 0


class AnsweringUas(RequestHandler):
    """Answers INVITEs at once (``ring=False``) or after a 180 (``ring=True``)."""

    def __init__(
        self,
        *,
        ring: bool = True,
        media_host: str = "127.0.0.1",
        media_port: int = 6000,
        contact: str | None = None,
    ) -> None:
        self.ring = ring
        self.stats = UasStats()
        self.contact = contact
        self._sdp = _SDP.format(host=media_host, port=media_port).encode()

    async def handle_request(self, incoming: IncomingRequest) -> None:
        request: Request = incoming.request
        method = request.method
        if method == "INVITE":
            self.stats.invites += 1
            contact = self.contact or incoming.stack.contact_for(incoming.peer.transport, "uas")
            if self.ring:
                incoming.respond(180, headers=[("Contact", contact)])
            incoming.respond(
                200,
                headers=[("Contact", contact), ("Content-Type", "application/sdp")],
                body=self._sdp,
            )
        elif method == "ACK":
            self.stats.acks += 1
        elif method == "BYE":
            self.stats.byes += 1
            incoming.respond(200)
        elif method == "CANCEL":
            self.stats.cancels += 1
            incoming.respond(200)
        else:
            await super().handle_request(incoming)
