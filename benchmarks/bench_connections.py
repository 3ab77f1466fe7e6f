"""Server memory with N idle TCP (or WS) connections, and after they close.

Issue 13 item 14: 20,000 idle connections took the server from 88 to 468 MB,
and RSS stayed at 473 MB once they closed. This opens N idle connections to a
:class:`~sdpbx.stack.SipStack` on loopback from a child process (so the client
sockets do not count in the server's RSS), and prints the server's RSS before,
with the connections open, and after the clients closed them, plus what
tracemalloc still attributes to Python objects. A final OPTIONS over a fresh
connection checks that the server still answers.

Run: .venv/bin/python benchmarks/bench_connections.py --n 5000 [--transport ws]
     [--max-connections 10000] [--backend trio]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from sdpbx._memory import release_free_memory
from sdpbx.stack import SipStack
from sdpbx.transport import TcpTransport, WsTransport
from sdpbx.transport.limits import ConnectionLimits, ConnectionTable, raise_open_file_limit

# The client: open N connections (WS: complete the upgrade), report, wait, close.
CLIENT = r"""
import base64, os, resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n, ws = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "ws"
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if ws:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(4096)
    socks.append(s)
print("open", flush=True)
sys.stdin.readline()
for s in socks:
    s.close()
print("closed", flush=True)
sys.stdin.readline()
"""

OPTIONS = (
    b"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bK-bench-conn\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:b@127.0.0.1>;tag=b\r\nTo: <sip:pbx@127.0.0.1>\r\n"
    b"Call-ID: bench-conn@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def traced_mb() -> float:
    return tracemalloc.get_traced_memory()[0] / 2**20


async def wait_for(predicate: object, timeout: float = 120.0) -> None:
    assert callable(predicate)
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


async def options_answered(port: int, ws: bool) -> bool:
    """A fresh client still gets its OPTIONS answered (over WS when ``ws``)."""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            if not ws:
                await stream.send(OPTIONS)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                return data.startswith(b"SIP/2.0 200 ")
            client = WSConnection(ConnectionType.CLIENT)
            await stream.send(
                client.send(Request(host="127.0.0.1", target="/", subprotocols=["sip"]))
            )
            while True:
                client.receive_data(await stream.receive())
                for event in client.events():
                    if isinstance(event, AcceptConnection):
                        sip = OPTIONS.replace(b"SIP/2.0/TCP", b"SIP/2.0/WS").decode()
                        await stream.send(client.send(TextMessage(data=sip)))
                    elif isinstance(event, TextMessage):
                        return event.data.startswith("SIP/2.0 200 ")


async def main(args: argparse.Namespace) -> None:
    print(f"open file limit: {raise_open_file_limit()}")
    table = ConnectionTable(
        ConnectionLimits(max_connections=args.max_connections, max_per_source=args.max_connections)
    )
    transport: TcpTransport | WsTransport
    if args.transport == "ws":
        transport = WsTransport("127.0.0.1", 0, connections=table)
    else:
        transport = TcpTransport("127.0.0.1", 0, connections=table)
    stack = SipStack([transport])
    if args.tracemalloc:
        tracemalloc.start()
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        port = transport.local_port
        assert await options_answered(port, args.transport == "ws")
        gc.collect()
        before = rss_mb(), traced_mb()
        started = time.perf_counter()
        async with await anyio.open_process(
            [sys.executable, "-c", CLIENT, str(port), str(args.n), args.transport]
        ) as client:
            assert client.stdin is not None and client.stdout is not None
            buffered = BufferedByteReceiveStream(client.stdout)
            assert await buffered.receive_until(b"\n", 100) == b"open"
            # Every client accepted (one more: the first OPTIONS), and the
            # table settled at the cap if there is one.
            expected = min(args.n, args.max_connections)
            accepted = args.n + 1
            await wait_for(
                lambda: transport.stats.connections_accepted >= accepted and table.count >= expected
            )
            opened = time.perf_counter() - started
            gc.collect()
            during = rss_mb(), traced_mb()
            await client.stdin.send(b"close\n")
            assert await buffered.receive_until(b"\n", 100) == b"closed"
            await wait_for(lambda: table.count == 0 and transport.connection_count == 0)
            # What the server gives back by itself (ConnectionTable.maintain
            # trims within a second), then the floor an explicit trim reaches.
            await anyio.sleep(3.5)
            after = rss_mb(), traced_mb()
            release_free_memory()
            floor = rss_mb()
            await client.stdin.send(b"bye\n")
        still = await options_answered(port, args.transport == "ws")
        tg.cancel_scope.cancel()
    held = min(args.n, args.max_connections)
    per_conn_kb = (during[0] - before[0]) * 1024 / max(1, held)
    print(
        f"{args.transport.upper()} N={args.n} backend={args.backend} "
        f"(opened in {opened:.1f}s; evicted={table.evicted} refused={table.refused})"
    )
    print(
        f"RSS MB   before {before[0]:7.1f}  with {during[0]:7.1f}  after {after[0]:7.1f}"
        f"  (then gc + malloc_trim: {floor:.1f})"
    )
    if args.tracemalloc:
        print(f"traced MB before {before[1]:7.1f}  with {during[1]:7.1f}  after {after[1]:7.1f}")
    print(f"RSS per held connection: {per_conn_kb:.1f} KiB; OPTIONS answered after: {still}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--transport", choices=("tcp", "ws"), default="tcp")
    parser.add_argument("--max-connections", type=int, default=10_000)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--tracemalloc", action="store_true")
    os.environ.setdefault("PYTHONMALLOC", "pymalloc")
    parsed = parser.parse_args()
    anyio.run(main, parsed, backend=parsed.backend)
