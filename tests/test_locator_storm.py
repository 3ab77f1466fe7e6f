"""A registration storm through the reference server with the locator webhook on.

After a restart every phone re-registers at once; the operator's web service
(a CRM, say) must hear about each of them. ``examples/full_pbx.py`` runs as a
process with ``[proxy.locator_webhook]`` pointing at a local HTTP receiver,
SIPp registers 2,000 phones (each challenged, each as itself) at 500/s, and
every ``registered`` event must reach the receiver.

The receiver takes a few milliseconds per request, as a service that writes
each event to its database does; one POST at a time cannot keep up with 500/s
then, and a server that only queues (1,000 deep) dropped a quarter of them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
from helpers.pbx_process import MD5_ONLY, pbx_toml, running_pbx
from helpers.sipp import SippResult, free_port, run_sipp
from helpers.webhook_server import Received, Reply, running_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # full_pbx and SIPp subprocesses: asyncio only, to keep CI in its time budget


pytestmark = [pytest.mark.anyio, pytest.mark.sipp]

SCENARIO = Path(__file__).resolve().parent / "scenarios_register" / "register_self.xml"
PHONES = 2000
RATE = 500
#: What the receiver spends on each event (a database write at the CRM).
SERVICE_TIME = 0.005


class Tally:
    """Counts ``registered`` events per AoR; ``complete`` once every phone was heard."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.events: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.complete = threading.Event()

    def respond(self, request: Received) -> Reply:
        body = json.loads(request.body)
        time.sleep(SERVICE_TIME)  # the receiver's own work, not a wait in the test
        if body.get("event") == "registered":
            with self.lock:
                self.events[body["location"]["aor"]] += 1
                if len(self.events) >= self.expected:
                    self.complete.set()
        return Reply(200)


def _plain_users(tmp_path: Path, count: int) -> str:
    (tmp_path / "users.txt").write_text("".join(f"u{n}:secret\n" for n in range(1, count + 1)))
    return '[[proxy.user_backends]]\ntype = "plain"\npath = "users.txt"\n'


def _injection(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "register.csv"
    lines = [f"u{n};[authentication username=u{n} password=secret]\n" for n in range(1, count + 1)]
    path.write_text("SEQUENTIAL\n" + "".join(lines))
    return path


async def _register(sipp: str, tmp_path: Path, port: int) -> SippResult:
    # A phone waits up to 20 s for its answer (SIPp retransmits meanwhile): on a
    # shared machine the storm may take longer than 4 s, and that is not the
    # webhook's defect; every phone must still get registered and reported.
    args = [
        "-sf", str(SCENARIO), f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", str(free_port()),
        "-inf", str(_injection(tmp_path, PHONES)), "-m", str(PHONES), "-r", str(RATE),
        "-l", str(RATE * 3), "-recv_timeout", "20000", "-buff_size", "4194304",
    ]  # fmt: skip
    return await run_sipp(sipp, args, cwd=tmp_path, timeout=100)


async def test_storm_of_2000_registrations_delivers_every_event(sipp: str, tmp_path: Path) -> None:
    tally = Tally(PHONES)
    with running_server("/locations", protocol="HTTP/1.1") as receiver:
        receiver.respond = tally.respond
        port = free_port()
        webhook = f'[proxy.locator_webhook]\nurl = "{receiver.url}"\nevents = ["registered"]\n'
        config = pbx_toml(port, proxy=MD5_ONLY, backends=_plain_users(tmp_path, PHONES))
        config += webhook
        with running_pbx(tmp_path, port, config) as pbx:
            result = await _register(sipp, tmp_path, port)
            assert result.returncode == 0, result.output[-3000:]
            assert (result.successful, result.failed) == (PHONES, 0)
            # Bounded wait for the backlog to drain (never a pass condition by itself).
            await anyio.to_thread.run_sync(tally.complete.wait, 45)
    assert len(tally.events) == PHONES, f"{len(tally.events)} of {PHONES} phones heard of"
    assert set(tally.events) == {f"u{n}@127.0.0.1" for n in range(1, PHONES + 1)}
    assert all(count == 1 for count in tally.events.values())
    assert "dropped" not in pbx.log()
