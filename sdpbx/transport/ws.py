"""SIP over WebSocket (RFC 7118), both as a listener and as a client.

Browsers (JsSIP, SIP.js) can only reach a PBX over WebSocket. RFC 7118 makes
each WebSocket message exactly one SIP message, so unlike TCP there is no
framing to do here: wsproto reassembles fragmented messages and we hand each
whole one to the handler. The HTTP upgrade itself goes through wsproto's h11
handshake; a client that does not offer the ``sip`` subprotocol is refused
with an HTTP 400 before any SIP flows (RFC 7118 §4).

Every connection, accepted or opened by :meth:`WsTransport.send`, lives in the
task group owned by :meth:`WsTransport.serve`, and is found again by its id (so
a response goes back over the connection the request came in on, as phones
behind NAT need) or by its remote address.

Slow peers get the same deadline as over TCP: the upgrade must be done, and
each SIP message whole, within ``message_deadline`` (of the accept, and of the
message's first byte); only whole messages, pings and our own writes keep a
connection from being idle. Every connection holds a slot of the shared
:class:`~sdpbx.transport.limits.ConnectionTable`, so the process-wide caps
count WebSocket connections with the TCP and TLS ones.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import math
import ssl

import anyio
from anyio.abc import (
    ByteStream,
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)
from anyio.streams.tls import TLSStream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from ._guard import LogLimiter, TransportStats, accept_forever, guarded, remote_of, serve_accepted
from .base import ListenError, Peer, TransportHandler, TransportName, next_connection_id
from .limits import ConnectionSlot, ConnectionTable

__all__ = ["WsTransport"]

logger = logging.getLogger(__name__)

SUBPROTOCOL = "sip"
_READ_SIZE = 65536
# What a socket read or write raises once the peer has gone.
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
# Connection ids are unique per process, not per transport, so a stack holding
# several stream transports can key connections by id alone.


class _Connection:
    """One open WebSocket: the socket, its wsproto state and a write lock."""

    def __init__(
        self,
        stream: ByteStream,
        ws: WSConnection,
        peer: Peer,
        slot: ConnectionSlot,
        scope: anyio.CancelScope | None = None,
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.peer = peer
        self.slot = slot
        self.id: int = peer.connection_id or 0
        self.write_lock = anyio.Lock()
        self.last_activity = anyio.current_time()
        # When the first byte of a still-incomplete message arrived.
        self.partial_since: float | None = None
        self.closed = False
        # Cancelled by WsTransport.close_connection and by an eviction.
        self.scope = scope or anyio.CancelScope()

    async def send_event(self, event: Event) -> None:
        """Write one wsproto event; the lock keeps frames of concurrent senders whole."""
        async with self.write_lock:
            if self.closed:
                raise ConnectionResetError(f"WebSocket connection {self.id} is closed")
            try:
                data = self.ws.send(event)
                await self.stream.send(data)
            except LocalProtocolError as exc:  # closing or closed on the WS level
                raise ConnectionResetError(f"WebSocket connection {self.id}: {exc}") from exc
            except _GONE as exc:
                self.closed = True
                raise ConnectionResetError(f"WebSocket connection {self.id} broke") from exc
            self.last_activity = anyio.current_time()

    async def send_message(self, data: bytes) -> None:
        # RFC 7118 §5: text frames for UTF-8 SIP, binary for anything else.
        try:
            event: Event = TextMessage(data=data.decode("utf-8"))
        except UnicodeDecodeError:
            event = BytesMessage(data=data)
        await self.send_event(event)

    async def close(self, code: int, reason: str | None = None) -> None:
        """Send a Close frame if the WS state allows it, then drop the socket."""
        if not self.closed and self.ws.state in (
            ConnectionState.OPEN,
            ConnectionState.REMOTE_CLOSING,
        ):
            with anyio.move_on_after(1.0, shield=True):
                with contextlib.suppress(OSError):
                    await self.send_event(CloseConnection(code=code, reason=reason))
        self.closed = True
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


class WsTransport:
    """A WS or WSS listener that also connects out to WebSocket peers.

    ``ssl_context`` is the server certificate context (required for WSS);
    ``client_ssl_context`` verifies servers we connect to (default: the system
    trust store). ``path`` is the resource served, and requested when
    connecting out. ``idle_timeout`` closes connections silent for that long
    (``None`` keeps them forever); keep it above the phones' re-REGISTER
    interval, since closing a WS connection ends its RFC 5626 flow.
    ``message_deadline`` and ``handshake_timeout`` default to the deadline of
    ``connections`` (the shared :class:`ConnectionTable`).
    """

    reliable = True

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secure: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        path: str = "/",
        max_message_size: int = 256 * 1024,
        idle_timeout: float | None = 900.0,
        handshake_timeout: float | None = None,
        connect_timeout: float = 10.0,
        message_deadline: float | None = None,
        connections: ConnectionTable | None = None,
    ) -> None:
        if secure and ssl_context is None:
            raise ValueError("WSS needs ssl_context (the server certificate)")
        self.name: TransportName = "WSS" if secure else "WS"
        self.host = host
        self._port = port
        self.secure = secure
        self.ssl_context = ssl_context
        self.client_ssl_context = client_ssl_context
        self.path = path
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.connections = connections if connections is not None else ConnectionTable()
        deadline = self.connections.limits.message_deadline
        self.message_deadline = message_deadline if message_deadline is not None else deadline
        self.handshake_timeout = handshake_timeout if handshake_timeout is not None else deadline
        self.connect_timeout = connect_timeout
        self._handler: TransportHandler | None = None
        self._tg: TaskGroup | None = None
        self._by_id: dict[int, _Connection] = {}
        self._by_address: dict[tuple[str, int], _Connection] = {}
        self._connecting: dict[tuple[str, int], anyio.Event] = {}
        self.stats = TransportStats()
        self._log = LogLimiter(logger)
        self._accept_log = LogLimiter(logger)
        self._deadline_log = LogLimiter(logger)

    @property
    def local_host(self) -> str:
        return self.host

    @property
    def local_port(self) -> int:
        """The bound port once :meth:`serve` has started (real even for port 0)."""
        return self._port

    @property
    def connection_count(self) -> int:
        """Open connections, accepted and outgoing."""
        return len(self._by_id)

    def connection_peers(self) -> list[Peer]:
        """The open connections, as the Peers their messages arrive from."""
        return [conn.peer for conn in self._by_id.values()]

    def close_connection(self, connection_id: int) -> bool:
        """Close one connection (its ``connection_lost`` follows); ``False`` if unknown."""
        conn = self._by_id.get(connection_id)
        if conn is None:
            return False
        conn.scope.cancel()
        return True

    async def serve(
        self,
        handler: TransportHandler,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            tcp = await anyio.create_tcp_listener(local_host=self.host, local_port=self._port)
        except OSError as exc:
            raise ListenError(self.name, self.host, self._port, exc) from exc
        self._port = tcp.extra(SocketAttribute.local_port)
        self._handler = handler
        try:
            async with tcp, anyio.create_task_group() as tg:
                self._tg = tg

                def spawn(stream: SocketStream) -> None:
                    tg.start_soon(
                        serve_accepted, stream, self._accept, self.name, self.stats, self._log
                    )

                def exhausted() -> bool:
                    return self.connections.evict_idle("out of file descriptors")

                for listener in tcp.listeners:
                    if isinstance(listener, SocketListener):
                        tg.start_soon(
                            accept_forever,
                            listener,
                            spawn,
                            self.name,
                            self.stats,
                            self._accept_log,
                            exhausted,
                        )
                tg.start_soon(self.connections.maintain)
                task_status.started()
        finally:
            self._tg = None

    # -- sending ---------------------------------------------------------------

    def send_nowait(self, data: bytes, peer: Peer) -> bool:
        """Always ``False``: anyio streams have no synchronous write, and a WS
        frame must not interleave with another sender's."""
        return False

    async def send(self, data: bytes, peer: Peer) -> None:
        """Send over the peer's connection, connecting first if needed.

        Raises only :class:`OSError`: a peer's malformed handshake answer (or a
        host name the IDNA codec refuses) must not escape as a wsproto, h11 or
        codec exception into the stack.
        """
        conn = self._find(peer)
        if conn is None:
            try:
                conn = await self._connect_once(peer.host, peer.port)
            except OSError:
                raise
            except Exception as exc:
                raise ConnectionError(
                    f"{self.name} cannot connect to {peer.address}: {exc!r}"
                ) from exc
        await conn.send_message(data)

    def _find(self, peer: Peer) -> _Connection | None:
        if peer.connection_id is not None:
            conn = self._by_id.get(peer.connection_id)
            if conn is not None and not conn.closed:
                return conn
        conn = self._by_address.get((peer.host, peer.port))
        if conn is not None and not conn.closed:
            return conn
        return None

    async def _connect_once(self, host: str, port: int) -> _Connection:
        """Connect, unless another sender is already connecting to the same address."""
        key = (host, port)
        while (pending := self._connecting.get(key)) is not None:
            await pending.wait()
            conn = self._by_address.get(key)
            if conn is not None and not conn.closed:
                return conn
        if self._tg is None:
            raise OSError(f"{self.name} transport is not serving")
        scope = anyio.CancelScope()
        slot = self.connections.admit(host, scope.cancel, self.stats, name=self.name, inbound=False)
        if slot is None:
            raise ConnectionRefusedError(
                f"{self.name} connection limit reached: not connecting to {host}:{port}"
            )
        # Busy while connecting, so an inbound flood cannot evict it.
        slot.message_started()
        done = self._connecting[key] = anyio.Event()
        try:
            try:
                conn = await self._connect(host, port, slot, scope)
            except BaseException:
                slot.release()
                raise
            # Ours, carrying a message now: not the kind of idle a flood is made of.
            slot.message_done()
            self._register(conn)
            self._tg.start_soon(
                guarded,
                lambda: self._run(conn),
                lambda: f"{self.name} connection to {conn.peer.address}",
                self.stats,
                self._log,
            )
            return conn
        finally:
            del self._connecting[key]
            done.set()

    async def _connect(
        self, host: str, port: int, slot: ConnectionSlot, scope: anyio.CancelScope
    ) -> _Connection:
        with anyio.fail_after(self.connect_timeout):
            if self.secure:
                context = self.client_ssl_context or ssl.create_default_context()
                stream: ByteStream = await anyio.connect_tcp(
                    host, port, ssl_context=context, tls_standard_compatible=False
                )
            else:
                stream = await anyio.connect_tcp(host, port)
            try:
                ws = WSConnection(ConnectionType.CLIENT)
                authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                await stream.send(
                    ws.send(Request(host=authority, target=self.path, subprotocols=[SUBPROTOCOL]))
                )
                await self._client_handshake(stream, ws)
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
        peer = Peer(self.name, host, port, next_connection_id())
        return _Connection(stream, ws, peer, slot, scope)

    @staticmethod
    async def _client_handshake(stream: ByteStream, ws: WSConnection) -> None:
        while True:
            try:
                data = await stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                raise ConnectionResetError("WebSocket server closed during the handshake") from None
            except _GONE as exc:
                raise ConnectionResetError("WebSocket handshake failed") from exc
            try:
                ws.receive_data(data)
                events = list(ws.events())
            except Exception as exc:
                # RemoteProtocolError, or a codec error on non-ASCII headers:
                # either way the peer's answer is unusable.
                raise ConnectionError(f"bad WebSocket handshake response: {exc!r}") from exc
            for event in events:
                if isinstance(event, AcceptConnection):
                    if event.subprotocol != SUBPROTOCOL:
                        raise ConnectionRefusedError("WebSocket server did not accept 'sip'")
                    # Frames that arrived with the 101 stay queued in ``ws``.
                    return
                if isinstance(event, RejectConnection):
                    raise ConnectionRefusedError(
                        f"WebSocket handshake refused with HTTP {event.status_code}"
                    )

    # -- accepting -------------------------------------------------------------

    async def _accept(self, raw: SocketStream) -> None:
        remote = remote_of(raw)
        if remote is None:
            logger.debug("%s connection gone before it was served", self.name)
            return
        host, port = remote
        # Cancelled when the connection table evicts this connection.
        scope = anyio.CancelScope()
        slot = self.connections.admit(host, scope.cancel, self.stats, name=self.name)
        if slot is None:
            return  # refused at the cap: the caller closes the socket now
        try:
            with scope:
                await self._accept_admitted(raw, host, port, slot)
        finally:
            # Socket closed before the slot goes, so the table never counts
            # fewer descriptors than are held.
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(raw)
            slot.release()

    async def _accept_admitted(
        self, raw: SocketStream, host: str, port: int, slot: ConnectionSlot
    ) -> None:
        ws: WSConnection | None = None
        stream: ByteStream = raw
        with anyio.move_on_after(self.handshake_timeout) as handshake:
            try:
                if self.secure:
                    assert self.ssl_context is not None
                    stream = await TLSStream.wrap(
                        raw,
                        server_side=True,
                        ssl_context=self.ssl_context,
                        standard_compatible=False,
                    )
                ws = await self._server_handshake(stream)
            except (*_GONE, anyio.EndOfStream, ssl.SSLError) as exc:
                logger.debug("%s handshake from %s failed: %r", self.name, host, exc)
        if handshake.cancelled_caught:
            self.stats.deadline_closes += 1
            logger.debug("%s handshake from %s not done in time", self.name, host)
        if ws is None:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)
            return
        peer = Peer(self.name, host, port, next_connection_id())
        conn = _Connection(stream, ws, peer, slot)
        self._register(conn)
        await self._run(conn)

    async def _server_handshake(self, stream: ByteStream) -> WSConnection | None:
        """Answer the HTTP upgrade; ``None`` when it was refused or abandoned."""
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            try:
                data = await stream.receive(_READ_SIZE)
            except (anyio.EndOfStream, *_GONE):
                return None
            try:
                ws.receive_data(data)
                events = list(ws.events())
            except Exception as exc:
                # wsproto parses hostile bytes: besides RemoteProtocolError it
                # raises UnicodeError (IDNA Host) and UnicodeDecodeError
                # (non-ASCII Connection, Protocol, Extensions, target). All of
                # them mean "bad request", never "stop the listener".
                hint = getattr(exc, "event_hint", None)
                status = hint.status_code if isinstance(hint, RejectConnection) else 400
                await _reject(stream, ws, status, f"bad WebSocket handshake: {exc}")
                return None
            for event in events:
                if isinstance(event, Request):
                    return await self._answer_upgrade(stream, ws, event)

    async def _answer_upgrade(
        self, stream: ByteStream, ws: WSConnection, request: Request
    ) -> WSConnection | None:
        path = request.target.partition("?")[0]
        if path != self.path:
            await _reject(stream, ws, 404, f"no WebSocket service at {path}")
            return None
        key = dict(request.extra_headers).get(b"sec-websocket-key", b"")
        if not _valid_key(key):
            await _reject(stream, ws, 400, "Sec-WebSocket-Key must be base64 of 16 bytes")
            return None
        offered = [p for p in request.subprotocols if p.strip().lower() == SUBPROTOCOL]
        if not offered:
            await _reject(stream, ws, 400, "Sec-WebSocket-Protocol must offer 'sip' (RFC 7118)")
            return None
        try:
            await stream.send(ws.send(AcceptConnection(subprotocol=offered[0])))
        except _GONE:
            return None
        return ws

    # -- one connection's life -------------------------------------------------

    def _register(self, conn: _Connection) -> None:
        self._by_id[conn.id] = conn
        self._by_address[(conn.peer.host, conn.peer.port)] = conn

    def _unregister(self, conn: _Connection) -> None:
        self._by_id.pop(conn.id, None)
        key = (conn.peer.host, conn.peer.port)
        if self._by_address.get(key) is conn:
            del self._by_address[key]

    async def _run(self, conn: _Connection) -> None:
        try:
            with conn.scope:
                await self._read_loop(conn)
        finally:
            try:
                self._unregister(conn)
                await conn.close(CloseReason.GOING_AWAY)
                handler = self._handler
                if handler is not None:
                    try:
                        handler.connection_lost(conn.peer)
                    except Exception:
                        logger.exception("connection_lost handler failed for %s", conn.peer)
            finally:
                # Once the socket is closed, so the table counts descriptors held.
                conn.slot.release()

    async def _read_loop(self, conn: _Connection) -> None:
        parts: list[bytes] = []
        size = 0
        slot = conn.slot
        while True:
            completed = keepalive = False
            # Events first: the handshake may have left frames queued in ``ws``.
            for event in conn.ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    chunk = (
                        event.data.encode("utf-8")
                        if isinstance(event.data, str)
                        else bytes(event.data)
                    )
                    size += len(chunk)
                    if size > self.max_message_size:
                        logger.warning(
                            "closing %s: WebSocket message over %d bytes",
                            conn.peer,
                            self.max_message_size,
                        )
                        await conn.close(CloseReason.MESSAGE_TOO_BIG, "message too big")
                        return
                    parts.append(chunk)
                    if event.message_finished:
                        message = b"".join(parts)
                        parts.clear()
                        size = 0
                        if message.strip():
                            completed = True
                            self._deliver(message, conn.peer)
                        else:
                            keepalive = True  # a CRLF keep-alive, nothing for the stack
                elif isinstance(event, Ping):
                    keepalive = True
                    try:
                        await conn.send_event(event.response())
                    except OSError:
                        return
                elif isinstance(event, Pong):
                    keepalive = True
                elif isinstance(event, CloseConnection):
                    # Answer the peer's Close (or report the protocol error it made).
                    await conn.close(event.code, event.reason)
                    return
            if completed or keepalive:
                now = anyio.current_time()
                conn.last_activity = now
                # Bytes of a frame wsproto still buffers are not visible here:
                # the next message's clock starts at the next read instead.
                busy = bool(parts)
                conn.partial_since = now if busy else None
                if completed:
                    slot.message_done(busy=busy)
                else:
                    slot.keepalive(busy=busy)
            data = await self._receive(conn)
            if data is None:
                return
            if conn.partial_since is None:
                conn.partial_since = anyio.current_time()
                slot.message_started()
            conn.ws.receive_data(data)

    async def _receive(self, conn: _Connection) -> bytes | None:
        """The next bytes from the socket, or ``None`` when the connection is over.

        Only whole messages, pings and our writes refresh the idle clock, and a
        partial message must complete ``message_deadline`` after its first
        byte, so trickling bytes holds a connection no longer than that.
        """
        while True:
            deadline = math.inf
            if self.idle_timeout is not None:
                deadline = conn.last_activity + self.idle_timeout
            if conn.partial_since is not None:
                deadline = min(deadline, conn.partial_since + self.message_deadline)
            with anyio.CancelScope(deadline=deadline):
                try:
                    return await conn.stream.receive(_READ_SIZE)
                except (anyio.EndOfStream, *_GONE):
                    return None
            now = anyio.current_time()
            if conn.partial_since is not None and now >= conn.partial_since + self.message_deadline:
                self.stats.deadline_closes += 1
                self._deadline_log.info(
                    "closing %s: WebSocket message incomplete after %gs",
                    conn.peer.address,
                    self.message_deadline,
                )
                await conn.close(CloseReason.POLICY_VIOLATION, "message deadline")
                return None
            # Otherwise idle, unless a send refreshed the activity clock meanwhile.
            if self.idle_timeout is not None and now - conn.last_activity >= self.idle_timeout:
                logger.info("closing idle WebSocket connection %s", conn.peer)
                await conn.close(CloseReason.NORMAL_CLOSURE, "idle")
                return None

    def _deliver(self, message: bytes, peer: Peer) -> None:
        assert self._handler is not None
        try:
            self._handler.message_received(message, peer)
        except Exception:
            logger.exception("message handler failed for a message from %s", peer)


def _valid_key(key: bytes) -> bool:
    """RFC 6455 §4.2.1: the key is a base64-encoded 16-byte nonce."""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


async def _reject(stream: ByteStream, ws: WSConnection, status: int, why: str) -> None:
    """Refuse the upgrade with an HTTP error that says why."""
    body = f"{why}\n".encode()
    try:
        data = ws.send(
            RejectConnection(
                status_code=status,
                headers=[
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
                has_body=True,
            )
        )
        data += ws.send(RejectData(data=body))
        await stream.send(data)
    except (LocalProtocolError, *_GONE):
        return
    except Exception as exc:  # wsproto/h11 refusing to build the response
        logger.debug("could not send the HTTP %d refusal: %r", status, exc)
