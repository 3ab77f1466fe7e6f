"""Digest REGISTERs per second through SipStack + Registrar, and memory per binding.

A child process serves a SipStack (UDP, 127.0.0.1) whose handler hands REGISTER
to a Registrar with a MemoryLocator and an Authenticator (MemoryUserBackend,
MD5 challenges because SIPp 3.6 speaks nothing else, throttle on). SIPp runs the
shared ``sip-tools/scenarios/uac_register.xml`` (REGISTER, 401, REGISTER with
credentials, 200: two transactions per registration) at each rate, with
distinct AoRs ``u1..uN``. Printed per rate: successful/failed registrations,
the achieved rate, and the server's CPU time per registration. Finally the
memory run: a second child traces its allocations (tracemalloc) while SIPp
registers ``--memory`` AoRs at 500/s, waits for every transaction to end
(Timer J, 32 s) and reports what is still allocated per binding. (RSS is no
use here: it keeps the peak of ~100k transactions in flight at 2000/s.)

Usage: python benchmarks/bench_register.py [--rates 500,1000,2000] [--seconds 10]
                                           [--uvloop] [--memory 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SCENARIO = Path(__file__).resolve().parents[2] / "shared" / "sip-tools" / "scenarios"


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def serve(port: int, uvloop: bool, trace: bool) -> None:
    import gc
    import tracemalloc

    import anyio

    from sdpbx.authn import Authenticator
    from sdpbx.locator import MemoryLocator
    from sdpbx.registrar import Registrar
    from sdpbx.sip.auth import NonceManager
    from sdpbx.sip.throttle import FailureThrottle
    from sdpbx.stack import IncomingRequest, RequestHandler, SipStack
    from sdpbx.transport import UdpTransport
    from sdpbx.users import MemoryUserBackend, SipUser

    locator = MemoryLocator()
    auth = Authenticator(
        MemoryUserBackend([SipUser("bench", "secret")]),
        realm_for="127.0.0.1",
        nonces=NonceManager(os.urandom(32)),
        throttle=FailureThrottle(limit=10),
        check_username=False,
        algorithms=("MD5",),
    )
    registrar = Registrar(locator, auth)

    class Handler(RequestHandler):
        async def handle_request(self, incoming: IncomingRequest) -> None:
            if incoming.request.method == "REGISTER":
                await registrar.handle(incoming)
            else:
                await super().handle_request(incoming)

    async def main() -> None:
        stack = SipStack([UdpTransport("127.0.0.1", port)], Handler())
        stack.add_timer_client(registrar.timer_client, registrar.clock)
        async with anyio.create_task_group() as tg:
            await tg.start(stack.serve)
            gc.collect()
            if trace:
                tracemalloc.start()
            base = rss_kb()
            print("ready", flush=True)
            while True:
                command = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
                if command == "drain":
                    while len(stack.layer):
                        await anyio.sleep(0.5)
                    gc.collect()
                elif not command:
                    tg.cancel_scope.cancel()
                    return
                stats = {
                    "bindings": len(locator),
                    "transactions": len(stack.layer),
                    "rss_growth_kb": rss_kb() - base,
                    "traced_bytes": tracemalloc.get_traced_memory()[0] if trace else 0,
                    "pid": os.getpid(),
                    "successes": auth.stats.successes,
                    "failures": auth.stats.failures,
                }
                print(json.dumps(stats), flush=True)

    # As examples/full_pbx.py does: see docs/performance.md on GC thresholds.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    anyio.run(main, backend_options={"use_uvloop": True} if uvloop else {})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_sipp(port: int, calls: int, rate: int) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["sipp", "-sf", str(SCENARIO / "uac_register.xml"), f"127.0.0.1:{port}",
             "-i", "127.0.0.1", "-p", str(port + 1), "-au", "bench", "-ap", "secret",
             "-m", str(calls), "-r", str(rate), "-l", str(rate * 3), "-nostdin",
             "-buff_size", "4194304", "-recv_timeout", "10000"],
            capture_output=True, text=True, cwd=tmp, check=False,
        ).stdout  # fmt: skip
    ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", out)
    bad = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", out)
    return (int(ok[-1]) if ok else 0), (bad[-1] if bad else "?")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--rates", default="500,1000,2000")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--port", type=int, default=5394)
    parser.add_argument("--memory", type=int, default=5000, help="bindings to measure (0: skip)")
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.uvloop, args.trace)
        return
    print(
        f"sdpbx registrar, digest MD5 over UDP, Python {sys.version.split()[0]}, "
        f"uvloop={args.uvloop}"
    )
    with child(args.port, args.uvloop, trace=False) as ask:
        for rate in (int(r) for r in args.rates.split(",")):
            calls = rate * args.seconds
            pid = int(str(ask("stats")["pid"]))
            cpu0 = cpu_seconds(pid)
            t0 = time.perf_counter()
            ok, bad = run_sipp(args.port, calls, rate)
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(pid) - cpu0
            print(
                f"target={rate:>5}/s x {args.seconds}s  successful={ok} failed={bad}  "
                f"achieved={ok / wall:,.0f} reg/s  server_cpu={cpu:.2f}s "
                f"({cpu * 1e6 / max(ok, 1):.0f} us/registration, 2 transactions each)"
            )
    if args.memory:
        # tracemalloc from the start, a gentle rate, then wait for Timer J to end
        # every transaction: what stays is the registrar's state.
        with child(args.port, args.uvloop, trace=True) as ask:
            ok, bad = run_sipp(args.port, args.memory, 500)
            stats = ask("drain")
        bindings = int(str(stats["bindings"]))
        traced = int(str(stats["traced_bytes"]))
        print(
            f"memory: {bindings} bindings (successful={ok} failed={bad}), open transactions="
            f"{stats['transactions']}, traced growth {traced / 2**20:.1f} MiB"
            f" = {traced / max(bindings, 1):,.0f} bytes per binding"
            " (binding + locator index + nonce-count entry)"
        )


@contextmanager
def child(port: int, uvloop: bool, *, trace: bool) -> Iterator[Callable[[str], dict[str, object]]]:
    command = [sys.executable, __file__, "--serve", str(port)]
    command += ["--uvloop"] * uvloop + ["--trace"] * trace
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None

    def ask(line: str) -> dict[str, object]:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(line + "\n")
        server.stdin.flush()
        return dict(json.loads(server.stdout.readline()))

    try:
        server.stdout.readline()
        yield ask
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
