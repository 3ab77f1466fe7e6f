"""MemoryNetwork / MemoryTransport: the socket-free transport used by sdpbx.testing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from sdpbx.transport.base import Peer, Transport
from sdpbx.transport.memory import MemoryNetwork, MemoryTransport, SentMessage

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, bytes, Peer]] = []
        self.arrived = anyio.Event()

    def message_received(self, data: bytes, peer: Peer) -> None:
        self.events.append(("message", data, peer))
        self.arrived.set()
        if data == b"boom":
            raise RuntimeError("handler bug")

    def connection_lost(self, peer: Peer) -> None:
        self.events.append(("lost", b"", peer))
        self.arrived.set()

    async def wait_for(self, count: int) -> list[tuple[str, bytes, Peer]]:
        with anyio.fail_after(10):
            while len(self.events) < count:
                self.arrived = anyio.Event()
                await self.arrived.wait()
        return self.events


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MemoryNetwork, list[MemoryTransport], list[Recorder]]]:
    network = MemoryNetwork()
    transports = [
        network.transport("UDP", "10.0.0.1", 5060),
        network.transport("UDP", "10.0.0.2", 5060),
        network.transport("TCP", "10.0.0.1", 5060),
        network.transport("TCP", "10.0.0.2", 0),
    ]
    handlers = [Recorder() for _ in transports]
    async with anyio.create_task_group() as tg:
        for transport, handler in zip(transports, handlers, strict=True):
            await tg.start(transport.serve, handler)
        yield network, transports, handlers
        tg.cancel_scope.cancel()


def test_satisfies_the_transport_protocol() -> None:
    transport: Transport = MemoryTransport(MemoryNetwork(), "UDP", "10.0.0.1", 5060)
    assert (transport.name, transport.reliable) == ("UDP", False)
    assert MemoryNetwork().transport("TLS", "10.0.0.1", 5061).reliable


async def test_udp_exchange_and_log(
    pair: tuple[MemoryNetwork, list[MemoryTransport], list[Recorder]],
) -> None:
    network, (a, _, _, _), (_, b_handler, _, _) = pair
    assert a.send_nowait(b"one", Peer("UDP", "10.0.0.2", 5060))
    await a.send(b"two", Peer("UDP", "10.0.0.2", 5060))
    events = await b_handler.wait_for(2)
    source = Peer("UDP", "10.0.0.1", 5060)
    assert events == [("message", b"one", source), ("message", b"two", source)]
    assert network.sent[0] == SentMessage(b"one", source, Peer("UDP", "10.0.0.2", 5060), True)
    assert network.messages_to("10.0.0.2", 5060) == [b"one", b"two"]
    # Nobody listens there: lost like a UDP datagram, but logged.
    assert a.send_nowait(b"void", Peer("UDP", "10.9.9.9", 5060))
    assert not network.sent[-1].delivered


async def test_drop_predicate(
    pair: tuple[MemoryNetwork, list[MemoryTransport], list[Recorder]],
) -> None:
    network, (a, _, _, _), (_, b_handler, _, _) = pair
    network.drop = lambda data, source, destination: data.startswith(b"INVITE")
    a.send_nowait(b"INVITE 1", Peer("UDP", "10.0.0.2", 5060))
    a.send_nowait(b"ACK 1", Peer("UDP", "10.0.0.2", 5060))
    events = await b_handler.wait_for(1)
    assert [data for _, data, _ in events] == [b"ACK 1"]
    assert [(m.data, m.delivered) for m in network.sent] == [(b"INVITE 1", False), (b"ACK 1", True)]


async def test_reliable_connections(
    pair: tuple[MemoryNetwork, list[MemoryTransport], list[Recorder]],
) -> None:
    _, (_, _, c, d), (_, _, c_handler, d_handler) = pair
    assert d.local_port != 0
    target = Peer("TCP", "10.0.0.1", 5060)
    assert not d.send_nowait(b"x", target)  # no connection yet: caller must await send()
    await d.send(b"hello", target)
    ((_, data, at_c),) = await c_handler.wait_for(1)
    assert (data, at_c.host, at_c.port) == (b"hello", "10.0.0.2", d.local_port)
    assert at_c.connection_id is not None
    assert c.send_nowait(b"reply", at_c)
    ((_, data, at_d),) = await d_handler.wait_for(1)
    assert data == b"reply"
    assert at_d.connection_id not in (None, at_c.connection_id)
    assert c.connection_count == d.connection_count == 1
    assert d.send_nowait(b"again", target)  # reused by address
    await c_handler.wait_for(2)
    assert c_handler.events[1] == ("message", b"again", at_c)
    assert at_c.connection_id is not None
    assert c.close_connection(at_c.connection_id)
    assert (await c_handler.wait_for(3))[2] == ("lost", b"", at_c)
    assert (await d_handler.wait_for(2))[1] == ("lost", b"", at_d)
    assert c.connection_count == d.connection_count == 0
    assert not c.close_connection(at_c.connection_id)


async def test_reliable_connect_refused(
    pair: tuple[MemoryNetwork, list[MemoryTransport], list[Recorder]],
) -> None:
    _, (_, _, c, _), _ = pair
    with pytest.raises(ConnectionRefusedError):
        await c.send(b"x", Peer("TCP", "10.0.0.99", 5060))


async def test_handler_exception_does_not_stop_delivery(
    pair: tuple[MemoryNetwork, list[MemoryTransport], list[Recorder]],
) -> None:
    _, (a, _, _, _), (_, b_handler, _, _) = pair
    for data in (b"boom", b"after"):
        a.send_nowait(data, Peer("UDP", "10.0.0.2", 5060))
    events = await b_handler.wait_for(2)
    assert [data for _, data, _ in events] == [b"boom", b"after"]


async def test_synchronous_delivery_and_shutdown() -> None:
    network = MemoryNetwork(synchronous=True)
    a, b = network.transport("TCP", "10.0.0.1", 5060), network.transport("TCP", "10.0.0.2", 5060)
    a_handler, b_handler = Recorder(), Recorder()
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve, a_handler)
        await tg.start(b.serve, b_handler)
        await a.send(b"now", Peer("TCP", "10.0.0.2", 5060))
        assert [data for _, data, _ in b_handler.events] == [b"now"]  # no await needed
        with pytest.raises(OSError, match="in use"):
            await tg.start(network.transport("TCP", "10.0.0.2", 5060).serve, Recorder())
        tg.cancel_scope.cancel()
    # Stopping closed the connection on both sides.
    assert [kind for kind, _, _ in a_handler.events] == ["lost"]
    assert [kind for kind, _, _ in b_handler.events][-1] == "lost"
    with pytest.raises(OSError, match="not serving"):
        a.send_nowait(b"x", Peer("TCP", "10.0.0.2", 5060))
