"""Mutation-fuzz a running sdpbx over UDP, TCP (and WebSocket); the recorded run.

    python benchmarks/fuzz_live.py --count 1000000 --seed 1 --transports udp,tcp
    python benchmarks/fuzz_live.py --target 127.0.0.1:5060 --pid 1234 --log pbx.log ...
    python benchmarks/fuzz_live.py --replay fuzz-findings/finding-001-log-4399

Without --target it starts examples/full_pbx.py itself (a temporary folder, a
config with users 1001/1002 for the call the mid-dialog messages aim at) and
stops it with SIGTERM at the end, requiring exit code 0. It prints messages
sent, msg/s, crashes, liveness-probe failures, RSS before/after/peak and every
finding; findings (the server's traceback or ERROR line, the messages sent
since the previous probe, one .bin file each) go to --findings. --replay sends
the .bin files of a finding one at a time to a fresh server, a probe after
each, and names the ones that reproduce it. Exit status 1 on any finding.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.fuzz_live import FuzzConfig, FuzzRun, Report, probe_udp, replay, rss_kb
from helpers.fuzz_peers import BACKENDS
from helpers.pbx_process import MD5_ONLY, PbxProcess, pbx_toml
from helpers.sipp import free_port


def _progress(report: Report) -> None:
    if report.probes % 250 == 0:
        rate = report.sent / report.elapsed if report.elapsed else 0.0
        print(
            f"  {report.sent:>9} sent, {rate:6.0f} msg/s, probes failed "
            f"{report.probe_failures}, findings {len(report.findings)}",
            flush=True,
        )


def _start(cwd: Path, ws: bool) -> tuple[PbxProcess, int | None]:
    port = free_port(socket.SOCK_DGRAM)
    ws_port = free_port(socket.SOCK_STREAM) if ws else None
    proxy = MD5_ONLY + (f"\nws_port = {ws_port}" if ws_port else "")
    (cwd / "pbx.toml").write_text(pbx_toml(port, proxy=proxy, backends=BACKENDS))
    pbx = PbxProcess(cwd, port, ["--config", str(cwd / "pbx.toml")])
    pbx.wait_ready()
    return pbx, ws_port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", type=int, default=0, help="first message index")
    parser.add_argument("--transports", default="udp,tcp", help="udp,tcp,ws")
    parser.add_argument("--target", help="host:port of a running PBX (127.0.0.1 only)")
    parser.add_argument("--pid", type=int, help="its process id (for RSS and liveness)")
    parser.add_argument("--log", type=Path, help="its log file (for tracebacks and ERRORs)")
    parser.add_argument("--ws-port", type=int, help="its WebSocket port (with --target)")
    parser.add_argument("--probe-every", type=int, default=200)
    parser.add_argument(
        "--call-every", type=int, default=500, help="a fresh call every N messages (0: none)"
    )
    parser.add_argument("--findings", type=Path, default=Path("fuzz-findings"))
    parser.add_argument("--replay", type=Path, help="a finding folder to replay message by message")
    parser.add_argument("--workdir", type=Path, help="run full_pbx here and keep its log")
    parser.add_argument(
        "--idle-after",
        type=float,
        default=0.0,
        help="then wait this long (transactions expire after 32 s) and read RSS again",
    )
    args = parser.parse_args(argv)
    transports = tuple(t for t in args.transports.split(",") if t)
    with tempfile.TemporaryDirectory(prefix="sdpbx-fuzz-") as tmp:
        pbx: PbxProcess | None = None
        if args.target:
            host, _, port_text = args.target.rpartition(":")
            if host != "127.0.0.1" or args.pid is None:
                parser.error("--target must be 127.0.0.1:PORT and needs --pid")
            port, pid, log, ws_port = int(port_text), args.pid, args.log, args.ws_port
        else:
            workdir = (args.workdir or Path(tmp)).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            pbx, ws_port = _start(workdir, "ws" in transports)
            port, pid, log = pbx.sip_port, pbx.proc.pid, pbx.log_path
        try:
            if args.replay:
                files = sorted(args.replay.glob("*.bin"))
                guilty = replay(port, pid, log or Path("/dev/null"), files)
                print(f"replayed {len(files)} messages; {len(guilty)} reproduce the finding")
                for path, seen in guilty:
                    print(f"--- {path.name}: {path.read_bytes()!r}\n{seen}")
                return 1 if guilty else 0
            print(
                f"fuzzing 127.0.0.1:{port} (pid {pid}): {args.count} messages, seed "
                f"{args.seed}, transports {','.join(transports)}; RSS {rss_kb(pid)}",
                flush=True,
            )
            config = FuzzConfig(
                port=port, pid=pid, seed=args.seed, count=args.count,
                transports=transports, ws_port=ws_port, log_path=log,
                findings_dir=args.findings, probe_every=args.probe_every, progress=_progress,
                call_every=args.call_every,
            )  # fmt: skip
            report = FuzzRun(config).run(args.start)
            print(report.summary())
            if args.idle_after > 0:
                time.sleep(args.idle_after)
                took = probe_udp(port, "127.0.10.3", 5.0)
                print(
                    f"  after {args.idle_after:.0f} s idle: RSS {rss_kb(pid)} KiB, OPTIONS "
                    + ("answered" if took is not None else "NOT answered")
                )
            if report.findings:
                print(f"findings saved under {args.findings}/")
        finally:
            if pbx is not None:
                code = pbx.stop()
                print(f"full_pbx exited with {code} on SIGTERM")
                if code != 0:
                    print(pbx.log()[-3000:])
        failed = bool(report.findings) or (pbx is not None and code != 0)
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
