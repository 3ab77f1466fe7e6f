"""Outbound registration to a carrier, against sdpbx's own registrar over loopback UDP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from attrs import define, field
from helpers.sipp import free_port

from sdpbx.authn import Authenticator, answer_refusal
from sdpbx.config import TrunkConfig
from sdpbx.locator import MemoryLocator
from sdpbx.registrar import Registrar
from sdpbx.sip import Request
from sdpbx.sip.auth import DigestCredentials, NonceManager
from sdpbx.sip.transaction import TimerConfig
from sdpbx.stack import IncomingRequest, RequestHandler, SipStack
from sdpbx.transport import UdpTransport
from sdpbx.transport.base import Peer
from sdpbx.trunk_registration import (
    MIN_REFRESH_DELAY,
    RegistrationStatus,
    TrunkRegistration,
    refresh_delay,
    retry_delay,
    trunk_registration_from_config,
)
from sdpbx.users import MemoryUserBackend, SipUser

pytestmark = pytest.mark.anyio

REALM = "carrier.example"
SECRET = b"trunk-registration-test-secret-0"
AOR = "sip:alice@carrier.example"


# -- the schedule (pure) -------------------------------------------------------------------


def test_refresh_delay() -> None:
    assert refresh_delay(3600) == 3570.0  # 30 s before the end beats 80 %
    assert refresh_delay(120) == 96.0  # 80 % beats 30 s before the end
    assert refresh_delay(150) == 120.0  # both rules agree
    assert refresh_delay(4) == pytest.approx(3.2)
    # Tiny or zero grants never make us spin.
    assert refresh_delay(1) == MIN_REFRESH_DELAY
    assert refresh_delay(0) == MIN_REFRESH_DELAY
    for granted in range(3, 10_000, 7):
        delay = refresh_delay(granted)
        assert delay < granted
        assert delay >= MIN_REFRESH_DELAY


def test_retry_delay_backs_off_to_a_cap() -> None:
    assert [retry_delay(n) for n in range(1, 7)] == [5.0, 10.0, 30.0, 60.0, 60.0, 60.0]
    assert retry_delay(0) == 5.0
    assert retry_delay(3, (1.0,)) == 1.0
    with pytest.raises(ValueError, match="retry delay"):
        retry_delay(1, ())


# -- a carrier built from sdpbx's registrar ----------------------------------------------------


@define
class Carrier(RequestHandler):
    """A registrar that challenges (401, or 407 with ``proxy=True``) and records requests.

    ``fail_first`` lists statuses to answer, in order, before anything else.
    """

    registrar: Registrar
    authenticator: Authenticator
    proxy: bool = False
    fail_first: list[tuple[int, tuple[tuple[str, str], ...]]] = field(factory=list)
    seen: list[Request] = field(factory=list)

    async def handle_request(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        if request.method != "REGISTER":
            await super().handle_request(incoming)
            return
        self.seen.append(request)
        if self.fail_first:
            status, headers = self.fail_first.pop(0)
            incoming.respond(status, headers=headers)
            return
        if self.proxy:
            outcome = await self.authenticator.authenticate(request, incoming.peer, proxy=True)
            if answer_refusal(incoming, outcome):
                return
        await self.registrar.handle(incoming)

    def expires_seen(self) -> list[int | None]:
        return [r.expires for r in self.seen]

    def authorized(self) -> list[bool]:
        return [bool(r.authorization or r.proxy_authorization) for r in self.seen]


def make_carrier(
    *,
    proxy: bool = False,
    password: str = "s3cret",
    realm: str = REALM,
    min_expires: int = 1,
    default_expires: int = 3600,
    max_expires: int = 7200,
) -> Carrier:
    users = MemoryUserBackend([SipUser("alice", password=password)])
    # SHA-256 offered first, so the registration shows it picks the stronger hash.
    authenticator = Authenticator(
        users, realm_for=realm, nonces=NonceManager(SECRET), algorithms=("SHA-256", "MD5")
    )
    registrar = Registrar(
        MemoryLocator(),
        None if proxy else authenticator,
        realms=(realm,),
        min_expires=min_expires,
        default_expires=default_expires,
        max_expires=max_expires,
    )
    return Carrier(registrar, authenticator, proxy=proxy)


@asynccontextmanager
async def stacks(
    carrier: Carrier, *, timers: TimerConfig | None = None
) -> AsyncIterator[tuple[SipStack, Peer]]:
    """A running carrier stack and a running client stack; yields (client stack, carrier peer)."""
    carrier_port = free_port()
    carrier_stack = SipStack([UdpTransport("127.0.0.1", carrier_port)], carrier)
    client_stack = SipStack([UdpTransport("127.0.0.1", free_port())], timers=timers)
    async with anyio.create_task_group() as tg:
        await tg.start(carrier_stack.serve)
        await tg.start(client_stack.serve)
        yield client_stack, Peer("UDP", "127.0.0.1", carrier_port)
        tg.cancel_scope.cancel()


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[RegistrationStatus] = []

    def __call__(self, status: RegistrationStatus) -> None:
        self.statuses.append(status)

    @property
    def states(self) -> list[str]:
        return [s.state for s in self.statuses]


async def wait(
    registration: TrunkRegistration, predicate: Callable[[RegistrationStatus], bool]
) -> RegistrationStatus:
    with anyio.fail_after(10):
        return await registration.wait_until(predicate)


def registered(status: RegistrationStatus) -> bool:
    return status.state == "registered"


def failed(status: RegistrationStatus) -> bool:
    return status.state == "failed"


# -- registration over the wire ----------------------------------------------------------------


@pytest.mark.parametrize("proxy", [False, True], ids=["401", "407"])
async def test_register_with_digest_then_stop_unregisters(proxy: bool) -> None:
    carrier = make_carrier(proxy=proxy)
    recorder = Recorder()
    async with stacks(carrier) as (stack, peer), anyio.create_task_group() as tg:
        reg = TrunkRegistration(
            stack,
            "carrier",
            registrar=peer,
            aor=AOR,
            username="alice",
            password="s3cret",
            expires=300,
            on_change=recorder,
        )
        assert reg.status.state == "stopped"
        await tg.start(reg.run)
        before = time.time()
        status = await wait(reg, registered)
        assert status.last_code == 200
        assert status.registered_count == 1
        assert status.last_error is None
        assert status.expires_at is not None
        assert before + 299 <= status.expires_at <= time.time() + 300

        [binding] = await carrier.registrar.locator.lookup("alice@carrier.example", time.time())
        assert f"<{binding.contact}>" == reg.contact
        assert binding.port == stack.transports[0].local_port
        first, second = carrier.seen
        assert str(first.uri) == "sip:carrier.example"
        assert carrier.authorized() == [False, True]
        assert (first.cseq.number, second.cseq.number) == (1, 2)
        assert first.call_id == second.call_id
        assert first.top_via.branch != second.top_via.branch
        header = "proxy-authorization" if proxy else "authorization"
        [value] = second.headers.get_all(header)
        assert DigestCredentials.parse(value).algorithm == "SHA-256"
        assert carrier.authenticator.stats.successes == 1

        await reg.stop()
        assert reg.status.state == "stopped"
        assert reg.status.registered_count == 1
        assert reg.status.expires_at is None
        # The un-REGISTER: same Call-ID, higher CSeq, Expires: 0, answered after a challenge.
        unregister = carrier.seen[2:]
        assert [r.expires for r in unregister] == [0, 0]
        assert [r.call_id for r in unregister] == [first.call_id] * 2
        assert [r.cseq.number for r in unregister] == [3, 4]
        assert carrier.registrar.stats.unregistrations == 1
        assert await carrier.registrar.locator.bindings("alice@carrier.example") == []
        tg.cancel_scope.cancel()
    assert recorder.states == ["registering", "registered", "stopped"]


async def test_refresh_before_the_granted_expiry() -> None:
    # The carrier caps every grant at 4 s although we ask for an hour.
    carrier = make_carrier(min_expires=1, default_expires=4, max_expires=4)
    async with stacks(carrier) as (stack, peer), anyio.create_task_group() as tg:
        reg = TrunkRegistration(
            stack, "carrier", registrar=peer, aor=AOR, username="alice", password="s3cret"
        )
        await tg.start(reg.run)
        first = await wait(reg, registered)
        assert first.expires_at is not None
        assert first.expires_at - time.time() <= 4
        second = await wait(reg, lambda s: s.registered_count >= 2)
        assert second.state == "registered"
        assert second.expires_at is not None and second.expires_at > first.expires_at
        # Refreshed before the binding ran out: it never left the location service.
        assert carrier.registrar.stats.expired == 0
        assert carrier.expires_seen() == [3600] * 4
        assert [r.cseq.number for r in carrier.seen] == [1, 2, 3, 4]
        assert len({r.call_id for r in carrier.seen}) == 1
        await reg.stop()
        tg.cancel_scope.cancel()


async def test_failure_then_retry() -> None:
    carrier = make_carrier()
    carrier.fail_first = [(503, (("Retry-After", "0"),)), (500, ())]
    recorder = Recorder()
    async with stacks(carrier) as (stack, peer), anyio.create_task_group() as tg:
        reg = TrunkRegistration(
            stack,
            "carrier",
            registrar=peer,
            aor=AOR,
            username="alice",
            password="s3cret",
            retry_delays=(0.05, 0.1),
            on_change=recorder,
        )
        await tg.start(reg.run)
        await wait(reg, registered)
        await reg.stop()
        tg.cancel_scope.cancel()
    assert recorder.states == ["registering", "failed", "failed", "registered", "stopped"]
    first_failure, second_failure = recorder.statuses[1:3]
    assert (first_failure.last_code, first_failure.last_error) == (503, "503 Service Unavailable")
    assert (second_failure.last_code, second_failure.last_error) == (
        500,
        "500 Server Internal Error",
    )
    assert recorder.statuses[3].last_error is None
    assert carrier.authorized()[:4] == [False, False, False, True]


async def test_wrong_password_fails_without_looping() -> None:
    carrier = make_carrier(password="the-real-one")
    async with stacks(carrier) as (stack, peer), anyio.create_task_group() as tg:
        reg = TrunkRegistration(
            stack,
            "carrier",
            registrar=peer,
            aor=AOR,
            username="alice",
            password="wrong",
            retry_delays=(60.0,),
        )
        await tg.start(reg.run)
        status = await wait(reg, failed)
        assert status.last_code == 401
        assert status.last_error is not None and "refused" in status.last_error
        # One unauthenticated REGISTER, one answer, and no more.
        assert carrier.authorized() == [False, True]
        await reg.stop()
        tg.cancel_scope.cancel()
    # Never bound: no un-REGISTER was sent.
    assert len(carrier.seen) == 2
    assert reg.status.state == "stopped"


async def test_423_raises_the_requested_expiry() -> None:
    carrier = make_carrier(min_expires=60, default_expires=60, max_expires=120)
    async with stacks(carrier) as (stack, peer), anyio.create_task_group() as tg:
        reg = TrunkRegistration(
            stack,
            "carrier",
            registrar=peer,
            aor=AOR,
            username="alice",
            password="s3cret",
            expires=30,
        )
        await tg.start(reg.run)
        status = await wait(reg, registered)
        assert reg.expires == 60
        assert status.expires_at is not None
        assert 55 <= status.expires_at - time.time() <= 60
        # 401, then 423 for 30 s, then 401 and 200 for 60 s.
        assert carrier.expires_seen() == [30, 30, 60, 60]
        assert carrier.authorized() == [False, True, False, True]
        await reg.stop()
        tg.cancel_scope.cancel()


async def test_cancelling_the_task_unregisters() -> None:
    carrier = make_carrier()
    async with stacks(carrier) as (stack, peer):
        reg = TrunkRegistration(
            stack, "carrier", registrar=peer, aor=AOR, username="alice", password="s3cret"
        )
        async with anyio.create_task_group() as tg:
            await tg.start(reg.run)
            await wait(reg, registered)
            tg.cancel_scope.cancel()
        assert reg.status.state == "stopped"
        assert carrier.expires_seen()[-1] == 0
        assert carrier.registrar.stats.unregistrations == 1
        assert await carrier.registrar.locator.bindings("alice@carrier.example") == []


async def test_no_answer_is_a_timeout_failure() -> None:
    carrier = make_carrier()
    silent = Peer("UDP", "127.0.0.1", free_port())  # nobody listens there
    async with stacks(carrier, timers=TimerConfig(t1=0.02)) as (stack, _):
        reg = TrunkRegistration(
            stack,
            "carrier",
            registrar=silent,
            aor=AOR,
            username="alice",
            password="s3cret",
            retry_delays=(60.0,),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(reg.run)
            status = await wait(reg, failed)
            assert status.last_code == 408
            assert status.last_error is not None and status.last_error.startswith("timeout")
            tg.cancel_scope.cancel()
        assert reg.status.state == "stopped"


async def test_granted_expiry_from_the_expires_header() -> None:
    """A registrar that answers 200 without Contacts: the Expires header rules.

    The registration is built before the stacks serve (as a server sets up),
    so its Contact must still carry the port bound later.
    """
    seen: list[Request] = []

    class Bare(RequestHandler):
        async def handle_request(self, incoming: IncomingRequest) -> None:
            if incoming.request.method == "REGISTER":
                seen.append(incoming.request)
                incoming.respond(200, headers=[("Expires", "45")])

    port, client_port = free_port(), free_port()
    carrier_stack = SipStack([UdpTransport("127.0.0.1", port)], Bare())
    client_stack = SipStack([UdpTransport("127.0.0.1", client_port)])
    reg = TrunkRegistration(
        client_stack,
        "bare",
        registrar=Peer("UDP", "127.0.0.1", port),
        aor=AOR,
        username="alice",
        password="x",
        clock=lambda: 1_000.0,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(carrier_stack.serve)
        await tg.start(client_stack.serve)
        await tg.start(reg.run)
        status = await wait(reg, registered)
        assert status.expires_at == 1_045.0
        await reg.stop()
        tg.cancel_scope.cancel()
    assert [r.expires for r in seen] == [3600, 0]
    assert [r.headers.get("contact") for r in seen] == [f"<sip:alice@127.0.0.1:{client_port}>"] * 2


# -- configuration -------------------------------------------------------------------------------


async def test_from_config_registers_to_the_trunk_dest() -> None:
    carrier = make_carrier(realm="127.0.0.1")
    async with stacks(carrier) as (stack, peer), anyio.create_task_group() as tg:
        cfg = TrunkConfig(
            dest=f"sip:127.0.0.1:{peer.port}",
            username="alice",
            password="s3cret",
            register_enabled=True,
            register_expires=120,
        )
        reg = trunk_registration_from_config(stack, "gw", cfg)
        assert reg.registrar == peer
        assert str(reg.aor) == "sip:alice@127.0.0.1"
        assert reg.registrar_uri == f"sip:127.0.0.1:{peer.port}"
        assert reg.expires == 120
        await tg.start(reg.run)
        await wait(reg, registered)
        assert str(carrier.seen[0].uri) == f"sip:127.0.0.1:{peer.port}"
        await reg.stop()
        tg.cancel_scope.cancel()


async def test_from_config_destinations() -> None:
    stack = SipStack([UdpTransport("127.0.0.1", free_port())])
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        check_destinations(stack)
        tg.cancel_scope.cancel()


def check_destinations(stack: SipStack) -> None:

    def build(dest: str, transport: str | None = None) -> TrunkRegistration:
        cfg = TrunkConfig(
            dest=dest,
            username="u",
            password="p",
            transport=transport,  # type: ignore[arg-type]
            register_enabled=True,
        )
        return trunk_registration_from_config(stack, "t", cfg)

    reg = build("gw.example.net")
    assert reg.registrar == Peer("UDP", "gw.example.net", 5060)
    assert str(reg.aor) == "sip:u@gw.example.net"
    assert reg.registrar_uri == "sip:gw.example.net"
    assert build("198.51.100.7:5080", "tcp").registrar == Peer("TCP", "198.51.100.7", 5080)
    assert build("sip:gw.example.net;transport=tcp").registrar.transport == "TCP"
    assert build("sips:gw.example.net").registrar == Peer("TLS", "gw.example.net", 5061)
    v6 = build("[2001:db8::1]:5062")
    assert v6.registrar == Peer("UDP", "2001:db8::1", 5062)
    assert str(v6.aor) == "sip:u@[2001:db8::1]"
    with pytest.raises(ValueError, match="username and password"):
        trunk_registration_from_config(stack, "t", TrunkConfig(dest="gw.example.net"))


async def test_a_closed_transaction_is_a_failure_not_a_crash() -> None:
    """The stack stops while a REGISTER waits for its answer: the client transaction ends
    with TransactionClosed (not a timeout); the registration counts it as a failure with no
    final response and keeps running, instead of dying with the exception."""
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as registrar:
        stack = SipStack([UdpTransport("127.0.0.1", free_port())])
        reg = TrunkRegistration(
            stack,
            "carrier",
            registrar=Peer(
                "UDP", "127.0.0.1", registrar.extra(anyio.abc.SocketAttribute.local_port)
            ),
            aor=AOR,
            username="alice",
            password="s3cret",
            retry_delays=(60.0,),
        )
        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as stack_group:
                await stack_group.start(stack.serve)
                await outer.start(reg.run)
                with anyio.fail_after(10):
                    data, _ = await registrar.receive()
                assert data.startswith(b"REGISTER ")
                stack_group.cancel_scope.cancel()  # the REGISTER's transaction closes
            status = await wait(reg, failed)
            assert status.last_code == 408
            assert status.last_error == "no final response from the registrar"
            outer.cancel_scope.cancel()
        assert reg.status.state == "stopped"
