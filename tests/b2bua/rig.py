"""A B2BUA and its phones on one MemoryNetwork, and a user agent that does each step on demand.

:func:`running` starts a :class:`~sdpbx.proxy.Proxy` at :data:`PROXY` with the
given router; :meth:`Rig.endpoint` adds a user agent. An :class:`Endpoint`
answers INVITEs by a script (``"answer"``, ``"ring"``, ``"silent"``, a status,
or a function), and places calls one step at a time (INVITE, CANCEL, ACK,
BYE, re-INVITE), which :class:`sdpbx.testing.Phone` cannot do: it has no
CANCEL, no re-INVITE and no way to stop between 180 and 200.

What each side saw is read off the network (:meth:`Rig.wire`): every message
delivered to an endpoint, requests by method and responses as ``"487 INVITE"``,
in order. Nothing retransmits while the FakeClock stands still, so those lists
are exact; :meth:`Rig.expire` then moves every stack past 64*T1 and
:meth:`Rig.assert_clean` checks that the call left nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from sdpbx.exchanges import ClientRequest
from sdpbx.proxy import Proxy
from sdpbx.routing import RouteDecision, RouteRequest
from sdpbx.sip import (
    Dialog,
    DialogId,
    Request,
    Response,
    SipParseError,
    dialog_id_for_request,
    parse_message,
)
from sdpbx.stack import IncomingRequest, RequestHandler, SipStack
from sdpbx.testing import FakeClock, MemoryNetwork
from sdpbx.transport import Peer

PROXY = Peer("UDP", "10.0.0.1", 5060)
#: Where the tests' phones live; trunks' far ends are on 10.0.1.x.
ALICE = ("10.0.0.2", 5060)
BOB = ("10.0.0.3", 5060)
CAROL = ("10.0.0.4", 5060)
#: Seconds of loop time a step may take. The loop's clock jumps when every task waits
#: (see conftest.py), so this is no wall time: it turns a hang into a quick failure.
_GUARD = 600
#: What a CANCEL copies from its INVITE (RFC 3261 §9.1; we send no Route).
_CANCEL_COPIES = ("via", "from", "to", "call-id")

Route = Callable[[RouteRequest], Awaitable[Any]]
#: What an endpoint does with a new INVITE: a script name, a final status, or a function.
OnInvite = str | int | Callable[["Endpoint", IncomingRequest], None]


def sdp(owner: str, host: str, direction: str = "sendrecv") -> bytes:
    return (
        f"v=0\r\no={owner} 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
    ).encode()


def label(message: Request | Response) -> str:
    if isinstance(message, Request):
        return message.method
    return f"{message.status} {message.cseq.method}"


def _label(data: bytes) -> str:
    """A message on the wire as :func:`label` names it; "malformed ..." if it does not parse."""
    try:
        return label(parse_message(data))
    except SipParseError as exc:
        first = data.split(b"\r\n", 1)[0].decode(errors="replace")
        return f"malformed {first}: {exc}"


def to(target: str) -> Route:
    """A router sending every call to ``target``."""

    async def route(request: RouteRequest) -> RouteDecision:
        return RouteDecision.forward(target)

    return route


class Outgoing:
    """An INVITE an endpoint sent to the proxy, read one response at a time."""

    def __init__(self, endpoint: Endpoint, client: ClientRequest) -> None:
        self.endpoint = endpoint
        self.client = client
        self.responses: list[Response] = []

    @property
    def invite(self) -> Request:
        """The INVITE as sent (with our Via), which a CANCEL and the dialog copy."""
        return self.client.request

    async def next(self) -> Response:
        with anyio.fail_after(_GUARD):
            response = await self.client.next_response()
        self.responses.append(response)
        return response

    async def until(self, status: int) -> Response:
        """Read responses up to the first one with ``status``."""
        while True:
            response = await self.next()
            if response.status == status:
                return response
            assert response.status < 200, f"{response.status} before {status}"

    async def final(self) -> Response:
        while True:
            response = await self.next()
            if response.status >= 200:
                return response

    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    def send_cancel(self) -> ClientRequest:
        """Send a CANCEL of this INVITE (RFC 3261 §9.1); the caller closes what it returns."""
        invite = self.invite
        copied = [(n, v) for n, v in invite.headers if n.lower() in _CANCEL_COPIES]
        cancel = Request.create(
            "CANCEL",
            invite.uri,
            [*copied, ("CSeq", f"{invite.cseq.number} CANCEL"), ("Max-Forwards", "70")],
        )
        return self.endpoint.stack.send_request(cancel, PROXY)

    async def cancel(self) -> Response:
        """CANCEL this INVITE and return the CANCEL's final response."""
        client = self.send_cancel()
        try:
            with anyio.fail_after(_GUARD):
                return await client.final_response()
        finally:
            client.close()

    def ack(self, final: Response, body: bytes = b"") -> Dialog:
        """ACK a 2xx (with the SDP answer to a 2xx's offer, if given); the dialog it
        confirmed is the endpoint's from now on."""
        endpoint = self.endpoint
        dialog = Dialog.as_uac(self.invite, final, local_contact=endpoint.contact)
        headers = [("Content-Type", "application/sdp")] if body else []
        ack = dialog.create_ack(
            self.invite.cseq.number, via=endpoint.stack.via_for("UDP"), headers=headers, body=body
        )
        self.client.ack(ack, PROXY)
        endpoint.dialogs[dialog.id] = dialog
        return dialog


class Endpoint(RequestHandler):
    """A user agent on the memory network that does what a test tells it, when told."""

    def __init__(
        self, rig: Rig, user: str, host: str, port: int, on_invite: OnInvite = "answer"
    ) -> None:
        self.rig = rig
        self.user = user
        self.host = host
        self.port = port
        self.uri = f"sip:{user}@{host}:{port}"
        self.on_invite = on_invite
        #: On a CANCEL of a ringing INVITE, send its 200 first: the 2xx "crossed" the CANCEL.
        self.answer_on_cancel = False
        #: The status for a re-INVITE in one of our dialogs (200 with SDP, or a failure).
        self.on_reinvite = 200
        self.stack = SipStack([rig.network.transport("UDP", host, port)], self, clock=rig.clock)
        self.received: list[Request] = []
        #: INVITEs left ringing (``"ring"``) or unanswered (``"silent"``), oldest first.
        self.pending: list[IncomingRequest] = []
        self.dialogs: dict[DialogId, Dialog] = {}
        self._arrived = anyio.Event()

    @property
    def contact(self) -> str:
        return self.stack.contact_for("UDP", self.user)

    @property
    def sdp(self) -> bytes:
        return sdp(self.user, self.host)

    def methods(self) -> list[str]:
        """The requests that reached this endpoint's handler (ACKs of non-2xx never do)."""
        return [r.method for r in self.received]

    async def wait_for(self, method: str, count: int = 1) -> Request:
        """Until ``count`` requests of ``method`` have arrived; the last of them."""
        with anyio.fail_after(_GUARD):
            while True:
                got = [r for r in self.received if r.method == method]
                if len(got) >= count:
                    return got[count - 1]
                self._arrived = anyio.Event()
                await self._arrived.wait()

    # -- calling --------------------------------------------------------------------
    def invite(
        self,
        target: str,
        *,
        body: bytes | None = None,
        max_forwards: int = 70,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Outgoing:
        """Send an INVITE for ``target`` to the proxy (with our SDP unless ``body`` says)."""
        body = self.sdp if body is None else body
        extra = [("Content-Type", "application/sdp")] if body else []
        request = Request.create(
            "INVITE",
            target,
            [
                ("Max-Forwards", str(max_forwards)),
                ("From", f"<sip:{self.user}@{self.host}>;tag={self.user}-tag"),
                ("To", f"<{target}>"),
                ("Call-ID", f"{self.user}-call-{len(self.rig.network.sent)}"),
                ("CSeq", "1 INVITE"),
                ("Contact", self.contact),
                *extra,
                *headers,
            ],
            body,
        )
        return Outgoing(self, self.stack.send_request(request, PROXY))

    async def call(self, target: str) -> tuple[Outgoing, Dialog]:
        """INVITE, expect 200, ACK: an established call."""
        out = self.invite(target)
        final = await out.final()
        assert final.status == 200, final
        return out, out.ack(final)

    async def send(self, dialog: Dialog, method: str, body: bytes = b"") -> Response:
        """A request in ``dialog`` (to the proxy); a 2xx to an INVITE is ACKed."""
        headers = [("Content-Type", "application/sdp")] if body else []
        request = dialog.create_request(method, headers=headers, body=body)
        if method == "BYE":
            dialog.terminate()
        async with self.stack.request(request, PROXY) as client:
            with anyio.fail_after(_GUARD):
                final = await client.final_response()
            dialog.receive_response(client.request, final)
            if method == "INVITE" and final.status < 300:
                ack = dialog.create_ack(request.cseq.number, via=self.stack.via_for("UDP"))
                client.ack(ack, PROXY)
        return final

    def only_dialog(self) -> Dialog:
        [dialog] = self.dialogs.values()
        return dialog

    # -- answering ------------------------------------------------------------------
    def answer(self, incoming: IncomingRequest | None = None, status: int = 200) -> None:
        """Answer a pending INVITE (the oldest by default) with ``status``."""
        if incoming is None:
            incoming = self.pending.pop(0)
        elif incoming in self.pending:
            self.pending.remove(incoming)
        if status >= 300:
            incoming.respond(status)
            return
        incoming.respond(
            status,
            headers=[("Contact", self.contact), ("Content-Type", "application/sdp")],
            body=self.sdp,
        )
        dialog = Dialog.as_uas(
            incoming.request, incoming.to_tag, local_contact=self.contact, confirmed=True
        )
        self.dialogs[dialog.id] = dialog

    def ring(self, incoming: IncomingRequest, status: int = 180) -> None:
        incoming.respond(status, headers=[("Contact", self.contact)])

    async def handle_request(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        self.received.append(request)
        self._arrived.set()
        method = request.method
        if method == "INVITE" and request.to.tag is None:
            self._new_invite(incoming)
        elif method == "CANCEL":
            self._cancel(incoming)
        else:
            self._in_dialog(incoming)

    def _new_invite(self, incoming: IncomingRequest) -> None:
        script = self.on_invite
        if callable(script):
            script(self, incoming)
        elif isinstance(script, int):
            incoming.respond(script)
        elif script == "answer":
            self.ring(incoming)
            self.answer(incoming)
        elif script == "ring":
            self.ring(incoming)
            self.pending.append(incoming)
        elif script == "silent":
            self.pending.append(incoming)
        else:
            raise AssertionError(f"unknown script {script!r}")

    def _cancel(self, incoming: IncomingRequest) -> None:
        invite = incoming.cancelled_invite()
        if invite is None:
            incoming.respond(481)
            return
        if self.answer_on_cancel and not invite.answered:
            self.answer(invite)
        incoming.respond(200, to_tag=invite.to_tag)
        if not invite.answered:
            if invite in self.pending:
                self.pending.remove(invite)
            invite.respond(487)

    def _in_dialog(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        method = request.method
        dialog = self.dialogs.get(dialog_id_for_request(request))
        if method == "ACK":
            if dialog is not None:
                dialog.receive_request(request)
            return
        if dialog is None or dialog.is_terminated:
            incoming.respond(481)
            return
        dialog.receive_request(request)
        if method == "BYE":
            incoming.respond(200)
        elif method == "INVITE" and self.on_reinvite >= 300:
            incoming.respond(self.on_reinvite)
        elif method == "INVITE":
            held = b"a=sendonly" in request.body
            incoming.respond(
                200,
                headers=[("Contact", self.contact), ("Content-Type", "application/sdp")],
                body=sdp(self.user, self.host, "recvonly" if held else "sendrecv"),
            )
        else:
            incoming.respond(200)

    def __repr__(self) -> str:
        return f"<Endpoint {self.uri}>"


class Rig:
    """The proxy, its network and clock, and the endpoints a test added."""

    def __init__(self, network: MemoryNetwork, clock: FakeClock, proxy: Proxy, tg: TaskGroup):
        self.network = network
        self.clock = clock
        self.proxy = proxy
        self.tg = tg
        self.endpoints: list[Endpoint] = []
        self.stacks: list[SipStack] = []

    async def endpoint(
        self, user: str, address: tuple[str, int], on_invite: OnInvite = "answer"
    ) -> Endpoint:
        endpoint = Endpoint(self, user, *address, on_invite=on_invite)
        await self.tg.start(endpoint.stack.serve)
        self.endpoints.append(endpoint)
        return endpoint

    async def stack(
        self, address: tuple[str, int], handler: RequestHandler | None = None
    ) -> SipStack:
        """A running stack of its own at ``address`` (for the public kit's Phone and UAS)."""
        stack = SipStack([self.network.transport("UDP", *address)], handler, clock=self.clock)
        await self.tg.start(stack.serve)
        self.stacks.append(stack)
        return stack

    def wire(self, where: Endpoint | tuple[str, int]) -> list[str]:
        """Every message delivered to an endpoint (or address) so far, in order."""
        host, port = (where.host, where.port) if isinstance(where, Endpoint) else where
        return [_label(data) for data in self.network.messages_to(host, port)]

    def sent_to(self, host: str, port: int) -> list[str]:
        """What was sent towards an address, delivered or not."""
        return [
            _label(m.data)
            for m in self.network.sent
            if (m.destination.host, m.destination.port) == (host, port)
        ]

    async def settle(self) -> None:
        """Until every task waits on something: what was sent has been handled."""
        await anyio.wait_all_tasks_blocked()

    async def calls_over(self) -> None:
        """Until the proxy has no call left (its last BYEs answered)."""
        with anyio.fail_after(_GUARD):
            while len(self.proxy.calls):
                await anyio.sleep(0.5)
        await self.settle()

    def tick(self, seconds: float) -> None:
        """Move the FakeClock and fire what became due on every stack."""
        self.clock.advance(seconds)
        for stack in [self.proxy.stack, *(e.stack for e in self.endpoints), *self.stacks]:
            stack._timer_tick()

    async def expire(self) -> None:
        """Move every stack past 64*T1 (twice), letting each step's messages be handled."""
        for _ in range(2):
            await self.settle()
            self.tick(40.0)
        await self.calls_over()

    def assert_clean(self, *, errors: int = 0) -> None:
        proxy = self.proxy
        assert len(proxy.calls) == 0
        assert proxy._dialogs == {}
        assert len(proxy.stack.layer) == 0, "transactions left in the proxy"
        assert proxy.stats.call_errors == errors


@asynccontextmanager
async def running(route: Route, **options: Any) -> AsyncIterator[Rig]:
    """A proxy at :data:`PROXY` routing with ``route``, on a fresh network and FakeClock."""
    network = MemoryNetwork()
    clock = FakeClock()
    stack = SipStack([network.transport("UDP", PROXY.host, PROXY.port)], clock=clock)
    proxy = Proxy.from_parts(stack, router=route, clock=clock, **options)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        yield Rig(network, clock, proxy, tg)
        tg.cancel_scope.cancel()
