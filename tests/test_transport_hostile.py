"""Hostile peers over real loopback sockets: each closes only its own connection.

A SipStack serves TCP, TLS and WS; after every hostile connection (a bad
WebSocket handshake, a reset right after connect, random bytes) the same
listener must still answer an OPTIONS over a fresh connection.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import AsyncIterator

import anyio
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from sdpbx.stack import SipStack
from sdpbx.transport.base import Peer
from sdpbx.transport.stream import TcpTransport
from sdpbx.transport.ws import WsTransport

pytestmark = pytest.mark.anyio

WAIT = 10


def options(transport: str, n: int = 1) -> bytes:
    return (
        f"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bK-hostile-{n}-{random.random()}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=p{n}\r\n"
        f"To: <sip:pbx@127.0.0.1>\r\n"
        f"Call-ID: hostile-{n}-{random.random()}@127.0.0.1\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
async def pbx() -> AsyncIterator[tuple[TcpTransport, WsTransport]]:
    tcp = TcpTransport("127.0.0.1", 0)
    ws = WsTransport("127.0.0.1", 0)
    stack = SipStack([tcp, ws])
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        yield tcp, ws
        tg.cancel_scope.cancel()


async def tcp_answers(port: int) -> None:
    with anyio.fail_after(WAIT):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(options("TCP"))
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
    assert data.startswith(b"SIP/2.0 200 "), data


async def ws_answers(port: int) -> None:
    with anyio.fail_after(WAIT):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send(ws.send(Request(host="127.0.0.1", target="/", subprotocols=["sip"])))
            got: list[object] = []
            while not any(isinstance(e, TextMessage) for e in got):
                ws.receive_data(await stream.receive())
                for event in ws.events():
                    got.append(event)
                    if isinstance(event, AcceptConnection):
                        await stream.send(ws.send(TextMessage(data=options("WS").decode())))
    text = next(e for e in got if isinstance(e, TextMessage))
    assert isinstance(text, TextMessage)
    assert text.data.startswith("SIP/2.0 200 ")


async def send_raw(port: int, data: bytes) -> bytes:
    """Send bytes, half-close, and read what comes back until the server closes."""
    reply = b""
    with anyio.fail_after(WAIT):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(data)
            try:
                await stream.send_eof()
                while True:
                    reply += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
    return reply


def reset_at_once(port: int) -> None:
    """Connect and reset (RST, SO_LINGER 0) before the server can look at us."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.connect(("127.0.0.1", port))
    sock.close()


GOOD_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: sip\r\n\r\n"
)

BAD_HANDSHAKES = [
    b"GET / HTTP/1.1\r\nHost: \xe9\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: xn--\r\n\r\n",
    GOOD_HANDSHAKE.replace(b"Host: 127.0.0.1", b"Host: xn--"),
    GOOD_HANDSHAKE.replace(b"Host: 127.0.0.1", "Host: hé.com".encode()),
    GOOD_HANDSHAKE.replace(b"Host: 127.0.0.1", b"Host: \xe9"),
    GOOD_HANDSHAKE.replace(b"Protocol: sip", b"Protocol: sip\xff"),
    GOOD_HANDSHAKE.replace(b"Connection: Upgrade", b"Connection: Upgrade, \xff"),
    GOOD_HANDSHAKE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: \xff\r\n\r\n"),
    GOOD_HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"!!!"),
    GOOD_HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="),  # 5 bytes
    GOOD_HANDSHAKE.replace(b"GET / ", "GET /é ".encode()),
]


@pytest.mark.parametrize("handshake", BAD_HANDSHAKES)
async def test_bad_ws_handshake_is_refused_and_server_lives(
    pbx: tuple[TcpTransport, WsTransport], handshake: bytes
) -> None:
    tcp, ws = pbx
    reply = await send_raw(ws.local_port, handshake)
    assert not reply.startswith(b"HTTP/1.1 101"), reply
    await ws_answers(ws.local_port)
    await tcp_answers(tcp.local_port)
    assert ws.stats.connection_errors == 0  # refused cleanly, not by the guard


async def test_bad_key_is_answered_400(pbx: tuple[TcpTransport, WsTransport]) -> None:
    _, ws = pbx
    reply = await send_raw(ws.local_port, BAD_HANDSHAKES[8])
    assert reply.startswith(b"HTTP/1.1 400"), reply


async def test_reset_right_after_connect(pbx: tuple[TcpTransport, WsTransport]) -> None:
    tcp, ws = pbx
    for _ in range(20):
        reset_at_once(tcp.local_port)
        reset_at_once(ws.local_port)
    await tcp_answers(tcp.local_port)
    await ws_answers(ws.local_port)


async def test_ws_handshake_mutation_fuzz(pbx: tuple[TcpTransport, WsTransport]) -> None:
    tcp, ws = pbx
    rng = random.Random(7118)
    for _ in range(150):
        data = bytearray(GOOD_HANDSHAKE)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[pos] = rng.randrange(256)
            elif choice < 0.7:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            elif choice < 0.9:
                del data[pos : pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = rng.choice([b"\r\n", b":", b",", b"\xe9", b"xn--", b"\x00"])
        await send_raw(ws.local_port, bytes(data))
    await ws_answers(ws.local_port)
    await tcp_answers(tcp.local_port)


async def test_tcp_byte_stream_mutation_fuzz(pbx: tuple[TcpTransport, WsTransport]) -> None:
    tcp, _ = pbx
    rng = random.Random(3261)
    base = options("TCP") * 2
    for _ in range(150):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[pos] = rng.randrange(256)
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        await send_raw(tcp.local_port, bytes(data))
    await tcp_answers(tcp.local_port)


MALFORMED_ANSWERS = [
    b"",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: wrong\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, \xff\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Protocol: sip\xff\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 \xff\xff\xff\r\n\r\n",
]


@pytest.mark.parametrize("answer", MALFORMED_ANSWERS)
async def test_outbound_ws_malformed_answer_is_an_os_error(
    pbx: tuple[TcpTransport, WsTransport], answer: bytes
) -> None:
    tcp, ws = pbx

    async def fake_server(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(WAIT):
                await stream.receive()
                if answer:
                    await stream.send(answer)
                await anyio.sleep(0.5)  # let the client read before we close

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, fake_server)
        with pytest.raises(OSError):  # noqa: PT011 (any OSError is the contract)
            await ws.send(options("WS"), Peer("WS", "127.0.0.1", port))
        tg.cancel_scope.cancel()
    await ws_answers(ws.local_port)
    await tcp_answers(tcp.local_port)


@pytest.mark.parametrize("host", ["xn--", "\xe9" * 70, "a..b"])
async def test_outbound_to_bad_host_name_is_an_os_error(
    pbx: tuple[TcpTransport, WsTransport], host: str
) -> None:
    tcp, ws = pbx
    for transport in (tcp, ws):
        with pytest.raises(OSError):  # noqa: PT011 (any OSError is the contract)
            await transport.send(options("WS"), Peer(transport.name, host, 5060))
    await ws_answers(ws.local_port)


async def test_slowloris_tcp_message_must_complete_within_deadline() -> None:
    """One byte at a time used to reset the idle timer; now the message has a deadline."""
    tcp = TcpTransport("127.0.0.1", 0, idle_timeout=60, message_deadline=0.3)
    stack = SipStack([tcp])
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        closed = False
        with anyio.fail_after(WAIT):
            async with await anyio.connect_tcp("127.0.0.1", tcp.local_port) as stream:
                await stream.send(b"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n")
                try:
                    while True:
                        await stream.send(b"X")
                        with anyio.move_on_after(0.05):
                            await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    closed = True
        assert closed
        await tcp_answers(tcp.local_port)
        tg.cancel_scope.cancel()
