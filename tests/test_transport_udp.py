"""UdpTransport over real loopback sockets."""

from __future__ import annotations

import logging
import socket

import anyio
import anyio.to_thread
import pytest

from sdpbx.stack import SipStack
from sdpbx.transport.base import Peer
from sdpbx.transport.udp import UdpTransport

pytestmark = pytest.mark.anyio


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this host")


class Collector:
    """A handler that records what arrives and wakes a waiter after ``expected`` messages."""

    def __init__(self, expected: int = 1, fail_on: bytes | None = None) -> None:
        self.messages: list[tuple[bytes, Peer]] = []
        self.lost: list[Peer] = []
        self.expected = expected
        self.fail_on = fail_on
        self.done = anyio.Event()

    def message_received(self, data: bytes, peer: Peer) -> None:
        self.messages.append((data, peer))
        if len(self.messages) >= self.expected:
            self.done.set()
        if data == self.fail_on:
            raise RuntimeError("handler bug")

    def connection_lost(self, peer: Peer) -> None:
        self.lost.append(peer)


async def exchange(host: str) -> None:
    a_handler, b_handler = Collector(), Collector()
    a, b = UdpTransport(host, 0), UdpTransport(host, 0)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve, a_handler)
        await tg.start(b.serve, b_handler)
        assert a.local_port != 0
        assert a.local_port != b.local_port
        assert a.local_host == host
        assert a.send_nowait(b"ping", Peer("UDP", host, b.local_port))
        with anyio.fail_after(10):
            await b_handler.done.wait()
        data, peer = b_handler.messages[0]
        assert data == b"ping"
        assert peer == Peer("UDP", host, a.local_port)
        await b.send(b"pong", peer)
        with anyio.fail_after(10):
            await a_handler.done.wait()
        assert a_handler.messages == [(b"pong", Peer("UDP", host, b.local_port))]
        tg.cancel_scope.cancel()


async def test_send_receive_ipv4() -> None:
    await exchange("127.0.0.1")


@needs_ipv6
async def test_send_receive_ipv6() -> None:
    await exchange("::1")


@needs_ipv6
async def test_dual_stack_reports_plain_ipv4_peers() -> None:
    handler = Collector()
    transport = UdpTransport("::", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, handler)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.sendto(b"hello", ("127.0.0.1", transport.local_port))
            with anyio.fail_after(10):
                await handler.done.wait()
            assert handler.messages == [
                (b"hello", Peer("UDP", "127.0.0.1", client.getsockname()[1]))
            ]
            # ... and a plain IPv4 peer can be answered through the IPv6 socket.
            await transport.send(b"back", handler.messages[0][1])
            client.settimeout(10)
            assert client.recvfrom(100) == (b"back", ("127.0.0.1", transport.local_port))
        tg.cancel_scope.cancel()


async def test_burst_of_5000_datagrams_all_received() -> None:
    count = 5000
    handler = Collector(expected=count)
    transport = UdpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, handler)
        granted = transport.rcvbuf_actual
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            # Sent in one go from this task, so the receiver cannot read until all
            # 5,000 wait in the kernel buffer: anyio's UDP socket would keep 100.
            for i in range(count):
                sender.sendto(b"%06d" % i + b"x" * 494, ("127.0.0.1", transport.local_port))
            # A kernel that capped the buffer lost datagrams already; don't wait for them.
            with anyio.move_on_after(30 if granted >= count * 1500 else 1):
                await handler.done.wait()
        tg.cancel_scope.cancel()
    if granted < count * 1500:
        pytest.skip(
            f"kernel granted only {granted} bytes of UDP receive buffer "
            "(raise net.core.rmem_max to 4 MiB): a 5,000-datagram burst cannot fit"
        )
    assert len(handler.messages) == count
    assert [int(data[:6]) for data, _ in handler.messages] == list(range(count))


async def test_handler_exception_does_not_kill_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    handler = Collector(expected=3, fail_on=b"bad")
    transport = UdpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, handler)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for data in (b"one", b"bad", b"three"):
                sender.sendto(data, ("127.0.0.1", transport.local_port))
            with anyio.fail_after(10):
                await handler.done.wait()
        tg.cancel_scope.cancel()
    assert [data for data, _ in handler.messages] == [b"one", b"bad", b"three"]
    assert "UDP handler failed" in caplog.text


async def test_send_resolves_host_names() -> None:
    handler = Collector()
    a, b = UdpTransport("127.0.0.1", 0), UdpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve, Collector())
        await tg.start(b.serve, handler)
        target = Peer("UDP", "localhost", b.local_port)
        # A name would block in sendto, so the non-awaiting path declines it.
        assert not a.send_nowait(b"x", target)
        await a.send(b"by-name", target)
        with anyio.fail_after(10):
            await handler.done.wait()
        assert handler.messages[0][0] == b"by-name"
        tg.cancel_scope.cancel()


async def test_large_receive_buffer_requested() -> None:
    transport = UdpTransport("127.0.0.1", 0, rcvbuf=1 << 20)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, Collector())
        # Linux doubles the request, capped by net.core.rmem_max; either way it grew.
        assert transport.rcvbuf_actual > 212992 or transport.rcvbuf_actual >= _rmem_max()
        tg.cancel_scope.cancel()
    assert transport.rcvbuf_actual == 0  # closed


def _rmem_max() -> int:
    try:
        with open("/proc/sys/net/core/rmem_max") as f:
            return int(f.read())
    except OSError:
        return 0


async def test_send_before_serve_is_an_os_error() -> None:
    transport = UdpTransport("127.0.0.1", 0)
    with pytest.raises(OSError, match="not serving"):
        transport.send_nowait(b"x", Peer("UDP", "127.0.0.1", 9))
    with pytest.raises(OSError, match="not serving"):
        await transport.send(b"x", Peer("UDP", "127.0.0.1", 9))


async def test_bind_conflict_raises() -> None:
    first = UdpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(first.serve, Collector())
        with pytest.raises(OSError, match="in use"):
            await tg.start(UdpTransport("127.0.0.1", first.local_port).serve, Collector())
        tg.cancel_scope.cancel()


class FaultyStack(SipStack):
    """A stack whose inbound boundary itself fails, while ``faulty`` is set."""

    faulty = True
    raised = 0

    def message_received(self, data: bytes, peer: Peer) -> None:
        if self.faulty:
            self.raised += 1
            raise RuntimeError("the stack's boundary failed")
        super().message_received(data, peer)


async def test_flood_of_failing_datagrams_is_counted_not_logged_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every datagram used to log an ERROR traceback: 10,000 of them under a flood."""
    transport = UdpTransport("127.0.0.1", 0)
    stack = FaultyStack([transport])
    flood, batch = 10_000, 250
    datagram = b"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\nVia: garbage\r\n\r\n"
    caplog.set_level(logging.DEBUG, logger="sdpbx.transport.udp")
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        address = ("127.0.0.1", transport.local_port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            # Batches no larger than the receive buffer, so none is dropped
            # and the count below is exact.
            for sent in range(batch, flood + 1, batch):
                for _ in range(batch):
                    sender.sendto(datagram, address)
                with anyio.fail_after(10):
                    while transport.stats.datagram_errors < sent:
                        await anyio.sleep(0.001)
            assert stack.raised == flood
            assert transport.stats.datagram_errors == flood
            stack.faulty = False
            sender.settimeout(10)
            sender.sendto(
                b"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n"
                b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-after-flood\r\n"
                b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=a\r\n"
                b"To: <sip:pbx@127.0.0.1>\r\nCall-ID: after-flood@127.0.0.1\r\n"
                b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                address,
            )
            with anyio.fail_after(10):
                answer = await anyio.to_thread.run_sync(sender.recv, 65535)
        tg.cancel_scope.cancel()
    assert answer.startswith(b"SIP/2.0 200 ")
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(logged) <= 2, [r.getMessage() for r in logged]
    assert sum(r.exc_info is not None for r in logged) == 1
