"""What every SIP transport offers the stack.

A transport moves whole SIP messages as bytes. It does not parse SIP: stream
transports only frame (see :class:`sdpbx.sip.StreamFramer`), and the stack
parses. Inbound messages are handed to a synchronous
:class:`TransportHandler` so the hot UDP path costs no task switch per
datagram; sending is awaited because a stream may have to connect first.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
from typing import Literal, Protocol

from anyio.abc import TaskStatus
from attrs import frozen

__all__ = [
    "ListenError",
    "Peer",
    "Transport",
    "TransportHandler",
    "TransportName",
    "is_ip_address",
    "next_connection_id",
]

TransportName = Literal["UDP", "TCP", "TLS", "WS", "WSS"]

_connection_ids = itertools.count(1)


@functools.lru_cache(maxsize=4096)
def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address, i.e. needs no DNS to reach.
    Cached: the same few hosts are asked about for every binding and call."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def next_connection_id() -> int:
    """A connection id unique across every stream transport of the process,
    so a binding or a dialog can name "the connection" without its transport."""
    return next(_connection_ids)


@frozen
class Peer:
    """The far end of one message: which transport, which address.

    ``connection_id`` names the stream connection a message arrived on (``None``
    for UDP), so a response or an in-dialog request can go back over the same
    TCP/TLS/WS connection, as RFC 3261 §18.2.2 and RFC 5626 expect for phones
    behind NAT.
    """

    transport: TransportName
    host: str
    port: int
    connection_id: int | None = None

    @property
    def address(self) -> str:
        """``ip:port`` with IPv6 hosts in brackets, as webhooks expect it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class ListenError(OSError):
    """A transport could not bind its address: ``cannot listen on UDP
    127.0.0.1:5060: Address already in use``.

    The OS error alone (``[Errno 98] Address already in use``) does not say
    which of a server's sockets failed; this one names the transport, the
    address and the port, keeps the ``errno``, and chains the original.
    """

    def __init__(self, transport: str, host: str, port: int, cause: OSError) -> None:
        address = f"[{host}]" if ":" in host else host
        # The plain OS wording: anyio's own message repeats the address; a
        # resolver error (negative errno) has only its strerror.
        errno = cause.errno
        reason = os.strerror(errno) if errno and errno > 0 else cause.strerror or str(cause)
        super().__init__(cause.errno, f"cannot listen on {transport} {address}:{port}: {reason}")
        self.transport = transport
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


class TransportHandler(Protocol):
    """The receiver of a transport's inbound traffic (normally the stack)."""

    def message_received(self, data: bytes, peer: Peer) -> None:
        """One whole SIP message (a datagram, or one framed stream message)."""

    def connection_lost(self, peer: Peer) -> None:
        """A stream connection closed; ``peer.connection_id`` says which one."""


class Transport(Protocol):
    """A bound listener that can also send (and, for streams, connect)."""

    name: TransportName
    reliable: bool

    @property
    def local_host(self) -> str: ...

    @property
    def local_port(self) -> int: ...

    async def serve(
        self, handler: TransportHandler, *, task_status: TaskStatus[None] = ...
    ) -> None:
        """Bind, report readiness via ``task_status.started()``, run until cancelled."""

    async def send(self, data: bytes, peer: Peer) -> None:
        """Send one message. Stream transports reuse ``peer.connection_id``
        when it is still open, else an open connection to the same address,
        else connect. Raises :class:`OSError` if it cannot be delivered."""

    def send_nowait(self, data: bytes, peer: Peer) -> bool:
        """Send without awaiting when that is possible right now (UDP, or an
        open stream with room in its buffer). Returns ``False`` when the
        caller must use :meth:`send` instead."""
