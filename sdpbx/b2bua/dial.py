"""What a call dials: its targets and the INVITE each target's leg sends.

The router names targets as URIs (with, for registered phones, the binding
they came from, and per target a trunk); :func:`candidates` pairs them up and
:func:`build_invite` writes the callee leg's INVITE: a new Call-ID and tags
(a B2BUA's two dialogs share nothing), the caller's identity and SDP (through
the media backend), and the headers the router asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import frozen

from ..sip import Request, SipUri, Uri, new_branch, new_call_id, new_tag
from ..transport.base import Peer, TransportName
from .relay import CALL_ALLOW

if TYPE_CHECKING:
    from ..media import MediaBackend
    from ..routing import RouteDecision
    from ..stack import SipStack
    from .leg import Leg

__all__ = ["Candidate", "build_invite", "candidates", "transport_name"]


@frozen
class Candidate:
    """One target of a route: its URI, the peer a binding pins it to, its trunk."""

    uri: str
    peer: Peer | None
    trunk: str | None


def candidates(decision: RouteDecision) -> list[Candidate]:
    out: list[Candidate] = []
    bindings = decision.target_bindings
    trunks = decision.target_trunks
    for i, uri in enumerate(decision.targets):
        binding = bindings[i] if i < len(bindings) else None
        trunk = trunks[i] if i < len(trunks) else decision.trunk
        out.append(Candidate(uri, binding.peer if binding else None, trunk))
    return out


def transport_name(name: str | None) -> TransportName | None:
    """A trunk's configured transport as a stack transport name, if it is one."""
    if name is None:
        return None
    upper = name.upper()
    if upper in ("UDP", "TCP", "TLS", "WS", "WSS"):
        return upper  # type: ignore[return-value]
    return None


async def build_invite(
    original: Request,
    uri: Uri,
    leg: Leg,
    *,
    call_id: str,
    caller: str,
    decision: RouteDecision | None,
    stack: SipStack,
    media: MediaBackend,
    user_agent: str | None,
) -> Request:
    """The INVITE for ``leg``, made from the caller's ``original`` INVITE."""
    display = original.from_.display_name
    from_value = f"{display + ' ' if display else ''}<{caller}>;tag={new_tag()}"
    to_uri = uri.without_params("transport", "ob") if isinstance(uri, SipUri) else uri
    body = original.body
    if body:
        body = await media.offer(call_id, leg.label, body)
    max_forwards = (original.max_forwards if original.max_forwards is not None else 70) - 1
    headers: list[tuple[str, str]] = [
        ("Via", stack.via_for(leg.peer.transport, new_branch())),
        ("Max-Forwards", str(max_forwards)),
        ("From", from_value),
        ("To", f"<{to_uri}>"),
        ("Call-ID", new_call_id()),
        ("CSeq", "1 INVITE"),
        ("Contact", stack.contact_for(leg.peer.transport)),
        ("Allow", CALL_ALLOW),
    ]
    if user_agent:
        headers.append(("User-Agent", user_agent))
    content_type = original.content_type
    if body and content_type:
        headers.append(("Content-Type", content_type))
    if decision is not None:
        headers.extend(decision.headers.items())
    return Request.create("INVITE", uri, headers, body)
