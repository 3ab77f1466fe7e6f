"""Calls through the B2BUA end to end, with SIPp as the independent caller and callees.

Each test runs one or more SIPp UAS processes (the callees, each a scenario of
``tests/scenarios/``), a :class:`~sdpbx.proxy.Proxy` whose router sends the call
to them, and a SIPp UAC (the caller) aimed at the proxy. A scenario only
succeeds when every message it expects arrives, so SIPp's exit status says
what each side saw on the wire; the proxy's call events and registry say what
the B2BUA thought happened, and that nothing was left behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from attrs import define, field
from helpers.sipp import SippResult, free_port, run_sipp

from sdpbx.authn import Authenticator
from sdpbx.b2bua.events import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRinging,
    CallStarted,
    CallState,
)
from sdpbx.proxy import Proxy
from sdpbx.routing import RouteDecision, RouteRequest
from sdpbx.sip.auth import NonceManager
from sdpbx.stack import SipStack
from sdpbx.testing import FakeClock
from sdpbx.transport import TcpTransport, UdpTransport
from sdpbx.users import MemoryUserBackend, SipUser

pytestmark = [pytest.mark.anyio, pytest.mark.sipp]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # live SIPp peers: asyncio only, to keep CI in its time budget


SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SHARED_UAC = ("sip-tools", "scenarios", "uac_call.xml")
TRANSPORTS = ["udp", "tcp"]


def mode(transport: str) -> list[str]:
    return ["-t", "t1"] if transport == "tcp" else []


@define
class Pbx:
    proxy: Proxy
    port: int
    events: list[CallEvent]

    def ended(self) -> CallEnded:
        [event] = [e for e in self.events if isinstance(e, CallEnded)]
        return event

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    async def settle(self) -> None:
        """Wait for every call to finish its cleanup (CANCELs, BYEs, CallEnded)."""
        with anyio.fail_after(10):
            while len(self.proxy.calls):
                await anyio.sleep(0.02)

    def assert_clean(self) -> None:
        assert len(self.proxy.calls) == 0
        assert self.proxy._dialogs == {}

    async def expire(self, clock: FakeClock) -> None:
        """Run the stack's timers (33 s a step: past Timer B, D, F, H, I, K and M) until
        every call has left the registry and the stack holds no transaction at all."""
        stack = self.proxy.stack
        with anyio.fail_after(10):
            while len(self.proxy.calls) or len(stack.layer):
                clock.advance(33.0)
                stack._timer_tick()
                await anyio.sleep(0.01)
        self.assert_clean()


@define
class Callee:
    """A SIPp UAS run in the background for one call."""

    port: int
    uri: str
    done: anyio.Event = field(factory=anyio.Event)
    result: SippResult | None = None

    async def finished(self, timeout: float = 15) -> SippResult:
        with anyio.fail_after(timeout):
            await self.done.wait()
        assert self.result is not None
        return self.result


Route = Callable[[RouteRequest], Awaitable[RouteDecision]]


def forward(targets: Callable[[], list[str]], **options: Any) -> Route:
    async def route(request: RouteRequest) -> RouteDecision:
        return RouteDecision.forward(*targets(), **options)

    return route


@asynccontextmanager
async def pbx(
    route: Route, *, clock: FakeClock | None = None, **options: Any
) -> AsyncIterator[Pbx]:
    """A proxy on UDP and TCP; with ``clock`` its stack's transaction timers move only when
    :meth:`Pbx.expire` moves them (RFC 3261's 32-second timers in a moment, no retransmissions)."""
    port = free_port()
    stack = SipStack(
        [UdpTransport("127.0.0.1", port), TcpTransport("127.0.0.1", port)],
        **({"clock": clock} if clock is not None else {}),
    )
    proxy = Proxy.from_parts(stack, router=route, **options)
    events: list[CallEvent] = []
    proxy.calls.subscribe(events.append)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        yield Pbx(proxy, port, events)
        tg.cancel_scope.cancel()


def _listening(port: int, transport: str) -> bool:
    """Whether something is bound to 127.0.0.1:``port`` (read from /proc, not probed,
    so the check can never steal the port from the process starting up)."""
    table = Path("/proc/net/tcp" if transport == "tcp" else "/proc/net/udp")
    wanted = f"0100007F:{port:04X}"
    for line in table.read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1] == wanted and (transport != "tcp" or parts[3] == "0A"):
            return True
    return False


async def start_callee(
    tg: TaskGroup,
    sipp: str,
    scenario: str,
    cwd: Path,
    *,
    transport: str = "udp",
    user: str = "callee",
    extra: tuple[str, ...] = (),
    calls: int = 1,
) -> Callee:
    port = free_port()
    callee = Callee(port, f"sip:{user}@127.0.0.1:{port}")

    async def run() -> None:
        try:
            callee.result = await run_sipp(
                sipp,
                ["-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port),
                 "-m", str(calls), "-timeout", "30s", *mode(transport), *extra],
                cwd=cwd,
                timeout=40,
            )  # fmt: skip
        finally:
            callee.done.set()

    tg.start_soon(run)
    with anyio.fail_after(10):
        while not _listening(port, transport):
            if callee.done.is_set():
                pytest.fail(f"SIPp {scenario} did not start: {callee.result}")
            await anyio.sleep(0.01)
    return callee


async def call(
    sipp: str,
    scenario: Path,
    pbx_port: int,
    cwd: Path,
    *,
    transport: str = "udp",
    extra: tuple[str, ...] = (),
    calls: int = 1,
    rate: int = 10,
) -> SippResult:
    return await run_sipp(
        sipp,
        ["-sf", str(scenario), f"127.0.0.1:{pbx_port}", "-i", "127.0.0.1",
         "-p", str(free_port()), "-m", str(calls), "-r", str(rate), "-recv_timeout", "10000",
         *mode(transport), *extra],
        cwd=cwd,
        timeout=30,
    )  # fmt: skip


def ok(result: SippResult) -> None:
    assert result.returncode == 0, result.output[-3000:]
    assert result.successful == 1, result.output[-3000:]
    assert result.failed == 0


# -- failures and cancellation -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_caller_cancels_while_ringing(sipp: str, tmp_path: Path, transport: str) -> None:
    """INVITE / 180 / CANCEL: 200 for the CANCEL, 487 for the INVITE, the callee is cancelled."""
    callees: list[Callee] = []
    async with anyio.create_task_group() as tg, pbx(forward(lambda: [callees[0].uri])) as p:
        callees.append(
            await start_callee(tg, sipp, "uas_ring_forever.xml", tmp_path, transport=transport)
        )
        caller = await call(
            sipp, SCENARIOS / "uac_cancel.xml", p.port, tmp_path, transport=transport
        )
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)
    ok(callee)  # it only completes when a CANCEL came and its 487 was ACKed
    assert p.kinds() == ["CallStarted", "CallRinging", "CallEnded"]
    ended = p.ended()
    assert (ended.reason, ended.status) == ("canceled", 487)
    p.assert_clean()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_busy_is_passed_through(sipp: str, tmp_path: Path, transport: str) -> None:
    callees: list[Callee] = []
    async with anyio.create_task_group() as tg, pbx(forward(lambda: [callees[0].uri])) as p:
        callees.append(await start_callee(tg, sipp, "uas_486.xml", tmp_path, transport=transport))
        caller = await call(sipp, SCENARIOS / "uac_busy.xml", p.port, tmp_path, transport=transport)
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)
    ok(callee)
    ended = p.ended()
    assert (ended.reason, ended.status) == ("rejected", 486)
    [call_] = [e for e in p.events if isinstance(e, CallStarted)]
    assert call_.callee.startswith("sip:service@127.0.0.1")
    assert p.proxy.calls.failed_calls == 1
    assert p.proxy.calls.answered_calls == 0
    p.assert_clean()


@pytest.mark.parametrize("strategy", ["sequential", "parallel"])
async def test_no_answer_times_out_with_408(sipp: str, tmp_path: Path, strategy: str) -> None:
    """The route's ring timeout (1 s) expires: the callee is cancelled, the caller gets 408."""
    callees: list[Callee] = []
    route = forward(lambda: [callees[0].uri], timeout=1.0, strategy=strategy)
    async with anyio.create_task_group() as tg, pbx(route) as p:
        callees.append(await start_callee(tg, sipp, "uas_ring_forever.xml", tmp_path))
        caller = await call(sipp, SCENARIOS / "uac_no_answer.xml", p.port, tmp_path)
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)
    ok(callee)  # got CANCEL
    ended = p.ended()
    assert (ended.reason, ended.status) == ("noAnswer", 408)
    assert any(isinstance(e, CallRinging) for e in p.events)
    p.assert_clean()


@pytest.mark.parametrize("scenario", ["uas_ring_forever.xml", "uas_ring_silent.xml"])
async def test_ring_timeout_leaves_no_transaction(sipp: str, tmp_path: Path, scenario: str) -> None:
    """Issue 13 item 7: the callee rings past the route's timeout, the caller gets 408 and the
    callee a CANCEL. A callee that then goes silent answers neither the CANCEL nor the INVITE:
    the call keeps its CANCEL task (and so its place in the registry) until the stack gives up
    on both, 64*T1 after the CANCEL (RFC 3261 §9.1). Either way nothing is left behind."""
    clock = FakeClock()
    callees: list[Callee] = []
    async with (
        anyio.create_task_group() as tg,
        pbx(forward(lambda: [callees[0].uri], timeout=1.0), clock=clock) as p,
    ):
        callees.append(await start_callee(tg, sipp, scenario, tmp_path))
        caller = await call(sipp, SCENARIOS / "uac_no_answer.xml", p.port, tmp_path)
        callee = await callees[0].finished()
        if scenario == "uas_ring_silent.xml":
            [ended_call] = p.proxy.calls  # over, but it still owns the CANCEL in flight
            assert ended_call.state is CallState.ENDED
            assert [e.status for e in p.events if isinstance(e, CallEnded)] == [408]
        await p.expire(clock)
    ok(caller)
    ok(callee)  # got the CANCEL
    assert (p.ended().reason, p.ended().status) == ("noAnswer", 408)


async def test_caller_cancels_before_the_router_decides(sipp: str, tmp_path: Path) -> None:
    """A CANCEL while the router is still thinking stops the routing: 487, nothing dialled."""
    routing = anyio.Event()
    finished: list[str] = []

    async def slow(request: RouteRequest) -> RouteDecision:
        routing.set()
        try:
            await anyio.sleep_forever()
        finally:
            finished.append("cancelled")
        raise AssertionError("unreachable")

    async with pbx(slow) as p:
        caller = await call(sipp, SCENARIOS / "uac_cancel_early.xml", p.port, tmp_path)
        await p.settle()
    ok(caller)
    assert routing.is_set()
    assert finished == ["cancelled"]
    assert p.kinds() == ["CallStarted", "CallEnded"]
    assert (p.ended().reason, p.ended().status) == ("canceled", 487)
    p.assert_clean()


async def test_max_forwards_zero_and_unknown_dialog(sipp: str, tmp_path: Path) -> None:
    """Max-Forwards: 0 is answered 483 before routing; a BYE for no dialog gets 481."""
    routed: list[RouteRequest] = []

    async def route(request: RouteRequest) -> RouteDecision:
        routed.append(request)
        return RouteDecision.reject(500)

    async with pbx(route) as p:
        loop = await call(sipp, SCENARIOS / "uac_max_forwards.xml", p.port, tmp_path)
        stray = await call(sipp, SCENARIOS / "uac_bye_unknown.xml", p.port, tmp_path)
        await p.settle()
    ok(loop)
    ok(stray)
    assert routed == []
    assert p.events == []
    assert p.proxy.stats.invites == 1
    assert p.proxy.stats.unknown_dialogs == 1
    p.assert_clean()


# -- forking ---------------------------------------------------------------------------------------


async def test_parallel_fork_first_answer_wins(sipp: str, shared_dir: Path, tmp_path: Path) -> None:
    """One target rings forever, the other answers after 1 s: bridged to the second, the
    first is cancelled, and the caller's ACK and BYE reach the winner."""
    callees: list[Callee] = []
    route = forward(lambda: [c.uri for c in callees], strategy="parallel")
    async with anyio.create_task_group() as tg, pbx(route) as p:
        callees.append(await start_callee(tg, sipp, "uas_ring_forever.xml", tmp_path, user="a"))
        callees.append(
            await start_callee(tg, sipp, "uas_answer.xml", tmp_path, user="b", extra=("-d", "1000"))
        )
        caller = await call(sipp, shared_dir.joinpath(*SHARED_UAC), p.port, tmp_path)
        ringer, answerer = [await c.finished() for c in callees]
        await p.settle()
    ok(caller)
    ok(ringer)  # cancelled
    ok(answerer)  # answered, ACKed, hung up by the caller's BYE
    assert p.kinds() == ["CallStarted", "CallRinging", "CallAnswered", "CallEnded"]
    [answered] = [e for e in p.events if isinstance(e, CallAnswered)]
    assert answered.target == callees[1].uri
    ended = p.ended()
    assert (ended.reason, ended.status) == ("byCaller", 200)
    assert p.proxy.calls.answered_calls == 1
    p.assert_clean()


async def test_sequential_fork_fails_over(sipp: str, shared_dir: Path, tmp_path: Path) -> None:
    """The first target answers 503, the second answers: the call is bridged to the second."""
    callees: list[Callee] = []
    route = forward(lambda: [c.uri for c in callees], strategy="sequential")
    calls: list[Any] = []
    async with anyio.create_task_group() as tg, pbx(route) as p:
        p.proxy.calls.subscribe(
            lambda e: calls.extend(p.proxy.calls) if isinstance(e, CallAnswered) else None
        )
        callees.append(await start_callee(tg, sipp, "uas_503.xml", tmp_path, user="a"))
        callees.append(await start_callee(tg, sipp, "uas_answer.xml", tmp_path, user="b"))
        caller = await call(sipp, shared_dir.joinpath(*SHARED_UAC), p.port, tmp_path)
        first, second = [await c.finished() for c in callees]
        await p.settle()
    ok(caller)
    ok(first)
    ok(second)
    [answered] = [e for e in p.events if isinstance(e, CallAnswered)]
    assert answered.target == callees[1].uri
    [bridged] = calls
    assert [(m.code, m.target) for m in bridged.hangup_messages] == [(503, callees[0].uri)]
    assert (p.ended().reason, p.ended().status) == ("byCaller", 200)
    p.assert_clean()


async def test_sequential_fork_stops_at_a_global_failure(sipp: str, tmp_path: Path) -> None:
    """A 6xx ends a sequential fork: the next target is never tried and the caller gets 603."""
    callees: list[Callee] = []
    # Nothing listens on the second target: trying it would hold the call ~32 s (Timer B).
    nobody = f"sip:nobody@127.0.0.1:{free_port()}"
    route = forward(lambda: [callees[0].uri, nobody], strategy="sequential")
    calls: list[Any] = []
    async with anyio.create_task_group() as tg, pbx(route) as p:
        p.proxy.calls.subscribe(
            lambda e: calls.extend(p.proxy.calls) if isinstance(e, CallStarted) else None
        )
        callees.append(await start_callee(tg, sipp, "uas_603.xml", tmp_path))
        caller = await call(sipp, SCENARIOS / "uac_declined.xml", p.port, tmp_path)
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)
    ok(callee)
    assert (p.ended().reason, p.ended().status) == ("rejected", 603)
    [declined] = calls
    assert [(m.code, m.target) for m in declined.hangup_messages] == [(603, callees[0].uri)]
    assert [leg.target for leg in declined.callee_legs] == [callees[0].uri]
    p.assert_clean()


async def test_sequential_fork_moves_on_after_ring_timeout(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """The first target rings past the route's timeout: it is cancelled and the second rings."""
    callees: list[Callee] = []
    route = forward(lambda: [c.uri for c in callees], strategy="sequential", timeout=1.0)
    async with anyio.create_task_group() as tg, pbx(route) as p:
        callees.append(await start_callee(tg, sipp, "uas_ring_forever.xml", tmp_path, user="a"))
        callees.append(await start_callee(tg, sipp, "uas_answer.xml", tmp_path, user="b"))
        caller = await call(sipp, shared_dir.joinpath(*SHARED_UAC), p.port, tmp_path)
        first, second = [await c.finished() for c in callees]
        await p.settle()
    ok(caller)
    ok(first)  # cancelled
    ok(second)
    [answered] = [e for e in p.events if isinstance(e, CallAnswered)]
    assert answered.target == callees[1].uri
    assert (p.ended().reason, p.ended().status) == ("byCaller", 200)
    p.assert_clean()


async def test_2xx_crossing_cancel_is_acked_and_hung_up(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """A losing fork answers 200 after our CANCEL: the B2BUA ACKs it and sends it a BYE."""
    callees: list[Callee] = []
    route = forward(lambda: [c.uri for c in callees], strategy="parallel")
    async with anyio.create_task_group() as tg, pbx(route) as p:
        callees.append(
            await start_callee(tg, sipp, "uas_answer.xml", tmp_path, user="a", extra=("-d", "300"))
        )
        callees.append(
            await start_callee(tg, sipp, "uas_answer_despite_cancel.xml", tmp_path, user="b")
        )
        caller = await call(sipp, shared_dir.joinpath(*SHARED_UAC), p.port, tmp_path)
        winner, loser = [await c.finished() for c in callees]
        await p.settle()
    ok(caller)
    ok(winner)
    ok(loser)  # its 2xx was ACKed and it got a BYE
    [answered] = [e for e in p.events if isinstance(e, CallAnswered)]
    assert answered.target == callees[0].uri
    assert p.proxy.calls.answered_calls == 1
    p.assert_clean()


# -- in-dialog ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_callee_hangs_up(sipp: str, tmp_path: Path, transport: str) -> None:
    """The callee's BYE is answered and relayed: the caller receives a BYE and answers 200."""
    callees: list[Callee] = []
    async with anyio.create_task_group() as tg, pbx(forward(lambda: [callees[0].uri])) as p:
        callees.append(
            await start_callee(
                tg, sipp, "uas_answer_then_bye.xml", tmp_path, transport=transport,
                extra=("-d", "300"),
            )
        )  # fmt: skip
        caller = await call(
            sipp, SCENARIOS / "uac_wait_bye.xml", p.port, tmp_path, transport=transport
        )
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)
    ok(callee)
    ended = p.ended()
    assert (ended.reason, ended.status) == ("byCallee", 200)
    p.assert_clean()


async def test_compact_headers_cross_the_bridge(sipp: str, tmp_path: Path) -> None:
    """Issue 7 defect 9: an in-dialog INFO whose Content-Type is the compact "c:" reaches the
    callee with its Content-Type, and the callee's "c:" reply reaches the caller with its own
    (SIPp checks both). The INVITE's Allow offers neither REFER nor PRACK, and an in-dialog
    REFER is answered 501 by the B2BUA, never passed on (the callee would fail on it)."""
    callees: list[Callee] = []
    async with anyio.create_task_group() as tg, pbx(forward(lambda: [callees[0].uri])) as p:
        callees.append(await start_callee(tg, sipp, "uas_info_compact.xml", tmp_path))
        caller = await call(sipp, SCENARIOS / "uac_info_compact.xml", p.port, tmp_path)
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)
    ok(callee)
    assert (p.ended().reason, p.ended().status) == ("byCaller", 200)
    p.assert_clean()


async def test_hold_reinvite_is_relayed(sipp: str, tmp_path: Path) -> None:
    """A re-INVITE offering a=sendonly reaches the callee, whose a=recvonly answer comes back."""
    callees: list[Callee] = []
    async with anyio.create_task_group() as tg, pbx(forward(lambda: [callees[0].uri])) as p:
        callees.append(await start_callee(tg, sipp, "uas_hold.xml", tmp_path))
        caller = await call(sipp, SCENARIOS / "uac_hold.xml", p.port, tmp_path)
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)  # checks the 200 to the re-INVITE says a=recvonly
    ok(callee)  # checks the re-INVITE says a=sendonly
    assert (p.ended().reason, p.ended().status) == ("byCaller", 200)
    p.assert_clean()


async def test_callee_puts_caller_on_hold(sipp: str, tmp_path: Path) -> None:
    """The other direction: the callee's re-INVITE reaches the caller, the answer goes back."""
    callees: list[Callee] = []
    async with anyio.create_task_group() as tg, pbx(forward(lambda: [callees[0].uri])) as p:
        callees.append(await start_callee(tg, sipp, "uas_hold_caller.xml", tmp_path))
        caller = await call(sipp, SCENARIOS / "uac_held.xml", p.port, tmp_path)
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)  # checks the re-INVITE it got says a=sendonly
    ok(callee)  # checks the 200 it got says a=recvonly
    assert (p.ended().reason, p.ended().status) == ("byCaller", 200)
    p.assert_clean()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_callee_requests_wait_for_the_callers_ack(
    sipp: str, tmp_path: Path, transport: str
) -> None:
    """200 calls whose callee re-INVITEs the moment its 2xx is ACKed, and whose caller hangs
    up the moment the re-INVITE is answered: neither request may overtake the ACK that the
    other side still owes (RFC 3261 §14.1, §15), or SIPp sees it as unexpected."""
    callees: list[Callee] = []
    async with anyio.create_task_group() as tg, pbx(forward(lambda: [callees[0].uri])) as p:
        callees.append(
            await start_callee(
                tg, sipp, "uas_hold_caller.xml", tmp_path, transport=transport, calls=200
            )
        )
        caller = await call(
            sipp, SCENARIOS / "uac_held.xml", p.port, tmp_path, transport=transport,
            calls=200, rate=100,
        )  # fmt: skip
        callee = await callees[0].finished(timeout=30)
        await p.settle()
    assert caller.returncode == 0, caller.output[-3000:]
    assert (caller.successful, caller.failed) == (200, 0)
    assert callee.returncode == 0, callee.output[-3000:]
    assert (callee.successful, callee.failed) == (200, 0)
    assert p.proxy.calls.answered_calls == 200
    assert {(e.reason, e.status) for e in p.events if isinstance(e, CallEnded)} == {
        ("byCaller", 200)
    }
    p.assert_clean()


# -- what the proxy adds ------------------------------------------------------------------------


async def test_authenticated_invite(sipp: str, tmp_path: Path) -> None:
    """407 first, then the INVITE with Proxy-Authorization is bridged."""
    # SIPp 3.6 answers MD5 only, and only the first challenge offered.
    auth = Authenticator(
        MemoryUserBackend([SipUser("1001", password="secret")]),
        realm_for="127.0.0.1",
        nonces=NonceManager(b"calls-e2e-test-secret-0000000000"),
        algorithms=("MD5",),
    )
    callees: list[Callee] = []
    async with (
        anyio.create_task_group() as tg,
        pbx(forward(lambda: [callees[0].uri]), authenticator=auth) as p,
    ):
        callees.append(await start_callee(tg, sipp, "uas_answer.xml", tmp_path))
        caller = await call(
            sipp, SCENARIOS / "uac_auth_call.xml", p.port, tmp_path,
            extra=("-au", "1001", "-ap", "secret"),
        )  # fmt: skip
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)
    ok(callee)
    assert auth.stats.challenges == 1
    assert auth.stats.successes == 1
    assert auth.stats.failures == 0
    assert p.kinds() == ["CallStarted", "CallRinging", "CallAnswered", "CallEnded"]
    assert (p.ended().reason, p.ended().status) == ("byCaller", 200)
    p.assert_clean()


async def test_router_headers_reach_the_callee(sipp: str, shared_dir: Path, tmp_path: Path) -> None:
    """``RouteDecision.forward(headers=...)`` lands in the callee's INVITE (SIPp checks it)."""
    callees: list[Callee] = []
    route = forward(lambda: [callees[0].uri], headers={"X-Route-Id": "r42"})
    async with anyio.create_task_group() as tg, pbx(route) as p:
        callees.append(await start_callee(tg, sipp, "uas_check_header.xml", tmp_path))
        caller = await call(sipp, shared_dir.joinpath(*SHARED_UAC), p.port, tmp_path)
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)
    ok(callee)
    assert (p.ended().reason, p.ended().status) == ("byCaller", 200)
    p.assert_clean()


async def test_header_check_fails_without_the_header(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """The control for the test above: without the header, the callee's check fails."""
    callees: list[Callee] = []
    async with anyio.create_task_group() as tg, pbx(forward(lambda: [callees[0].uri])) as p:
        callees.append(await start_callee(tg, sipp, "uas_check_header.xml", tmp_path))
        caller = await call(sipp, shared_dir.joinpath(*SHARED_UAC), p.port, tmp_path)
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)  # the call itself went through; only the callee's check failed
    assert callee.returncode != 0
    assert callee.failed == 1, callee.output[-3000:]
    assert "X-Route-Id: not found" in callee.output
    p.assert_clean()


async def test_delayed_offer_answer_travels_in_the_acks(sipp: str, tmp_path: Path) -> None:
    """An INVITE without SDP: the callee's offer reaches the caller in the 200, and the
    caller's answer reaches the callee in the ACK (RFC 3261 §13.2.1 delayed offer)."""
    callees: list[Callee] = []
    async with anyio.create_task_group() as tg, pbx(forward(lambda: [callees[0].uri])) as p:
        callees.append(await start_callee(tg, sipp, "uas_late_offer.xml", tmp_path))
        caller = await call(sipp, SCENARIOS / "uac_late_offer.xml", p.port, tmp_path)
        callee = await callees[0].finished()
        await p.settle()
    ok(caller)  # the 200 carried the callee's offer
    ok(callee)  # the ACK carried the caller's answer
    assert (p.ended().reason, p.ended().status) == ("byCaller", 200)
    p.assert_clean()


# -- a callee's malformed 2xx -------------------------------------------------------------------


# SIPp does not expand keywords inside -key values: these lines are literal.
@pytest.mark.parametrize(
    ("scenario", "key", "line"),
    [
        ("uas_bad_2xx.xml", "bad_contact", "Contact: <sip:bob@127.0.0.1:99999999>"),
        ("uas_bad_2xx.xml", "bad_contact", "X-Nothing: 1"),
        ("uas_bad_2xx.xml", "bad_contact", "Contact: <sip:a@127.0.0.1>, <sip:b@127.0.0.1>"),
        ("uas_bad_2xx.xml", "bad_contact", "Contact: *"),
        ("uas_bad_2xx.xml", "bad_contact", "Contact: <sip:b@127.0.0.1>\r\nRecord-Route: <sip:@@;>"),
        ("uas_bad_2xx_to.xml", "bad_to", "To: <sip:callee@127.0.0.1;tag=x"),
        ("uas_bad_2xx_to.xml", "bad_to", "To: <sip:callee@127.0.0.1>;tag="),
    ],
    ids=["port", "no-contact", "two-contacts", "star", "record-route", "to-unclosed", "to-tag"],
)
async def test_unusable_2xx_is_acked_hung_up_and_502(
    sipp: str, tmp_path: Path, scenario: str, key: str, line: str
) -> None:
    """A 2xx no dialog can be built from: the callee still gets its ACK and a BYE, the
    caller gets 502, and once the timers ran the call and every transaction of it (the
    caller's INVITE, ours to the callee, the BYE) are gone."""
    clock = FakeClock()
    callees: list[Callee] = []
    extra = ("-key", key, line)
    async with (
        anyio.create_task_group() as tg,
        pbx(forward(lambda: [callees[0].uri]), clock=clock) as p,
    ):
        callees.append(await start_callee(tg, sipp, scenario, tmp_path, extra=extra))
        caller = await call(sipp, SCENARIOS / "uac_bad_gateway.xml", p.port, tmp_path)
        callee = await callees[0].finished()
        await p.expire(clock)
    ok(caller)  # got 502
    ok(callee)  # got ACK and BYE
    assert (p.ended().reason, p.ended().status) == ("failed", 502)
    assert p.proxy.stats.call_errors == 0  # contained as a bad callee, not a crash
