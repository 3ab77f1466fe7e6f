"""SIP over TCP and TLS: listening, connecting, and keeping connections for reuse.

A phone behind NAT can only be reached over the connection it opened, so every
connection (accepted or made) gets a process-wide integer id and is kept in a
registry by id and by remote address; :meth:`send` reuses one before it ever
connects (RFC 3261 §18.2.2, RFC 5626). Each connection runs one task that
reads and frames, and one writer task fed by a bounded queue, so
:meth:`send_nowait` can hand a response to an open connection without
awaiting, writes never interleave, and a peer that stops reading applies
backpressure (then a timeout) instead of growing memory.

Connections close on EOF, on a framing error (the position of the next message
is unknowable), on a write error or timeout, when a message is still partial
``message_deadline`` seconds after its first byte (slowloris), and after
``idle_timeout`` seconds without a whole message or ping in, or a write out.
Every connection holds a slot of the shared
:class:`~sdpbx.transport.limits.ConnectionTable`, which closes the one idle
longest (or refuses the newcomer) at its caps. All connection tasks live in
the task group of :meth:`serve`, so cancelling ``serve`` closes every
connection.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Mapping
from typing import Any

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

from ..sip.errors import SipParseError
from ..sip.framing import StreamFramer
from ._guard import (
    LogLimiter,
    TransportStats,
    accept_forever,
    guarded,
    remote_of,
    serve_accepted,
    unmapped,
)
from .base import ListenError, Peer, TransportHandler, TransportName, next_connection_id
from .limits import ConnectionSlot, ConnectionTable

__all__ = ["TcpTransport", "TlsTransport"]

logger = logging.getLogger(__name__)

_PONG = b"\r\n"
# Most bytes joined into one write when several messages are queued.
_WRITE_BATCH = 64 * 1024
# Stream errors that simply mean "this connection is gone".
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class _SerialSendStream(ByteStream):
    """Serialises sends to a socket stream under a TLS stream.

    anyio's TLSStream may write from ``receive()`` (TLS 1.3 post-handshake
    messages) while the writer task is writing; the socket stream would then
    raise ``BusyResourceError``. A lock under the TLS layer makes that safe.
    """

    def __init__(self, inner: SocketStream) -> None:
        self._inner = inner
        self._lock = anyio.Lock()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        async with self._lock:
            await self._inner.send(item)

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return self._inner.extra_attributes


class _Connection:
    """One open stream and its outgoing queue."""

    __slots__ = (
        "closed",
        "id",
        "idle_timeout",
        "inbox",
        "key",
        "last_activity",
        "outbox",
        "peer",
        "scope",
        "slot",
        "stream",
        "writing",
    )

    def __init__(
        self,
        stream: ByteStream,
        peer: Peer,
        idle_timeout: float,
        queue_size: int,
        slot: ConnectionSlot,
        scope: anyio.CancelScope | None = None,
    ) -> None:
        self.id = peer.connection_id
        self.stream = stream
        self.peer = peer
        self.key = (peer.host, peer.port)
        self.idle_timeout = idle_timeout
        self.last_activity = anyio.current_time()
        self.outbox, self.inbox = anyio.create_memory_object_stream[bytes](queue_size)
        self.scope = scope or anyio.CancelScope()
        self.slot = slot
        self.closed = False
        self.writing = False


class _StreamTransport:
    """What TCP and TLS share; TLS only adds the handshake around each stream."""

    name: TransportName
    reliable: bool = True

    def __init__(
        self,
        host: str,
        port: int,
        *,
        idle_timeout: float = 600.0,
        outbound_idle_timeout: float = 120.0,
        max_message_size: int = 65536,
        connect_timeout: float = 10.0,
        send_timeout: float = 10.0,
        send_queue_size: int = 256,
        message_deadline: float | None = None,
        connections: ConnectionTable | None = None,
    ) -> None:
        self.host = host
        # Share one table between all stream transports so the caps span them.
        self.connections = connections if connections is not None else ConnectionTable()
        # A message must be whole this long after its first byte (slowloris).
        self.message_deadline = (
            message_deadline
            if message_deadline is not None
            else self.connections.limits.message_deadline
        )
        self.port = port
        self.idle_timeout = idle_timeout
        self.outbound_idle_timeout = outbound_idle_timeout
        self.max_message_size = max_message_size
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.send_queue_size = send_queue_size
        self._bound: tuple[str, int] = (host, port)
        self._by_id: dict[int, _Connection] = {}
        self._by_address: dict[tuple[str, int], _Connection] = {}
        # Open connections per address, so a close scans for another only if any.
        self._per_address: dict[tuple[str, int], int] = {}
        self._connecting: dict[tuple[str, int], anyio.Lock] = {}
        self._task_group: TaskGroup | None = None
        self._handler: TransportHandler | None = None
        self.stats = TransportStats()
        self._log = LogLimiter(logger)
        self._accept_log = LogLimiter(logger)
        # Per-peer events an attacker can repeat at will: one line per 10 s.
        self._framing_log = LogLimiter(logger)
        self._deadline_log = LogLimiter(logger)

    @property
    def local_host(self) -> str:
        return self._bound[0]

    @property
    def local_port(self) -> int:
        return self._bound[1]

    @property
    def connection_count(self) -> int:
        return len(self._by_id)

    def connection_peers(self) -> list[Peer]:
        """The open connections, as the Peers their messages arrive from."""
        return [conn.peer for conn in self._by_id.values()]

    # -- TLS hooks ---------------------------------------------------------------

    async def _wrap_inbound(self, stream: SocketStream) -> ByteStream:
        return stream

    async def _wrap_outbound(self, stream: SocketStream, host: str) -> ByteStream:
        return stream

    # -- serving -----------------------------------------------------------------

    async def serve(
        self,
        handler: TransportHandler,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen, report readiness, then accept and serve connections until cancelled."""
        try:
            multi = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        except OSError as exc:
            raise ListenError(self.name, self.host, self.port, exc) from exc
        listeners = [
            listener for listener in multi.listeners if isinstance(listener, SocketListener)
        ]
        address = listeners[0].extra(SocketAttribute.local_address)
        self._bound = (unmapped(str(address[0])), int(address[1]))
        try:
            async with multi, anyio.create_task_group() as tg:
                self._task_group = tg
                self._handler = handler
                for listener in listeners:
                    tg.start_soon(self._accept_loop, listener, tg)
                tg.start_soon(self.connections.maintain)
                task_status.started()
        finally:
            self._task_group = None
            self._handler = None

    async def _accept_loop(self, listener: SocketListener, tg: TaskGroup) -> None:
        def spawn(stream: SocketStream) -> None:
            tg.start_soon(
                serve_accepted, stream, self._serve_inbound, self.name, self.stats, self._log
            )

        def exhausted() -> bool:
            return self.connections.evict_idle("out of file descriptors")

        await accept_forever(listener, spawn, self.name, self.stats, self._accept_log, exhausted)

    async def _serve_inbound(self, raw: SocketStream) -> None:
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
                try:
                    stream = await self._wrap_inbound(raw)
                except (*_GONE, ssl.SSLError) as exc:  # TimeoutError is an OSError
                    logger.debug("%s handshake with %s:%d failed: %s", self.name, host, port, exc)
                    return
                conn = self._register(stream, host, port, self.idle_timeout, slot)
                await self._run(conn)
        finally:
            # Socket closed before the slot goes, so the table never counts
            # fewer descriptors than are held.
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(raw)
            slot.release()

    def _register(
        self,
        stream: ByteStream,
        host: str,
        port: int,
        idle: float,
        slot: ConnectionSlot,
        scope: anyio.CancelScope | None = None,
    ) -> _Connection:
        peer = Peer(self.name, host, port, next_connection_id())
        conn = _Connection(stream, peer, idle, self.send_queue_size, slot, scope)
        self._by_id[peer.connection_id] = conn  # type: ignore[index]
        self._by_address[conn.key] = conn
        self._per_address[conn.key] = self._per_address.get(conn.key, 0) + 1
        return conn

    def _unregister(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._by_id.pop(conn.id, None)  # type: ignore[arg-type]
        left = self._per_address.pop(conn.key, 1) - 1
        if left:
            self._per_address[conn.key] = left
        if self._by_address.get(conn.key) is conn:
            del self._by_address[conn.key]
            # Another connection to the same address may still be open (rare:
            # looked for only then, since a scan per close is O(n)).
            if left:
                for other in self._by_id.values():
                    if other.key == conn.key:
                        self._by_address[conn.key] = other
                        break

    async def _run(self, conn: _Connection) -> None:
        try:
            with conn.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write_loop, conn)
                    await self._read_loop(conn)
                    # An idle writer ends by itself once its queue is closed;
                    # cancelling it instead would leave its frames in reference
                    # cycles (the CancelledError's traceback), holding the
                    # connection's buffers until a full garbage collection.
                    conn.outbox.close()
                    if conn.writing or conn.inbox.statistics().current_buffer_used:
                        tg.cancel_scope.cancel()
        finally:
            try:
                self._unregister(conn)
                conn.outbox.close()
                conn.inbox.close()
                handler = self._handler
                if handler is not None:
                    try:
                        handler.connection_lost(conn.peer)
                    except Exception:
                        logger.exception("%s connection_lost handler failed", self.name)
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(conn.stream)
            finally:
                # Once the socket is closed, so the table counts descriptors held.
                conn.slot.release()

    async def _read_loop(self, conn: _Connection) -> None:
        handler = self._handler
        assert handler is not None
        message_received = handler.message_received
        framer = StreamFramer(self.max_message_size)
        stream = conn.stream
        peer = conn.peer
        slot = conn.slot
        # When the first byte of a still-partial message arrived. Only whole
        # messages and pings refresh ``last_activity``, so trickling bytes
        # keeps neither the idle timer nor the message deadline at bay.
        partial_since: float | None = None
        while True:
            deadline = conn.last_activity + conn.idle_timeout
            if partial_since is not None:
                deadline = min(deadline, partial_since + self.message_deadline)
            with anyio.CancelScope(deadline=deadline) as idle:
                try:
                    data = await stream.receive()
                except (*_GONE, ssl.SSLError):
                    return
            now = anyio.current_time()
            if idle.cancelled_caught:
                if partial_since is not None and now >= partial_since + self.message_deadline:
                    self.stats.deadline_closes += 1
                    self._deadline_log.info(
                        "%s message from %s incomplete after %gs, closing",
                        self.name,
                        peer.address,
                        self.message_deadline,
                    )
                    return
                if now >= conn.last_activity + conn.idle_timeout:
                    logger.debug("%s connection %s idle, closing", self.name, peer.address)
                    return
                continue  # the writer was active meanwhile
            if partial_since is None:
                partial_since = now
            framer.feed(data)
            completed = False
            try:
                while (message := framer.next_message()) is not None:
                    completed = True
                    try:
                        message_received(message, peer)
                    except Exception:
                        logger.exception("%s handler failed on a message from %s", self.name, peer)
            except SipParseError as exc:
                self._framing_log.info(
                    "%s framing error from %s, closing: %s", self.name, peer.address, exc
                )
                return
            if not framer.in_message:
                partial_since = None
            elif completed:
                partial_since = now
            if completed:
                conn.last_activity = now
                slot.message_done(busy=framer.in_message)
            elif framer.in_message:
                slot.message_started()
            pings = framer.take_pings()
            if pings:
                conn.last_activity = now
                slot.keepalive(busy=framer.in_message)
                # A full queue already proves we are alive: skip the pong then.
                with contextlib.suppress(anyio.WouldBlock):
                    conn.outbox.send_nowait(_PONG * pings)

    async def _write_loop(self, conn: _Connection) -> None:
        inbox = conn.inbox
        stream = conn.stream
        async for data in inbox:
            size = len(data)
            batch = [data]
            while size < _WRITE_BATCH:
                try:
                    more = inbox.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    # EndOfStream: the reader closed the queue meanwhile; what
                    # was taken still goes out, then the loop ends.
                    break
                batch.append(more)
                size += len(more)
            conn.writing = True
            with anyio.move_on_after(self.send_timeout) as timeout:
                try:
                    await stream.send(batch[0] if len(batch) == 1 else b"".join(batch))
                except (*_GONE, ssl.SSLError) as exc:
                    logger.debug("%s write to %s failed: %s", self.name, conn.peer.address, exc)
                    conn.scope.cancel()
                    return
            conn.writing = False
            if timeout.cancelled_caught:
                logger.info("%s write to %s timed out, closing", self.name, conn.peer.address)
                conn.scope.cancel()
                return
            conn.last_activity = anyio.current_time()

    # -- sending -----------------------------------------------------------------

    def _lookup(self, peer: Peer) -> _Connection | None:
        if peer.connection_id is not None:
            conn = self._by_id.get(peer.connection_id)
            if conn is not None:
                return conn
        return self._by_address.get((unmapped(peer.host), peer.port))

    def send_nowait(self, data: bytes, peer: Peer) -> bool:
        """Queue on an open connection; ``False`` if none is open or its queue is full."""
        conn = self._lookup(peer)
        if conn is None:
            return False
        try:
            conn.outbox.send_nowait(data)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    async def send(self, data: bytes, peer: Peer) -> None:
        """Queue on the peer's connection, connecting first if there is none.

        Raises :class:`OSError` when connecting fails, or when the connection's
        queue stays full for ``send_timeout`` seconds.
        """
        conn = self._lookup(peer)
        if conn is None:
            try:
                conn = await self._connect(peer)
            except OSError:
                raise
            except Exception as exc:
                # e.g. UnicodeError from IDNA-encoding a hostile host name: the
                # caller is promised OSError for every failure to deliver.
                raise ConnectionError(
                    f"{self.name} cannot connect to {peer.address}: {exc!r}"
                ) from exc
        try:
            with anyio.fail_after(self.send_timeout):
                await conn.outbox.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ConnectionResetError(f"{self.name} connection to {peer.address} closed") from exc

    def close_connection(self, connection_id: int) -> bool:
        """Close one connection (its ``connection_lost`` follows); ``False`` if unknown."""
        conn = self._by_id.get(connection_id)
        if conn is None:
            return False
        conn.scope.cancel()
        return True

    async def _connect(self, peer: Peer) -> _Connection:
        tg = self._task_group
        if tg is None:
            raise OSError(f"{self.name} transport is not serving")
        host = unmapped(peer.host)
        key = (host, peer.port)
        # One connect per address at a time; concurrent senders wait and reuse it.
        lock = self._connecting.setdefault(key, anyio.Lock())
        try:
            async with lock:
                conn = self._by_address.get(key)
                if conn is not None:
                    return conn
                scope = anyio.CancelScope()
                slot = self.connections.admit(
                    host, scope.cancel, self.stats, name=self.name, inbound=False
                )
                if slot is None:
                    raise ConnectionRefusedError(
                        f"{self.name} connection limit reached: not connecting to {peer.address}"
                    )
                # Busy while connecting, so an inbound flood cannot evict it.
                slot.message_started()
                try:
                    with anyio.fail_after(self.connect_timeout):
                        raw = await anyio.connect_tcp(host, peer.port)
                        try:
                            stream = await self._wrap_outbound(raw, host)
                        except BaseException:
                            with anyio.CancelScope(shield=True):
                                await anyio.aclose_forcefully(raw)
                            raise
                except BaseException:
                    slot.release()
                    raise
        except (anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise ConnectionResetError(f"{self.name} handshake with {peer.address} failed") from exc
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._connecting.pop(key, None)
        # Ours, carrying a message now: not the kind of idle a flood is made of.
        slot.message_done()
        conn = self._register(stream, host, peer.port, self.outbound_idle_timeout, slot, scope)
        tg.start_soon(
            guarded,
            lambda: self._run(conn),
            lambda: f"{self.name} connection to {conn.peer.address}",
            self.stats,
            self._log,
        )
        return conn


class TcpTransport(_StreamTransport):
    """SIP over TCP (RFC 3261 §18)."""

    name: TransportName = "TCP"


class TlsTransport(_StreamTransport):
    """SIP over TLS (RFC 3261 §26.2, RFC 5630).

    ``ssl_context`` is the server context (certificate loaded);
    ``client_ssl_context`` verifies the servers we connect to and defaults to
    the system trust store with host name checking against the peer host.
    """

    name: TransportName = "TLS"

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        client_ssl_context: ssl.SSLContext | None = None,
        *,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 600.0,
        outbound_idle_timeout: float = 120.0,
        max_message_size: int = 65536,
        connect_timeout: float = 10.0,
        send_timeout: float = 10.0,
        send_queue_size: int = 256,
        message_deadline: float | None = None,
        connections: ConnectionTable | None = None,
    ) -> None:
        super().__init__(
            host,
            port,
            idle_timeout=idle_timeout,
            outbound_idle_timeout=outbound_idle_timeout,
            max_message_size=max_message_size,
            connect_timeout=connect_timeout,
            send_timeout=send_timeout,
            send_queue_size=send_queue_size,
            message_deadline=message_deadline,
            connections=connections,
        )
        self.ssl_context = ssl_context
        self.client_ssl_context = client_ssl_context or ssl.create_default_context()
        self.handshake_timeout = handshake_timeout

    async def _wrap_inbound(self, stream: SocketStream) -> ByteStream:
        with anyio.fail_after(self.handshake_timeout):
            return await TLSStream.wrap(
                _SerialSendStream(stream),
                server_side=True,
                ssl_context=self.ssl_context,
                standard_compatible=False,
            )

    async def _wrap_outbound(self, stream: SocketStream, host: str) -> ByteStream:
        return await TLSStream.wrap(
            _SerialSendStream(stream),
            server_side=False,
            hostname=host,
            ssl_context=self.client_ssl_context,
            standard_compatible=False,
        )
