"""The registrar behind a real SipStack, spoken to over real loopback UDP (and TCP)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import ConnectedUDPSocket
from helpers.sipp import free_port

from sdpbx.authn import Authenticator
from sdpbx.locator import Locator, LocatorEvent, MemoryLocator, SqliteLocator
from sdpbx.registrar import Registrar
from sdpbx.sip.auth import DigestChallenge, NonceManager, build_authorization
from sdpbx.sip.message import Response, parse_message
from sdpbx.sip.throttle import FailureThrottle
from sdpbx.stack import IncomingRequest, RequestHandler, SipStack
from sdpbx.store import Database
from sdpbx.transport import TcpTransport, UdpTransport
from sdpbx.transport.base import Peer
from sdpbx.users import MemoryUserBackend, SipUser, UserBackendError

pytestmark = pytest.mark.anyio

DOMAIN = "example.com"
SECRET = b"registrar-test-secret-0123456789"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RegistrarHandler(RequestHandler):
    """The smallest transaction user that hands REGISTER to a registrar."""

    def __init__(self, registrar: Registrar) -> None:
        self.registrar = registrar

    async def handle_request(self, incoming: IncomingRequest) -> None:
        if incoming.request.method == "REGISTER":
            await self.registrar.handle(incoming)
        else:
            await super().handle_request(incoming)

    def connection_lost(self, peer: Peer) -> None:
        self.registrar.connection_lost(peer)


class Client:
    """A bare UDP socket that sends REGISTERs and reads the answers."""

    def __init__(self, sock: ConnectedUDPSocket) -> None:
        self.sock = sock
        self.port = sock.extra(anyio.abc.SocketAttribute.local_port)

    def register(self, *args: object, **kwargs: object) -> bytes:
        return register_bytes(*args, **kwargs)  # type: ignore[arg-type]

    async def send(self, data: bytes) -> Response:
        await self.sock.send(data)
        return await self.receive()

    async def receive(self) -> Response:
        with anyio.fail_after(5):
            while True:
                message = parse_message(await self.sock.receive())
                if isinstance(message, Response) and message.status >= 200:
                    return message

    async def __call__(self, *args: object, **kwargs: object) -> Response:
        return await self.send(self.register(*args, **kwargs))


def register_bytes(
    user: str = "alice",
    *,
    domain: str = DOMAIN,
    contacts: tuple[str, ...] = ("<sip:alice@192.0.2.1:5060>",),
    expires: int | str | None = None,
    call_id: str = "call-1",
    cseq: int = 1,
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{secrets.token_hex(8)};rport",
        f"From: <sip:{user}@{domain}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{user}@{domain}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
        *(f"Contact: {c}" for c in contacts),
        *([f"Expires: {expires}"] if expires is not None else []),
        *extra,
        "User-Agent: test-phone/1.0",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@asynccontextmanager
async def serving(
    registrar: Registrar, *, tcp: bool = False
) -> AsyncIterator[tuple[SipStack, int]]:
    port = free_port()
    transports: list[UdpTransport | TcpTransport] = [UdpTransport("127.0.0.1", port)]
    if tcp:
        transports.append(TcpTransport("127.0.0.1", port))
    stack = SipStack(transports, RegistrarHandler(registrar))
    stack.add_timer_client(registrar.timer_client, registrar.clock)
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        yield stack, port
        tg.cancel_scope.cancel()


@asynccontextmanager
async def client_for(port: int) -> AsyncIterator[Client]:
    async with await anyio.create_connected_udp_socket(
        "127.0.0.1", port, local_host="127.0.0.1"
    ) as sock:
        yield Client(sock)


@asynccontextmanager
async def registrar_client(
    registrar: Registrar | None = None, **kwargs: object
) -> AsyncIterator[tuple[Registrar, Client]]:
    if registrar is None:
        registrar = Registrar(MemoryLocator(), realms=(DOMAIN,), **kwargs)  # type: ignore[arg-type]
    async with serving(registrar) as (_, port), client_for(port) as client:
        yield registrar, client


def contacts_of(response: Response) -> list[str]:
    return response.headers.get_all("contact")


# -- the basic exchange ------------------------------------------------------------------------


async def test_register_stores_the_real_source_and_lists_bindings() -> None:
    clock = Clock()
    registrar = Registrar(MemoryLocator(), realms=(DOMAIN,), clock=clock)
    async with registrar_client(registrar) as (_, client):
        response = await client()
        assert response.status == 200
        assert contacts_of(response) == ["<sip:alice@192.0.2.1:5060>;expires=3600"]
        assert response.headers.get("date", "").endswith(" GMT")
        [binding] = await registrar.locator.lookup("alice@example.com", clock.now)
        # The Contact says 192.0.2.1:5060 (behind NAT); the binding keeps the real source.
        assert binding.contact == "sip:alice@192.0.2.1:5060"
        assert (binding.transport, binding.host, binding.port) == ("UDP", "127.0.0.1", client.port)
        assert binding.connection_id is None
        assert binding.user_agent == "test-phone/1.0"
        assert (binding.call_id, binding.cseq) == ("call-1", 1)
        assert registrar.stats.registrations == 1


async def test_multiple_contacts_and_q_values() -> None:
    async with registrar_client() as (registrar, client):
        response = await client(
            contacts=("<sip:alice@192.0.2.1>;q=0.5", "<sip:alice@192.0.2.2>;q=0.9"),
        )
        assert response.status == 200
        assert contacts_of(response) == [
            "<sip:alice@192.0.2.2>;expires=3600;q=0.9",
            "<sip:alice@192.0.2.1>;expires=3600;q=0.5",
        ]
        # A second device with another Call-ID adds to the set; 200 lists all three.
        response = await client(contacts=("<sip:alice@192.0.2.3>",), call_id="other")
        assert len(contacts_of(response)) == 3
        assert contacts_of(response)[0] == "<sip:alice@192.0.2.3>;expires=3600"
        assert registrar.stats.registrations == 3


async def test_contacts_in_one_header_line() -> None:
    async with registrar_client() as (_, client):
        response = await client(contacts=("<sip:alice@192.0.2.1>, <sip:alice@192.0.2.2>",))
        assert response.status == 200
        assert len(contacts_of(response)) == 2


async def test_query_lists_without_changing() -> None:
    async with registrar_client() as (registrar, client):
        await client(contacts=("<sip:alice@192.0.2.1>",))
        response = await client(contacts=(), cseq=2)
        assert response.status == 200
        assert contacts_of(response) == ["<sip:alice@192.0.2.1>;expires=3600"]
        empty = await client("bob", contacts=())
        assert empty.status == 200
        assert contacts_of(empty) == []
        assert registrar.stats.queries == 2
        assert registrar.stats.registrations == 1


# -- expiry values ---------------------------------------------------------------------------


async def test_contact_expires_wins_over_header_and_default() -> None:
    async with registrar_client() as (_, client):
        response = await client(
            contacts=("<sip:alice@192.0.2.1>;expires=120", "<sip:alice@192.0.2.2>"),
            expires=300,
        )
        assert sorted(contacts_of(response)) == [
            "<sip:alice@192.0.2.1>;expires=120",
            "<sip:alice@192.0.2.2>;expires=300",
        ]
        response = await client("bob", contacts=("<sip:bob@192.0.2.9>",))
        assert contacts_of(response) == ["<sip:bob@192.0.2.9>;expires=3600"]


async def test_too_brief_is_423_with_min_expires() -> None:
    async with registrar_client(min_expires=60) as (registrar, client):
        response = await client(expires=30)
        assert response.status == 423
        assert response.headers.get("min-expires") == "60"
        response = await client(contacts=("<sip:alice@192.0.2.1>;expires=59",), cseq=2)
        assert response.status == 423
        assert await registrar.locator.count() == 0
        # One brief Contact aborts the whole request: nothing is stored.
        response = await client(
            contacts=("<sip:alice@192.0.2.1>", "<sip:alice@192.0.2.2>;expires=1"), cseq=3
        )
        assert response.status == 423
        assert await registrar.locator.count() == 0
        assert (await client(expires=60, cseq=4)).status == 200


async def test_too_long_is_capped() -> None:
    async with registrar_client(max_expires=7200) as (_, client):
        response = await client(expires=10**12)
        assert response.status == 200
        assert contacts_of(response) == ["<sip:alice@192.0.2.1:5060>;expires=7200"]


async def test_malformed_expires_is_400() -> None:
    async with registrar_client() as (registrar, client):
        assert (await client(expires="soon")).status == 400
        response = await client(contacts=("<sip:alice@192.0.2.1>;expires=later",), cseq=2)
        assert response.status == 400
        response = await client(contacts=("<sip:alice@192.0.2.1>;q=2",), cseq=3)
        assert response.status == 400
        assert await registrar.locator.count() == 0


# -- removal ---------------------------------------------------------------------------------


async def test_expires_zero_removes_one_binding() -> None:
    async with registrar_client() as (registrar, client):
        await client(contacts=("<sip:alice@192.0.2.1>", "<sip:alice@192.0.2.2>"))
        response = await client(contacts=("<sip:alice@192.0.2.1>",), expires=0, cseq=2)
        assert response.status == 200
        assert contacts_of(response) == ["<sip:alice@192.0.2.2>;expires=3600"]
        assert registrar.stats.unregistrations == 1


async def test_star_removes_every_binding() -> None:
    events: list[LocatorEvent] = []
    locator = MemoryLocator()
    locator.subscribe(events.append)
    async with registrar_client(Registrar(locator, realms=(DOMAIN,))) as (registrar, client):
        await client(contacts=("<sip:alice@192.0.2.1>", "<sip:alice@192.0.2.2>"))
        await client(contacts=("<sip:alice@192.0.2.3>",), call_id="phone-2")
        response = await client(contacts=("*",), expires=0, call_id="phone-3")
        assert response.status == 200
        assert contacts_of(response) == []
        assert await locator.count() == 0
        assert registrar.stats.unregistrations == 3
        assert [e.event for e in events].count("unregistered") == 3


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [
        (("*",), None),
        (("*",), 60),
        (("*", "<sip:alice@192.0.2.1>"), 0),
        (("*, <sip:alice@192.0.2.1>",), 0),
    ],
)
async def test_star_misuse_is_400(contacts: tuple[str, ...], expires: int | None) -> None:
    async with registrar_client() as (registrar, client):
        await client(contacts=("<sip:alice@192.0.2.1>",))
        response = await client(contacts=contacts, expires=expires, call_id="x")
        assert response.status == 400
        assert await registrar.locator.count() == 1


# -- ordering (§10.3 step 7) ----------------------------------------------------------------


async def test_same_call_id_needs_a_higher_cseq() -> None:
    async with registrar_client() as (registrar, client):
        assert (await client(cseq=5)).status == 200
        response = await client(cseq=5)  # a new transaction, not a retransmission
        assert response.status == 500
        assert (await client(cseq=4, expires=0)).status == 500
        assert (await client(contacts=("*",), expires=0, cseq=3)).status == 500
        assert await registrar.locator.count() == 1
        assert (await client(cseq=6, expires=600)).status == 200
        [binding] = await registrar.locator.bindings("alice@example.com")
        assert binding.cseq == 6
        # Another Call-ID (the phone rebooted) always updates, whatever its CSeq.
        assert (await client(cseq=1, call_id="after-reboot")).status == 200
        [binding] = await registrar.locator.bindings("alice@example.com")
        assert binding.call_id == "after-reboot"


# -- Path, instance ids ---------------------------------------------------------------------


async def test_path_is_stored_and_echoed_when_supported() -> None:
    async with registrar_client() as (registrar, client):
        response = await client(
            extra=(
                "Path: <sip:edge1.example.net;lr>",
                "Path: <sip:edge2.example.net;lr>, <sip:edge3.example.net;lr>",
                "Supported: path",
            )
        )
        assert response.status == 200
        assert response.headers.get_all("path") == [
            "<sip:edge1.example.net;lr>",
            "<sip:edge2.example.net;lr>, <sip:edge3.example.net;lr>",
        ]
        [binding] = await registrar.locator.bindings("alice@example.com")
        assert binding.path == (
            "<sip:edge1.example.net;lr>",
            "<sip:edge2.example.net;lr>",
            "<sip:edge3.example.net;lr>",
        )
        plain = await client("bob", extra=("Path: <sip:edge1.example.net;lr>",))
        assert plain.headers.get_all("path") == []


async def test_instance_id_replaces_the_old_address() -> None:
    instance = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    async with registrar_client() as (registrar, client):
        await client(contacts=(f"<sip:alice@192.0.2.1>;{instance}",))
        response = await client(contacts=(f"<sip:alice@192.0.2.77>;{instance}",), call_id="n")
        assert contacts_of(response) == ["<sip:alice@192.0.2.77>;expires=3600"]
        [binding] = await registrar.locator.bindings("alice@example.com")
        assert binding.instance_id == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
        assert binding.reg_id == 1
        # Another reg-id of the same instance is a second flow: both stay.
        other = instance.replace("reg-id=1", "reg-id=2")
        response = await client(contacts=(f"<sip:alice@192.0.2.78>;{other}",), call_id="m")
        assert len(contacts_of(response)) == 2


# -- refusals --------------------------------------------------------------------------------


async def test_foreign_domain_is_403() -> None:
    async with registrar_client() as (registrar, client):
        response = await client(domain="elsewhere.example")
        assert response.status == 403
        assert registrar.stats.rejections == 1


async def test_any_domain_when_no_realms() -> None:
    async with registrar_client(Registrar(MemoryLocator())) as (registrar, client):
        assert (await client(domain="elsewhere.example")).status == 200
        assert await registrar.locator.bindings("alice@elsewhere.example")


async def test_non_sip_contact_is_400() -> None:
    async with registrar_client() as (_, client):
        assert (await client(contacts=("<tel:+15551234>",))).status == 400


def torture(shared_dir: Path, name: str) -> bytes:
    return (shared_dir / "sip-torture" / "rfc4475" / f"{name}.dat").read_bytes()


async def test_rfc4475_unksm2_to_not_sip_is_400(shared_dir: Path) -> None:
    async with registrar_client() as (_, client):
        response = await client.send(torture(shared_dir, "unksm2"))
        assert response.status == 400


async def test_rfc4475_regbadct_is_400(shared_dir: Path) -> None:
    """An addr-spec Contact with '?' is ambiguous: rejected, nothing stored."""
    async with registrar_client() as (registrar, client):
        response = await client.send(torture(shared_dir, "regbadct"))
        assert response.status == 400
        assert await registrar.locator.count() == 0


async def test_rfc4475_regescrt_keeps_the_escaped_header(shared_dir: Path) -> None:
    async with registrar_client() as (registrar, client):
        response = await client.send(torture(shared_dir, "regescrt"))
        assert response.status == 200
        assert contacts_of(response) == [
            "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>;expires=3600"
        ]
        [binding] = await registrar.locator.bindings("user@example.com")
        assert binding.contact == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


async def test_rfc4475_contact_params_and_uri_params(shared_dir: Path) -> None:
    """cparam01: ;unknownparam outside <> is a contact-param; cparam02: inside, a URI param."""
    async with registrar_client() as (registrar, client):
        assert (await client.send(torture(shared_dir, "cparam01"))).status == 200
        # Both files carry the same Via branch: a new branch makes cparam02 a new transaction.
        cparam02 = torture(shared_dir, "cparam02").replace(b"z9hG4bKkdjuw", b"z9hG4bKkdjuw2")
        assert (await client.send(cparam02)).status == 200
        contacts = sorted(b.contact for b in await registrar.locator.bindings("watson@example.com"))
        assert contacts == [
            "sip:+19725552222@gw1.example.net",
            "sip:+19725552222@gw1.example.net;unknownparam",
        ]


async def test_non_register_is_405() -> None:
    class Only(RequestHandler):
        async def handle_request(self, incoming: IncomingRequest) -> None:
            await registrar.handle(incoming)

    registrar = Registrar(MemoryLocator())
    port = free_port()
    stack = SipStack([UdpTransport("127.0.0.1", port)], Only())
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        async with client_for(port) as client:
            data = client.register().replace(b"REGISTER", b"MESSAGE")
            response = await client.send(data)
        tg.cancel_scope.cancel()
    assert response.status == 405
    assert response.headers.get("allow") == "REGISTER"


# -- digest authentication through the stack -------------------------------------------------


def authenticator(
    users: object = None, *, clock: Callable[[], float] | None = None, **kwargs: object
) -> Authenticator:
    backend = users if users is not None else MemoryUserBackend([SipUser("alice", "s3cret")])
    return Authenticator(
        backend,  # type: ignore[arg-type]
        realm_for=DOMAIN,
        nonces=NonceManager(SECRET),
        algorithms=("SHA-256", "MD5"),  # both flows are tested; MD5 alone is the default
        **({"clock": clock} if clock else {}),
        **kwargs,  # type: ignore[arg-type]
    )


def pick(response: Response, algorithm: str) -> DigestChallenge:
    assert response.status == 401, response.status
    found = [DigestChallenge.parse(v) for v in response.www_authenticate]
    return next(c for c in found if c.algorithm == algorithm)


def authorization(challenge: DigestChallenge, password: str = "s3cret", nc: int = 1) -> str:
    creds = build_authorization(
        challenge,
        username="alice",
        password=password,
        method="REGISTER",
        uri=f"sip:{DOMAIN}",
        nc=nc,
    )
    return f"Authorization: {creds.to_header_value()}"


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
async def test_digest_register(algorithm: str) -> None:
    registrar = Registrar(MemoryLocator(), authenticator(), realms=(DOMAIN,))
    async with registrar_client(registrar) as (_, client):
        challenged = await client(cseq=1)
        assert [DigestChallenge.parse(v).algorithm for v in challenged.www_authenticate] == [
            "SHA-256",
            "MD5",
        ]
        assert await registrar.locator.count() == 0
        challenge = pick(challenged, algorithm)
        response = await client(cseq=2, extra=(authorization(challenge),))
        assert response.status == 200
        assert await registrar.locator.count() == 1
        # The same nonce with a higher count refreshes without a new challenge.
        response = await client(cseq=3, extra=(authorization(challenge, nc=2),))
        assert response.status == 200
        # The same count again is a replay: challenged with a fresh nonce.
        replay = await client(cseq=4, extra=(authorization(challenge, nc=2),))
        assert pick(replay, algorithm).nonce != challenge.nonce


async def test_wrong_password_then_403_then_silence() -> None:
    auth = authenticator(throttle=FailureThrottle(limit=3))
    registrar = Registrar(MemoryLocator(), auth, realms=(DOMAIN,))
    async with registrar_client(registrar) as (_, client):
        challenge = pick(await client(cseq=1), "MD5")
        statuses = []
        for cseq in range(2, 5):
            response = await client(cseq=cseq, extra=(authorization(challenge, "guess"),))
            statuses.append(response.status)
            if response.status == 401:
                challenge = pick(response, "MD5")
        assert statuses == [401, 401, 403]
        # Blocked: the next request is not answered at all.
        await client.sock.send(client.register(cseq=9, extra=(authorization(challenge),)))
        with anyio.fail_after(5):
            # Silence has no event to wait for; the drop counter is its only trace.
            while auth.stats.drops == 0:
                await anyio.sleep(0.01)
        assert auth.stats.failures == 3
        assert registrar.stats.rejections == 1
        assert await registrar.locator.count() == 0


async def test_expired_nonce_is_stale_through_the_stack() -> None:
    clock = Clock()
    auth = Authenticator(
        MemoryUserBackend([SipUser("alice", "s3cret")]),
        realm_for=DOMAIN,
        nonces=NonceManager(SECRET, lifetime=5),
        clock=clock,
        algorithms=("SHA-256", "MD5"),
    )
    registrar = Registrar(MemoryLocator(), auth, realms=(DOMAIN,), clock=clock)
    async with registrar_client(registrar) as (_, client):
        challenge = pick(await client(cseq=1), "SHA-256")
        clock.now += 60
        response = await client(cseq=2, extra=(authorization(challenge),))
        fresh = pick(response, "SHA-256")
        assert fresh.stale
        assert (await client(cseq=3, extra=(authorization(fresh),))).status == 200


class FailingBackend:
    async def get_user(self, username: str, realm: str) -> SipUser | None:
        raise UserBackendError("HTTP 502 from the user service")


class HangingBackend:
    async def get_user(self, username: str, realm: str) -> SipUser | None:
        await anyio.sleep_forever()
        return None


@pytest.mark.parametrize("backend", [FailingBackend(), HangingBackend()])
async def test_backend_failure_is_503(backend: object) -> None:
    auth = authenticator(backend, backend_timeout=0.3)
    registrar = Registrar(MemoryLocator(), auth, realms=(DOMAIN,))
    async with registrar_client(registrar) as (_, client):
        challenge = pick(await client(cseq=1), "MD5")
        response = await client(cseq=2, extra=(authorization(challenge),))
        assert response.status == 503
        assert response.headers.get("retry-after") == "5"
        assert auth.stats.backend_errors == 1
        assert registrar.stats.rejections == 1


# -- expiry, connections, persistence ------------------------------------------------------


async def test_timer_client_expires_bindings() -> None:
    clock = Clock()
    events: list[LocatorEvent] = []
    locator = MemoryLocator()
    locator.subscribe(events.append)
    registrar = Registrar(locator, realms=(DOMAIN,), clock=clock)
    async with registrar_client(registrar) as (_, client):
        await client(expires=120)
        await client("bob", expires=600)
        assert registrar.timer_client.next_deadline() == clock.now + 120
        registrar.timer_client.handle_timer(clock.now + 121)
        assert registrar.stats.expired == 1
        assert [e.event for e in events] == ["registered", "registered", "offline"]
        assert await locator.lookup("alice@example.com", clock.now + 121) == []


async def test_stack_timer_expires_bindings_in_real_time() -> None:
    expired = anyio.Event()
    locator = MemoryLocator()
    locator.subscribe(lambda e: expired.set() if e.event == "offline" else None)
    registrar = Registrar(locator, realms=(DOMAIN,), min_expires=1, default_expires=1)
    async with registrar_client(registrar) as (_, client):
        assert (await client(expires=1)).status == 200
        with anyio.fail_after(10):
            await expired.wait()
        assert await locator.count() == 0


async def test_tcp_connection_close_drops_its_bindings() -> None:
    lost = anyio.Event()
    locator = MemoryLocator()
    locator.subscribe(lambda e: lost.set() if e.event == "offline" else None)
    registrar = Registrar(locator, realms=(DOMAIN,))
    async with serving(registrar, tcp=True) as (_, port):
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            data = register_bytes(contacts=("<sip:alice@192.0.2.1;transport=tcp>",))
            await stream.send(data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
            with anyio.fail_after(5):
                reply = await stream.receive()
            assert reply.startswith(b"SIP/2.0 200 ")
            [binding] = await locator.bindings("alice@example.com")
            assert binding.transport == "TCP"
            assert binding.connection_id is not None
        with anyio.fail_after(5):
            await lost.wait()
        assert await locator.count() == 0
        assert registrar.stats.disconnected == 1


async def test_sqlite_locator_keeps_bindings_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "registrar.sqlite3"
    async with Database(path) as db:
        locator: Locator = SqliteLocator(db)
        registrar = Registrar(locator, realms=(DOMAIN,))
        async with registrar_client(registrar) as (_, client):
            response = await client(
                contacts=("<sip:alice@192.0.2.1>;q=0.7",), extra=("Path: <sip:edge;lr>",)
            )
            assert response.status == 200
            client_port = client.port
        await locator.flush()
    async with Database(path) as db:
        restored = SqliteLocator(db)
        assert await restored.load(time.time()) == 1
        registrar = Registrar(restored, realms=(DOMAIN,))
        async with registrar_client(registrar) as (_, client):
            response = await client(contacts=(), call_id="query")
            [contact] = contacts_of(response)
            assert re.fullmatch(r"<sip:alice@192\.0\.2\.1>;expires=3[56]\d\d;q=0\.7", contact)
        [binding] = await restored.bindings("alice@example.com")
        assert (binding.host, binding.port, binding.path) == (
            "127.0.0.1",
            client_port,
            ("<sip:edge;lr>",),
        )
