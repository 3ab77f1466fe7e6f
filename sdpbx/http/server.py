"""A small HTTP/1.1 server for ASGI applications, on h11 and anyio.

The console, the AMI-style API and webhook test doubles all need an HTTP
server, and none of them needs HTTP/2, WebSockets-over-ASGI or lifespan. A
few hundred lines over h11 keep the dependency list short and let the server
live in the caller's task group like every other sdpbx component.

One task per connection; that task reads requests with h11 and runs the app
in-line, so request bodies are *pulled* from the socket only when the app
calls ``receive()``. That gives natural backpressure and a hard body limit
without buffering.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import anyio
import h11
from anyio.abc import ByteStream, Listener, SocketAttribute, TaskStatus
from anyio.streams.tls import TLSListener

__all__ = ["ASGIApp", "HttpServer", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger(__name__)

_READ_SIZE = 65536
_MAX_HEADER_SIZE = 64 * 1024
_LINGER_SECONDS = 2.0
# What a socket read or write raises once the peer has gone.
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_LINGER_BYTES = 4 * 1024 * 1024


class _ConnectionClosed(OSError):
    """The client went away; the connection task just ends.

    An :class:`OSError` so that apps which treat socket errors as "client
    disconnected" while streaming do the right thing.
    """


class HttpServer:
    """Serves one ASGI app on one address until cancelled.

    Start it with ``await task_group.start(server.serve)``: it returns once the
    socket is bound, so ``server.port`` is the real port even for ``port=0``.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_body_size: int = 16 * 1024 * 1024,
        keepalive_timeout: float = 75.0,
    ) -> None:
        self.app = app
        self.host = host
        self._port = port
        self.ssl_context = ssl_context
        self.max_body_size = max_body_size
        self.keepalive_timeout = keepalive_timeout

    @property
    def port(self) -> int:
        """The bound port once :meth:`serve` has started, else the configured one."""
        return self._port

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        tcp = await anyio.create_tcp_listener(local_host=self.host, local_port=self._port)
        self._port = tcp.extra(SocketAttribute.local_port)
        listener: Listener[Any] = tcp
        if self.ssl_context is not None:
            listener = TLSListener(tcp, self.ssl_context, standard_compatible=False)
        task_status.started()
        async with anyio.create_task_group() as tg:
            try:
                await listener.serve(self._handle_connection, task_group=tg)
            finally:
                # Stop accepting before the connection tasks are torn down, so
                # no new connection slips in during shutdown.
                with anyio.CancelScope(shield=True):
                    await listener.aclose()

    async def _handle_connection(self, stream: ByteStream) -> None:
        try:
            conn = _Connection(self, stream)
            await conn.run()
        except Exception:  # pragma: no cover - a bug in this module, not in the app
            logger.exception("HTTP connection handler failed")
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()


class _Connection:
    """One client connection: a loop of h11 request/response cycles."""

    def __init__(self, server: HttpServer, stream: ByteStream) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_SIZE)
        self.client = _address(stream, SocketAttribute.remote_address)
        self.local = _address(stream, SocketAttribute.local_address)

    async def run(self) -> None:
        try:
            while True:
                event: Any = None
                with anyio.move_on_after(self.server.keepalive_timeout):
                    event = await self._next_event()
                if not isinstance(event, h11.Request):
                    return  # closed by the client, or idle past the keep-alive timeout
                await _Exchange(self, event).run()
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.SEND_BODY:
                    await self._skip_unread_body()
                if not self._ready_for_next():
                    if self.h11.their_state is not h11.DONE:
                        await self._linger()
                    return
                self.h11.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await self._send_error(exc.error_status_hint or 400)
        except _ConnectionClosed:
            return

    async def _skip_unread_body(self) -> None:
        """Read past a body the app ignored (a 404 to a POST), to keep the connection."""
        budget = self.server.max_body_size
        with anyio.move_on_after(_LINGER_SECONDS):
            while budget >= 0:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    budget -= len(event.data)
                else:
                    return

    def _ready_for_next(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def _next_event(self) -> Any:
        """The next h11 event, reading from the socket as needed."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                data = b""
            except _GONE:
                raise _ConnectionClosed from None
            self.h11.receive_data(data)

    async def write(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            try:
                await self.stream.send(data)
            except _GONE:
                raise _ConnectionClosed from None

    async def _send_error(self, status: int) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{status} {_reason(status)}\n".encode()
        try:
            await self.write(
                h11.Response(
                    status_code=status,
                    reason=_reason(status).encode(),
                    headers=[
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                )
            )
            await self.write(h11.Data(data=body))
            await self.write(h11.EndOfMessage())
        except (_ConnectionClosed, h11.LocalProtocolError):
            return
        if self.h11.their_state is not h11.DONE:
            await self._linger()

    async def _linger(self) -> None:
        """Read and drop what the client is still sending before closing.

        Closing a socket with unread input makes the kernel send RST, and the
        client may then lose the error response we just wrote (typically a 413
        while it is still uploading).
        """
        try:
            # Half-close so a client waiting for EOF reads the response now.
            await self.stream.send_eof()
        except (NotImplementedError, *_GONE):
            pass
        dropped = 0
        with anyio.move_on_after(_LINGER_SECONDS):
            try:
                while dropped < _LINGER_BYTES:
                    dropped += len(await self.stream.receive(_READ_SIZE))
            except (anyio.EndOfStream, *_GONE):
                return


class _Exchange:
    """One request and its response: the ``receive``/``send`` pair given to the app."""

    def __init__(self, conn: _Connection, request: h11.Request) -> None:
        self.conn = conn
        self.request = request
        self.body_done = False
        self.body_size = 0
        self.reject_status: int | None = None  # 413 or 400 found while reading the body
        self.disconnected = False
        self.response_start: Message | None = None
        self.response_started = False  # the status line is on the wire
        self.response_done = False
        self.head = request.method == b"HEAD"

    def scope(self) -> Scope:
        target = self.request.target
        path, _, query = target.partition(b"?")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.request.http_version.decode("ascii"),
            "method": self.request.method.decode("ascii"),
            "scheme": self.conn.server.scheme,
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": [(name, value) for name, value in self.request.headers],
            "client": self.conn.client,
            "server": self.conn.local,
            "extensions": {},
        }

    async def run(self) -> None:
        declared = _content_length(self.request)
        if declared is not None and declared > self.conn.server.max_body_size:
            self.reject_status = 413
        else:
            try:
                await self.conn.server.app(self.scope(), self.receive, self.send)
            except _ConnectionClosed:
                self.disconnected = True
            except Exception:
                if self.reject_status is not None:
                    # The app saw http.disconnect because of a bad or oversized
                    # body and gave up: that is expected, answer the status.
                    logger.debug("ASGI app raised after a rejected body", exc_info=True)
                    await self._fail(self.reject_status)
                elif not self.disconnected:
                    logger.exception(
                        "ASGI app failed on %s %r",
                        self.request.method.decode("ascii"),
                        self.request.target,
                    )
                    await self._fail(500)
                return
        if self.reject_status is not None:
            await self._fail(self.reject_status)
        elif self.disconnected:
            raise _ConnectionClosed
        elif not self.response_done:
            if self.response_start is None and not self.response_started:
                logger.error("ASGI app returned without a response: %r", self.request.target)
                await self._fail(500)
            else:
                # The app stopped mid-response: the client can only learn that
                # from the connection closing.
                raise _ConnectionClosed

    async def _fail(self, status: int) -> None:
        if self.response_started:
            raise _ConnectionClosed  # too late for a status: drop the connection
        await self.conn._send_error(status)

    async def receive(self) -> Message:
        if self.reject_status is not None or self.disconnected or self.response_done:
            return {"type": "http.disconnect"}
        if self.body_done:
            # Nothing more to read for this request: wait until the client
            # goes away or the response ends (the app cancels us then).
            return await self._wait_for_disconnect()
        if self.conn.h11.they_are_waiting_for_100_continue:
            await self.conn.write(
                h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            )
        try:
            event = await self.conn._next_event()
        except _ConnectionClosed:
            self.disconnected = True
            return {"type": "http.disconnect"}
        except h11.RemoteProtocolError as exc:
            self.reject_status = exc.error_status_hint or 400
            return {"type": "http.disconnect"}
        if isinstance(event, h11.Data):
            self.body_size += len(event.data)
            if self.body_size > self.conn.server.max_body_size:
                self.reject_status = 413
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": bytes(event.data), "more_body": True}
        if isinstance(event, h11.EndOfMessage):
            self.body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # ConnectionClosed (or anything unexpected) mid-body.
        self.disconnected = True
        return {"type": "http.disconnect"}

    async def _wait_for_disconnect(self) -> Message:
        try:
            while True:
                data = await self.conn.stream.receive(_READ_SIZE)
                # Pipelined bytes of the next request: h11 keeps them until
                # start_next_cycle().
                self.conn.h11.receive_data(data)
        except (anyio.EndOfStream, *_GONE):
            self.disconnected = True
            return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.reject_status is not None:
            return  # the client gets a 413/400 instead of whatever the app says
        if self.disconnected:
            raise _ConnectionClosed
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_start is not None:
                raise RuntimeError("http.response.start sent twice")
            self.response_start = message
        elif kind == "http.response.body":
            if self.response_start is None:
                raise RuntimeError("http.response.body before http.response.start")
            if self.response_done:
                raise RuntimeError("http.response.body after the response ended")
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            try:
                if not self.response_started:
                    await self._start_response(None if more or self.head else len(body))
                if body and not self.head:
                    await self.conn.write(h11.Data(data=body))
                if not more:
                    await self.conn.write(h11.EndOfMessage())
                    self.response_done = True
            except _ConnectionClosed:
                self.disconnected = True
                raise
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r}")

    async def _start_response(self, length: int | None) -> None:
        assert self.response_start is not None
        headers = [
            (bytes(name).lower(), bytes(value))
            for name, value in self.response_start.get("headers", [])
        ]
        names = {name for name, _ in headers}
        if length is not None and not names & {b"content-length", b"transfer-encoding"}:
            # A single-part body: say its length instead of chunking it.
            headers.append((b"content-length", str(length).encode()))
        status = int(self.response_start["status"])
        self.response_started = True
        try:
            await self.conn.write(
                h11.Response(status_code=status, headers=headers, reason=_reason(status).encode())
            )
        except h11.LocalProtocolError:
            # An app error (e.g. a malformed header): no bytes left the server yet.
            self.response_started = False
            raise


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has already validated it
    return None


def _address(stream: ByteStream, attribute: Any) -> tuple[str, int] | None:
    address = stream.extra(attribute, None)
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return None


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
