"""10,000 mutated SIP messages against the running reference server.

``examples/full_pbx.py`` runs as a user runs it; the fuzzer (``helpers/fuzz.py``,
seed 4475) mutates the torture corpus, messages captured from SIPp and
baresip, and mid-dialog requests aimed at a call it set up through the PBX,
and sends them half over UDP, half over TCP from 253 source addresses. What
must hold, from outside the process:

- it never stops answering: every 200 messages an OPTIONS from a fresh
  address gets its 200;
- its log gains no traceback and no ERROR line (a message that reaches an
  ``except Exception`` containment boundary is a defect that boundary hid);
- calls between registered phones still connect while the fuzzing goes on;
- at the end it is alive, answers OPTIONS on UDP and TCP, and exits 0 on SIGTERM.

``benchmarks/fuzz_live.py`` is the same run at a million messages.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.fuzz import Mutant
from helpers.fuzz_live import (
    Finding,
    FuzzConfig,
    FuzzRun,
    Report,
    Sent,
    alive,
    probe_tcp,
    probe_udp,
    save_finding,
)
from helpers.fuzz_peers import BACKENDS
from helpers.pbx_process import MD5_ONLY, PbxProcess, pbx_toml, running_pbx
from helpers.sipp import free_port

SEED = 4475
COUNT = 10_000


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PbxProcess]:
    cwd = tmp_path_factory.mktemp("live-fuzz")
    port = free_port(socket.SOCK_DGRAM)
    with running_pbx(cwd, port, pbx_toml(port, proxy=MD5_ONLY, backends=BACKENDS)) as process:
        yield process
    # running_pbx asserts the clean exit on SIGTERM


@pytest.fixture(scope="module")
def report(pbx: PbxProcess, tmp_path_factory: pytest.TempPathFactory) -> Report:
    findings = tmp_path_factory.mktemp("fuzz-findings")
    config = FuzzConfig(
        port=pbx.sip_port,
        pid=pbx.proc.pid,
        seed=SEED,
        count=COUNT,
        transports=("udp", "tcp"),
        log_path=pbx.log_path,
        findings_dir=findings,
    )
    result = FuzzRun(config).run()
    print(result.summary())
    return result


def _details(report: Report, kind: str) -> str:
    return "\n\n".join(f.detail for f in report.findings if f.kind == kind)


def test_every_message_was_sent(report: Report) -> None:
    assert report.sent == COUNT
    assert report.by_transport == {"udp": COUNT // 2, "tcp": COUNT // 2}


def test_server_survives_and_keeps_answering(pbx: PbxProcess, report: Report) -> None:
    assert not report.crashed, f"full_pbx died:\n{pbx.log()[-5000:]}"
    assert report.probe_failures == 0, _details(report, "probe")
    assert alive(pbx.proc.pid)
    assert probe_udp(pbx.sip_port, "127.0.10.1", 5.0) is not None
    assert probe_tcp(pbx.sip_port, "127.0.10.2", 5.0) is not None


def test_no_traceback_or_error_in_the_log(report: Report) -> None:
    # (Found so far, now fixed: the TCP writer's EndOfStream on a connection its
    # reader had just closed, at message 1399 of seed 4475.)
    new = [f.detail for f in report.findings if f.kind == "log"]
    assert not new, "\n\n".join(new)


def test_calls_still_connect_and_dialogs_were_hit(report: Report) -> None:
    assert not [f for f in report.findings if f.kind == "call"], _details(report, "call")
    assert report.calls >= COUNT // FuzzConfig(port=0, pid=0).call_every
    # Mid-dialog mutants the PBX accepted were relayed to the phones of the call.
    assert report.relayed_to_phones > report.calls


def test_findings_are_saved_for_replay(report: Report, tmp_path: Path) -> None:
    """What a finding writes is enough to replay it (checked on a made-up one)."""

    finding = Finding(
        "log", 7, "Traceback ...", [Sent("udp", Mutant(7, "x", ("flip_bits",), b"A"))]
    )
    folder = save_finding(tmp_path, 1, finding)
    assert (folder / "0000-udp-7.bin").read_bytes() == b"A"
    assert "flip_bits" in (folder / "README.txt").read_text()
