"""Drive a running PBX with mutated SIP over UDP, TCP and WebSocket, and watch it.

What the run checks, from outside the process:

- every ``probe_every`` messages an OPTIONS from an address the run has not
  used yet must be answered within ``probe_timeout`` (a throttle that blocks
  everyone, a wedged event loop or a dead process all fail it);
- the process is still alive (``/proc/PID``) at each probe and at the end;
- the server's log gains no ``Traceback``, no ``ERROR``/``CRITICAL`` line and
  no "unexpected error" containment line:
  each one is a finding, saved with the messages sent since the previous probe
  (one file per message, replayable one by one to find the culprit);
- RSS (``VmRSS``) before and after, and the peak (``VmHWM``).

Fuzzed messages come from 127.0.0.2 .. 127.0.0.254 in turn, so a throttle
keyed on the source address sees many peers, as it would in the field.
"""

from __future__ import annotations

import collections
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from attrs import Factory, define, frozen

from helpers.fuzz import Mutant, Mutator, Seed, load_dialog_seeds, load_seeds
from helpers.fuzz_peers import Call, Phone, Responder, answer, register, status
from helpers.sipwire import WsClient

FUZZ_SOURCES = [f"127.0.0.{n}" for n in range(2, 255)]
#: Probes, the phones and replays each take addresses no fuzzed message comes from.
PROBE_SOURCES = [f"127.0.{a}.{b}" for a in range(3, 10) for b in range(1, 255)]
PHONE_SOURCES = ("127.0.1.1", "127.0.1.2")

#: A traceback, an ERROR, or a transport's containment line (which carries the
#: traceback only the first time in each interval: the later ones count too).
_BAD_LINE = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|unexpected error")
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ")


def rss_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak) of ``pid`` in KiB; empty if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", text, re.M)}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"


@frozen
class Sent:
    transport: str
    mutant: Mutant


@define
class Finding:
    kind: str  # "crash" | "probe" | "log" | "call"
    index: int
    detail: str
    window: list[Sent] = Factory(list)


@define
class Report:
    seed: int
    sent: int = 0
    by_transport: dict[str, int] = Factory(dict)
    probes: int = 0
    probe_failures: int = 0
    probe_worst: float = 0.0
    calls: int = 0
    calls_ended: int = 0
    relayed_to_phones: int = 0
    tcp_closed_by_server: int = 0
    elapsed: float = 0.0
    rss_before: dict[str, int] = Factory(dict)
    rss_after: dict[str, int] = Factory(dict)
    findings: list[Finding] = Factory(list)
    log_levels: collections.Counter[str] = Factory(collections.Counter)
    warnings: collections.Counter[str] = Factory(collections.Counter)

    @property
    def crashed(self) -> bool:
        """Whether the process died."""
        return any(f.kind == "crash" for f in self.findings)

    def summary(self) -> str:
        rate = self.sent / self.elapsed if self.elapsed else 0.0
        lines = [
            f"seed {self.seed}: {self.sent} messages in {self.elapsed:.1f} s ({rate:.0f} msg/s)",
            f"  by transport: {dict(sorted(self.by_transport.items()))}",
            f"  calls set up: {self.calls} (ended by a fuzzed BYE: {self.calls_ended}); "
            f"requests relayed to the phones: {self.relayed_to_phones}",
            "  TCP connections closed by the server (or reset on a framing error): "
            f"{self.tcp_closed_by_server}",
            f"  liveness probes: {self.probes}, failed: {self.probe_failures}, "
            f"slowest answer {self.probe_worst * 1000:.0f} ms",
            f"  crashes: {sum(f.kind == 'crash' for f in self.findings)}",
            f"  RSS before {self.rss_before.get('VmRSS', 0)} KiB, after "
            f"{self.rss_after.get('VmRSS', 0)} KiB, peak {self.rss_after.get('VmHWM', 0)} KiB",
            f"  server log lines by level: {dict(self.log_levels)}",
        ]
        for text, count in self.warnings.most_common(10):
            lines.append(f"    {count:>7} x {text}")
        lines.append(f"  findings: {len(self.findings)}")
        kinds = collections.Counter(
            (f.kind, re.sub(r" \(N similar suppressed\)", "", _pattern(f.detail)))
            for f in self.findings
        )
        for (kind, text), count in kinds.most_common():
            first = next(f.index for f in self.findings if f.kind == kind)
            lines.append(f"    {count:>5} x [{kind}] (first at message {first}) {text}")
        return "\n".join(lines)


class _LogWatch:
    """Reads what the server appended to its log since the last look."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.offset = path.stat().st_size if path is not None and path.exists() else 0

    def new_records(self) -> list[str]:
        if self.path is None:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # a record still being written waits for next time
        self.offset += end
        records: list[str] = []
        for line in chunk[:end].decode(errors="replace").splitlines():
            if _RECORD.match(line) or not records:
                records.append(line)
            else:
                records[-1] += "\n" + line  # a traceback continues its record
        return records


def _pattern(record: str) -> str:
    text = record.split(": ", 1)[-1].splitlines()[0]
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return re.sub(r"\d+", "N", text)[:160]


class _TcpSender:
    """One connection per source address; a new one every ``per_conn`` messages."""

    def __init__(self, port: int, per_conn: int, report: Report) -> None:
        self.port, self.per_conn, self.report = port, per_conn, report
        self.conns: dict[str, tuple[socket.socket, int]] = {}

    def send(self, source: str, data: bytes) -> None:
        sock, used = self.conns.pop(source, (None, 0))
        try:
            if sock is None:
                sock = socket.create_connection(
                    ("127.0.0.1", self.port), timeout=5, source_address=(source, 0)
                )
            sock.settimeout(5)
            sock.sendall(data)
            sock.settimeout(0)
            while True:  # drain what the server answered, without waiting
                if not sock.recv(65536):
                    raise ConnectionResetError
        except BlockingIOError:
            pass
        except OSError:
            self.report.tcp_closed_by_server += 1
            if sock is not None:
                sock.close()
            return
        if used + 1 >= self.per_conn:
            sock.close()
        else:
            self.conns[source] = (sock, used + 1)

    def close(self) -> None:
        for sock, _ in self.conns.values():
            sock.close()
        self.conns.clear()


class _WsSender:
    def __init__(self, port: int, per_conn: int) -> None:
        self.port, self.per_conn = port, per_conn
        self.client: WsClient | None = None
        self.used = 0

    def send(self, data: bytes) -> None:
        try:
            if self.client is None:
                self.client = WsClient(self.port, timeout=5)
                self.used = 0
            self.client.send(data)
            self.used += 1
        except OSError:
            self.close()
            return
        if self.used >= self.per_conn:
            self.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


@define
class FuzzConfig:
    port: int
    pid: int
    seed: int = 1
    count: int = 10_000
    transports: tuple[str, ...] = ("udp", "tcp")
    ws_port: int | None = None
    log_path: Path | None = None
    findings_dir: Path | None = None
    probe_every: int = 200
    probe_timeout: float = 5.0
    #: A new call every this many messages (0: no calls, no mid-dialog messages).
    call_every: int = 500
    #: A call a fuzzed BYE ended is replaced after this many messages.
    redial_after: int = 100
    tcp_per_conn: int = 8
    progress: Callable[[Report], None] | None = None


def _options(port: int, local: str, transport: str = "UDP") -> bytes:
    call_id = uuid.uuid4().hex
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {local};branch=z9hG4bK{call_id[:16]};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag={call_id[:8]}\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def probe_udp(port: int, source: str, timeout: float) -> float | None:
    """Seconds until a 200 answers an OPTIONS from ``source`` (None: no 200 in time)."""
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        local = f"{source}:{sock.getsockname()[1]}"
        sock.sendto(_options(port, local), ("127.0.0.1", port))
        while time.monotonic() - start < timeout:
            try:
                reply = sock.recv(65535)
            except OSError:
                return None
            if status(reply) == 200:
                return time.monotonic() - start
    return None


def probe_tcp(port: int, source: str, timeout: float) -> float | None:
    start = time.monotonic()
    try:
        with socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        ) as sock:
            local = f"{source}:{sock.getsockname()[1]}"
            sock.sendall(_options(port, local, "TCP"))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65535)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    return time.monotonic() - start if status(data) == 200 else None


class FuzzRun:
    """One fuzzing run against the PBX at 127.0.0.1:``config.port`` (process ``config.pid``)."""

    def __init__(self, config: FuzzConfig) -> None:
        self.config = config
        self.report = Report(seed=config.seed)
        self.mutator = Mutator(config.seed, load_seeds(config.port), load_dialog_seeds())
        self.window: collections.deque[Sent] = collections.deque(maxlen=config.probe_every * 2)
        self._probe_n = 0
        self._udp: dict[str, socket.socket] = {}
        self._tcp = _TcpSender(config.port, config.tcp_per_conn, self.report)
        self._ws = _WsSender(config.ws_port, config.tcp_per_conn) if config.ws_port else None
        self._log = _LogWatch(config.log_path)
        self.caller = Phone(PHONE_SOURCES[0], "1001")
        self.callee = Phone(PHONE_SOURCES[1], "1002")
        self._responder = Responder(self.caller, self.callee)
        self.call: Call | None = None

    # -- the pieces --------------------------------------------------------------------------

    def _udp_send(self, source: str, data: bytes) -> None:
        sock = self._udp.get(source)
        if sock is None:
            sock = self._udp[source] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source, 0))
            sock.setblocking(False)
        try:
            sock.sendto(data, ("127.0.0.1", self.config.port))
        except OSError:
            pass  # EMSGSIZE, a full buffer: the message simply is not sent
        try:
            while sock.recv(65536):  # drop the answers
                pass
        except OSError:
            pass

    def _new_call(self, index: int) -> None:
        if self.call is not None:
            self.report.calls_ended += self.call.ended
            self.call.hang_up()
        self.call = None
        if not register(self.callee, self.config.port):
            self._finding("call", index, "the callee could not register")
            return
        call = Call(self.caller, self.callee, self.config.port)
        if call.establish():
            self.call = call
            self.report.calls += 1
        else:
            self._finding("call", index, "a call between registered phones was not answered")

    def _live_seeds(self) -> list[Seed]:
        """Answers to the last request the PBX sent the callee: they reach its client
        transaction while it still waits (or absorbs retransmissions)."""
        request = self.callee.last_request
        if request is None:
            return []
        return [
            Seed("live/180", answer(request, 180, "Ringing", self.callee.tag)),
            Seed("live/200", answer(request, 200, "OK", self.callee.tag)),
            Seed("live/486", answer(request, 486, "Busy Here", self.callee.tag)),
        ]

    def _finding(self, kind: str, index: int, detail: str) -> None:
        finding = Finding(kind, index, detail, list(self.window))
        self.report.findings.append(finding)
        # The first 20 are saved; a defect that recurs all run long is counted only.
        if self.config.findings_dir is not None and len(self.report.findings) <= 20:
            save_finding(self.config.findings_dir, len(self.report.findings), finding)

    def _check(self, index: int) -> bool:
        """Probe, then read the log (what the probe waited for has been logged by then)
        and check the process; False once it is dead."""
        config = self.config
        source = PROBE_SOURCES[self._probe_n % len(PROBE_SOURCES)]
        use_tcp = "tcp" in config.transports and self._probe_n % 4 == 3
        self._probe_n += 1
        self.report.probes += 1
        took = (probe_tcp if use_tcp else probe_udp)(config.port, source, config.probe_timeout)
        for record in self._log.new_records():
            level = m.group(1) if (m := _RECORD.match(record)) else "?"
            self.report.log_levels[level] += 1
            if _BAD_LINE.search(record):
                self._finding("log", index, record)
            elif level == "WARNING":
                self.report.warnings[_pattern(record)] += 1
        if not alive(config.pid):
            self._finding("crash", index, f"process {config.pid} is gone")
            return False
        if took is None:
            self.report.probe_failures += 1
            transport = "TCP" if use_tcp else "UDP"
            self._finding("probe", index, f"no 200 to a {transport} OPTIONS from {source}")
        else:
            self.report.probe_worst = max(self.report.probe_worst, took)
        return True

    # -- the run ------------------------------------------------------------------------------

    def run(self, start: int = 0) -> Report:
        config, report = self.config, self.report
        report.rss_before = rss_kb(config.pid)
        began = time.monotonic()
        last_call = start - config.call_every
        try:
            for index in range(start, start + config.count):
                since = index - last_call
                if config.call_every and (
                    since >= config.call_every
                    or (since >= config.redial_after and self.call is not None and self.call.ended)
                ):
                    self._new_call(index)
                    last_call = index
                values = self.call.values(index) if self.call is not None else None
                live = self._live_seeds() if self.call is not None else []
                mutant = self.mutator.build(index, values, live)
                transport = config.transports[index % len(config.transports)]
                source = FUZZ_SOURCES[index % len(FUZZ_SOURCES)]
                if transport == "udp":
                    self._udp_send(source, mutant.data)
                elif transport == "tcp":
                    self._tcp.send(source, mutant.data)
                elif self._ws is not None:
                    self._ws.send(mutant.data)
                self.window.append(Sent(transport, mutant))
                report.sent += 1
                report.by_transport[transport] = report.by_transport.get(transport, 0) + 1
                if (index - start + 1) % config.probe_every == 0:
                    if not self._check(index):
                        break
                    if config.progress is not None:
                        report.elapsed = time.monotonic() - began
                        config.progress(report)
            else:
                if self.call is not None:
                    self.call.hang_up()
                self._check(start + config.count)
        finally:
            report.elapsed = time.monotonic() - began
            report.relayed_to_phones = self.caller.requests + self.callee.requests
            report.rss_after = rss_kb(config.pid)
            self.close()
        return report

    def close(self) -> None:
        self._responder.close()
        self._tcp.close()
        if self._ws is not None:
            self._ws.close()
        for sock in self._udp.values():
            sock.close()
        self._udp.clear()


def save_finding(directory: Path, number: int, finding: Finding) -> Path:
    """``finding-N/``: what was seen and each candidate message as a ``.bin`` file."""
    folder = directory / f"finding-{number:03d}-{finding.kind}-{finding.index}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"kind: {finding.kind}", f"at message: {finding.index}", "", finding.detail, ""]
    for n, sent in enumerate(finding.window):
        m = sent.mutant
        name = f"{n:04d}-{sent.transport}-{m.index}.bin"
        (folder / name).write_bytes(m.data)
        lines.append(f"{name}: seed {m.seed_name}, operators {', '.join(m.operators) or '-'}")
    (folder / "README.txt").write_text("\n".join(lines) + "\n")
    return folder


def replay(
    port: int, pid: int, log_path: Path, files: Iterable[Path], timeout: float = 5.0
) -> list[tuple[Path, str]]:
    """Send saved messages one at a time, each followed by a probe; the ones after which
    the log grew a bad line or the server stopped answering, with what was seen."""
    watch = _LogWatch(log_path)
    guilty: list[tuple[Path, str]] = []
    for n, path in enumerate(files):
        transport = path.name.split("-")[1] if path.name.count("-") >= 2 else "udp"
        data = path.read_bytes()
        source = PROBE_SOURCES[-1 - n % 200]
        if transport == "tcp":
            sender = _TcpSender(port, 1, Report(seed=0))
            sender.send(FUZZ_SOURCES[n % len(FUZZ_SOURCES)], data)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((FUZZ_SOURCES[n % len(FUZZ_SOURCES)], 0))
                sock.sendto(data, ("127.0.0.1", port))
        answered = probe_udp(port, source, timeout) is not None
        bad = [r for r in watch.new_records() if _BAD_LINE.search(r)]
        if bad or not answered or not alive(pid):
            guilty.append((path, "\n".join(bad) or "no answer to the probe"))
    return guilty
