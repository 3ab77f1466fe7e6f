"""One side of a bridged call: the caller's leg (UAS) or a target's leg (UAC).

Each leg has its own Call-ID, tags and :class:`~sdpbx.sip.Dialog`, which is
what lets the B2BUA hang up, transfer or re-route either side on its own.
``peer`` is where the far end really is: the source address a phone's
request came from, or the address a registered phone registered from, so
in-dialog requests reach phones behind NAT whatever their Contact says.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import anyio

from ..errors import TransactionClosed
from ..sip import Dialog, Request, Response, SipUri, Uri, build_cancel
from ..transport.base import Peer, TransportName, is_ip_address

if TYPE_CHECKING:
    from ..stack import ClientRequest, SipStack

__all__ = ["Leg", "resolve_uri", "transact"]

#: How long a request for a leg waits for that leg's ACK of our 2xx (64*T1).
ACK_WAIT = 32.0
#: What a CANCEL copies from the INVITE it cancels (RFC 3261 §9.1), compact forms included.
_TRANSPORTS: dict[str, TransportName] = {
    "UDP": "UDP",
    "TCP": "TCP",
    "TLS": "TLS",
    "WS": "WS",
    "WSS": "WSS",
}


async def resolve_uri(uri: Uri, *, default_transport: TransportName = "UDP") -> Peer:
    """Where a request for ``uri`` goes: transport, address and port.

    RFC 3263's NAPTR/SRV steps are not done; a host name is resolved with
    the system resolver (A/AAAA), ``maddr`` wins over the host.
    """
    if not isinstance(uri, SipUri):
        raise OSError(f"cannot send to a non-SIP URI {uri}")
    transport = _TRANSPORTS.get(uri.transport or "")
    if transport is None:
        transport = "TLS" if uri.secure else default_transport
    host = uri.param("maddr") or uri.host
    port = uri.port or (5061 if transport in ("TLS", "WSS") else 5060)
    if not is_ip_address(host):
        kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
        infos = await anyio.getaddrinfo(host, port, type=kind)
        if not infos:
            raise OSError(f"cannot resolve {host}")
        host = str(infos[0][4][0])
    return Peer(transport, host, port)


class Leg:
    """A leg's dialog and where its far end is."""

    __slots__ = (
        "ack_pending",
        "answered",
        "cancelled",
        "client",
        "dialog",
        "early",
        "invite",
        "label",
        "peer",
        "provisional",
        "target",
        "trunk",
    )

    def __init__(
        self,
        label: str,
        peer: Peer,
        *,
        target: str = "",
        invite: Request | None = None,
        trunk: str | None = None,
    ) -> None:
        #: "caller" for the UAS leg, "callee-N" for the UAC legs.
        self.label = label
        self.peer = peer
        self.target = target
        self.invite = invite
        self.trunk = trunk
        self.dialog: Dialog | None = None
        self.client: ClientRequest | None = None
        self.early = False
        #: Any provisional (even 100) arrived: only then may a CANCEL go (RFC 3261 §9.1).
        self.provisional = False
        self.answered = False
        self.cancelled = False
        #: Set while our 2xx to this leg's INVITE waits for its ACK.
        self.ack_pending: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<Leg {self.label} {self.peer.address}>"

    async def destination(self) -> Peer:
        """Where an in-dialog request for this leg goes.

        With no route set, to the leg's peer (NAT-safe); with one, to the
        first route's address, as loose routing wants.
        """
        dialog = self.dialog
        if dialog is not None and dialog.route_set:
            return await resolve_uri(dialog.route_set[0].uri, default_transport=self.peer.transport)
        return self.peer

    async def acked(self) -> None:
        """Hold a request for this leg until it has ACKed our last 2xx to an INVITE.

        RFC 3261 §14.1 and §15: no new INVITE or BYE while an INVITE is still
        unacknowledged. We ACK the far side's 2xx at once, so that side may send
        its next request before this leg's ACK reaches us (a callee's BYE or
        re-INVITE right after answering); relayed straight away it would overtake
        the ACK, which phones answer 491 or take for an unexpected request.
        """
        pending = self.ack_pending
        if pending is not None:
            with anyio.move_on_after(ACK_WAIT):
                await pending.wait()

    def got_ack(self) -> None:
        pending, self.ack_pending = self.ack_pending, None
        if pending is not None:
            pending.set()

    def ack(self, stack: SipStack, body: bytes = b"", content_type: str | None = None) -> None:
        """ACK the callee's 2xx (again for each retransmission, by the transaction)."""
        assert self.dialog is not None and self.invite is not None and self.client is not None
        headers = [("Content-Type", content_type)] if body and content_type else []
        ack = self.dialog.create_ack(
            self.invite.cseq.number,
            via=stack.via_for(self.peer.transport),
            headers=headers,
            body=body,
        )
        self.client.ack(ack, self.peer)

    def cancel_request(self) -> Request | None:
        """The CANCEL of this leg's INVITE (same Via branch, so the stack pairs them)."""
        return None if self.invite is None else build_cancel(self.invite)

    async def bye(self, stack: SipStack, reason: str | None = None) -> str | None:
        """Hang up this leg's dialog once; the reason it failed, or None.

        Waits for this leg's ACK first, and then at most until the stack gives
        up on the BYE (Timer F): the call that owns the task bounds it again.
        """
        await self.acked()
        dialog = self.dialog
        if dialog is None or dialog.is_terminated:
            return None
        headers = [("Reason", reason)] if reason else []
        bye = dialog.create_request("BYE", headers=headers)
        dialog.terminate()
        try:
            destination = await self.destination()
        except OSError as exc:
            return str(exc)
        response = await transact(stack, bye, destination)
        return None if response is not None else "no final response"


async def transact(stack: SipStack, request: Request, destination: Peer) -> Response | None:
    """Send ``request`` and wait for its final response; None when none came.

    Bounded by the stack's timers (Timer B/F, or 64*T1 after a CANCEL), and
    the client request is closed on every way out.
    """
    try:
        async with stack.request(request, destination) as client:
            return await client.final_response()
    except (TransactionClosed, OSError):
        return None
