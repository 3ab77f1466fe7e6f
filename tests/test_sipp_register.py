"""SIPp registers thousands of users through a SipStack + Registrar with digest auth.

The shared scenario ``uac_register.xml`` registers ``u<n>@<registrar ip>`` and
authenticates as the single ``-au`` account, so the authenticator's username
check (credentials user == To user) is turned off here, as a deployment that
uses one auth account for many AoRs would.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from helpers.sipp import SippResult, free_port, run_sipp

from sdpbx.authn import Authenticator
from sdpbx.locator import MemoryLocator
from sdpbx.registrar import Registrar
from sdpbx.sip.auth import DEFAULT_ALGORITHMS, NonceManager
from sdpbx.sip.throttle import FailureThrottle
from sdpbx.stack import IncomingRequest, RequestHandler, SipStack
from sdpbx.transport import UdpTransport
from sdpbx.users import MemoryUserBackend, SipUser

pytestmark = [pytest.mark.anyio, pytest.mark.sipp]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # live SIPp peers: asyncio only, to keep CI in its time budget


class RegistrarHandler(RequestHandler):
    def __init__(self, registrar: Registrar) -> None:
        self.registrar = registrar

    async def handle_request(self, incoming: IncomingRequest) -> None:
        if incoming.request.method == "REGISTER":
            await self.registrar.handle(incoming)
        else:
            await super().handle_request(incoming)


def make_registrar(*, algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS) -> Registrar:
    auth = Authenticator(
        MemoryUserBackend([SipUser("bench", "secret")]),
        realm_for="127.0.0.1",
        nonces=NonceManager(b"sipp-register-test-secret-000000"),
        throttle=FailureThrottle(limit=5, window=60, block_for=300),
        check_username=False,
        algorithms=algorithms,
    )
    return Registrar(MemoryLocator(), auth, realms=("127.0.0.1",))


@asynccontextmanager
async def serving(registrar: Registrar) -> AsyncIterator[int]:
    """The registrar in this process, which by now holds every earlier test's objects.

    As ``full_pbx.py`` does at startup, they are frozen out of the collector's
    view: otherwise a full collection scanning the suite's heap pauses the
    server past SIPp's 500 ms retransmission, and the retransmission's second
    (stateless) 401 makes SIPp fail the call.
    """
    port = free_port()
    stack = SipStack([UdpTransport("127.0.0.1", port)], RegistrarHandler(registrar))
    stack.add_timer_client(registrar.timer_client, registrar.clock)
    gc.collect()
    gc.freeze()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(stack.serve)
            yield port
            tg.cancel_scope.cancel()
    finally:
        gc.unfreeze()


async def sipp_register(
    sipp: str, scenario: Path, port: int, cwd: Path, *, password: str, calls: int, rate: int
) -> SippResult:
    return await run_sipp(
        sipp,
        ["-sf", str(scenario), f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", str(free_port()),
         "-au", "bench", "-ap", password, "-m", str(calls), "-r", str(rate),
         "-l", str(rate * 3), "-recv_timeout", "3000", "-buff_size", "4194304"],
        cwd=cwd,
        timeout=110,
    )  # fmt: skip


async def test_sipp_10000_digest_registrations(sipp: str, shared_dir: Path, tmp_path: Path) -> None:
    """10,000 distinct AoRs at 500/s, each challenged then registered: none may fail.

    The rate stays well below what the registrar sustains (benchmarks/bench_register.py
    measures that): a test asserts behaviour, and SIPp counts a retransmission's second
    401 as a failed call, so a rate at the machine's edge would time the machine.

    SIPp 3.6 answers MD5 challenges only and reads the first one offered: the
    default, MD5 alone, is what it needs.
    """
    scenario = shared_dir / "sip-tools" / "scenarios" / "uac_register.xml"
    registrar = make_registrar()
    auth = registrar.authenticator
    assert auth is not None
    async with serving(registrar) as port:
        result = await sipp_register(
            sipp, scenario, port, tmp_path, password="secret", calls=10_000, rate=500
        )
    assert result.returncode == 0, result.output[-3000:]
    assert result.successful == 10_000
    assert result.failed == 0
    assert await registrar.locator.count() == 10_000
    [binding] = await registrar.locator.lookup("u1@127.0.0.1", registrar.clock())
    assert binding.user_agent == "sdpbx-sipp-register"
    assert auth.stats.successes == 10_000
    assert auth.stats.failures == 0
    assert registrar.stats.registrations == 10_000


async def test_sipp_wrong_password_all_fail(sipp: str, shared_dir: Path, tmp_path: Path) -> None:
    """A wrong password is challenged again (SIPp fails the call), then 403, then silence."""
    scenario = shared_dir / "sip-tools" / "scenarios" / "uac_register.xml"
    registrar = make_registrar()
    auth = registrar.authenticator
    assert auth is not None
    async with serving(registrar) as port:
        result = await sipp_register(
            sipp, scenario, port, tmp_path, password="wrong", calls=20, rate=20
        )
    assert result.successful == 0, result.output[-3000:]
    assert result.failed == 20
    assert await registrar.locator.count() == 0
    assert auth.stats.successes == 0
    assert auth.stats.failures == 5  # the throttle limit; then the source is blocked
    assert auth.stats.drops > 0
