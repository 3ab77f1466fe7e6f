"""Raw SIP over loopback sockets, as a hostile or careless peer would send it.

Blocking socket helpers for the live tests against ``examples/full_pbx.py``:
one message out over UDP, TCP or WebSocket, the first reply line back (or
``None``). They parse nothing with sdpbx, so they can send what sdpbx itself
would never produce.
"""

from __future__ import annotations

import socket
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    TextMessage,
)
from wsproto.events import Request as WsRequest


def first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1")


def status_of_line(line: str | None) -> int | None:
    if not line or not line.startswith("SIP/2.0 "):
        return None
    try:
        return int(line.split(" ", 2)[1])
    except ValueError:
        return None


def udp_send(
    port: int, payload: bytes, *, source: str = "127.0.0.1", timeout: float = 1.0
) -> str | None:
    """One datagram to 127.0.0.1:``port`` from ``source``; the first reply line or None.

    Provisional replies (100 Trying) are skipped while a final one may follow.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.sendto(payload, ("127.0.0.1", port))
        return _first_final(lambda: sock.recv(65535), timeout)


def tcp_send(port: int, payload: bytes, *, timeout: float = 1.0) -> str | None:
    """One message on a fresh TCP connection; the first final reply line or None.

    ``None`` also when the server closes the connection without answering.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        buffer = bytearray()

        def receive() -> bytes:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65535)
                if not chunk:
                    raise ConnectionResetError
                buffer.extend(chunk)
            head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
            buffer[:] = rest  # responses we read carry no body
            return head

        return _first_final(receive, timeout)


class WsClient:
    """A WebSocket client speaking subprotocol ``sip`` (RFC 7118) over a blocking socket."""

    def __init__(self, port: int, *, timeout: float = 2.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(
            self.ws.send(WsRequest(host="127.0.0.1", target="/", subprotocols=["sip"]))
        )
        self._messages: list[bytes] = []
        self._partial = bytearray()
        self.closed = False
        while True:
            event = self._next_event()
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection) or event is None:
                raise ConnectionError("WebSocket handshake refused")

    def _next_event(self) -> object | None:
        for event in self.ws.events():
            return event
        data = self.sock.recv(65535)
        if not data:
            self.closed = True
            return None
        self.ws.receive_data(data)
        for event in self.ws.events():
            return event
        return self._next_event()

    def send(self, payload: bytes) -> None:
        self.sock.sendall(self.ws.send(BytesMessage(data=payload)))

    def receive(self) -> bytes:
        """The next whole SIP message; raises on close or timeout."""
        while True:
            event = self._next_event()
            if event is None or isinstance(event, CloseConnection):
                self.closed = True
                raise ConnectionResetError("WebSocket closed")
            if isinstance(event, TextMessage | BytesMessage):
                data = event.data.encode() if isinstance(event.data, str) else event.data
                self._partial.extend(data)
                if event.message_finished:
                    message = bytes(self._partial)
                    self._partial.clear()
                    return message

    def close(self) -> None:
        self.sock.close()


def ws_send(port: int, payload: bytes, *, timeout: float = 1.0) -> str | None:
    """One message in one WebSocket message on a fresh connection; first final reply line."""
    client = WsClient(port, timeout=timeout)
    try:
        client.send(payload)
        return _first_final(client.receive, timeout)
    finally:
        client.close()


def _first_final(receive: object, timeout: float) -> str | None:
    assert callable(receive)
    deadline = time.monotonic() + timeout
    line = None
    while time.monotonic() < deadline:
        try:
            line = first_line(receive())
        except (TimeoutError, ConnectionError, OSError):
            return line
        status = status_of_line(line)
        if status is None or status >= 200:
            return line
    return line
