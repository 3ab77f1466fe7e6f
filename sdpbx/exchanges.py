"""One request as the transaction user sees it: received (to answer) or sent (to await).

:class:`IncomingRequest` carries a request, where it came from and the means
to answer it; :class:`ClientRequest` is a request sent through a client
transaction, iterated for its responses. Both are thin handles on a
:class:`~sdpbx.stack.SipStack`, which owns the transactions behind them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, cast

import anyio

from .errors import TransactionClosed, TransactionTimedOut
from .sip import Request, Response, make_response, new_tag
from .sip.transaction import ClientTransaction, ServerTransaction
from .transport.base import Peer

if TYPE_CHECKING:
    from .stack import SipStack

__all__ = ["ClientRequest", "IncomingRequest", "TransactionClosed", "TransactionTimedOut"]

log = logging.getLogger("sdpbx.stack")

#: Responses buffered per client request before provisionals are dropped.
_MAX_BUFFERED = 32


class IncomingRequest:
    """A request delivered to the transaction user, with the means to answer it.

    ``transaction`` is ``None`` for an ACK (ACKs have no server transaction):
    :attr:`ack_for` then names the INVITE transaction it acknowledges, if any.
    """

    __slots__ = ("_stack", "_to_tag", "ack_for", "owner", "peer", "request", "transaction")

    def __init__(
        self,
        stack: SipStack,
        request: Request,
        peer: Peer,
        transaction: ServerTransaction | None,
        ack_for: ServerTransaction | None = None,
    ) -> None:
        self._stack = stack
        self.request = request
        self.peer = peer
        self.transaction = transaction
        self.ack_for = ack_for
        self._to_tag: str | None = None
        #: Free for the transaction user (the proxy keeps the call here).
        self.owner: object | None = None

    @property
    def stack(self) -> SipStack:
        """The stack the request arrived on (for its Contact, its transports)."""
        return self._stack

    @property
    def to_tag(self) -> str:
        """Our To tag for every response to this request (one per UAS dialog)."""
        tag = self.request.to.tag
        if tag is not None:
            return tag
        if self._to_tag is None:
            self._to_tag = new_tag()
        return self._to_tag

    @property
    def answered(self) -> bool:
        txn = self.transaction
        return txn is None or (txn.last_response is not None and txn.last_response.status >= 200)

    def respond(
        self,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        to_tag: str | None = None,
    ) -> Response:
        """Build and send a response (To tag added, Via/From/Call-ID/CSeq copied).

        ``to_tag`` overrides this request's own tag: the 200 to a CANCEL
        carries the tag of the INVITE's responses (RFC 3261 §9.2).
        """
        response = self._build(status, reason, headers, body, to_tag)
        self.send(response)
        return response

    def respond_stateless(
        self,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """Answer once with a final response and keep nothing (anti-amplification).

        Built like :meth:`respond`, sent once without retransmissions, and the
        server transaction is forgotten at once: a retransmitted request is then
        a new one and gets the same cheap answer. For challenges (401/407) and
        rejections to unauthenticated sources, as Kamailio answers them.
        """
        txn = self.transaction
        if txn is None:
            raise RuntimeError("an ACK cannot be answered")
        response = self._build(status, reason, headers, body, None)
        self._stack.respond_stateless(txn, response)
        return response

    def _build(
        self,
        status: int,
        reason: str | None,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        to_tag: str | None,
    ) -> Response:
        extra = list(headers)
        if self._stack.user_agent:
            extra.append(("Server", self._stack.user_agent))
        return make_response(
            self.request, status, reason, to_tag=to_tag or self.to_tag, headers=extra, body=body
        )

    def drop(self) -> None:
        """Never answer (spam, a blocked source): retransmissions are absorbed
        in silence and the transaction is forgotten after 64*T1."""
        if self.transaction is not None and not self.answered:
            self._stack.abandon(self.transaction)

    def cancelled_invite(self) -> IncomingRequest | None:
        """For a CANCEL: the INVITE it cancels, as its handler received it; ``None``
        when no INVITE transaction matches (answer the CANCEL 481) or when that
        INVITE is already answered and its transaction let its context go."""
        txn = self._stack.find_invite_for_cancel(self.request)
        invite = txn.context if txn is not None else None
        return invite if isinstance(invite, IncomingRequest) else None

    def discard(self) -> None:
        """Never answer and keep nothing: a retransmission is a new request.

        For a refusal that is cheap to decide again (a blocked source, a known
        scanner): unlike :meth:`drop`, no transaction waits 64*T1 to absorb
        retransmissions, so a flood from a blocked source costs no memory.
        """
        if self.transaction is not None and not self.answered:
            self._stack.forget(self.transaction)

    def send(self, response: Response) -> None:
        if self.transaction is None:
            raise RuntimeError("an ACK cannot be answered")
        self._stack.respond(self.transaction, response)


class ClientRequest:
    """One request sent through a client transaction; iterate it for the responses.

    ``async for response in client_request`` yields provisional responses and
    ends after the final one; :meth:`next_response` goes on from there (a 2xx
    of another downstream fork, or the 487 after a CANCEL). Timer B/F raises
    :class:`TransactionTimedOut`. When the transaction ends the stream ends
    *after* every response already received (over TCP the final response and
    the end arrive together); ending without a final response for another
    reason raises :class:`TransactionClosed`.
    """

    def __init__(self, stack: SipStack, transaction: ClientTransaction) -> None:
        self._stack = stack
        self.transaction = transaction
        self.request = transaction.request
        # A deque and an Event rather than a memory stream: the stream must end
        # after what is buffered, and a TU that never reads must leak nothing.
        self._queue: deque[Response | None] = deque()
        self._ended = False
        self._wakeup: anyio.Event | None = None
        self.final: Response | None = None
        self.timed_out = False

    def _deliver(self, response: Response | None) -> None:
        if self._ended:
            return
        queue = self._queue
        if len(queue) >= _MAX_BUFFERED and response is not None and response.status < 200:
            # A peer flooding provisionals: losing a 180 is harmless; finals are kept.
            log.warning("response queue full for %s, dropping %s", self.transaction, response)
            return
        queue.append(response)
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def __aiter__(self) -> AsyncIterator[Response]:
        return self._iterate()

    async def next_response(self) -> Response:
        """The next response; raises :class:`TransactionTimedOut` on Timer B/F and
        :class:`TransactionClosed` when the transaction ended otherwise.

        Unlike iteration, this can be called again after the caller was
        interrupted, e.g. to collect the 487 (or a late 2xx) after a CANCEL.
        """
        queue = self._queue
        while not queue:
            if self._ended:
                if self.timed_out:
                    raise TransactionTimedOut(self.request.method)
                raise TransactionClosed(self.request.method)
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        response = queue.popleft()
        if response is None:
            self.timed_out = True
            raise TransactionTimedOut(self.request.method)
        if response.status >= 200 and self.final is None:
            self.final = response
        return response

    async def _iterate(self) -> AsyncIterator[Response]:
        while True:
            response = await self.next_response()
            yield response
            if response.status >= 200:
                return

    async def final_response(self) -> Response:
        """Wait for and return the final response (provisionals skipped)."""
        while True:
            response = await self.next_response()
            if response.status >= 200:
                return response

    def ack(self, ack: Request, destination: Peer | None = None) -> None:
        """Send the ACK of a 2xx, and again for every retransmitted 2xx.

        An ACK without a Via gets ours with a fresh branch (RFC 3261 §13.2.2.4:
        the ACK of a 2xx is a transaction of its own), as :meth:`SipStack.send_ack`
        does; without it the far end cannot parse the ACK and hangs up at Timer H.
        """
        # The stack creates every client transaction with a Peer as its destination.
        peer = destination or cast(Peer, self.transaction.destination)
        if "via" not in ack.headers:
            via = self._stack.via_for(peer.transport)
            ack = ack.replace(headers=ack.headers.prepend("Via", via))
        self.transaction.set_ack(ack, peer)
        self._stack._flush()

    def _finish(self) -> None:
        """The transaction ended: what is buffered is still read, then the stream ends."""
        self._ended = True
        self._wake()

    def close(self) -> None:
        """The TU is done with this request: drop whatever was not read."""
        self._ended = True
        self._queue.clear()
        self._wake()
