"""The RFC 3261 §12 dialog: the state two user agents share between requests, sans-IO.

The rules, in one place:

- A dialog is named by (Call-ID, local tag, remote tag), each side seeing the two tags
  swapped: :func:`dialog_id_for_request` (UAS view: ours is the To tag) and
  :func:`dialog_id_for_response` (UAC view: ours is the From tag) give the key to look a
  message's dialog up with, in one dict access.
- The UAC builds its dialog from the request it sent and a 101-199 with a To tag (EARLY) or a
  2xx (CONFIRMED): route set = the response's Record-Route reversed, remote target = its
  Contact (§12.1.2). The UAS builds it from the request: route set = Record-Route in order,
  remote target = the request's Contact (§12.1.1). A dialog-creating message without exactly
  one SIP/SIPS Contact is the peer's fault (:class:`SipParseError`, 400).
- While the dialog is EARLY, every 1xx/2xx of the initial INVITE recomputes the route set and
  the remote target; a 2xx confirms it, a final failure ends it. Once CONFIRMED, the route set
  never changes (§12.2.1.2); only target refresh requests (re-INVITE, UPDATE, SUBSCRIBE,
  NOTIFY) and their 2xx move the remote target.
- Requests in a dialog (§12.2.1.1) carry the remote target as Request-URI and the route set as
  Route when the first route is a loose router (``;lr``). A strict router (no ``lr``) becomes
  the Request-URI instead and the remote target is appended as the last Route. The local CSeq
  goes up by one for every request but ACK and CANCEL.
- A request whose CSeq is lower than the last one received is out of order; the caller answers
  500 (§12.2.2). The first request received (remote CSeq empty) is always in order.
- A 481 or 408 to a request in the dialog ends it (§12.2.1.2), as do a BYE received and accepted,
  and any final response to a BYE we sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from attrs import evolve, frozen

from .errors import LocalProtocolError, SipParseError
from .fields import MAX_CSEQ, NameAddr
from .message import Request, Response
from .uri import SipUri, Uri

__all__ = [
    "Dialog",
    "DialogId",
    "DialogState",
    "dialog_id_for_request",
    "dialog_id_for_response",
]

#: Methods whose Contact replaces the remote target (RFC 3261 §12.2, RFC 3311, RFC 6665 §4.3).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY"})
#: Requests that reuse the CSeq number of the request they belong to (§13.2.2.4, §9.1).
_NO_INCREMENT = frozenset({"ACK", "CANCEL"})
#: Responses that tell the UAC the peer no longer knows the dialog (§12.2.1.2).
_DIALOG_ENDING = frozenset({408, 481})
_SECURE_TRANSPORTS = frozenset({"TLS", "WSS"})


class DialogState(Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@frozen
class DialogId:
    """The key of a dialog as one side sees it; the other side has the tags swapped."""

    call_id: str
    local_tag: str
    remote_tag: str

    def reversed(self) -> DialogId:
        """The same dialog as the peer names it."""
        return DialogId(self.call_id, self.remote_tag, self.local_tag)


def dialog_id_for_request(request: Request) -> DialogId:
    """The id of the dialog a received request belongs to (we are the UAS of it)."""
    return DialogId(request.call_id, request.to.tag or "", request.from_.tag or "")


def dialog_id_for_response(response: Response) -> DialogId:
    """The id of the dialog a received response belongs to (we sent the request)."""
    return DialogId(response.call_id, response.from_.tag or "", response.to.tag or "")


def _untagged(addr: NameAddr) -> NameAddr:
    if not any(name.lower() == "tag" for name, _ in addr.params):
        return addr
    return evolve(addr, params=tuple(p for p in addr.params if p[0].lower() != "tag"))


def _target(message: Request | Response, what: str) -> Uri:
    """The single SIP/SIPS Contact URI a dialog-creating or refreshing message must carry."""
    if message.contact_is_star:
        raise SipParseError(f"Contact: * in {what}")
    contacts = message.contacts
    if len(contacts) != 1:
        raise SipParseError(f"{what} needs exactly one Contact, got {len(contacts)}")
    uri = contacts[0].uri
    if not isinstance(uri, SipUri):
        raise SipParseError(f"{what} has a non-SIP Contact {uri}")
    return uri


def _refreshed_target(message: Request | Response, what: str) -> Uri | None:
    """The new remote target of a target refresh, or ``None`` when it carries no Contact."""
    if "contact" not in message.headers:
        return None
    return _target(message, what)


def _is_secure(request: Request, over_tls: bool | None) -> bool:
    """§12.1.1/§12.1.2: a SIPS Request-URI that travelled over TLS (Via tells the transport)."""
    uri = request.uri
    if not (isinstance(uri, SipUri) and uri.secure):
        return False
    if over_tls is not None:
        return over_tls
    if "via" not in request.headers:
        # Not sent yet: a SIPS Request-URI may only ever leave over TLS (§26.2.2).
        return True
    return request.top_via.transport in _SECURE_TRANSPORTS


def _is_loose(route: NameAddr) -> bool:
    uri = route.uri
    return isinstance(uri, SipUri) and uri.param("lr") is not None


def _as_request_uri(uri: Uri) -> Uri:
    """A route URI stripped of what a Request-URI may not carry (§19.1.1 table)."""
    if isinstance(uri, SipUri) and (uri.headers or uri.param("method") is not None):
        return evolve(uri.without_params("method"), headers=())
    return uri


class Dialog:
    """One dialog's live state: tags, URIs, route set, target, sequence numbers.

    A plain object: the UA (or B2BUA leg) owns it, feeds it what it receives and asks it
    for the next request to send. ``local_cseq`` is the number of the last request sent
    (0 for a UAS that has sent none, so its first request carries CSeq 1); ``remote_cseq``
    is that of the last request received, ``None`` until one arrives.
    """

    __slots__ = (
        "call_id",
        "local_contact",
        "local_cseq",
        "local_tag",
        "local_uri",
        "remote_cseq",
        "remote_tag",
        "remote_target",
        "remote_uri",
        "route_set",
        "secure",
        "state",
    )

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: NameAddr,
        remote_uri: NameAddr,
        remote_target: Uri,
        route_set: tuple[NameAddr, ...] = (),
        local_cseq: int = 0,
        remote_cseq: int | None = None,
        secure: bool = False,
        state: DialogState = DialogState.EARLY,
        local_contact: str | None = None,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_cseq = local_cseq
        self.remote_cseq = remote_cseq
        self.secure = secure
        self.state = state
        self.local_contact = local_contact

    # -- creation ---------------------------------------------------------------
    @classmethod
    def as_uac(
        cls,
        request: Request,
        response: Response,
        *,
        local_contact: str | None = None,
        over_tls: bool | None = None,
    ) -> Dialog:
        """The dialog our ``request`` (INVITE, SUBSCRIBE...) and its ``response`` create.

        ``local_contact`` defaults to the request's own Contact, which the peer now
        uses as its remote target. ``over_tls`` overrides what the top Via says.
        """
        status = response.status
        remote_tag = response.to.tag
        if not (200 <= status < 300 or (100 < status < 200 and remote_tag is not None)):
            raise LocalProtocolError(f"a {status} response without a To tag creates no dialog")
        local_tag = request.from_.tag
        if local_tag is None:
            raise LocalProtocolError("our request has no From tag")
        if local_contact is None and "contact" in request.headers and request.contacts:
            local_contact = str(request.contacts[0])
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            # §12.1.2: a 2xx without a To tag (RFC 2543 peer) gives a null remote tag.
            remote_tag=remote_tag or "",
            local_uri=_untagged(request.from_),
            remote_uri=_untagged(request.to),
            remote_target=_target(response, f"{status} response"),
            route_set=tuple(reversed(response.record_routes)),
            local_cseq=request.cseq.number,
            remote_cseq=None,
            secure=_is_secure(request, over_tls),
            state=DialogState.CONFIRMED if status >= 200 else DialogState.EARLY,
            local_contact=local_contact,
        )

    @classmethod
    def as_uas(
        cls,
        request: Request,
        local_tag: str,
        *,
        local_contact: str | None = None,
        confirmed: bool = False,
        over_tls: bool | None = None,
    ) -> Dialog:
        """The dialog we create by answering ``request`` with ``local_tag`` in the To.

        EARLY until :meth:`confirm` (call it when the 2xx goes out) unless ``confirmed``.
        """
        to_tag = request.to.tag
        if to_tag is not None and to_tag != local_tag:
            raise LocalProtocolError("the request is already in another dialog")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_uri=_untagged(request.to),
            remote_uri=_untagged(request.from_),
            remote_target=_target(request, f"{request.method} request"),
            route_set=request.record_routes,
            local_cseq=0,
            remote_cseq=request.cseq.number,
            secure=_is_secure(request, over_tls),
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
            local_contact=local_contact,
        )

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def __repr__(self) -> str:
        return (
            f"<Dialog {self.state.name} {self.call_id} {self.local_tag}/{self.remote_tag}"
            f" target={self.remote_target}>"
        )

    # -- state changes --------------------------------------------------------------
    def confirm(self) -> None:
        """EARLY -> CONFIRMED; the UAS calls this when it sends its 2xx."""
        if self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    @property
    def is_terminated(self) -> bool:
        return self.state is DialogState.TERMINATED

    # -- requests we send -------------------------------------------------------------
    def next_hop(self) -> Uri:
        """Where a request of this dialog goes first; transports resolve it (RFC 3263)."""
        if self.route_set:
            return self.route_set[0].uri
        return self.remote_target

    def create_request(
        self,
        method: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        via: str | None = None,
        max_forwards: int = 70,
    ) -> Request:
        """The next request of this dialog (§12.2.1.1); bumps the CSeq but for ACK/CANCEL.

        ``via`` is a full Via value; without it the stack adds one when it sends.
        """
        if self.state is DialogState.TERMINATED:
            raise LocalProtocolError(f"cannot send {method} in a terminated dialog")
        if method in _NO_INCREMENT:
            number = self.local_cseq
        else:
            number = self.local_cseq + 1
            if number > MAX_CSEQ:
                raise LocalProtocolError("local CSeq exhausted (2**31-1)")
            self.local_cseq = number
        return self._build(method, number, headers, body, via, max_forwards)

    def create_ack(
        self,
        invite_cseq: int,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        via: str | None = None,
        max_forwards: int = 70,
    ) -> Request:
        """The ACK of a 2xx to the INVITE that carried CSeq ``invite_cseq`` (§13.2.2.4).

        Allowed in any state: a 2xx must be acknowledged even when a BYE follows at once.
        """
        return self._build("ACK", invite_cseq, headers, body, via, max_forwards)

    def _build(
        self,
        method: str,
        number: int,
        extra: Iterable[tuple[str, str]],
        body: bytes,
        via: str | None,
        max_forwards: int,
    ) -> Request:
        out: list[tuple[str, str]] = []
        if via is not None:
            out.append(("Via", via))
        out.append(("Max-Forwards", str(max_forwards)))
        routes = self.route_set
        uri: Uri
        if not routes:
            uri = self.remote_target
        elif _is_loose(routes[0]):
            uri = self.remote_target
            out.extend(("Route", str(route)) for route in routes)
        else:
            # §12.2.1.1: a strict router expects to be the Request-URI; the real target
            # travels as the last Route so that it gets there in the end.
            uri = _as_request_uri(routes[0].uri)
            out.extend(("Route", str(route)) for route in routes[1:])
            out.append(("Route", f"<{self.remote_target}>"))
        out.append(("From", str(self.local_uri.with_tag(self.local_tag))))
        remote = self.remote_uri.with_tag(self.remote_tag) if self.remote_tag else self.remote_uri
        out.append(("To", str(remote)))
        out.append(("Call-ID", self.call_id))
        out.append(("CSeq", f"{number} {method}"))
        if self.local_contact is not None:
            out.append(("Contact", self.local_contact))
        out.extend(extra)
        return Request.create(method, uri, out, body)

    # -- messages we receive ----------------------------------------------------------
    def receive_request(self, request: Request) -> bool:
        """Account for a request received in this dialog (§12.2.2).

        False means out of order (CSeq lower than the last one): answer 500 and do not act
        on it. A target refresh with a bad Contact raises :class:`SipParseError` (400)
        and changes nothing.
        """
        number = request.cseq.number
        remote = self.remote_cseq
        if remote is not None and number < remote:
            return False
        method = request.method
        target = None
        if method in TARGET_REFRESH:
            target = _refreshed_target(request, f"{method} request")
        self.remote_cseq = number
        if target is not None:
            self.remote_target = target
        if method == "BYE":
            self.state = DialogState.TERMINATED
        elif method == "ACK":
            self.confirm()
        return True

    def receive_response(self, request: Request, response: Response) -> None:
        """Account for the ``response`` to ``request``, a request we sent in this dialog."""
        if self.state is DialogState.TERMINATED:
            return
        status = response.status
        method = request.method
        if method == "CANCEL" or status == 100:
            return
        if status >= 300:
            if status in _DIALOG_ENDING or method == "BYE":
                self.state = DialogState.TERMINATED
            elif method == "INVITE" and self.state is DialogState.EARLY:
                # The initial INVITE failed: its early dialogs die with it (§13.2.2.3).
                self.state = DialogState.TERMINATED
            return
        if method == "BYE":
            if status >= 200:
                self.state = DialogState.TERMINATED
            return
        if (response.to.tag or "") != self.remote_tag:
            raise LocalProtocolError(
                "response from another dialog (a fork?); build it with Dialog.as_uac"
            )
        if method == "INVITE" and self.state is DialogState.EARLY:
            # Responses to the initial INVITE: route set and target follow the latest
            # one until the 2xx fixes them (§12.1.2, §13.2.2.4).
            what = f"{status} response"
            target = _target(response, what) if status >= 200 else _refreshed_target(response, what)
            self.route_set = tuple(reversed(response.record_routes))
            if target is not None:
                self.remote_target = target
            if status >= 200:
                self.state = DialogState.CONFIRMED
            return
        if status >= 200 and method in TARGET_REFRESH:
            target = _refreshed_target(response, f"{status} response")
            if target is not None:
                self.remote_target = target
