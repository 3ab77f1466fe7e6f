"""One side of a bridged call: the caller's leg (UAS) or a target's leg (UAC).

Each leg has its own Call-ID, tags and :class:`~sdpbx.sip.Dialog`, which is
what lets the B2BUA hang up, transfer or re-route either side on its own.
``peer`` is where the far end really is: the source address a phone's
request came from, or the address a registered phone registered from, so
in-dialog requests reach phones behind NAT whatever their Contact says.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING

import anyio

from ..sip import Dialog, Request, SipUri, Uri
from ..transport.base import Peer, TransportName

if TYPE_CHECKING:
    from ..stack import ClientRequest

__all__ = ["Leg", "resolve_uri"]

_TRANSPORTS: dict[str, TransportName] = {
    "UDP": "UDP",
    "TCP": "TCP",
    "TLS": "TLS",
    "WS": "WS",
    "WSS": "WSS",
}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
    if not _is_ip(host):
        kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
        infos = await anyio.getaddrinfo(host, port, type=kind)
        if not infos:
            raise OSError(f"cannot resolve {host}")
        host = str(infos[0][4][0])
    return Peer(transport, host, port)


class Leg:
    """A leg's dialog and where its far end is."""

    __slots__ = (
        "answered",
        "cancelled",
        "client",
        "dialog",
        "early",
        "invite",
        "label",
        "peer",
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
        self.answered = False
        self.cancelled = False

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
