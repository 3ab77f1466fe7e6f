"""SIP over WebSocket (RFC 7118) over real loopback sockets.

The far end is either a bare wsproto client written here over anyio, or a
second WsTransport (its own client side).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteStream, SocketAttribute
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from wsproto import ConnectionType, WSConnection
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

from sdpbx.transport.base import Peer, Transport
from sdpbx.transport.ws import WsTransport

pytestmark = pytest.mark.anyio

REGISTER = (
    b"REGISTER sip:example.test SIP/2.0\r\n"
    b"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKnashds7\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:alice@example.test>\r\n"
    b"From: <sip:alice@example.test>;tag=a73kszlfl\r\n"
    b"Call-ID: 1j9FpLxk3uxtm8tn@df7jal23ls0d.invalid\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>\r\n"
    b"Content-Length: 0\r\n\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKnashds7\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class Recorder:
    """A TransportHandler that queues what it is told, so tests await it."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, bytes, Peer]](100)

    def message_received(self, data: bytes, peer: Peer) -> None:
        self._send.send_nowait(("message", data, peer))

    def connection_lost(self, peer: Peer) -> None:
        self._send.send_nowait(("lost", b"", peer))

    async def next(self) -> tuple[str, bytes, Peer]:
        with anyio.fail_after(10):
            return await self._receive.receive()

    async def message(self) -> tuple[bytes, Peer]:
        kind, data, peer = await self.next()
        assert kind == "message"
        return data, peer

    async def lost(self) -> Peer:
        kind, _, peer = await self.next()
        assert kind == "lost"
        return peer

    def close(self) -> None:
        self._send.close()
        self._receive.close()


class WsClient:
    """A minimal wsproto client, independent of the code under test."""

    def __init__(self, stream: ByteStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.pending: list[Event] = []

    @classmethod
    async def connect(
        cls, port: int, subprotocols: list[str], path: str = "/"
    ) -> tuple[WsClient, Event]:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send(
            ws.send(Request(host=f"127.0.0.1:{port}", target=path, subprotocols=subprotocols))
        )
        client = cls(stream, ws)
        return client, await client.event()

    @property
    def local_port(self) -> int:
        return int(self.stream.extra(SocketAttribute.local_port))

    async def event(self) -> Event:
        with anyio.fail_after(10):
            while not self.pending:
                try:
                    data = await self.stream.receive()
                except anyio.EndOfStream:
                    self.ws.receive_data(None)
                else:
                    self.ws.receive_data(data)
                self.pending.extend(self.ws.events())
            return self.pending.pop(0)

    async def message(self) -> str | bytes:
        """One whole message (text as str, binary as bytes)."""
        parts: list[str | bytes] = []
        while True:
            event = await self.event()
            assert isinstance(event, TextMessage | BytesMessage), event
            parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
            if event.message_finished:
                if isinstance(parts[0], str):
                    return "".join(str(p) for p in parts)
                return b"".join(bytes(p) for p in parts)  # type: ignore[arg-type]

    async def send(self, event: Event) -> None:
        await self.stream.send(self.ws.send(event))

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


async def _serve(tg: anyio.abc.TaskGroup, transport: WsTransport, handler: Recorder) -> None:
    await tg.start(transport.serve, handler)


async def test_is_a_transport() -> None:
    transport: Transport = WsTransport("127.0.0.1", 0)
    assert transport.name == "WS"
    assert transport.reliable is True
    secure = WsTransport("127.0.0.1", 0, secure=True, ssl_context=ssl.create_default_context())
    assert secure.name == "WSS"
    with pytest.raises(ValueError, match="ssl_context"):
        WsTransport("127.0.0.1", 0, secure=True)


async def test_sip_both_directions_with_wsproto_client(recorder: Recorder) -> None:
    server = WsTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        assert server.local_port > 0
        client, accepted = await WsClient.connect(server.local_port, ["sip"])
        assert isinstance(accepted, AcceptConnection)
        assert accepted.subprotocol == "sip"

        await client.send(TextMessage(data=REGISTER.decode()))
        data, peer = await recorder.message()
        assert data == REGISTER
        assert (peer.transport, peer.host, peer.port) == ("WS", "127.0.0.1", client.local_port)
        assert peer.connection_id is not None

        # Back over the same connection, by connection id: UTF-8 goes as text.
        await server.send(OK, peer)
        assert await client.message() == OK.decode()
        # Non-UTF-8 bytes go as a binary message.
        odd = OK + b"\xff\xfe"
        await server.send(odd, Peer("WS", peer.host, peer.port))
        assert await client.message() == odd
        # A binary message from the client is one SIP message as well.
        await client.send(BytesMessage(data=REGISTER))
        assert (await recorder.message())[0] == REGISTER

        await client.send(Ping(payload=b"keepalive"))
        pong = await client.event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"keepalive"
        await client.aclose()
        assert (await recorder.lost()) == peer
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("subprotocols", [[], ["chat"]])
async def test_handshake_without_sip_is_refused(
    recorder: Recorder, subprotocols: list[str]
) -> None:
    server = WsTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        client, answer = await WsClient.connect(server.local_port, subprotocols)
        assert isinstance(answer, RejectConnection)
        assert answer.status_code == 400
        body = await client.event()
        assert isinstance(body, RejectData)
        assert b"sip" in body.data
        await client.aclose()
        assert server.connection_count == 0
        tg.cancel_scope.cancel()


async def test_wrong_path_is_404(recorder: Recorder) -> None:
    server = WsTransport("127.0.0.1", 0, path="/ws")
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        client, answer = await WsClient.connect(server.local_port, ["sip"], path="/other")
        assert isinstance(answer, RejectConnection)
        assert answer.status_code == 404
        await client.aclose()
        client, answer = await WsClient.connect(server.local_port, ["sip"], path="/ws?x=1")
        assert isinstance(answer, AcceptConnection)
        await client.aclose()
        await recorder.lost()
        tg.cancel_scope.cancel()


async def test_plain_http_request_is_refused(recorder: Recorder) -> None:
    server = WsTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        async with await anyio.connect_tcp("127.0.0.1", server.local_port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await stream.receive()
        assert reply.startswith(b"HTTP/1.1 400")
        tg.cancel_scope.cancel()


async def test_close_from_client_reports_connection_lost(recorder: Recorder) -> None:
    server = WsTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        client, _ = await WsClient.connect(server.local_port, ["sip"])
        await client.send(TextMessage(data=REGISTER.decode()))
        _, peer = await recorder.message()
        await client.send(CloseConnection(code=1000, reason="bye"))
        reply = await client.event()
        assert isinstance(reply, CloseConnection)
        assert reply.code == 1000
        assert await recorder.lost() == peer
        assert server.connection_count == 0
        with pytest.raises(OSError, match=r"connection attempts failed|refused|closed"):
            # The connection is gone and the client's port has no listener.
            await server.send(OK, peer)
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_message_split_across_frames_and_chunks(recorder: Recorder) -> None:
    server = WsTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        client, _ = await WsClient.connect(server.local_port, ["sip"])
        text = REGISTER.decode()
        # Three frames of one message (FIN only on the last) ...
        wire = client.ws.send(TextMessage(data=text[:40], message_finished=False))
        wire += client.ws.send(TextMessage(data=text[40:100], message_finished=False))
        wire += client.ws.send(TextMessage(data=text[100:], message_finished=True))
        # ... written to the socket in small chunks that cut through frame headers.
        for i in range(0, len(wire), 7):
            await client.stream.send(wire[i : i + 7])
        data, _ = await recorder.message()
        assert data == REGISTER
        # A Ping between the fragments of a message is allowed and answered.
        await client.send(TextMessage(data=text[:10], message_finished=False))
        await client.send(Ping(payload=b"p"))
        await client.send(TextMessage(data=text[10:], message_finished=True))
        assert isinstance(await client.event(), Pong)
        assert (await recorder.message())[0] == REGISTER
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_message_too_big_closes_with_1009(recorder: Recorder) -> None:
    server = WsTransport("127.0.0.1", 0, max_message_size=1024)
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        client, _ = await WsClient.connect(server.local_port, ["sip"])
        await client.send(TextMessage(data="x" * 600, message_finished=False))
        await client.send(TextMessage(data="x" * 600, message_finished=True))
        close = await client.event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1009
        lost = await recorder.lost()
        assert lost.port == client.local_port
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_crlf_keepalive_is_not_delivered(recorder: Recorder) -> None:
    server = WsTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        client, _ = await WsClient.connect(server.local_port, ["sip"])
        await client.send(TextMessage(data="\r\n\r\n"))
        await client.send(TextMessage(data=REGISTER.decode()))
        assert (await recorder.message())[0] == REGISTER
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_close_connection_by_id(recorder: Recorder) -> None:
    server = WsTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        client, _ = await WsClient.connect(server.local_port, ["sip"])
        await client.send(TextMessage(data=REGISTER.decode()))
        _, peer = await recorder.message()
        assert server.connection_peers() == [peer]
        assert peer.connection_id is not None
        assert server.close_connection(peer.connection_id)
        assert not server.close_connection(10**9)
        close = await client.event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1001
        assert await recorder.lost() == peer
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_idle_connection_is_closed(recorder: Recorder) -> None:
    server = WsTransport("127.0.0.1", 0, idle_timeout=0.2)
    async with anyio.create_task_group() as tg:
        await _serve(tg, server, recorder)
        client, _ = await WsClient.connect(server.local_port, ["sip"])
        close = await client.event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1000
        assert close.reason == "idle"
        assert (await recorder.lost()).port == client.local_port
        await client.aclose()
        tg.cancel_scope.cancel()


async def test_transport_client_to_second_transport() -> None:
    a_rec, b_rec = Recorder(), Recorder()
    a = WsTransport("127.0.0.1", 0)
    b = WsTransport("127.0.0.1", 0)
    try:
        async with anyio.create_task_group() as tg:
            await _serve(tg, a, a_rec)
            await _serve(tg, b, b_rec)
            to_b = Peer("WS", "127.0.0.1", b.local_port)
            await a.send(REGISTER, to_b)
            data, from_a = await b_rec.message()
            assert data == REGISTER
            assert from_a.connection_id is not None
            await b.send(OK, from_a)
            data, from_b = await a_rec.message()
            assert data == OK
            assert (from_b.host, from_b.port) == ("127.0.0.1", b.local_port)
            # Reuse: the second send and the concurrent ones share one connection.
            async with anyio.create_task_group() as senders:
                for _ in range(5):
                    senders.start_soon(a.send, REGISTER, to_b)
            for _ in range(5):
                assert (await b_rec.message())[1] == from_a
            assert (a.connection_count, b.connection_count) == (1, 1)
            tg.cancel_scope.cancel()
    finally:
        a_rec.close()
        b_rec.close()


async def test_client_refused_by_server_raises(recorder: Recorder) -> None:
    a = WsTransport("127.0.0.1", 0, path="/")
    b = WsTransport("127.0.0.1", 0, path="/only-here")
    async with anyio.create_task_group() as tg:
        await _serve(tg, a, recorder)
        await _serve(tg, b, recorder)
        with pytest.raises(ConnectionRefusedError, match="404"):
            await a.send(REGISTER, Peer("WS", "127.0.0.1", b.local_port))
        assert a.connection_count == 0
        tg.cancel_scope.cancel()


async def test_send_without_serve_is_an_error() -> None:
    with pytest.raises(OSError, match="not serving"):
        await WsTransport("127.0.0.1", 0).send(REGISTER, Peer("WS", "127.0.0.1", 9))


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sdpbx test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_wss_with_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    a_rec, b_rec = Recorder(), Recorder()
    a = WsTransport(
        "127.0.0.1", 0, secure=True, ssl_context=server_ctx, client_ssl_context=client_ctx
    )
    b = WsTransport("127.0.0.1", 0, secure=True, ssl_context=server_ctx)
    try:
        async with anyio.create_task_group() as tg:
            await _serve(tg, a, a_rec)
            await _serve(tg, b, b_rec)
            await a.send(REGISTER, Peer("WSS", "127.0.0.1", b.local_port))
            data, from_a = await b_rec.message()
            assert data == REGISTER
            assert from_a.transport == "WSS"
            await b.send(OK, from_a)
            data, from_b = await a_rec.message()
            assert data == OK
            assert from_b.transport == "WSS"

            # A client that does not trust the certificate cannot connect.
            c = WsTransport("127.0.0.1", 0, secure=True, ssl_context=server_ctx)
            await _serve(tg, c, a_rec)
            with pytest.raises(ssl.SSLCertVerificationError):
                await c.send(REGISTER, Peer("WSS", "127.0.0.1", b.local_port))
            tg.cancel_scope.cancel()
    finally:
        a_rec.close()
        b_rec.close()
