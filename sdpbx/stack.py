"""SipStack: transports + the transaction layer + one timer task.

The stack is the I/O adapter around the sans-IO core, in the aioquic style:
after every input (a datagram, a framed stream message, a timer, a call from
the transaction user) it sends what the :class:`TransactionLayer` queued,
delivers its events and re-arms the single timer. Inbound messages are
handled synchronously inside the transport's receive loop, so a retransmission
or a response costs no task switch; only a *new* server transaction starts a
task, in which the transaction user (a :class:`RequestHandler`) may await
webhooks and databases without holding anything else up.

What the stack does on its own, as RFC 3261's "UAS core" and transport layer:

- adds ``received``/``rport`` to the top Via of every request (§18.2.1, RFC
  3581) and answers from where the request came (symmetric response routing,
  which is what phones behind NAT need);
- answers a request it cannot parse with the parser's status (400, 505, 513)
  when enough of it is readable to build a response, and drops malformed
  responses; both are logged and counted, and neither kills a task;
- answers 416 for a Request-URI of an unknown scheme and 420 for an unknown
  ``Require`` option (§8.2.2);
- answers OPTIONS with 200 when no handler takes it;
- answers 503 when more than ``max_pending`` requests are being handled, so
  overload sheds load instead of growing memory;
- answers 200 to a CANCEL of an INVITE that already has its final response
  (§9.2): that INVITE's transaction no longer holds the TU's context.

What the stack keeps once a request is answered: a transaction waiting for
Timer J, H or I keeps its key, the final response's bytes and the destination,
never the request or the :class:`IncomingRequest` (a 10 KB request flood held
32 s would otherwise cost its size per request). On the client side, a
:class:`ClientRequest` whose transaction enters COMPLETED is detached: its
stream ends after that final response, so a further ``next_response()``
raises :class:`TransactionClosed` at once instead of after Timer K or D.
Catch ``TransactionClosed`` (it includes :class:`TransactionTimedOut`) where a
TU may read past a final response (the 487 after a CANCEL is still read).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup, TaskStatus
from attrs import define

from ._memory import release_free_memory
from ._ratelog import LogLimiter
from ._stack_errors import error_response, first_line, safe_first_line
from ._stack_timer import StackTimer, TimerClient
from ._trace import WIRE, trace
from .errors import TransactionClosed, TransactionTimedOut
from .exchanges import ClientRequest, IncomingRequest
from .sip import (
    Request,
    Response,
    SipParseError,
    SipUri,
    TelUri,
    new_branch,
    parse_message,
    split_commas,
)
from .sip.fields import clear_caches
from .sip.transaction import (
    AckForInvite,
    ClientTransaction,
    NewTransaction,
    ResponseReceived,
    ServerTransaction,
    StrayAck,
    TimerConfig,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
    TransactionTimeout,
)
from .sip.uri import format_host
from .transport.base import Peer, Transport

__all__ = [
    "ClientRequest",
    "IncomingRequest",
    "RequestHandler",
    "SipStack",
    "StackStats",
    "TimerClient",
    "TransactionClosed",
    "TransactionTimedOut",
]

log = logging.getLogger("sdpbx.stack")

#: Workers kept however quiet the stack is; seconds between checks for idle
#: surplus; how many retired at once make a heap trim worth its pause.
_CORE_WORKERS = 16
_MESSAGE_FRAMED = frozenset({"WS", "WSS"})
_RETIRE_CHECK = 5.0
_TRIM_AFTER_RETIRING = 100
#: After this many messages, a check interval with fewer than _QUIET messages
#: and live transactions is the end of a surge: memos cleared, heap trimmed.
_TRIM_AFTER_MESSAGES = 5_000
_QUIET = 100

_COMPLETED = TransactionState.COMPLETED
_CONFIRMED = TransactionState.CONFIRMED

#: What we implement (in-dialog INFO/UPDATE/MESSAGE are relayed); no PRACK: RFC 3262 is not.
ALLOWED_METHODS = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, MESSAGE"


@define
class StackStats:
    """Counters for health endpoints and tests."""

    requests_received: int = 0
    responses_received: int = 0
    parse_errors: int = 0
    malformed_requests_answered: int = 0
    malformed_responses_dropped: int = 0
    stray_responses: int = 0
    overload_rejections: int = 0
    send_errors: int = 0
    handler_errors: int = 0
    #: Failures of the stack itself (a bug) caught at a message, timer or send boundary.
    internal_errors: int = 0
    timer_errors: int = 0


class RequestHandler:
    """The transaction user: override :meth:`handle_request`.

    The default answers OPTIONS with 200 and everything else with 501, which is
    what a bare stack should say. Both are sent statelessly, as Kamailio's
    ``options_reply`` does: a retransmission gets the same answer again, and a
    flood of keep-alive pings holds no transaction for Timer J.
    """

    async def handle_request(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        if request.method == "ACK":
            return
        if request.method == "OPTIONS":
            incoming.respond_stateless(
                200,
                headers=[("Allow", ALLOWED_METHODS), ("Accept", "application/sdp")],
            )
        else:
            incoming.respond_stateless(501)

    def connection_lost(self, peer: Peer) -> None:
        """A stream connection closed (registrars drop its bindings)."""


class SipStack:
    """Transports, the transaction layer and one timer task, wired together."""

    def __init__(
        self,
        transports: Sequence[Transport],
        handler: RequestHandler | None = None,
        *,
        timers: TimerConfig | None = None,
        user_agent: str | None = "sdpbx",
        advertised_host: str | None = None,
        supported: Iterable[str] = ("path", "outbound"),
        max_pending: int = 10_000,
        max_workers: int = 2_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not transports:
            raise ValueError("a SipStack needs at least one transport")
        self.transports = list(transports)
        self.handler: RequestHandler = handler or RequestHandler()
        self.layer = TransactionLayer(timers or TimerConfig())
        self.user_agent = user_agent
        self.advertised_host = advertised_host
        self.supported = frozenset(s.lower() for s in supported)
        self.max_pending = max_pending
        self.max_workers = max_workers
        self.clock = clock
        self.stats = StackStats()
        self._pending = 0
        # Requests wait in a bounded queue for a pool of worker tasks that
        # grows on demand (up to max_workers) and stays while it is used: a
        # steady load creates no task per request, and a handler that awaits a
        # slow webhook holds up only its own worker. After a surge the idle
        # surplus is retired (a ``None`` in the queue ends one worker), so the
        # memory of thousands of parked tasks comes back.
        self._work_send, self._work_receive = anyio.create_memory_object_stream[
            IncomingRequest | None
        ](max_pending)
        self._clients: set[ClientRequest] = set()
        self._workers = 0
        self._idle = 0
        self._queued = 0
        #: Seconds between checks for idle workers to retire.
        self.retire_check = _RETIRE_CHECK
        self._logs = _StackLogs()
        self._tg: TaskGroup | None = None
        self.timer = StackTimer(self.layer, clock, self.stats, self._flush)
        self._by_name: dict[str, list[Transport]] = {}
        for transport in self.transports:
            self._by_name.setdefault(transport.name, []).append(transport)

    # -- lifecycle -----------------------------------------------------------
    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind every transport, report readiness, then run until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for transport in self.transports:
                await tg.start(transport.serve, self)
            tg.start_soon(self.timer.run)
            tg.start_soon(self._retire_idle_workers)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()
                self._work_send.close()
                self._work_receive.close()
                for client in self._clients:
                    client._finish()
                self._clients.clear()

    def add_timer_client(self, client: TimerClient, clock: Callable[[], float] = time.time) -> None:
        """Share the timer task with another sans-IO object (e.g. the locator).

        ``clock`` is the time base the client's deadlines are in (wall clock
        for bindings that survive restarts, monotonic for transactions).
        """
        self.timer.add_client(client, clock)

    def transport_for(self, peer: Peer) -> Transport:
        """The transport that sends to ``peer`` (same protocol and address family)."""
        candidates = self._by_name.get(peer.transport)
        if not candidates:
            raise OSError(f"no {peer.transport} transport configured")
        if len(candidates) > 1:
            v6 = ":" in peer.host
            for transport in candidates:
                if (":" in transport.local_host) == v6:
                    return transport
        return candidates[0]

    def via_for(self, transport_name: str, branch: str | None = None) -> str:
        """A Via value naming us on that transport, with a fresh branch."""
        candidates = self._by_name.get(transport_name) or self.transports
        transport = candidates[0]
        host = self.advertised_host or transport.local_host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return (
            f"SIP/2.0/{transport_name} {format_host(host)}:{transport.local_port}"
            f";branch={branch or new_branch()};rport"
        )

    def contact_for(self, transport_name: str, user: str | None = None) -> str:
        """A Contact URI reaching us over that transport."""
        candidates = self._by_name.get(transport_name) or self.transports
        transport = candidates[0]
        host = self.advertised_host or transport.local_host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        userinfo = f"{user}@" if user else ""
        param = "" if transport_name == "UDP" else f";transport={transport_name.lower()}"
        return f"<sip:{userinfo}{format_host(host)}:{transport.local_port}{param}>"

    # -- the transaction user's API -------------------------------------------
    def respond(self, transaction: ServerTransaction, response: Response) -> None:
        self.layer.respond(transaction, response, now=self.clock())
        self._flush()

    def respond_stateless(self, transaction: ServerTransaction, response: Response) -> None:
        """Send one final response and forget the transaction (see IncomingRequest)."""
        self.layer.respond_stateless(transaction, response)
        self._flush()

    def forget(self, transaction: ServerTransaction) -> None:
        """Leave a request unanswered and keep nothing (see IncomingRequest.discard)."""
        self.layer.forget(transaction)

    def abandon(self, transaction: ServerTransaction) -> None:
        """Leave a request unanswered for good (spam): retransmissions are absorbed."""
        self.layer.abandon(transaction, now=self.clock())

    def send_request(self, request: Request, destination: Peer) -> ClientRequest:
        """Start a client transaction; iterate the result for responses.

        A request without a Via gets ours (with a fresh branch) first.
        """
        if "via" not in request.headers:
            request = request.replace(
                headers=request.headers.prepend("Via", self.via_for(destination.transport))
            )
        transport = self.transport_for(destination)
        txn = self.layer.create_client(
            request, destination=destination, reliable=transport.reliable, now=self.clock()
        )
        client = ClientRequest(self, txn)
        txn.context = client
        self._clients.add(client)
        self._flush()
        return client

    def send_ack(self, ack: Request, destination: Peer) -> None:
        """Send an ACK for a 2xx statelessly (it has no transaction of its own)."""
        if "via" not in ack.headers:
            ack = ack.replace(
                headers=ack.headers.prepend("Via", self.via_for(destination.transport))
            )
        self._send(bytes(ack), destination)

    def send_stateless(self, message: Request | Response, destination: Peer) -> None:
        """Send without a transaction (a proxy relaying a stray ACK or 2xx)."""
        self._send(bytes(message), destination)

    def find_invite_for_cancel(self, cancel: Request) -> ServerTransaction | None:
        return self.layer.find_invite_for_cancel(cancel)

    @asynccontextmanager
    async def request(self, request: Request, destination: Peer) -> AsyncIterator[ClientRequest]:
        """``async with stack.request(req, peer) as responses:`` closes on exit."""
        client = self.send_request(request, destination)
        try:
            yield client
        finally:
            client.close()

    # -- TransportHandler -----------------------------------------------------
    def message_received(self, data: bytes, peer: Peer) -> None:
        """The boundary of one inbound message: nothing raised here reaches a transport."""
        try:
            if WIRE.isEnabledFor(logging.DEBUG):
                trace("recv", data, peer)
            try:
                # A datagram or a WebSocket message is one whole SIP message, so
                # Content-Length may be absent (RFC 7118 §5); a TCP stream needs it.
                framed = peer.connection_id is None or peer.transport in _MESSAGE_FRAMED
                message = parse_message(data, datagram=framed)
                if isinstance(message, Request):
                    self.stats.requests_received += 1
                    self._request_received(message, peer)
                else:
                    self.stats.responses_received += 1
                    self._response_received(message)
            except SipParseError as exc:
                # Malformed at once, or a header nobody read during parsing.
                self.stats.parse_errors += 1
                self._answer_malformed(data, peer, exc.status, exc.reason)
            except Exception as exc:
                self.stats.internal_errors += 1
                self._logs.internal.error(
                    "error handling %r from %s", first_line(data), peer.address, exc=exc
                )
                self._answer_malformed(data, peer, 500, "Server Internal Error")
            self._flush()
        except Exception as exc:  # the last resort: an error path failed too
            self.stats.internal_errors += 1
            self._logs.internal.error(
                "unhandled error on %r from %s", first_line(data), peer.address, exc=exc
            )

    def connection_lost(self, peer: Peer) -> None:
        try:
            self.handler.connection_lost(peer)
        except Exception:
            log.exception("connection_lost handler failed for %s", peer.address)

    # -- inbound ---------------------------------------------------------------
    def _request_received(self, request: Request, peer: Peer) -> None:
        via = request.top_via
        params: dict[str, str | None] = {}
        if via.host != peer.host:
            params["received"] = peer.host
        if via.wants_rport and via.rport is None:
            params["rport"] = str(peer.port)
            params.setdefault("received", peer.host)
        if params:
            request = _replace_top_via(request, str(via.with_params(**params)))
        destination = peer if peer.connection_id is not None else Peer("UDP", peer.host, peer.port)
        outcome = self.layer.receive_request(
            request,
            source=peer,
            response_destination=destination,
            reliable=peer.connection_id is not None,
            now=self.clock(),
        )
        if isinstance(outcome, NewTransaction):
            txn = outcome.transaction
            try:
                self._new_transaction(request, peer, txn)
            except BaseException:
                # A stored transaction is answered through it or removed: the caller
                # answers statelessly from the raw bytes, so forget it here.
                if txn.last_response is None or txn.last_response.status < 200:
                    self.layer.forget(txn)
                raise
        elif isinstance(outcome, AckForInvite):
            self._dispatch(IncomingRequest(self, outcome.request, peer, None, outcome.transaction))
        elif isinstance(outcome, StrayAck):
            self._dispatch(IncomingRequest(self, outcome.request, peer, None))

    def _new_transaction(self, request: Request, peer: Peer, txn: ServerTransaction) -> None:
        incoming = IncomingRequest(self, request, peer, txn)
        txn.context = incoming
        uri = request.uri
        if not isinstance(uri, (SipUri, TelUri)):
            incoming.respond(416)
            return
        if request.method == "CANCEL" and self._answer_late_cancel(incoming):
            return
        if request.method not in ("ACK", "CANCEL"):
            unsupported = [t for t in request.require if t.lower() not in self.supported]
            if unsupported:
                incoming.respond(420, headers=[("Unsupported", ", ".join(unsupported))])
                return
        if self._pending >= self.max_pending:
            self.stats.overload_rejections += 1
            incoming.respond(503, headers=[("Retry-After", "5")])
            return
        self._dispatch(incoming)

    def _answer_late_cancel(self, incoming: IncomingRequest) -> bool:
        """Answer 200 to a CANCEL of an INVITE that already has its final response.

        RFC 3261 §9.2 and §16.10: the CANCEL changes nothing then. The INVITE's
        transaction let go of the TU's context with its final response (it only
        absorbs copies until Timer H or I), so the stack answers here, with the
        To tag of that final.
        """
        invite = self.layer.find_invite_for_cancel(incoming.request)
        if invite is None or (invite.state is not _COMPLETED and invite.state is not _CONFIRMED):
            return False
        last = invite.last_response
        incoming.respond(200, to_tag=last.to.tag if last is not None else None)
        return True

    def _dispatch(self, incoming: IncomingRequest) -> None:
        tg = self._tg
        if tg is None:
            return
        try:
            self._work_send.send_nowait(incoming)
        except anyio.WouldBlock:
            self.stats.overload_rejections += 1
            if incoming.transaction is not None:
                incoming.respond(503, headers=[("Retry-After", "5")])
            return
        self._pending += 1
        self._queued += 1
        if self._queued > self._idle and self._workers < self.max_workers:
            tg.start_soon(self._worker)

    async def _worker(self) -> None:
        self._workers += 1
        try:
            while True:
                self._idle += 1
                try:
                    incoming = await self._work_receive.receive()
                finally:
                    self._idle -= 1
                if incoming is None:
                    return  # retired after a surge
                self._queued -= 1
                await self._run_handler(incoming)
                # An idle worker holds no request: a transaction in Timer J does not either.
                del incoming
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass  # the stack is closing
        finally:
            self._workers -= 1

    async def _retire_idle_workers(self) -> None:
        """Every few seconds, end the workers a quiet stack does not need.

        Workers idle through a whole check beyond ``_CORE_WORKERS`` are sent a
        ``None`` each; once a large surplus is gone, or a surge of messages has
        ended and its transactions with it, the parser's memos are cleared and
        the freed heap is handed back to the system (one ``gc.collect()`` and
        ``malloc_trim``).
        """
        low_water = self._idle
        seen = since_trim = 0
        while True:
            await anyio.sleep(self.retire_check)
            stats = self.stats
            total = stats.requests_received + stats.responses_received + stats.parse_errors
            recent, seen = total - seen, total
            since_trim += recent
            trim = False
            if since_trim >= _TRIM_AFTER_MESSAGES and recent < _QUIET and len(self.layer) < _QUIET:
                # A surge ended and its transactions are gone: the memo entries
                # made during it pin the allocator's arenas it used; let them go.
                since_trim = 0
                clear_caches()
                trim = True
            # Only workers that stayed idle for the whole interval are surplus.
            low_water, surplus = self._idle, min(low_water, self._idle) - _CORE_WORKERS
            if surplus > 0 and not self._queued and self._retire(surplus) >= _TRIM_AFTER_RETIRING:
                await anyio.sleep(0.1)  # let them end before the heap is trimmed
                trim = True
            if trim:
                release_free_memory()

    def _retire(self, count: int) -> int:
        """Ask ``count`` idle workers to end; how many were asked."""
        for retired in range(count):
            try:
                self._work_send.send_nowait(None)
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return retired
        return count

    async def _run_handler(self, incoming: IncomingRequest) -> None:
        """The boundary of one request: whatever the handler does, the worker survives."""
        try:
            await self.handler.handle_request(incoming)
        except SipParseError as exc:
            self.stats.parse_errors += 1
            self._answer_failure(incoming, exc.status, exc.reason, error=False)
        except Exception:
            self.stats.handler_errors += 1
            self._answer_failure(incoming, 500, "Server Internal Error", error=True)
        finally:
            self._pending -= 1
            try:
                self._flush()
            except Exception:
                self.stats.internal_errors += 1
                log.exception("flush failed after %r", safe_first_line(incoming.request))

    def _answer_failure(
        self, incoming: IncomingRequest, status: int, reason: str, *, error: bool
    ) -> None:
        """Log and answer a request whose handling failed; never raises.

        ``incoming.respond()`` reads the request's To and CSeq, which may be
        what failed: then the answer is built from the raw bytes, as for a
        request that did not parse, and the transaction is forgotten.
        """
        try:
            line = safe_first_line(incoming.request)
            if error:
                self._logs.handler.error(
                    "handler failed on %r from %s",
                    line,
                    incoming.peer.address,
                    exc=sys.exc_info()[1],
                )
            else:
                self._logs.malformed_request.info(
                    "bad %r from %s: %s", line, incoming.peer.address, reason
                )
            txn = incoming.transaction
            if txn is None or incoming.answered:
                return
            try:
                incoming.respond(status, reason[:80])
                return
            except Exception:
                pass
            self.layer.forget(txn)
            destination = txn.response_destination
            assert isinstance(destination, Peer)
            data = error_response(bytes(incoming.request), status, reason)
            if data is not None:
                self._send(data, destination)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("could not answer a failed request from %s", incoming.peer.address)

    def _response_received(self, response: Response) -> None:
        _ = response.cseq  # responses without a valid CSeq are dropped (RFC 4475 scalarlg)
        txn = self.layer.receive_response(response, now=self.clock())
        if txn is None:
            self.stats.stray_responses += 1

    def _answer_malformed(self, data: bytes, peer: Peer, status: int, reason: str) -> None:
        head = data.lstrip(b"\r\n")[:16]
        if head.startswith(b"SIP/") or not head:
            self.stats.malformed_responses_dropped += 1
            self._logs.malformed_response.info(
                "dropped malformed response from %s: %s", peer.address, reason
            )
            return
        response = error_response(data, status, reason)
        if response is None:
            self._logs.malformed_request.info(
                "dropped unanswerable request from %s: %s", peer.address, reason
            )
            return
        self.stats.malformed_requests_answered += 1
        self._logs.malformed_request.info(
            "answered %d to malformed request from %s: %s", status, peer.address, reason
        )
        if peer.connection_id is None:
            peer = Peer("UDP", peer.host, peer.port)
        self._send(response, peer)

    # -- outbound ---------------------------------------------------------------
    def _flush(self) -> None:
        layer = self.layer
        for data, destination in layer.datagrams_to_send():
            assert isinstance(destination, Peer)
            self._send(data, destination)
        while (event := layer.next_event()) is not None:
            if isinstance(event, ResponseReceived):
                client_txn = event.transaction
                client = client_txn.context
                if isinstance(client, ClientRequest):
                    client._deliver(event.response)
                    if event.response.status >= 200 and client_txn.state is _COMPLETED:
                        # Timer K or D only absorbs copies now: the stream ends after
                        # this final, and the TU's handle (with its request) is let go.
                        client._finish()
                        self._clients.discard(client)
                        client_txn.context = None
            elif isinstance(event, TransactionTimeout):
                txn = event.transaction
                if isinstance(txn, ClientTransaction) and isinstance(txn.context, ClientRequest):
                    txn.context._deliver(None)
            elif isinstance(event, TransactionTerminated):
                txn = event.transaction
                if isinstance(txn, ClientTransaction) and isinstance(txn.context, ClientRequest):
                    txn.context._finish()  # a final response in the same pass is still read
                    self._clients.discard(txn.context)
                txn.context = None
        self._rearm()

    def _send(self, data: bytes, destination: Peer) -> None:
        try:
            if WIRE.isEnabledFor(logging.DEBUG):
                trace("send", data, destination)
            transport = self.transport_for(destination)
            if transport.send_nowait(data, destination):
                return
        except OSError as exc:
            self.stats.send_errors += 1
            self._logs.send.warning("send to %s failed: %s", destination.address, exc)
            return
        except Exception as exc:
            self.stats.send_errors += 1
            self._logs.send.error("send to %s failed", destination.address, exc=exc)
            return
        tg = self._tg
        if tg is not None:
            tg.start_soon(self._send_async, transport, data, destination)

    async def _send_async(self, transport: Transport, data: bytes, destination: Peer) -> None:
        """A task of the server's group: ends quietly whatever the transport raises."""
        try:
            await transport.send(data, destination)
        except OSError as exc:
            self.stats.send_errors += 1
            self._logs.send.warning("send to %s failed: %s", destination.address, exc)
        except Exception as exc:
            self.stats.send_errors += 1
            self._logs.send.error("send to %s failed", destination.address, exc=exc)

    # -- timers -----------------------------------------------------------------
    def _rearm(self) -> None:
        self.timer.rearm()

    def _run_timers(self) -> None:
        """Fire what is due now (tests call it after moving a FakeClock)."""
        self.timer.run_timers()

    def _timer_tick(self) -> None:
        """Fire what is due and send what it produced; never raises."""
        self.timer.tick()


class _StackLogs:
    """One rate-limited log per kind of per-message event (see :mod:`sdpbx._ratelog`)."""

    def __init__(self) -> None:
        self.internal = LogLimiter(log)
        self.handler = LogLimiter(log)
        self.malformed_request = LogLimiter(log)
        self.malformed_response = LogLimiter(log)
        self.send = LogLimiter(log)


def _replace_top_via(request: Request, new_top: str) -> Request:
    first = request.headers.get("via") or ""
    elements = split_commas(first)
    elements[0] = new_top
    return request.replace(headers=request.headers.replace_first("via", ", ".join(elements)))
