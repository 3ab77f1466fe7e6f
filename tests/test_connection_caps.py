"""Connection caps over real loopback sockets (issue 13 item 14).

A SipStack serves TCP and WS sharing one ConnectionTable. At a cap the
connection idle longest gives way (one that never completed a SIP message
first), a newcomer is refused only when every candidate is mid-message, and a
new client can always still get its OPTIONS answered.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request

from sdpbx.stack import SipStack
from sdpbx.transport import Peer, TcpTransport, WsTransport
from sdpbx.transport._guard import TransportStats
from sdpbx.transport.limits import ConnectionLimits, ConnectionTable, raise_open_file_limit

pytestmark = pytest.mark.anyio

WAIT = 10
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, OSError)


def options(transport: str = "TCP") -> bytes:
    n = random.randrange(1 << 30)
    return (
        f"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bK-caps-{n}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=c{n}\r\n"
        f"To: <sip:pbx@127.0.0.1>\r\n"
        f"Call-ID: caps-{n}@127.0.0.1\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


async def wait_until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT):
        while not predicate():
            await anyio.sleep(0.01)


async def ask(stream: SocketStream) -> bytes:
    """Send an OPTIONS on ``stream`` and read the response head."""
    await stream.send(options())
    data = b""
    with anyio.fail_after(WAIT):
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
    return data


async def answered(port: int, local_host: str = "127.0.0.1") -> bool:
    async with await anyio.connect_tcp("127.0.0.1", port, local_host=local_host) as stream:
        return (await ask(stream)).startswith(b"SIP/2.0 200 ")


async def closed_by_server(stream: SocketStream) -> bool:
    """True once the server closed ``stream`` (EOF or reset), reading anything before."""
    with anyio.fail_after(WAIT):
        while True:
            try:
                await stream.receive()
            except _GONE:
                return True


async def idle_ws(port: int) -> SocketStream:
    """A WebSocket connection with the upgrade done and nothing sent since."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send(ws.send(Request(host="127.0.0.1", target="/", subprotocols=["sip"])))
        with anyio.fail_after(WAIT):
            while True:
                ws.receive_data(await stream.receive())
                if any(isinstance(event, AcceptConnection) for event in ws.events()):
                    return stream
    except BaseException:
        await stream.aclose()
        raise


class Clients:
    """Client sockets of one test, all closed at its end (evicted ones too)."""

    def __init__(self) -> None:
        self.streams: list[SocketStream] = []

    async def tcp(self, port: int, local_host: str = "127.0.0.1") -> SocketStream:
        stream = await anyio.connect_tcp("127.0.0.1", port, local_host=local_host)
        self.streams.append(stream)
        return stream

    async def ws(self, port: int) -> SocketStream:
        stream = await idle_ws(port)
        self.streams.append(stream)
        return stream

    async def aclose(self) -> None:
        for stream in self.streams:
            await stream.aclose()


@asynccontextmanager
async def serving(
    limits: ConnectionLimits, *, ws: bool = False
) -> AsyncIterator[tuple[ConnectionTable, TcpTransport, WsTransport, Clients]]:
    table = ConnectionTable(limits)
    tcp = TcpTransport("127.0.0.1", 0, connections=table)
    wst = WsTransport("127.0.0.1", 0, connections=table)
    stack = SipStack([tcp, wst] if ws else [tcp])
    clients = Clients()
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        try:
            yield table, tcp, wst, clients
        finally:
            await clients.aclose()
            tg.cancel_scope.cancel()


async def test_at_the_total_cap_the_idle_connection_gives_way() -> None:
    async with serving(ConnectionLimits(max_connections=3)) as (table, tcp, _, clients):
        idle = [await clients.tcp(tcp.local_port) for _ in range(3)]
        await wait_until(lambda: table.count == 3)
        # The oldest idle connection makes room; the newcomer is served.
        assert await answered(tcp.local_port)
        assert await closed_by_server(idle[0])
        assert table.evicted == 1
        assert tcp.stats.connections_evicted == 1
        assert tcp.stats.connections_refused == 0
        for stream in idle[1:]:
            await stream.aclose()
        await wait_until(lambda: table.count == 0 and tcp.connection_count == 0)


async def test_a_connection_that_never_sent_sip_gives_way_first() -> None:
    async with serving(ConnectionLimits(max_connections=3)) as (table, tcp, _, clients):
        phone = await clients.tcp(tcp.local_port)
        assert (await ask(phone)).startswith(b"SIP/2.0 200 ")
        silent = [await clients.tcp(tcp.local_port) for _ in range(2)]
        await wait_until(lambda: table.count == 3)
        assert await answered(tcp.local_port)
        # The phone is older, but it spoke SIP: the first silent one went.
        assert await closed_by_server(silent[0])
        assert (await ask(phone)).startswith(b"SIP/2.0 200 ")
        for stream in (phone, silent[1]):
            await stream.aclose()


async def test_when_every_connection_is_mid_message_the_newcomer_is_refused() -> None:
    limits = ConnectionLimits(max_connections=2, message_deadline=60)
    async with serving(limits) as (table, tcp, _, clients):
        busy = [await clients.tcp(tcp.local_port) for _ in range(2)]
        for stream in busy:
            await stream.send(b"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n")
        await wait_until(lambda: table.busy_count() == 2)
        async with await anyio.connect_tcp("127.0.0.1", tcp.local_port) as newcomer:
            await newcomer.send(options())
            assert await closed_by_server(newcomer)
        assert tcp.stats.connections_refused == 1
        assert table.refused == 1
        assert table.evicted == 0
        # The half-sent messages are still welcome to finish.
        rest = options()[len(b"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n") :]
        await busy[0].send(rest)
        data = b""
        with anyio.fail_after(WAIT):
            while b"\r\n\r\n" not in data:
                data += await busy[0].receive()
        assert data.startswith(b"SIP/2.0 200 ")
        # Once idle again, that connection can give way to a newcomer.
        assert await answered(tcp.local_port)
        assert await closed_by_server(busy[0])
        await busy[1].aclose()


async def test_per_source_cap_evicts_within_that_source_only() -> None:
    limits = ConnectionLimits(max_connections=100, max_per_source=2)
    async with serving(limits) as (table, tcp, _, clients):
        other = await clients.tcp(tcp.local_port, "127.0.0.2")
        mine = [await clients.tcp(tcp.local_port, "127.0.0.3") for _ in range(2)]
        await wait_until(lambda: table.count == 3)
        assert table.source_count("127.0.0.3") == 2
        # A third from the same source: its own oldest idle connection goes.
        assert await answered(tcp.local_port, local_host="127.0.0.3")
        assert await closed_by_server(mine[0])
        assert table.evicted == 1
        # The other source's idle connection (older than all of them) stayed.
        assert table.source_count("127.0.0.2") == 1
        await other.send(options())
        data = b""
        with anyio.fail_after(WAIT):
            while b"\r\n\r\n" not in data:
                data += await other.receive()
        assert data.startswith(b"SIP/2.0 200 ")
        for stream in (other, mine[1]):
            await stream.aclose()


async def test_per_source_cap_refuses_when_that_source_is_all_busy() -> None:
    limits = ConnectionLimits(max_connections=100, max_per_source=1, message_deadline=60)
    async with serving(limits) as (table, tcp, _, clients):
        busy = await clients.tcp(tcp.local_port, "127.0.0.4")
        await busy.send(b"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n")
        await wait_until(lambda: table.busy_count() == 1)
        newcomer = await clients.tcp(tcp.local_port, "127.0.0.4")
        assert await closed_by_server(newcomer)
        assert table.refused == 1
        # Another source is not affected by this one's share.
        assert await answered(tcp.local_port, local_host="127.0.0.5")


async def test_the_total_spans_tcp_and_websocket() -> None:
    async with serving(ConnectionLimits(max_connections=2), ws=True) as (table, tcp, wst, clients):
        browser = await clients.ws(wst.local_port)
        idle_tcp = await clients.tcp(tcp.local_port)
        await wait_until(lambda: table.count == 2)
        assert wst.connection_count == 1
        # A TCP newcomer takes the slot of the (older) idle WebSocket.
        assert await answered(tcp.local_port)
        assert await closed_by_server(browser)
        assert wst.stats.connections_evicted == 1
        assert tcp.stats.connections_evicted == 0
        await wait_until(lambda: wst.connection_count == 0)
        await idle_tcp.aclose()
        await wait_until(lambda: table.count == 0)


async def test_websocket_message_must_complete_within_deadline() -> None:
    """Trickled bytes used to refresh the idle timer for ever; now the message has a deadline."""
    table = ConnectionTable(ConnectionLimits(message_deadline=0.3))
    wst = WsTransport("127.0.0.1", 0, idle_timeout=60, connections=table)
    stack = SipStack([wst])
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        async with await anyio.connect_tcp("127.0.0.1", wst.local_port) as stream:
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send(ws.send(Request(host="127.0.0.1", target="/", subprotocols=["sip"])))
            with anyio.fail_after(WAIT):
                while not any(isinstance(e, AcceptConnection) for e in ws.events()):
                    ws.receive_data(await stream.receive())
            # A masked text frame announcing 1000 bytes, then one byte at a time.
            header = bytes([0x81, 0x80 | 126]) + (1000).to_bytes(2, "big") + b"\x00\x00\x00\x00"
            await stream.send(header)
            events = []
            with anyio.fail_after(WAIT):
                try:
                    while not any(isinstance(e, CloseConnection) for e in events):
                        await stream.send(b"X")
                        with anyio.move_on_after(0.05):
                            ws.receive_data(await stream.receive())
                            events.extend(ws.events())
                except _GONE:
                    pass
            close = next(e for e in events if isinstance(e, CloseConnection))
            assert close.code == 1008
            assert wst.stats.deadline_closes == 1
        tg.cancel_scope.cancel()


async def test_websocket_upgrade_must_complete_within_deadline() -> None:
    table = ConnectionTable(ConnectionLimits(message_deadline=0.3))
    wst = WsTransport("127.0.0.1", 0, connections=table)
    stack = SipStack([wst])
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        # Silent after connecting, and trickling a request: both are closed.
        async with await anyio.connect_tcp("127.0.0.1", wst.local_port) as silent:
            assert await closed_by_server(silent)
        async with await anyio.connect_tcp("127.0.0.1", wst.local_port) as slow:
            closed = False
            with anyio.fail_after(WAIT):
                try:
                    await slow.send(b"GET / HTTP/1.1\r\n")
                    while True:
                        await slow.send(b"X-Slow: 1\r\n")
                        with anyio.move_on_after(0.05):
                            await slow.receive()
                except _GONE:
                    closed = True
            assert closed
        assert wst.stats.deadline_closes == 2
        await wait_until(lambda: table.count == 0)
        tg.cancel_scope.cancel()


async def test_outbound_connections_count_and_are_released() -> None:
    table = ConnectionTable(ConnectionLimits(max_connections=10))
    a = TcpTransport("127.0.0.1", 0, connections=table)
    b = TcpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(SipStack([a]).serve)
        await tg.start(SipStack([b]).serve)
        await a.send(options(), Peer("TCP", "127.0.0.1", b.local_port))
        await wait_until(lambda: b.connection_count == 1)
        assert table.count == 1  # a's outbound connection; b has its own table
        for conn_peer in a.connection_peers():
            assert conn_peer.connection_id is not None
            a.close_connection(conn_peer.connection_id)
        await wait_until(lambda: table.count == 0)
        tg.cancel_scope.cancel()


def test_raise_open_file_limit_reaches_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = raise_open_file_limit()
    now_soft, now_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit == now_soft
    assert now_hard == hard
    assert now_soft >= soft
    if hard != resource.RLIM_INFINITY:
        assert now_soft == hard


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        ConnectionLimits(max_connections=0)
    with pytest.raises(ValueError, match="message_deadline"):
        ConnectionLimits(message_deadline=0)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_out_of_descriptors_an_idle_connection_gives_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At the fd limit, accept() failed 10 times a second and new clients timed out."""
    async with serving(ConnectionLimits()) as (table, tcp, _, _clients):
        # Client sockets exist before the limit drops: connecting needs no new fd.
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(6)]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Fill the holes below the highest descriptor, so exactly ``room`` are left.
        fillers: list[int] = []
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        while (fd := os.open(os.devnull, os.O_RDONLY)) < highest:
            fillers.append(fd)
        fillers.append(fd)
        room = 2
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd + 1 + room, hard))
            streams = []
            for sock in sockets:
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", tcp.local_port))
                streams.append(sock)
            # The first ``room`` fill the limit; each later one evicts the oldest.
            await wait_until(lambda: tcp.stats.connections_accepted == len(sockets))
            # One eviction per descriptor needed (give or take one the
            # event loop may hold briefly), not one per failed accept().
            assert len(sockets) - room <= table.evicted < len(sockets)
            assert tcp.stats.accept_errors >= 1
            # The newest client is served.
            last = sockets[-1]
            last.sendall(options())
            data = b""
            with anyio.fail_after(WAIT):
                while b"\r\n\r\n" not in data:
                    await anyio.wait_readable(last)
                    data += last.recv(65536)
            assert data.startswith(b"SIP/2.0 200 ")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for fd in fillers:
                os.close(fd)
            for sock in sockets:
                sock.close()
    failures = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert len(failures) <= 1


def test_ipv6_sources_are_counted_by_64_prefix() -> None:
    table = ConnectionTable(ConnectionLimits(max_per_source=2))
    stats = TransportStats()
    closed: list[str] = []
    for host in ("2001:db8:0:1::a", "2001:db8:0:1::b", "2001:db8:0:1:ffff::c"):
        assert table.admit(host, lambda h=host: closed.append(h), stats, name="TCP") is not None
    # Three hosts of one /64: the third evicted the first; another /64 is apart.
    assert closed == ["2001:db8:0:1::a"]
    assert table.source_count("2001:db8:0:1::1") == 2
    assert table.admit("2001:db8:0:2::a", lambda: closed.append("other"), stats, name="TCP")
    assert table.source_count("2001:db8:0:2::1") == 1
    assert closed == ["2001:db8:0:1::a"]
    assert stats.connections_evicted == 1


def test_the_mmap_threshold_can_be_pinned_on_glibc() -> None:
    """Debian's glibc takes the setting; elsewhere the call is a harmless False."""
    import platform

    from sdpbx._memory import pin_mmap_threshold

    assert pin_mmap_threshold() is (platform.libc_ver()[0] == "glibc")
