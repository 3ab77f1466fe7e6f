"""A lean httpx transport: HTTP/1.1 with h11 over anyio streams, idle connections reused.

The locator webhook posts one small JSON body per registration, and after a
restart that is hundreds per second from the process that also answers the
REGISTERs. httpx's default transport (httpcore) spends ~1.5 ms of CPU per
request on this project's 2-core reference machine, mostly in pool
bookkeeping, a cancel scope per socket operation and socket attribute look-ups
made on every request; at 500 events/s that is most of the core the SIP
stack needs. This transport does the same wire work (one ``send`` for head and
body, h11 to read the answer) for a fraction of that, while the caller keeps
httpx's API, request building and exception types.

Kept deliberately small: HTTP/1.1 only, no proxies, no HTTP/2. A connection
goes back to the idle list only when h11 says both sides are done and the
server did not ask to close; before reuse it is checked (a zero-cost peek)
for a close the server sent while it sat idle, and one idle longer than
``keepalive_expiry`` is closed rather than reused.
"""

from __future__ import annotations

import select
import ssl
import time
from collections.abc import Callable

import anyio
import anyio.abc
import h11
import httpx
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

__all__ = ["KeepAliveTransport"]

_Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_RECEIVE = 65536


class _Connection:
    """One TCP (or TLS) connection and its h11 state."""

    def __init__(self, stream: anyio.abc.ByteStream, fileno: int) -> None:
        self.stream = stream
        self.fileno = fileno
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def looks_alive(self) -> bool:
        """False when the server closed (or wrote to) the connection while it was idle.

        An idle HTTP/1.1 connection has nothing to read; readable means EOF or
        bytes nobody asked for, and either way it cannot carry a request.
        """
        if self.fileno < 0:
            return True
        poller = select.poll()
        poller.register(self.fileno, select.POLLIN)
        try:
            return not poller.poll(0)
        except OSError:
            return False

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # already gone; nothing left to release


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """At most ``max_connections`` open connections; idle ones are kept per origin."""

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._clock = clock
        self._slots = anyio.CapacityLimiter(max_connections)
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("transport closed", request=request)
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        async with self._slots:
            connection = await self._checkout(origin, timeouts.get("connect"), request)
            reusable = False
            try:
                status, headers, content, reusable = await self._exchange(
                    connection, request, body, timeouts.get("read")
                )
            finally:
                if reusable:
                    connection.idle_since = self._clock()
                    self._idle.setdefault(origin, []).append(connection)
                else:
                    await connection.aclose()
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()

    # -- internals ----------------------------------------------------------------------

    async def _checkout(
        self, origin: _Origin, timeout: float | None, request: httpx.Request
    ) -> _Connection:
        idle = self._idle.get(origin)
        now = self._clock()
        while idle:
            connection = idle.pop()  # most recently used first: the likeliest to be alive
            if now - connection.idle_since <= self.keepalive_expiry and connection.looks_alive():
                return connection
            await connection.aclose()
        scheme, host, port = origin
        try:
            with anyio.fail_after(timeout):
                stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
                fileno = stream.extra(SocketAttribute.raw_socket).fileno()
                if scheme == "https":
                    context = self._ssl_context or httpx.create_ssl_context()
                    stream = await TLSStream.wrap(
                        stream, hostname=host, ssl_context=context, standard_compatible=False
                    )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connect to {host}:{port} timed out", request=request
            ) from exc
        except (OSError, ssl.SSLError, anyio.BrokenResourceError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return _Connection(stream, fileno)

    async def _exchange(
        self,
        connection: _Connection,
        request: httpx.Request,
        body: bytes,
        timeout: float | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        conn = connection.h11
        target = request.url.raw_path
        try:
            with anyio.fail_after(timeout):
                head = h11.Request(
                    method=request.method, target=target, headers=list(request.headers.raw)
                )
                data = conn.send(head) or b""
                if body:
                    data += conn.send(h11.Data(data=body)) or b""
                data += conn.send(h11.EndOfMessage()) or b""
                await connection.stream.send(data)
                response: h11.Response | None = None
                chunks: list[bytes] = []
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        try:
                            received = await connection.stream.receive(_RECEIVE)
                        except anyio.EndOfStream:
                            received = b""
                        conn.receive_data(received)
                    elif isinstance(event, h11.Response):
                        response = event
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        raise httpx.RemoteProtocolError(
                            "server closed the connection before answering", request=request
                        )
                    # InformationalResponse (1xx): wait for the final one.
        except TimeoutError as exc:
            raise httpx.ReadTimeout("no answer in time", request=request) from exc
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
        assert response is not None  # h11 yields Response before EndOfMessage
        reusable = conn.our_state is h11.DONE and conn.their_state is h11.DONE
        if reusable:
            conn.start_next_cycle()
        return response.status_code, list(response.headers), b"".join(chunks), reusable
