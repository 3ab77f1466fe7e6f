"""SIP transports over anyio: UDP, TCP, TLS, WebSocket, and an in-memory one for tests."""

from .base import (
    ListenError,
    Peer,
    Transport,
    TransportHandler,
    TransportName,
    next_connection_id,
)
from .limits import ConnectionLimits, ConnectionTable, raise_open_file_limit
from .memory import MemoryNetwork, MemoryTransport, SentMessage
from .stream import TcpTransport, TlsTransport
from .udp import UdpStats, UdpTransport
from .ws import WsTransport

__all__ = [
    "ConnectionLimits",
    "ConnectionTable",
    "ListenError",
    "MemoryNetwork",
    "MemoryTransport",
    "Peer",
    "SentMessage",
    "TcpTransport",
    "TlsTransport",
    "Transport",
    "TransportHandler",
    "TransportName",
    "UdpStats",
    "UdpTransport",
    "WsTransport",
    "next_connection_id",
    "raise_open_file_limit",
]
