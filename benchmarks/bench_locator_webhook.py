"""Locator webhook delivery rate: events/s to a local receiver that takes D ms per request.

A restart makes every phone re-register at once, so what matters is how fast a
backlog drains: ``--events`` events (over ``--aors`` AoRs, so several per AoR
stay ordered) are queued at once, then :class:`~sdpbx.webhooks.LocatorWebhook`
delivers them with ``--in-flight`` POSTs at a time. The receiver is a stdlib
threading HTTP/1.1 server in its own process (so it does not share this
process's GIL), answering 200 after ``--delay-ms``. Reported: events/s
delivered, and this process's CPU time per event.

Run: python benchmarks/bench_locator_webhook.py [--delay-ms 0 20] [--in-flight 16 1]
                                                [--events 5000] [--aors 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio

from sdpbx.locator import Binding, LocatorEvent
from sdpbx.webhooks import LocatorWebhook

T0 = 1_700_000_000.0


def serve(delay: float) -> None:
    """The receiver process: print the port, answer every POST after ``delay`` s."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if delay:
                time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    ThreadingHTTPServer.request_queue_size = 128  # room for every connection at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def event(n: int, aors: int) -> LocatorEvent:
    user = 100000 + n % aors
    binding = Binding(
        aor=f"{user}@pbx.example.com",
        contact=f"<sip:{user}@10.0.{n % 250}.{n % 200}:5060>",
        transport="UDP",
        host=f"10.0.{n % 250}.{n % 200}",
        port=5060,
        expires_at=T0 + 3600,
        registered_at=T0,
        call_id=f"{n:016x}@bench",
        cseq=1,
        user_agent="Yealink SIP-T46U 108.86.0.1",
    )
    return LocatorEvent("registered", T0, binding)


async def run(url: str, events: int, aors: int, in_flight: int) -> tuple[float, float, int]:
    hook = LocatorWebhook(url, max_in_flight=in_flight, queue_size=events)
    batch = [event(n, aors) for n in range(events)]
    async with anyio.create_task_group() as tg:
        await tg.start(hook.serve)
        wall, cpu = time.perf_counter(), time.process_time()
        for item in batch:
            hook.notify(item)
        await hook.drain()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        hook.close()
    return wall, cpu, hook.stats.delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[0.0, 20.0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--aors", type=int, default=2000)
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    print(f"{args.events} events over {args.aors} AoRs, receiver in its own process")
    print(f"{'delay ms':>9} {'in flight':>9} {'delivered':>9} {'events/s':>9} {'CPU us/event':>13}")
    for delay_ms in args.delay_ms:
        receiver = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(delay_ms / 1000)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            assert receiver.stdout is not None
            url = f"http://127.0.0.1:{int(receiver.stdout.readline())}/locations"
            for in_flight in args.in_flight:
                events = args.events if in_flight > 1 or not delay_ms else args.events // 10
                wall, cpu, delivered = anyio.run(run, url, events, args.aors, in_flight)
                print(
                    f"{delay_ms:9g} {in_flight:9d} {delivered:9d} {delivered / wall:9.0f} "
                    f"{cpu / events * 1e6:13.0f}"
                )
        finally:
            receiver.terminate()
            receiver.wait()


if __name__ == "__main__":
    main()
