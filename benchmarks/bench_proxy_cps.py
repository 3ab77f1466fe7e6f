"""Calls per second through full_pbx (B2BUA) with SIPp, next to Kamailio, in one run.

Starts ``examples/full_pbx.py`` with a config whose static route sends SIPp's
``sip:service@...`` calls to SIPp's UAS, then runs the shared harness
(``shared/sip-tools/bench.sh``) in ``proxy`` mode against it and in
``kamailio`` mode against the baseline Kamailio, and prints both and the
ratio. ``--latency`` adds the p50/p99 call-setup time (INVITE to 200, SIPp's
response-time trace) at a fixed rate; ``--memory`` holds many calls open and
reports RSS per live call.

Usage: python benchmarks/bench_proxy_cps.py [--rate 1500] [--seconds 10]
           [--latency 1000] [--memory 2000] [--no-kamailio]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BENCH = SHARED / "sip-tools" / "bench.sh"
PBX_PORT = 5070

CONFIG = """
http_addr = "127.0.0.1:18080"
database_url = "sqlite://{data}/bench.sqlite3"
log_level = "warn"

[proxy]
addr = "127.0.0.1"
udp_port = {port}
acl_rules = ["allow all"]

[proxy.trunks.uas]
dest = "127.0.0.1:5090"

[[proxy.routes]]
name = "sipp-service"
match = {{ "request_uri.user" = "service" }}
dest = "uas"
"""


def start_pbx(tmp: Path) -> subprocess.Popen[bytes]:
    config = tmp / "bench.toml"
    config.write_text(CONFIG.format(data=tmp, port=PBX_PORT))
    pbx = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "full_pbx.py"), "--config", str(config)],
        cwd=tmp,
    )
    probe = (
        f"OPTIONS sip:ping@127.0.0.1:{PBX_PORT} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;"
        "branch=z9hG4bKbench\r\nFrom: <sip:b@x>;tag=1\r\nTo: <sip:p@x>\r\nCall-ID: bench\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for _ in range(100):
            sock.sendto(probe, ("127.0.0.1", PBX_PORT))
            try:
                sock.recv(4096)
                return pbx
            except OSError:
                time.sleep(0.1)
    pbx.kill()
    raise SystemExit("full_pbx did not answer OPTIONS")


def bench(mode: str, rate: int, seconds: int, extra: dict[str, str] | None = None) -> str:
    env = dict(os.environ, PROXY=f"127.0.0.1:{PBX_PORT}", **(extra or {}))
    out = subprocess.run(
        ["bash", str(BENCH), mode, str(rate), str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout + out.stderr


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) if match else 0


def achieved(text: str) -> tuple[int, int, float]:
    m = re.search(r"successful=(\d+) failed=(\d+).*achieved_cps=(\d+)", text)
    return (int(m.group(1)), int(m.group(2)), float(m.group(3))) if m else (0, -1, 0.0)


def latency(rate: int, seconds: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        text = bench("proxy", rate, seconds, {"OUTDIR": out, "UAC_ARGS": "-trace_rtt -rtt_freq 1"})
        ok, failed, _cps = achieved(text)
        rtts: list[float] = []
        for path in Path(out).glob("*_rtt.csv"):
            with path.open() as f:
                for row in csv.reader(f, delimiter=";"):
                    # Date_ms;response_time_ms;rtd_no (SIPp reports whole ms)
                    if len(row) > 2 and re.fullmatch(r"[\d.]+", row[1] or ""):
                        rtts.append(float(row[1]))
        if rtts:
            rtts.sort()
            p50 = statistics.median(rtts)
            p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
            print(
                f"setup latency at {rate} cps: {len(rtts)} calls, successful={ok} "
                f"failed={failed}, p50={p50:.1f} ms p99={p99:.1f} ms (INVITE -> 200, SIPp rtd)"
            )
        else:
            print(f"setup latency at {rate} cps: no rtt trace found (successful={ok})")


def memory(pbx_pid: int, calls: int) -> None:
    """Hold ``calls`` calls open at once and compare RSS with the idle process."""
    idle = rss_kib(pbx_pid)
    rate = 500
    hold_ms = int(calls / rate * 1000) + 4000
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.Popen(
            ["bash", str(BENCH), "proxy", str(rate), str(calls // rate)],
            env=dict(
                os.environ, PROXY=f"127.0.0.1:{PBX_PORT}", OUTDIR=out, UAC_ARGS=f"-d {hold_ms}"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        peak = idle
        while proc.poll() is None:
            peak = max(peak, rss_kib(pbx_pid))
            time.sleep(0.2)
        text = proc.stdout.read() if proc.stdout else ""
    ok, failed, _ = achieved(text)
    per_call = (peak - idle) * 1024 / max(calls, 1)
    print(
        f"memory: {calls} calls held {hold_ms} ms: idle RSS {idle / 1024:.1f} MiB, "
        f"peak {peak / 1024:.1f} MiB, {per_call / 1024:.1f} KiB per live call "
        f"(successful={ok} failed={failed})"
    )


def run_with_pbx(fn: Callable[[subprocess.Popen[bytes]], None]) -> None:
    """Run one measurement against a fresh PBX (RSS is a high-water mark: an
    overload run would leave it high for the rest of the process's life)."""
    with tempfile.TemporaryDirectory() as tmp:
        pbx = start_pbx(Path(tmp))
        try:
            fn(pbx)
        finally:
            pbx.terminate()
            pbx.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=1500)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--latency", type=int, default=0, help="cps for the latency run")
    parser.add_argument("--memory", type=int, default=0, help="live calls for the memory run")
    parser.add_argument("--no-kamailio", action="store_true")
    args = parser.parse_args()
    if args.memory:
        run_with_pbx(lambda pbx: memory(pbx.pid, args.memory))
    if args.latency:
        run_with_pbx(lambda pbx: latency(args.latency, args.seconds))
    result: dict[str, float] = {}

    def throughput(pbx: subprocess.Popen[bytes]) -> None:
        cpu0 = cpu_seconds(pbx.pid)
        text = bench("proxy", args.rate, args.seconds)
        cpu = cpu_seconds(pbx.pid) - cpu0
        ok, failed, cps = achieved(text)
        result["cps"] = cps
        print(
            f"sdpbx full_pbx: target {args.rate} cps x {args.seconds}s: successful={ok} "
            f"failed={failed} achieved={cps:.0f} cps, CPU {cpu * 1e6 / max(ok, 1):.0f} us/call"
        )

    run_with_pbx(throughput)
    if not args.no_kamailio:
        text = bench("kamailio", args.rate, args.seconds)
        k_ok, k_failed, k_cps = achieved(text)
        cpu_line = re.search(r"kamailio_cpu=.*", text)
        print(
            f"kamailio:       target {args.rate} cps x {args.seconds}s: successful={k_ok} "
            f"failed={k_failed} achieved={k_cps:.0f} cps ({cpu_line.group(0) if cpu_line else ''})"
        )
        if k_cps:
            print(f"ratio sdpbx/kamailio: {result['cps'] / k_cps:.2f}")


if __name__ == "__main__":
    main()
