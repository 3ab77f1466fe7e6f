"""SIP transports over anyio: UDP, TCP, TLS, WebSocket, and an in-memory one for tests."""

from .base import Peer, Transport, TransportHandler, TransportName, next_connection_id
from .memory import MemoryNetwork, MemoryTransport, SentMessage
from .stream import TcpTransport, TlsTransport
from .udp import UdpTransport
from .ws import WsTransport

__all__ = [
    "MemoryNetwork",
    "MemoryTransport",
    "Peer",
    "SentMessage",
    "TcpTransport",
    "TlsTransport",
    "Transport",
    "TransportHandler",
    "TransportName",
    "UdpTransport",
    "WsTransport",
    "next_connection_id",
]
