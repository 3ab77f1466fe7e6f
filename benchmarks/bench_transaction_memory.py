"""Bytes a SipStack holds per answered 10 KB OPTIONS while Timer J runs (issue 13 item 8).

A UDP server transaction stays for 64*T1 = 32 s after its final response to absorb
copies of the request. What it holds then is multiplied by the request rate times 32:
10,000 answered requests of 10 KB each that each kept their request cost ~100 MB.

The stack serves on real loopback UDP with a FakeClock (Timer J never fires while we
measure); the requests go in through ``message_received``, as the transport hands them
over, so every one is answered (no datagram is lost to a socket buffer). The answers go
to a bound socket nobody reads. tracemalloc counts what is still allocated once every
handler is done, after a full collection, divided by the number of transactions alive.

Run: python benchmarks/bench_transaction_memory.py [count] [size]
"""

from __future__ import annotations

import gc
import socket
import sys
import tracemalloc

import anyio

from sdpbx.sip import fields
from sdpbx.stack import SipStack
from sdpbx.testing import FakeClock
from sdpbx.transport import Peer, UdpTransport


def options(i: int, size: int) -> bytes:
    head = (
        "OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{{port}};branch=z9hG4bKmem{i}x;rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=f{i}\r\n"
        "To: <sip:pbx@127.0.0.1>\r\n"
        f"Call-ID: mem-{i}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "User-Agent: bench_transaction_memory\r\n"
    )
    pad = max(size - len(head) - 40, 0)
    return (head + f"X-Pad: {'x' * pad}\r\nContent-Length: 0\r\n\r\n").encode()


async def measure(count: int, size: int) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = sink.getsockname()[1]
    peer = Peer("UDP", "127.0.0.1", port)
    stack = SipStack([UdpTransport("127.0.0.1", 0)], clock=FakeClock())
    datagrams = [options(i, size).replace(b"{port}", str(port).encode()) for i in range(count)]
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        await anyio.wait_all_tasks_blocked()
        gc.collect()
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i, data in enumerate(datagrams):
            stack.message_received(data, peer)
            if i % 200 == 199:
                await anyio.wait_all_tasks_blocked()  # let the workers answer
        await anyio.wait_all_tasks_blocked()
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
        # The parser's bounded caches (parsed Via/From/To/CSeq/URI values) are
        # shared by all traffic, not held per transaction: counted apart.
        fields.clear_caches()
        gc.collect()
        uncached, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        alive = len(stack.layer)
        answered = stack.stats.requests_received
        tg.cancel_scope.cancel()
    sink.close()
    request_bytes = len(datagrams[0])
    print(f"{answered} OPTIONS of {request_bytes} bytes answered, {alive} in Timer J")
    print(
        f"held {(held - base) / 1e6:.1f} MB (peak {(peak - base) / 1e6:.1f} MB), of which"
        f" {(held - uncached) / 1e6:.1f} MB in the parser's bounded caches"
    )
    print(f"{(uncached - base) / max(alive, 1):,.0f} bytes held per answered transaction")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    anyio.run(measure, count, size)


if __name__ == "__main__":
    main()
