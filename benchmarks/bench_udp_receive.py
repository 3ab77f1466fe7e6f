"""How many SIP-sized datagrams the UDP receive path takes, and how many it loses.

A separate process blasts N datagrams at 127.0.0.1 as fast as it can; the
receiver counts what arrives until the sender is done and the socket has been
quiet for a moment. Compared: (a) ``anyio.create_udp_socket`` (whose asyncio
wrapper queues 100 datagrams and drops the oldest) and (b) sdpbx's
``UdpTransport``. The kernel's own drops (``RcvbufErrors`` in /proc/net/snmp)
are reported too, so lost-in-anyio and lost-in-kernel can be told apart.

    python benchmarks/bench_udp_receive.py [-n 200000] [--size 500] [--rate 0] [--uvloop]
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdpbx.transport.base import Peer
from sdpbx.transport.udp import UdpTransport

QUIET = 0.5  # seconds without a datagram after the sender finished = done


def udp_counters() -> dict[str, int]:
    try:
        lines = Path("/proc/net/snmp").read_text().splitlines()
    except OSError:
        return {}
    rows = [line.split() for line in lines if line.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=False))


def blast(
    port: int, count: int, size: int, rate: float, start: multiprocessing.synchronize.Event
) -> None:
    """Send ``count`` datagrams, at full speed or in bursts of 100 paced to ``rate``/s."""
    payload = b"x" * size
    start.wait()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        send = sock.send
        if not rate:
            for _ in range(count):
                send(payload)
            return
        began = time.perf_counter()
        for sent in range(0, count, 100):
            for _ in range(min(100, count - sent)):
                send(payload)
            delay = began + (sent + 100) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def message_received(self, data: bytes, peer: Peer) -> None:
        if not self.count:
            self.first = time.perf_counter()
        self.count += 1
        self.last = time.perf_counter()

    def connection_lost(self, peer: Peer) -> None:
        pass


async def until_done(counter: Counter, sender: multiprocessing.Process) -> None:
    await anyio.to_thread.run_sync(sender.join)
    seen = -1
    while counter.count != seen:
        seen = counter.count
        await anyio.sleep(QUIET)


async def run_anyio(count: int, size: int, rate: float) -> Counter:
    counter = Counter()
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as udp:
        port = udp.extra(anyio.abc.SocketAttribute.local_port)
        sender, start = spawn(port, count, size, rate)

        async def receive() -> None:
            async for data, addr in udp:
                counter.message_received(data, Peer("UDP", addr[0], addr[1]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            start.set()
            await until_done(counter, sender)
            tg.cancel_scope.cancel()
    sender.join()
    return counter


async def run_sdpbx(count: int, size: int, rate: float) -> Counter:
    counter = Counter()
    transport = UdpTransport("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(transport.serve, counter)
        sender, start = spawn(transport.local_port, count, size, rate)
        start.set()
        await until_done(counter, sender)
        tg.cancel_scope.cancel()
    sender.join()
    return counter


def spawn(
    port: int, count: int, size: int, rate: float
) -> tuple[multiprocessing.Process, multiprocessing.synchronize.Event]:
    start = multiprocessing.Event()
    sender = multiprocessing.Process(target=blast, args=(port, count, size, rate, start))
    sender.start()
    return sender, start


def report(name: str, counter: Counter, count: int, before: dict[str, int]) -> None:
    after = udp_counters()
    kernel = after.get("RcvbufErrors", 0) - before.get("RcvbufErrors", 0)
    span = counter.last - counter.first
    rate = counter.count / span if span > 0 else float("nan")
    lost = count - counter.count
    print(
        f"{name:<26} received {counter.count:>8} / {count}  lost {lost:>7} "
        f"({100 * lost / count:5.1f} %)  kernel RcvbufErrors +{kernel:<7} "
        f"{rate:>10,.0f} datagrams/s  ({1e6 / rate if rate else 0:.1f} us apart)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--rate", type=float, default=0, help="datagrams/s; 0 = full speed")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    options = {"use_uvloop": True} if args.uvloop else {}
    pace = f"{args.rate:,.0f}/s" if args.rate else "full speed"
    print(f"{args.count} datagrams of {args.size} bytes at {pace}, asyncio uvloop={args.uvloop}")
    for name, runner in (("anyio.create_udp_socket", run_anyio), ("sdpbx UdpTransport", run_sdpbx)):
        before = udp_counters()
        counter = anyio.run(runner, args.count, args.size, args.rate, backend_options=options)
        report(name, counter, args.count, before)


if __name__ == "__main__":
    main()
