"""Memory and answers of the running reference server under the floods of issues 7 and 13.

Starts ``examples/full_pbx.py`` (UDP on loopback, 100 users in a plain file,
MD5 challenges), measures its resident memory when idle, then runs each flood
from raw UDP sockets and reports the server's peak RSS, its RSS once the
flood's timers have run out (``--settle`` seconds, default 40: Timer J and
64*T1 are 32 s), and every packet the flood brought back:

- ``wrong-password``: REGISTERs for known and unknown users, each answering a
  nonce the server issued with a wrong password, from one source;
- ``invite-no-ack``: INVITEs without credentials, never ACKed (amplification:
  packets and bytes back per INVITE);
- ``options-10k``: 10 KB OPTIONS from 200 source addresses (Timer J state);
- ``bad-ruri-10k``: 10 KB requests whose Request-URI does not parse.

With ``--repeat N`` each flood runs N times in a row: the allocator keeps
some of the first flood's high-water mark (see docs/reliability.md), memory
that is not bounded would grow with every repeat.

Run: .venv/bin/python benchmarks/bench_floods.py [--count 20000] [--settle 40] [--warm 500]
         [--only NAME] [--repeat N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REALM = "127.0.0.1"
USERS = 100


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


class Server:
    """full_pbx.py in a temporary directory, stopped with SIGTERM."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_udp_port()
        (workdir / "users.txt").write_text("".join(f"u{n}:secret\n" for n in range(1, USERS + 1)))
        (workdir / "pbx.toml").write_text(
            f'database_url = "sqlite://data/pbx.sqlite3"\n'
            f'http_addr = "127.0.0.1:{free_udp_port()}"\n'
            'log_level = "warning"\n\n'
            f'[proxy]\naddr = "127.0.0.1"\nudp_port = {self.port}\n'
            f'realms = ["{REALM}"]\nauth_algorithms = ["MD5"]\n\n'
            '[[proxy.user_backends]]\ntype = "plain"\npath = "users.txt"\n'
        )
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.log = (workdir / "pbx.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "full_pbx.py"), "--config", "pbx.toml"],
            cwd=workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while answer(self.port, options(self.port, 1)) is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("full_pbx did not start; see pbx.log")

    def alive(self) -> bool:
        return self.proc.poll() is None and answer(self.port, options(self.port, 1)) is not None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self.log.close()


def headers(method: str, port: int, i: int, *, user: str = "probe", cseq: int = 1) -> str:
    tag = secrets.token_hex(4)
    return (
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK{secrets.token_hex(8)}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{REALM}>;tag={tag}\r\n"
        f"To: <sip:{user}@{REALM}>\r\n"
        f"Call-ID: flood-{i}-{secrets.token_hex(6)}\r\n"
        f"CSeq: {cseq} {method}\r\n"
    )


def options(port: int, i: int, padding: int = 0) -> bytes:
    pad = f"X-Pad: {'a' * padding}\r\n" if padding else ""
    return (
        f"OPTIONS sip:{REALM}:{port} SIP/2.0\r\n{headers('OPTIONS', port, i)}{pad}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def answer(port: int, data: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def nonce_of(port: int) -> str:
    reply = answer(port, register(port, 0, "u1", None), timeout=2.0)
    assert reply is not None, "no challenge"
    match = re.search(rb'nonce="([^"]+)"', reply)
    assert match is not None, reply
    return match.group(1).decode()


def register(port: int, i: int, user: str, nonce: str | None) -> bytes:
    auth = ""
    if nonce is not None:
        uri = f"sip:{REALM}"
        ha1 = hashlib.md5(f"{user}:{REALM}:wrong".encode()).hexdigest()
        ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
        cnonce = secrets.token_hex(4)
        response = hashlib.md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
        auth = (
            f'Authorization: Digest username="{user}", realm="{REALM}", nonce="{nonce}", '
            f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc=00000001, '
            f'cnonce="{cnonce}"\r\n'
        )
    return (
        f"REGISTER sip:{REALM} SIP/2.0\r\n{headers('REGISTER', port, i, user=user)}"
        f"Contact: <sip:{user}@127.0.0.1:{port}>\r\nExpires: 3600\r\n{auth}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def invite(port: int, i: int) -> bytes:
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    sdp += "m=audio 40000 RTP/AVP 0\r\n"
    return (
        f"INVITE sip:u2@{REALM} SIP/2.0\r\n{headers('INVITE', port, i, user='u1')}"
        f"Contact: <sip:u1@127.0.0.1:{port}>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def bad_ruri(port: int, i: int) -> bytes:
    return (
        f"OPTIONS sip:bob@127.0.0.1:99999 SIP/2.0\r\n{headers('OPTIONS', port, i)}"
        f"X-Pad: {'b' * 10_000}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def flood(
    server: Server,
    name: str,
    count: int,
    make: Callable[[int, int], bytes],
    sources: int,
    settle: float,
    rate: float,
) -> dict[str, float]:
    """Send ``count`` datagrams at ``rate``/s from ``sources`` loopback addresses and
    collect every reply until ``settle`` seconds after the last one was sent."""
    pid = server.proc.pid
    before = rss_kib(pid)
    socks = []
    for n in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.0.{2 + n % 250}", 0))
        sock.setblocking(False)
        socks.append(sock)
    replies = reply_bytes = 0
    peak = before

    def drain() -> None:
        nonlocal replies, reply_bytes
        for sock in socks:
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                replies += 1
                reply_bytes += len(data)

    sent_bytes = 0
    start = time.monotonic()
    for i in range(count):
        sock = socks[i % sources]
        data = make(sock.getsockname()[1], i)
        sent_bytes += len(data)
        sock.sendto(data, ("127.0.0.1", server.port))
        if i % 200 == 0:
            drain()
            peak = max(peak, rss_kib(pid))
            lag = start + i / rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)
    sent_for = time.monotonic() - start
    end = time.monotonic() + settle
    while time.monotonic() < end:
        drain()
        peak = max(peak, rss_kib(pid))
        time.sleep(0.05)
    drain()
    for sock in socks:
        sock.close()
    after = rss_kib(pid)
    return {
        "count": count,
        "seconds": sent_for,
        "before": before,
        "peak": peak,
        "after": after,
        "replies": replies,
        "packets_per_request": replies / count,
        "bytes_ratio": reply_bytes / sent_bytes,
    }


def floods(count: int, nonce: str) -> Iterator[tuple[str, Callable[[int, int], bytes], int, float]]:
    def wrong(port: int, i: int) -> bytes:
        user = f"u{1 + i % USERS}" if i % 2 else f"nobody{i}"
        return register(port, i, user, nonce)

    yield "wrong-password", wrong, 1, 5000.0
    yield "invite-no-ack", invite, 50, 1000.0
    yield "options-10k", lambda port, i: options(port, i, 10_000), 200, 5000.0
    yield "bad-ruri-10k", bad_ruri, 200, 5000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--settle", type=float, default=40.0)
    parser.add_argument("--rate", type=float, help="datagrams/s for every flood")
    parser.add_argument("--only", help="run only this flood")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each flood N times (does RSS keep growing?)"
    )
    parser.add_argument(
        "--warm", type=int, default=0, help="first send this many of each flood at 200/s"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        try:
            for i in range(500):  # warm the caches and the allocator first
                answer(server.port, options(server.port, i), timeout=1.0)
            time.sleep(2)
            idle = rss_kib(server.proc.pid)
            print(f"idle RSS after 500 OPTIONS: {idle / 1024:.1f} MiB")
            if args.warm:
                # A server that has served a little of each kind of traffic, at
                # a rate it keeps up with: one-time growth (code paths, thread
                # pools, tables) is not charged to the flood that first meets it.
                nonce = nonce_of(server.port)
                for name, make, sources, _ in floods(args.warm, nonce):
                    flood(server, name, args.warm, make, sources, 2.0, 200.0)
                time.sleep(args.settle)
                idle = rss_kib(server.proc.pid)
                print(f"idle RSS after {args.warm} of each flood at 200/s: {idle / 1024:.1f} MiB")
            print(
                f"{'flood':16} {'sent':>7} {'s':>6} {'peak MiB':>9} {'after MiB':>10} "
                f"{'vs idle':>8} {'pkts/req':>9} {'bytes x':>8}"
            )
            nonce = nonce_of(server.port)
            runs = [
                flood_args
                for flood_args in floods(args.count, nonce)
                for _ in range(args.repeat)
                if not args.only or flood_args[0] == args.only
            ]
            for name, make, sources, rate in runs:
                rate = args.rate or rate
                count = args.count // 4 if name == "invite-no-ack" else args.count
                r = flood(server, name, count, make, sources, args.settle, rate)
                print(
                    f"{name:16} {count:7d} {r['seconds']:6.1f} {r['peak'] / 1024:9.1f} "
                    f"{r['after'] / 1024:10.1f} {100 * (r['after'] / idle - 1):+7.0f}% "
                    f"{r['packets_per_request']:9.2f} {r['bytes_ratio']:8.2f}",
                    flush=True,
                )
                if not server.alive():
                    print(f"server stopped answering after {name}")
                    break
        finally:
            code = server.stop()
            print(f"full_pbx exit code on SIGTERM: {code}")


if __name__ == "__main__":
    main()
