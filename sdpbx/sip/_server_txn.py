"""The server half of the transaction layer: INVITE (§17.2.1) and non-INVITE (§17.2.2)."""

from __future__ import annotations

from typing import Any, TypeAlias

from attrs import frozen

from ._txn_core import (
    ACCEPTED,
    COMPLETED,
    CONFIRMED,
    PROCEEDING,
    TERMINATED,
    TRYING,
    LayerCore,
    Transaction,
    TransactionTimeout,
    _Entry,
)
from .errors import LocalProtocolError, SipParseError
from .headers import Headers
from .ids import BRANCH_COOKIE
from .message import Request, Response, make_response, parse_message


class ServerTransaction(Transaction):
    """A request we received, and the responses the TU gives it (§17.2)."""

    __slots__ = ("_ack_keys", "_t_100", "_unacked", "_wire", "response_destination", "source")

    def __init__(
        self,
        layer: LayerCore,
        key: tuple[Any, ...],
        request: Request,
        reliable: bool,
        source: object,
        response_destination: object,
    ) -> None:
        super().__init__(layer, key, request, reliable)
        self.source = source
        self.response_destination = response_destination
        self._t_100: _Entry | None = None
        #: Extra keys: in the ACK index (ACCEPTED) or the request index (RFC 2543 ACK).
        self._ack_keys: list[tuple[Any, ...]] = []
        #: ACCEPTED: the 2xx still waiting for their ACK, by To tag.
        self._unacked: dict[str | None, Response] = {}
        #: Released (see :func:`_release`): the final response as sent, all that is kept of it.
        self._wire: bytes | None = None

    def _last_bytes(self) -> bytes:
        wire = self._wire
        if wire is not None:
            return wire
        last = self._last
        assert last is not None
        return bytes(last)

    def _reread(self) -> Response | None:
        """Read the final back from the bytes sent: only a TU asking late pays for it."""
        wire = self._wire
        if wire is None:
            return None
        try:
            message = parse_message(wire)
        except SipParseError:
            message = None  # a TU's header the parser refuses: the status is still true
        if not isinstance(message, Response):
            status = int(wire[8:11])
            reason = wire[12:].split(b"\r\n", 1)[0].decode(errors="replace")
            return Response(status, reason, Headers(()), raw=wire)
        return message

    def _forget(self, core: LayerCore) -> None:
        core._disarm(self._t_100)
        self._t_100 = None
        server = core._server
        if server.get(self.key) is self:
            del server[self.key]
        acks = core._acks
        for key in self._ack_keys:
            if acks.get(key) is self:
                del acks[key]
            elif server.get(key) is self:
                del server[key]
        self._ack_keys.clear()
        self._unacked.clear()
        core._live_servers -= 1

    def _fire(self, core: LayerCore, name: str, now: float) -> None:
        timers = core.timers
        if name == "100":
            self._t_100 = None
            trying = make_response(self.request, 100)
            self.last_response = trying
            core._out.append((bytes(trying), self.response_destination))
        elif name == "G":
            core._out.append((self._last_bytes(), self.response_destination))
            self._interval = min(2 * self._interval, timers.t2)
            self._t_retx = core._arm(self, "G", now + self._interval)
        elif name == "2xx":
            dest = self.response_destination
            core._out.extend((bytes(r), dest) for r in self._unacked.values())
            self._interval = min(2 * self._interval, timers.t2)
            self._t_retx = core._arm(self, "2xx", now + self._interval)
        elif name == "H" or (name == "L" and self._unacked):
            self._t_end = None
            core._events.append(TransactionTimeout(self))
            core._terminate(self)
        else:  # I, J, L after every ACK
            self._t_end = None
            core._terminate(self)


@frozen(eq=False)
class NewTransaction:
    """A new request: the TU must answer it through :meth:`TransactionLayer.respond`."""

    transaction: ServerTransaction


@frozen
class Retransmission:
    """Absorbed by the layer (a retransmission, or the ACK of a non-2xx); nothing to do."""


@frozen(eq=False)
class AckForInvite:
    """The ACK of a 2xx this INVITE server transaction sent (first copy per To tag only)."""

    transaction: ServerTransaction
    request: Request


@frozen(eq=False)
class StrayAck:
    """An ACK that matches no transaction; a proxy forwards it, a UAS drops it."""

    request: Request


RequestOutcome: TypeAlias = NewTransaction | Retransmission | AckForInvite | StrayAck

_ABSORBED = Retransmission()


class ServerSide(LayerCore):
    """The layer's server operations; :class:`~.transaction.TransactionLayer` mixes them in."""

    def receive_request(
        self,
        request: Request,
        *,
        source: object,
        response_destination: object,
        reliable: bool,
        now: float,
    ) -> RequestOutcome:
        """Match ``request`` to a server transaction or start one (§17.2.3)."""
        top = request.top_via
        method = request.method
        branch = top.branch
        key: tuple[Any, ...]
        if branch is not None and len(branch) > 7 and branch.startswith(BRANCH_COOKIE):
            key = (branch, top.sent_by.lower(), "INVITE" if method == "ACK" else method)
        else:
            key = self._key_2543(request, request.to.tag, method)
        txn = self._server.get(key)
        if method == "ACK":
            return self._receive_ack(txn, request, now)
        if txn is not None:
            if txn.state is not CONFIRMED and (txn._last is not None or txn._wire is not None):
                self._out.append((txn._last_bytes(), txn.response_destination))
            return _ABSORBED
        txn = ServerTransaction(self, key, request, reliable, source, response_destination)
        self._server[key] = txn
        self._live_servers += 1
        if txn.is_invite:
            txn.state = PROCEEDING
            txn._t_100 = self._arm(txn, "100", now + self.timers.trying_delay)
        else:
            txn.state = TRYING
        return NewTransaction(txn)

    @staticmethod
    def _key_2543(request: Request, to_tag: str | None, method: str) -> tuple[Any, ...]:
        """§17.2.3 for peers without the magic cookie: compare the request's identity."""
        return (
            "2543",
            str(request.uri),
            to_tag,
            request.from_.tag,
            request.call_id,
            request.cseq.number,
            method,
            str(request.top_via),
        )

    def _receive_ack(
        self, txn: ServerTransaction | None, request: Request, now: float
    ) -> RequestOutcome:
        if txn is not None and txn.is_invite:
            state = txn.state
            if state is COMPLETED:
                # The ACK of our non-2xx: stop G and H, absorb ACK copies for Timer I.
                self._disarm(txn._t_retx)
                self._disarm(txn._t_end)
                txn._t_retx = None
                txn.state = CONFIRMED
                if txn.reliable:
                    txn._t_end = None
                    self._terminate(txn)
                else:
                    txn._t_end = self._arm(txn, "I", now + self.timers.timer_i)
                return _ABSORBED
            if state is CONFIRMED:
                return _ABSORBED
        ack_key = (request.call_id, request.cseq.number, request.from_.tag, request.to.tag)
        invite = self._acks.get(ack_key)
        if invite is None:
            return StrayAck(request)
        if invite._unacked.pop(ack_key[3], None) is None:
            return _ABSORBED  # a copy of an ACK already reported
        if not invite._unacked:
            self._disarm(invite._t_retx)
            invite._t_retx = None
        return AckForInvite(invite, request)

    def find_invite_for_cancel(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL cancels (§9.2), or None."""
        top = cancel.top_via
        branch = top.branch
        key: tuple[Any, ...]
        if branch is not None and len(branch) > 7 and branch.startswith(BRANCH_COOKIE):
            key = (branch, top.sent_by.lower(), "INVITE")
        else:
            key = self._key_2543(cancel, cancel.to.tag, "INVITE")
        txn = self._server.get(key)
        return txn if txn is not None and txn.state is not TERMINATED else None

    def respond(self, transaction: ServerTransaction, response: Response, *, now: float) -> None:
        """Send the TU's response on ``transaction`` and move its machine (§17.2.1, §17.2.2)."""
        txn = transaction
        if txn._layer is not self:
            raise LocalProtocolError("this transaction belongs to another layer")
        status = response.status
        if not 100 <= status <= 699:
            raise LocalProtocolError(f"status {status} out of range")
        if response.cseq.method != txn.method:
            raise LocalProtocolError(f"a {response.cseq.method} response on a {txn.method}")
        state = txn.state
        timers = self.timers
        if txn.is_invite:
            if state is PROCEEDING:
                self._disarm(txn._t_100)
                txn._t_100 = None
                self._disarm(txn._t_end)  # an abandon() changed its mind
                txn._t_end = None
                txn.last_response = response
                self._out.append((bytes(response), txn.response_destination))
                if status < 200:
                    return
                if status < 300:
                    txn.state = ACCEPTED
                    txn._t_end = self._arm(txn, "L", now + timers.timer_l)
                    self._accept_2xx(txn, response, now)
                    return
                txn.state = COMPLETED
                if not txn.reliable:
                    txn._interval = timers.t1
                    txn._t_retx = self._arm(txn, "G", now + timers.t1)
                txn._t_end = self._arm(txn, "H", now + timers.timer_h)
                if len(txn.key) != 3:  # RFC 2543 peer: its ACK carries our To tag
                    ack_key = self._key_2543(txn.request, response.to.tag, "ACK")
                    self._server[ack_key] = txn
                    txn._ack_keys.append(ack_key)
                _release(txn)
                return
            if state is ACCEPTED and 200 <= status < 300:
                # RFC 6026 §7.1: further 2xx (a proxy relaying forks) go out too.
                txn.last_response = response
                self._out.append((bytes(response), txn.response_destination))
                self._accept_2xx(txn, response, now)
                return
        elif state is TRYING or state is PROCEEDING:
            self._disarm(txn._t_end)  # an abandon() changed its mind
            txn._t_end = None
            txn.last_response = response
            self._out.append((bytes(response), txn.response_destination))
            if status < 200:
                txn.state = PROCEEDING
                return
            txn.state = COMPLETED
            if txn.reliable:
                self._terminate(txn)
            else:
                txn._t_end = self._arm(txn, "J", now + timers.timer_j)
                _release(txn)
            return
        raise LocalProtocolError(f"cannot send {status} on {txn!r}")

    def respond_stateless(self, transaction: ServerTransaction, response: Response) -> None:
        """Send one final response, then forget ``transaction`` at once (no Timer G, J, H).

        What Kamailio's ``sl_send_reply`` does for challenges and rejections: a 407 that
        an attacker's forged source would get retransmitted eleven times costs one datagram
        and no state. The request's retransmissions start new transactions and get the same
        one cheap answer.
        """
        txn = transaction
        if txn._layer is not self:
            raise LocalProtocolError("this transaction belongs to another layer")
        if not 200 <= response.status <= 699:
            raise LocalProtocolError(f"a stateless response must be final, not {response.status}")
        if response.cseq.method != txn.method:
            raise LocalProtocolError(f"a {response.cseq.method} response on a {txn.method}")
        if txn.state is not PROCEEDING and txn.state is not TRYING:
            raise LocalProtocolError(f"cannot send {response.status} on {txn!r}")
        txn.last_response = response
        self._out.append((bytes(response), txn.response_destination))
        self._terminate(txn)

    def forget(self, transaction: Transaction) -> None:
        """Drop ``transaction`` (server or client) now, whatever its state: indexes,
        timers, nothing sent; the TU gets a TransactionTerminated.

        The boundary a TU (or the stack) uses when it cannot answer through the
        transaction; idempotent, so an error path may call it without checking.
        """
        if transaction._layer is self:
            self._terminate(transaction)

    def abandon(self, transaction: ServerTransaction, *, now: float) -> None:
        """Never answer ``transaction`` (a request judged to be spam).

        The transaction stays for 64*T1 absorbing retransmissions in silence,
        so the TU is not asked again, then ends without a response.
        """
        txn = transaction
        if txn._layer is not self or (txn.state is not PROCEEDING and txn.state is not TRYING):
            raise LocalProtocolError(f"cannot abandon {txn!r}")
        self._disarm(txn._t_100)
        txn._t_100 = None
        self._disarm(txn._t_end)
        txn._t_end = self._arm(txn, "J", now + self.timers.timer_j)
        if not txn.is_invite:
            # An INVITE keeps its context: a CANCEL must still find the (silent) call.
            _release(txn)

    def _accept_2xx(self, txn: ServerTransaction, response: Response, now: float) -> None:
        tag = response.to.tag
        if tag in txn._unacked:
            txn._unacked[tag] = response
            return
        request = txn.request
        ack_key = (request.call_id, request.cseq.number, request.from_.tag, tag)
        if ack_key in self._acks:  # the same 2xx sent again by the TU: already indexed
            return
        self._acks[ack_key] = txn
        txn._ack_keys.append(ack_key)
        txn._unacked[tag] = response
        if not txn.reliable and txn._t_retx is None:
            txn._interval = self.timers.t1
            txn._t_retx = self._arm(txn, "2xx", now + self.timers.t1)


def _release(txn: ServerTransaction) -> None:
    """Keep only what answering retransmissions needs: key, last response, destination.

    Called when a final response moves a machine to COMPLETED (non-INVITE waiting for
    Timer J, INVITE waiting for its ACK and Timer I) and when a non-INVITE is abandoned.
    The TU's context (the stack's IncomingRequest, the handler's state) goes too: nothing
    the TU holds is needed to absorb a copy of the request.
    """
    last = txn._last
    if last is not None:
        txn._wire = bytes(last)
        txn._last = None
    txn._request = None
    txn.context = None
