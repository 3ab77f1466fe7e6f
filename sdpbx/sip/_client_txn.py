"""The client half of the transaction layer: INVITE (§17.1.1) and non-INVITE (§17.1.2)."""

from __future__ import annotations

from typing import Any

from attrs import frozen

from ._txn_core import (
    ACCEPTED,
    CALLING,
    COMPLETED,
    PROCEEDING,
    TRYING,
    LayerCore,
    Transaction,
    TransactionTimeout,
)
from .errors import LocalProtocolError
from .headers import canonical_key, split_commas
from .ids import BRANCH_COOKIE
from .message import Request, Response


class ClientTransaction(Transaction):
    """A request we sent, and the responses that came back (§17.1)."""

    __slots__ = ("_acks", "_cancel_at", "_request_bytes", "destination")

    def __init__(
        self,
        layer: LayerCore,
        key: tuple[Any, ...],
        request: Request,
        reliable: bool,
        destination: object,
    ) -> None:
        super().__init__(layer, key, request, reliable)
        self.destination = destination
        self._request_bytes = bytes(request)
        #: The ACK (bytes, destination) for each 2xx To tag (ACCEPTED) or for the non-2xx
        #: final (COMPLETED, key None); resent when that final response comes again.
        self._acks: dict[str | None, tuple[bytes, object]] | None = None
        #: §9.1: when a CANCELled INVITE is destroyed if no final response came.
        self._cancel_at: float | None = None

    def set_ack(self, ack: Request, destination: object) -> None:
        """Send the TU's ACK for a 2xx now, and again whenever that 2xx is retransmitted.

        The ACK of a 2xx belongs to the TU (it may carry the answer SDP), but the 2xx keeps
        coming until the UAS sees it; storing it here spares the TU a second code path. A 2xx
        from another fork (another To tag) still reaches the TU as a ResponseReceived.
        """
        if not self.is_invite or self.state is not ACCEPTED:
            raise LocalProtocolError(f"set_ack() needs an INVITE in ACCEPTED, not {self!r}")
        if ack.method != "ACK":
            raise LocalProtocolError(f"set_ack() given a {ack.method}")
        data = bytes(ack)
        if self._acks is None:
            self._acks = {}
        self._acks[ack.to.tag] = (data, destination)
        self._layer._out.append((data, destination))

    def _forget(self, core: LayerCore) -> None:
        if core._client.get(self.key) is self:
            del core._client[self.key]

    def _fire(self, core: LayerCore, name: str, now: float) -> None:
        if name == "A" or name == "E":
            core._out.append((self._request_bytes, self.destination))
            if name == "A":
                self._interval *= 2
            elif self.state is PROCEEDING:
                self._interval = core.timers.t2
            else:
                self._interval = min(2 * self._interval, core.timers.t2)
            self._t_retx = core._arm(self, name, now + self._interval)
            return
        self._t_end = None
        if name == "B" or name == "F":
            core._events.append(TransactionTimeout(self))
        core._terminate(self)  # B, F, D, K, M


@frozen(eq=False)
class ResponseReceived:
    """A response the TU must see (retransmissions and absorbed responses never come here)."""

    transaction: ClientTransaction
    response: Response


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final response, as §17.1.1.3 builds it.

    Same Request-URI, Call-ID, From and CSeq number as the INVITE, the INVITE's top Via only
    (so the same branch), its Route headers, and the To of the response (with its tag).
    """
    headers = invite.headers
    items: list[tuple[str, str]] = [("Via", split_commas(headers.get("via") or "")[0])]
    items.extend(("Route", value) for name, value in headers if canonical_key(name) == "route")
    items.append(("Max-Forwards", "70"))
    items.append(("From", headers.get("from") or ""))
    items.append(("To", response.headers.get("to") or ""))
    items.append(("Call-ID", invite.call_id))
    items.append(("CSeq", f"{invite.cseq.number} ACK"))
    return Request.create("ACK", invite.uri, items)


def build_cancel(invite: Request) -> Request:
    """The CANCEL of a pending INVITE, as §9.1 builds it.

    Same Request-URI, Call-ID, From, To (no tag of the response: the CANCEL is for
    every early dialog) and CSeq number as the INVITE, its top Via only (the same
    branch pairs the two at the far end) and its Route headers. Send it only once
    a provisional response has arrived (§9.1).
    """
    headers = invite.headers
    items: list[tuple[str, str]] = [("Via", split_commas(headers.get("via") or "")[0])]
    items.extend(("Route", value) for name, value in headers if canonical_key(name) == "route")
    items.append(("Max-Forwards", "70"))
    items.append(("From", headers.get("from") or ""))
    items.append(("To", headers.get("to") or ""))
    items.append(("Call-ID", invite.call_id))
    items.append(("CSeq", f"{invite.cseq.number} CANCEL"))
    return Request.create("CANCEL", invite.uri, items)


class ClientSide(LayerCore):
    """The layer's client operations; :class:`~.transaction.TransactionLayer` mixes them in."""

    def create_client(
        self, request: Request, *, destination: object, reliable: bool, now: float
    ) -> ClientTransaction:
        """Start a client transaction and queue the request (§17.1.1.2, §17.1.2.2)."""
        method = request.method
        if method == "ACK":
            raise LocalProtocolError("an ACK is not a transaction: use send_stateless()")
        branch = request.top_via.branch
        if branch is None or len(branch) <= 7 or not branch.startswith(BRANCH_COOKIE):
            raise LocalProtocolError(f"the top Via needs a z9hG4bK branch, not {branch!r}")
        key = (branch, method)
        if key in self._client:
            raise LocalProtocolError(f"a {method} transaction with branch {branch} exists")
        if method == "CANCEL":
            self._cancelling(self._client.get((branch, "INVITE")), now)
        txn = ClientTransaction(self, key, request, reliable, destination)
        self._client[key] = txn
        self._out.append((txn._request_bytes, destination))
        timers = self.timers
        txn._interval = timers.t1
        if txn.is_invite:
            txn.state = CALLING
            if not reliable:
                txn._t_retx = self._arm(txn, "A", now + timers.t1)
            txn._t_end = self._arm(txn, "B", now + timers.timer_b)
        else:
            txn.state = TRYING
            if not reliable:
                txn._t_retx = self._arm(txn, "E", now + timers.t1)
            txn._t_end = self._arm(txn, "F", now + timers.timer_f)
        return txn

    def _cancelling(self, invite: ClientTransaction | None, now: float) -> None:
        """§9.1: a CANCELled INVITE with no final response 64*T1 later is destroyed.

        In PROCEEDING no timer runs (a callee that rang and went silent would
        keep the transaction forever); the deadline reports as a timeout.
        """
        if invite is None or (invite.state is not CALLING and invite.state is not PROCEEDING):
            return
        at = now + self.timers.timer_b
        invite._cancel_at = at
        if invite._t_end is None:
            invite._t_end = self._arm(invite, "B", at)

    def receive_response(self, response: Response, *, now: float) -> ClientTransaction | None:
        """Match ``response`` (§17.1.3) and run its client machine.

        Returns the matched transaction (also when the response was absorbed), or None for a
        stray response the TU may still want (a 2xx retransmitted after Timer M).
        """
        branch = response.top_via.branch
        if branch is None:
            return None
        txn = self._client.get((branch, response.cseq.method))
        if txn is None:
            return None
        status = response.status
        state = txn.state
        if state is CALLING or state is PROCEEDING or state is TRYING:
            txn.last_response = response
            if status < 200:
                if state is not PROCEEDING:
                    txn.state = PROCEEDING
                    if txn.is_invite:  # §17.1.1.2: Timers A and B stop in PROCEEDING
                        self._disarm(txn._t_retx)
                        self._disarm(txn._t_end)
                        txn._t_retx = txn._t_end = None
                        if txn._cancel_at is not None:
                            txn._t_end = self._arm(txn, "B", txn._cancel_at)
                self._events.append(ResponseReceived(txn, response))
                return txn
            self._disarm(txn._t_retx)
            self._disarm(txn._t_end)
            txn._t_retx = txn._t_end = None
            self._events.append(ResponseReceived(txn, response))
            timers = self.timers
            if not txn.is_invite:
                txn.state = COMPLETED
                if txn.reliable:
                    self._terminate(txn)
                else:
                    txn._t_end = self._arm(txn, "K", now + timers.timer_k)
                    _release(txn)
            elif status < 300:
                txn.state = ACCEPTED
                txn._t_end = self._arm(txn, "M", now + timers.timer_m)
            else:
                txn.state = COMPLETED
                ack = (bytes(build_ack(txn.request, response)), txn.destination)
                txn._acks = {None: ack}
                self._out.append(ack)
                if txn.reliable:
                    self._terminate(txn)
                else:
                    txn._t_end = self._arm(txn, "D", now + timers.timer_d)
                    _release(txn)
        elif state is COMPLETED:
            if txn.is_invite and status >= 300 and txn._acks:
                self._out.append(txn._acks[None])
        elif state is ACCEPTED and 200 <= status < 300:
            acks = txn._acks
            stored = acks.get(response.to.tag) if acks else None
            if stored is not None:
                self._out.append(stored)
            else:
                self._events.append(ResponseReceived(txn, response))
        return txn


def _release(txn: ClientTransaction) -> None:
    """COMPLETED (Timer K or D running): nothing is retransmitted any more, so the
    request and its bytes go; the ACK of a non-2xx is kept in ``_acks``.

    ``context`` stays: the final response is still to be delivered through it, and the
    stack detaches its handle once it has (see ``SipStack._flush``).
    """
    txn._request = None
    txn._request_bytes = b""
