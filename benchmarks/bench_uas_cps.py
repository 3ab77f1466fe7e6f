"""Calls per second a minimal SipStack UAS answers for SIPp, with 0 failures wanted.

Starts ``AnsweringUas`` on a SipStack in a child process (UDP, 127.0.0.1),
drives it with SIPp's built-in ``uac`` scenario (INVITE/180/200/ACK/BYE/200)
at each requested rate, and prints successful/failed calls, the achieved
rate and the UAS's CPU time per call.

Usage: python benchmarks/bench_uas_cps.py [--rates 1000,2000,3000] [--seconds 10]
                                          [--uvloop]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def serve(port: int, uvloop: bool) -> None:
    import gc

    import anyio

    from sdpbx.stack import SipStack
    from sdpbx.testing import AnsweringUas
    from sdpbx.transport import UdpTransport

    async def main() -> None:
        stack = SipStack([UdpTransport("127.0.0.1", port)], AnsweringUas())
        async with anyio.create_task_group() as tg:
            await tg.start(stack.serve)
            print("ready", flush=True)
            await anyio.sleep_forever()

    # As examples/full_pbx.py does: see docs/performance.md on GC thresholds.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    anyio.run(main, backend_options={"use_uvloop": True} if uvloop else {})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(rate: int, seconds: int, uvloop: bool, port: int = 5390) -> None:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)] + (["--uvloop"] if uvloop else []),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        calls = rate * seconds
        cpu0 = cpu_seconds(server.pid)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [
                    "sipp",
                    "-sn",
                    "uac",
                    f"127.0.0.1:{port}",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    "5391",
                    "-m",
                    str(calls),
                    "-r",
                    str(rate),
                    "-l",
                    str(rate * 3),
                    "-nostdin",
                    "-buff_size",
                    "4194304",
                    "-recv_timeout",
                    "10000",
                ],
                capture_output=True,
                text=True,
                cwd=tmp,
                check=False,
            ).stdout
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", out)
        bad = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", out)
        ok_n = int(ok[-1]) if ok else 0
        print(
            f"target={rate:>5} cps x {seconds}s  successful={ok_n} "
            f"failed={bad[-1] if bad else '?'}  achieved={ok_n / wall:,.0f} cps  "
            f"uas_cpu={cpu:.2f}s ({cpu * 1e6 / max(ok_n, 1):.0f} us/call)"
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--rates", default="1000,2000,3000")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.uvloop)
    else:
        print(f"sdpbx minimal UAS over UDP, Python {sys.version.split()[0]}, uvloop={args.uvloop}")
        for r in args.rates.split(","):
            run(int(r), args.seconds, args.uvloop)
