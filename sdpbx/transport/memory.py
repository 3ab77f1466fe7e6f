"""An in-memory network of transports, for tests that need no sockets.

Transports attach to a :class:`MemoryNetwork` under ``(transport, host,
port)`` and exchange whole messages with the same interface as the real
ones. Every message is logged in :attr:`MemoryNetwork.sent`, and a ``drop``
predicate can lose chosen messages, so retransmission and timeout behaviour is
testable with a fake clock and without waiting for real packets to vanish.

Reliable transports ("TCP", "TLS", ...) get connections: the first send to an
address opens one, each side sees its own ``connection_id``, and closing
either end reports ``connection_lost`` on both, as a real stream would.
Delivery is queued by default (handled by the receiver's ``serve`` task, like
a socket), or synchronous inside ``send`` for the simplest unit tests.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections import deque
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus
from attrs import frozen

from .base import Peer, TransportHandler, TransportName, next_connection_id

__all__ = ["MemoryNetwork", "MemoryTransport", "SentMessage"]

logger = logging.getLogger(__name__)

_Key = tuple[str, str, int]


@frozen
class SentMessage:
    """One message put on the network.

    ``source`` is the sender as the receiver sees it (with the receiver's
    connection id); ``destination`` is the Peer the sender asked for.
    ``delivered`` is ``False`` when it was dropped or nobody listened there.
    """

    data: bytes
    source: Peer
    destination: Peer
    delivered: bool


class MemoryNetwork:
    """A switchboard between :class:`MemoryTransport` s.

    ``drop(message, source, destination)`` returning ``True`` loses that
    message (it is still logged, as not delivered).
    """

    def __init__(self, *, synchronous: bool = False, max_queue: int = 10_000) -> None:
        self.synchronous = synchronous
        self.max_queue = max_queue
        self.sent: list[SentMessage] = []
        self.drop: Callable[[bytes, Peer, Peer], bool] | None = None
        self._transports: dict[_Key, MemoryTransport] = {}
        self._ports = itertools.count(40000)

    def transport(
        self, name: TransportName, host: str, port: int, *, reliable: bool | None = None
    ) -> MemoryTransport:
        """A new transport on this network (it attaches when served)."""
        return MemoryTransport(self, name, host, port, reliable=reliable)

    def messages_to(self, host: str, port: int) -> list[bytes]:
        """What was delivered to an address, in order."""
        return [
            m.data
            for m in self.sent
            if m.delivered and (m.destination.host, m.destination.port) == (host, port)
        ]

    def _attach(self, transport: MemoryTransport) -> None:
        if transport.port == 0:
            while (transport.name, transport.host, port := next(self._ports)) in self._transports:
                pass
            transport.port = port
        key = (transport.name, transport.host, transport.port)
        if key in self._transports:
            raise OSError(errno.EADDRINUSE, f"{key} already in use on the memory network")
        self._transports[key] = transport

    def _detach(self, transport: MemoryTransport) -> None:
        key = (transport.name, transport.host, transport.port)
        if self._transports.get(key) is transport:
            del self._transports[key]

    def _find(self, name: str, host: str, port: int) -> MemoryTransport | None:
        return self._transports.get((name, host, port))

    def _transmit(
        self, receiver: MemoryTransport | None, data: bytes, source: Peer, destination: Peer
    ) -> None:
        delivered = receiver is not None and not (
            self.drop is not None and self.drop(data, source, destination)
        )
        self.sent.append(SentMessage(data, source, destination, delivered))
        if receiver is not None and delivered:
            receiver._enqueue(data, source)


class _Link:
    """One end of an in-memory connection."""

    __slots__ = ("id", "local", "remote", "remote_id")

    def __init__(self, id: int, local: MemoryTransport, remote: MemoryTransport, remote_id: int):
        self.id = id
        self.local = local
        self.remote = remote
        self.remote_id = remote_id


class MemoryTransport:
    """A transport attached to a :class:`MemoryNetwork`."""

    def __init__(
        self,
        network: MemoryNetwork,
        name: TransportName,
        host: str,
        port: int,
        *,
        reliable: bool | None = None,
    ) -> None:
        self.network = network
        self.name: TransportName = name
        self.reliable: bool = name != "UDP" if reliable is None else reliable
        self.host = host
        self.port = port
        self._handler: TransportHandler | None = None
        self._queue: deque[tuple[bytes | None, Peer]] = deque()
        self._wakeup = anyio.Event()
        self._links: dict[int, _Link] = {}
        self._by_address: dict[tuple[str, int], _Link] = {}

    @property
    def local_host(self) -> str:
        return self.host

    @property
    def local_port(self) -> int:
        return self.port

    @property
    def connection_count(self) -> int:
        return len(self._links)

    async def serve(
        self,
        handler: TransportHandler,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Attach to the network, report readiness, deliver queued messages until cancelled."""
        self.network._attach(self)
        self._handler = handler
        try:
            task_status.started()
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                self._drain()
        finally:
            self.network._detach(self)
            for link in list(self._links.values()):
                self._close_link(link)
            self._handler = None
            self._queue.clear()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            data, peer = queue.popleft()
            self._dispatch(data, peer)

    def _dispatch(self, data: bytes | None, peer: Peer) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            if data is None:
                handler.connection_lost(peer)
            else:
                handler.message_received(data, peer)
        except Exception:
            logger.exception("memory %s handler failed at %s:%d", self.name, self.host, self.port)

    def _enqueue(self, data: bytes | None, peer: Peer) -> None:
        if self._handler is None:
            return
        if self.network.synchronous:
            self._dispatch(data, peer)
            return
        if len(self._queue) >= self.network.max_queue:
            logger.warning(
                "memory %s queue full at %s:%d, dropping", self.name, self.host, self.port
            )
            return
        self._queue.append((data, peer))
        self._wakeup.set()

    # -- connections (reliable transports) -------------------------------------------

    def _link_for(self, peer: Peer) -> _Link | None:
        if peer.connection_id is not None:
            link = self._links.get(peer.connection_id)
            if link is not None:
                return link
        return self._by_address.get((peer.host, peer.port))

    def _connect(self, peer: Peer) -> _Link:
        if self._handler is None:
            raise OSError(f"memory {self.name} transport is not serving")
        remote = self.network._find(self.name, peer.host, peer.port)
        if remote is None or remote._handler is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens at {peer.address}")
        local_id, remote_id = next_connection_id(), next_connection_id()
        link = _Link(local_id, self, remote, remote_id)
        self._add_link(link, remote)
        remote._add_link(_Link(remote_id, remote, self, local_id), self)
        return link

    def _add_link(self, link: _Link, remote: MemoryTransport) -> None:
        self._links[link.id] = link
        self._by_address[(remote.host, remote.port)] = link

    def _close_link(self, link: _Link) -> None:
        """Close both ends, reporting ``connection_lost`` on each."""
        for end_owner, end_id, far in (
            (link.local, link.id, link.remote),
            (link.remote, link.remote_id, link.local),
        ):
            end = end_owner._links.pop(end_id, None)
            if end is None:
                continue
            address = (far.host, far.port)
            if end_owner._by_address.get(address) is end:
                del end_owner._by_address[address]
            end_owner._enqueue(None, Peer(end_owner.name, far.host, far.port, end_id))

    def close_connection(self, connection_id: int) -> bool:
        """Close one connection (both sides get ``connection_lost``)."""
        link = self._links.get(connection_id)
        if link is None:
            return False
        self._close_link(link)
        return True

    # -- sending ----------------------------------------------------------------

    def _send_on(self, link: _Link, data: bytes, destination: Peer) -> None:
        source = Peer(self.name, self.host, self.port, link.remote_id)
        self.network._transmit(link.remote, data, source, destination)

    def send_nowait(self, data: bytes, peer: Peer) -> bool:
        """Deliver now; a reliable transport without a connection says ``False``."""
        if self._handler is None:
            raise OSError(f"memory {self.name} transport is not serving")
        if self.reliable:
            link = self._link_for(peer)
            if link is None:
                return False
            self._send_on(link, data, peer)
            return True
        receiver = self.network._find(self.name, peer.host, peer.port)
        self.network._transmit(receiver, data, Peer(self.name, self.host, self.port), peer)
        return True

    async def send(self, data: bytes, peer: Peer) -> None:
        """Deliver, connecting first on a reliable transport (``OSError`` if nobody listens)."""
        await anyio.lowlevel.checkpoint()
        if self.reliable and self._link_for(peer) is None:
            self._connect(peer)
        self.send_nowait(data, peer)
