"""A small user agent that registers, calls, answers and hangs up.

It drives a :class:`~sdpbx.stack.SipStack` the way a softphone would, so tests
(and users testing their own routers and PBXs) can place real calls over real
sockets without an external program::

    phone = Phone(stack, "sip:alice@127.0.0.1", password="secret",
                  server=Peer("UDP", "127.0.0.1", 5060))
    await phone.register()
    call = await phone.call("sip:bob@127.0.0.1")
    await call.hang_up()

A phone is also the stack's request handler: it answers incoming INVITEs
(180 then 200, when ``auto_answer``), takes BYEs and records the calls it got.
It speaks no media; its SDP is a fixed offer/answer.

**One stack per phone.** Creating a phone sets ``stack.handler`` to it, because
a softphone owns its socket: everything that arrives there is for it. So a
second phone on the same stack silently takes over the first one's requests,
and a phone built on a :class:`~sdpbx.proxy.Proxy`'s stack takes over the
proxy's (the proxy is that stack's handler too). Give every phone its own
``SipStack([UdpTransport("127.0.0.1", 0)])`` and serve it beside the proxy's.
"""

from __future__ import annotations

import anyio

from ..b2bua.uac_auth import add_credentials
from ..errors import SdpbxError
from ..sip import (
    Dialog,
    DialogId,
    Request,
    Response,
    SipUri,
    dialog_id_for_request,
    new_call_id,
    new_tag,
    parse_uri,
)
from ..stack import IncomingRequest, RequestHandler, SipStack
from ..transport.base import Peer

__all__ = ["CallFailed", "Phone", "PhoneCall"]

_SDP = (
    "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class CallFailed(SdpbxError):
    """The call was not answered: ``status`` is the final response (408 on timeout)."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason


class PhoneCall:
    """One established call of a :class:`Phone`."""

    def __init__(self, phone: Phone, dialog: Dialog, peer: Peer, *, outgoing: bool) -> None:
        self.phone = phone
        self.dialog = dialog
        self.peer = peer
        self.outgoing = outgoing
        self.remote_sdp = b""
        self.ended = anyio.Event()
        self.ended_by: str | None = None

    async def hang_up(self) -> Response:
        """Send BYE and wait for its final response."""
        bye = self.dialog.create_request("BYE")
        self.dialog.terminate()
        self.phone._calls.pop(self.dialog.id, None)
        async with self.phone.stack.request(bye, self.peer) as client:
            response = await client.final_response()
        self.ended_by = "us"
        self.ended.set()
        return response


class Phone(RequestHandler):
    """A user agent bound to one AoR, registering and calling through ``server``.

    The phone becomes ``stack.handler``: one stack per phone, never the stack of
    a proxy or of another phone (see the module docstring). ``username`` and
    ``password`` answer the server's digest challenges (``username`` defaults to
    the AoR's user); ``media_port`` is only written into the fixed SDP.
    """

    def __init__(
        self,
        stack: SipStack,
        aor: str,
        *,
        server: Peer,
        username: str | None = None,
        password: str | None = None,
        display_name: str | None = None,
        auto_answer: bool = True,
        media_port: int = 40000,
    ) -> None:
        uri = parse_uri(aor)
        if not isinstance(uri, SipUri) or uri.user is None:
            raise ValueError(f"a phone needs a sip: AoR with a user, not {aor!r}")
        self.stack = stack
        self.aor = uri
        self.server = server
        self.username = username or uri.user
        self.password = password
        self.display_name = display_name
        self.auto_answer = auto_answer
        self.sdp = _SDP.format(port=media_port).encode()
        self.incoming_calls: list[PhoneCall] = []
        self._calls: dict[DialogId, PhoneCall] = {}
        self._register_call_id = new_call_id()
        self._register_cseq = 0
        stack.handler = self

    @property
    def contact(self) -> str:
        return self.stack.contact_for(self.server.transport, self.aor.user)

    def _from(self) -> str:
        name = f'"{self.display_name}" ' if self.display_name else ""
        return f"{name}<{self.aor}>;tag={new_tag()}"

    async def _send(self, request: Request) -> Response:
        """Send through the server, answering one digest challenge if asked."""
        for _ in range(2):
            async with self.stack.request(request, self.server) as client:
                response = await client.final_response()
            if response.status not in (401, 407) or self.password is None:
                return response
            retry = add_credentials(
                request, response, username=self.username, password=self.password
            )
            if retry is None:
                return response
            request = retry
        return response

    async def register(self, expires: int = 3600) -> Response:
        """REGISTER the contact (``expires=0`` removes it); returns the final response."""
        self._register_cseq += 1
        request = Request.create(
            "REGISTER",
            SipUri("sip", self.aor.host, port=self.aor.port),
            [
                ("Max-Forwards", "70"),
                ("From", self._from()),
                ("To", f"<{self.aor}>"),
                ("Call-ID", self._register_call_id),
                ("CSeq", f"{self._register_cseq} REGISTER"),
                ("Contact", self.contact),
                ("Expires", str(expires)),
            ],
        )
        response = await self._send(request)
        self._register_cseq = max(self._register_cseq, response.cseq.number)
        return response

    async def call(self, target: str, *, timeout: float = 30.0) -> PhoneCall:
        """INVITE ``target`` through the server; return once answered (ACK sent).

        Raises :class:`CallFailed` with the final status when the call is not
        answered, or 408 after ``timeout`` seconds.
        """
        invite = Request.create(
            "INVITE",
            target,
            [
                ("Max-Forwards", "70"),
                ("From", self._from()),
                ("To", f"<{target}>"),
                ("Call-ID", new_call_id()),
                ("CSeq", "1 INVITE"),
                ("Contact", self.contact),
                ("Content-Type", "application/sdp"),
            ],
            self.sdp,
        )
        with anyio.move_on_after(timeout):
            for _ in range(2):
                async with self.stack.request(invite, self.server) as client:
                    final = await client.final_response()
                    if final.status < 300:
                        sent = client.request
                        dialog = Dialog.as_uac(sent, final, local_contact=self.contact)
                        ack = dialog.create_ack(
                            sent.cseq.number, via=self.stack.via_for(self.server.transport)
                        )
                        client.ack(ack, self.server)
                        call = PhoneCall(self, dialog, self.server, outgoing=True)
                        call.remote_sdp = final.body
                        self._calls[dialog.id] = call
                        return call
                if final.status in (401, 407) and self.password is not None:
                    retry = add_credentials(
                        invite, final, username=self.username, password=self.password
                    )
                    if retry is not None:
                        invite = retry
                        continue
                raise CallFailed(final.status, final.reason)
        raise CallFailed(408, "Request Timeout")

    # -- the request handler: calls coming in ------------------------------------
    async def handle_request(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        method = request.method
        if method == "INVITE" and request.to.tag is None:
            await self._incoming_invite(incoming)
            return
        call = self._calls.get(dialog_id_for_request(request))
        if method == "ACK":
            return
        if call is None:
            if method == "OPTIONS":
                await super().handle_request(incoming)
            else:
                incoming.respond(481)
            return
        if method == "BYE":
            incoming.respond(200)
            call.dialog.terminate()
            self._calls.pop(call.dialog.id, None)
            call.ended_by = "them"
            call.ended.set()
        elif method in ("INVITE", "UPDATE"):
            incoming.respond(
                200,
                headers=[("Contact", self.contact), ("Content-Type", "application/sdp")],
                body=self.sdp,
            )
        else:
            incoming.respond(200)

    async def _incoming_invite(self, incoming: IncomingRequest) -> None:
        if not self.auto_answer:
            incoming.respond(486)
            return
        contact = [("Contact", self.contact)]
        incoming.respond(180, headers=contact)
        incoming.respond(
            200, headers=[*contact, ("Content-Type", "application/sdp")], body=self.sdp
        )
        dialog = Dialog.as_uas(
            incoming.request, incoming.to_tag, local_contact=self.contact, confirmed=True
        )
        call = PhoneCall(self, dialog, incoming.peer, outgoing=False)
        call.remote_sdp = incoming.request.body
        self._calls[dialog.id] = call
        self.incoming_calls.append(call)

    def __repr__(self) -> str:
        return f"<Phone {self.aor}>"
