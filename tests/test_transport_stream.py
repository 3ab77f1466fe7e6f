"""TcpTransport and TlsTransport over real loopback sockets."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
from anyio.abc import SocketAttribute
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sdpbx.transport.base import Peer
from sdpbx.transport.stream import TcpTransport, TlsTransport

pytestmark = pytest.mark.anyio

T = TypeVar("T")
WAIT = 10  # seconds before a test that hangs fails instead


def sip(n: int = 1, body: bytes = b"") -> bytes:
    return (
        b"OPTIONS sip:bob@example.com SIP/2.0\r\nCSeq: %d OPTIONS\r\nContent-Length: %d\r\n\r\n"
        % (n, len(body))
        + body
    )


class Recorder:
    """A handler whose arrivals can be awaited one by one."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.messages: deque[tuple[bytes, Peer]] = deque()
        self.lost_peers: deque[Peer] = deque()
        self.fail_on = fail_on
        self._arrived = anyio.Event()

    def message_received(self, data: bytes, peer: Peer) -> None:
        self.messages.append((data, peer))
        self._arrived.set()
        if data == self.fail_on:
            raise RuntimeError("handler bug")

    def connection_lost(self, peer: Peer) -> None:
        self.lost_peers.append(peer)
        self._arrived.set()

    async def _next(self, queue: deque[T]) -> T:
        with anyio.fail_after(WAIT):
            while not queue:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return queue.popleft()

    async def message(self) -> tuple[bytes, Peer]:
        return await self._next(self.messages)

    async def lost(self) -> Peer:
        return await self._next(self.lost_peers)


@pytest.fixture
async def server() -> AsyncIterator[tuple[TcpTransport, Recorder]]:
    transport = TcpTransport("127.0.0.1", 0, idle_timeout=60)
    handler = Recorder()
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, handler)
        yield transport, handler
        tg.cancel_scope.cancel()


async def read_exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    data = b""
    with anyio.fail_after(WAIT):
        while len(data) < size:
            data += await stream.receive()
    return data


async def read_until_eof(stream: anyio.abc.ByteStream) -> bytes:
    data = b""
    with anyio.fail_after(WAIT):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data


async def test_framing_across_chunks_and_reply_on_the_phones_connection(
    server: tuple[TcpTransport, Recorder],
) -> None:
    transport, handler = server
    message = sip(1, b"hello body")
    async with await anyio.connect_tcp("127.0.0.1", transport.local_port) as phone:
        local_port = phone.extra(SocketAttribute.local_port)
        stream = message + sip(2)
        for i in range(0, len(stream), 7):
            await phone.send(stream[i : i + 7])
        first, peer = await handler.message()
        second, peer2 = await handler.message()
        assert (first, second) == (message, sip(2))
        assert peer == peer2
        assert peer.transport == "TCP"
        assert (peer.host, peer.port) == ("127.0.0.1", local_port)
        assert peer.connection_id is not None
        # The answer goes back over the phone's own connection (NAT), not a new one.
        assert transport.send_nowait(b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n", peer)
        await transport.send(b"SIP/2.0 200 OK\r\nl: 2\r\n\r\nok", peer)
        expected = b"SIP/2.0 200 OK\r\nl: 0\r\n\r\nSIP/2.0 200 OK\r\nl: 2\r\n\r\nok"
        assert await read_exactly(phone, len(expected)) == expected
        assert transport.connection_count == 1


async def test_connection_reuse_both_directions() -> None:
    a_handler, b_handler = Recorder(), Recorder()
    a, b = TcpTransport("127.0.0.1", 0), TcpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve, a_handler)
        await tg.start(b.serve, b_handler)
        assert not a.send_nowait(sip(1), Peer("TCP", "127.0.0.1", b.local_port))
        await a.send(sip(1), Peer("TCP", "127.0.0.1", b.local_port))
        data, at_b = await b_handler.message()
        assert data == sip(1)
        await b.send(sip(2), at_b)
        data, at_a = await a_handler.message()
        assert data == sip(2)
        assert at_a.port == b.local_port
        # Both sides keep using the single connection, by id or by address.
        await a.send(sip(3), at_a)
        assert a.send_nowait(sip(4), Peer("TCP", "127.0.0.1", b.local_port))
        assert [await b_handler.message() for _ in range(2)] == [(sip(3), at_b), (sip(4), at_b)]
        await b.send(sip(5), Peer("TCP", "127.0.0.1", at_b.port))
        assert await a_handler.message() == (sip(5), at_a)
        assert a.connection_count == b.connection_count == 1
        assert at_a.connection_id != at_b.connection_id
        # Closing one side is seen on both.
        assert at_a.connection_id is not None
        assert a.close_connection(at_a.connection_id)
        assert await a_handler.lost() == at_a
        assert await b_handler.lost() == at_b
        assert a.connection_count == b.connection_count == 0
        assert not a.close_connection(at_a.connection_id)
        tg.cancel_scope.cancel()


async def test_concurrent_sends_share_one_connection() -> None:
    handler = Recorder()
    a, b = TcpTransport("127.0.0.1", 0), TcpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve, Recorder())
        await tg.start(b.serve, handler)
        target = Peer("TCP", "127.0.0.1", b.local_port)
        async with anyio.create_task_group() as senders:
            for i in range(20):
                senders.start_soon(a.send, sip(i), target)
        received = sorted([(await handler.message())[0] for _ in range(20)])
        assert received == sorted(sip(i) for i in range(20))
        assert a.connection_count == 1
        tg.cancel_scope.cancel()


async def test_connection_lost_when_the_phone_hangs_up(
    server: tuple[TcpTransport, Recorder],
) -> None:
    transport, handler = server
    async with await anyio.connect_tcp("127.0.0.1", transport.local_port) as phone:
        await phone.send(sip(1))
        _, peer = await handler.message()
    assert await handler.lost() == peer
    assert transport.connection_count == 0
    # Its id is gone, and its address has no connection to fall back on: OSError.
    with pytest.raises(OSError):  # noqa: PT011 - the errno differs by platform
        await transport.send(sip(2), peer)


async def test_ping_is_answered_with_pong(server: tuple[TcpTransport, Recorder]) -> None:
    transport, handler = server
    async with await anyio.connect_tcp("127.0.0.1", transport.local_port) as phone:
        await phone.send(b"\r\n\r\n")
        assert await read_exactly(phone, 2) == b"\r\n"
        await phone.send(b"\r\n\r\n" + sip(1) + b"\r\n\r\n")
        assert await read_exactly(phone, 4) == b"\r\n\r\n"
        assert (await handler.message())[0] == sip(1)


@pytest.mark.parametrize(
    "garbage",
    [
        b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n",  # no Content-Length
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: nope\r\n\r\n",
        b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 999999\r\n\r\n",
    ],
)
async def test_bad_framing_closes_the_connection(
    server: tuple[TcpTransport, Recorder], garbage: bytes
) -> None:
    transport, handler = server
    async with await anyio.connect_tcp("127.0.0.1", transport.local_port) as phone:
        await phone.send(sip(1) + garbage + sip(2))
        assert (await handler.message())[0] == sip(1)
        assert await read_until_eof(phone) == b""
        lost = await handler.lost()
        assert lost.transport == "TCP"
    assert transport.connection_count == 0


async def test_handler_exception_keeps_the_connection() -> None:
    handler = Recorder(fail_on=sip(1))
    transport = TcpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, handler)
        async with await anyio.connect_tcp("127.0.0.1", transport.local_port) as phone:
            await phone.send(sip(1) + sip(2))
            assert (await handler.message())[0] == sip(1)
            assert (await handler.message())[0] == sip(2)
            assert transport.connection_count == 1
        tg.cancel_scope.cancel()


async def test_idle_inbound_connection_is_closed() -> None:
    handler = Recorder()
    transport = TcpTransport("127.0.0.1", 0, idle_timeout=0.2)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, handler)
        async with await anyio.connect_tcp("127.0.0.1", transport.local_port) as phone:
            await phone.send(sip(1))
            _, peer = await handler.message()
            assert await read_until_eof(phone) == b""
        assert await handler.lost() == peer
        tg.cancel_scope.cancel()


async def test_idle_outbound_connection_is_closed_sooner() -> None:
    a_handler, b_handler = Recorder(), Recorder()
    a = TcpTransport("127.0.0.1", 0, outbound_idle_timeout=0.2)
    b = TcpTransport("127.0.0.1", 0, idle_timeout=600)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve, a_handler)
        await tg.start(b.serve, b_handler)
        await a.send(sip(1), Peer("TCP", "127.0.0.1", b.local_port))
        _, at_b = await b_handler.message()
        assert (await a_handler.lost()).port == b.local_port
        assert await b_handler.lost() == at_b
        tg.cancel_scope.cancel()


async def test_stopping_serve_closes_every_connection() -> None:
    handler = Recorder()
    transport = TcpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, handler)
        phones = [await anyio.connect_tcp("127.0.0.1", transport.local_port) for _ in range(3)]
        for phone in phones:
            await phone.send(sip(1))
            await handler.message()
        tg.cancel_scope.cancel()
    for phone in phones:
        assert await read_until_eof(phone) == b""
        await phone.aclose()
    assert len({(await handler.lost()).connection_id for _ in range(3)}) == 3
    assert transport.connection_count == 0
    with pytest.raises(OSError, match="not serving"):
        await transport.send(sip(1), Peer("TCP", "127.0.0.1", 9))


async def test_connect_refused_is_an_os_error(server: tuple[TcpTransport, Recorder]) -> None:
    transport, _ = server
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):  # noqa: PT011 - refused; the message is the OS's
        await transport.send(sip(1), Peer("TCP", "127.0.0.1", port))
    assert transport.connection_count == 0


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this host")
async def test_tcp_over_ipv6() -> None:
    a_handler, b_handler = Recorder(), Recorder()
    a, b = TcpTransport("::1", 0), TcpTransport("::1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve, a_handler)
        await tg.start(b.serve, b_handler)
        assert a.local_host == "::1"
        await a.send(sip(1), Peer("TCP", "::1", b.local_port))
        data, at_b = await b_handler.message()
        assert (data, at_b.host) == (sip(1), "::1")
        await b.send(sip(2), at_b)
        assert (await a_handler.message())[0] == sip(2)
        tg.cancel_scope.cancel()


# -- TLS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
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
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
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


def contexts(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert_path, key_path = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


@pytest.mark.parametrize("target", ["127.0.0.1", "localhost"])
async def test_tls_both_directions(certificate: tuple[Path, Path], target: str) -> None:
    server_ctx, client_ctx = contexts(certificate)
    a_handler, b_handler = Recorder(), Recorder()
    a = TlsTransport("127.0.0.1", 0, server_ctx, client_ctx)
    b = TlsTransport("127.0.0.1", 0, server_ctx, client_ctx)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve, a_handler)
        await tg.start(b.serve, b_handler)
        await a.send(sip(1, b"x" * 3000), Peer("TLS", target, b.local_port))
        data, at_b = await b_handler.message()
        assert data == sip(1, b"x" * 3000)
        assert at_b.transport == "TLS"
        for i in range(2, 12):
            await b.send(sip(i), at_b)
        for i in range(2, 12):
            data, at_a = await a_handler.message()
            assert data == sip(i)
        await a.send(sip(20), at_a)
        assert await b_handler.message() == (sip(20), at_b)
        assert a.connection_count == b.connection_count == 1
        tg.cancel_scope.cancel()


async def test_tls_untrusted_server_is_an_os_error(certificate: tuple[Path, Path]) -> None:
    server_ctx, _ = contexts(certificate)
    strict_client = ssl.create_default_context()  # does not trust our self-signed cert
    handler = Recorder()
    a = TlsTransport("127.0.0.1", 0, server_ctx, strict_client)
    b = TlsTransport("127.0.0.1", 0, server_ctx)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve, Recorder())
        await tg.start(b.serve, handler)
        with pytest.raises(ssl.SSLCertVerificationError):
            await a.send(sip(1), Peer("TLS", "127.0.0.1", b.local_port))
        assert a.connection_count == b.connection_count == 0
        tg.cancel_scope.cancel()


async def test_tls_server_survives_a_plain_tcp_client(certificate: tuple[Path, Path]) -> None:
    server_ctx, client_ctx = contexts(certificate)
    handler = Recorder()
    b = TlsTransport("127.0.0.1", 0, server_ctx, client_ctx)
    async with anyio.create_task_group() as tg:
        await tg.start(b.serve, handler)
        async with await anyio.connect_tcp("127.0.0.1", b.local_port) as plain:
            await plain.send(sip(1))
            await read_until_eof(plain)
        # The listener still works for a real TLS client afterwards.
        async with await anyio.connect_tcp(
            "127.0.0.1",
            b.local_port,
            tls=True,
            ssl_context=client_ctx,
            tls_standard_compatible=False,  # like the transport: no close_notify exchange
        ) as phone:
            await phone.send(sip(2))
            data, peer = await handler.message()
            assert (data, peer.transport) == (sip(2), "TLS")
            await b.send(b"\r\n", peer)
            assert await read_exactly(phone, 2) == b"\r\n"
        tg.cancel_scope.cancel()
