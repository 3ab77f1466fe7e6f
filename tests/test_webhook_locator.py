"""LocatorWebhook against a real HTTP server on 127.0.0.1 (tests/helpers/webhook_server.py),
fed by a real MemoryLocator: the JSON, ordering per AoR, concurrency, retries, bounds."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from helpers.webhook_server import Received, Reply, WebhookServer, start_server, stop_server

from sdpbx.config import LocatorWebhookConfig
from sdpbx.locator import Binding, LocatorEvent, MemoryLocator
from sdpbx.webhooks import LocatorWebhook, locator_webhook_from_config, locator_webhook_payload
from sdpbx.webhooks._keepalive import KeepAliveTransport
from sdpbx.webhooks._lanes import Lanes, Put
from sdpbx.webhooks.locator import LocatorWebhookStats

pytestmark = pytest.mark.anyio


T0 = 1_700_000_000.25
#: Retries in these tests come quickly; the defaults (0.5 s doubling to 30 s) are for real life.
FAST_RETRY: dict[str, Any] = {"retry_initial": 0.02, "retry_max": 0.1}


def ok(_: Received) -> Reply:
    return Reply(200)


def body_of(request: Received) -> Any:
    return json.loads(request.body)


def aor_of(request: Received) -> str:
    return str(body_of(request)["location"]["aor"])


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    srv = start_server("/locator", protocol="HTTP/1.1")
    srv.respond = ok
    yield srv
    stop_server(srv)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def binding(
    aor: str = "sip:1001@pbx.com",
    *,
    host: str = "192.0.2.10",
    port: int = 5060,
    transport: Any = "UDP",
    expires: float = 3600,
    user_agent: str = "Yealink SIP-T46S",
    contact: str = "<sip:1001@192.0.2.10:5060>",
) -> Binding:
    return Binding(
        aor=aor,
        contact=contact,
        transport=transport,
        host=host,
        port=port,
        expires_at=T0 + expires,
        registered_at=T0,
        call_id="c1",
        cseq=1,
        user_agent=user_agent,
    )


def event(aor: str, n: int = 0, name: Any = "registered") -> LocatorEvent:
    return LocatorEvent(name, T0 + n, binding(aor))


async def until(condition: Callable[[], bool], limit: float = 10) -> None:
    """Bounded wait for a condition another task or thread makes true."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.sleep(0.01)


async def deliver(hook: LocatorWebhook, body: Callable[[], Awaitable[None] | None]) -> None:
    """Run ``hook.serve`` around ``body`` and wait until everything queued went out."""
    async with anyio.create_task_group() as tg:
        await tg.start(hook.serve)
        result = body()
        if result is not None:
            await result
        await hook.drain()
        hook.close()


# -- payloads ---------------------------------------------------------------------------------


async def test_each_event_exact_json(server: WebhookServer, client: httpx.AsyncClient) -> None:
    locator = MemoryLocator()
    # One POST at a time, so the arrival order is the event order across AoRs too.
    hook = LocatorWebhook(
        server.url, headers={"Authorization": "Bearer xyz"}, max_in_flight=1, client=client
    )
    locator.subscribe(hook.notify)
    b1 = binding()
    b2 = binding(
        "sip:1002@pbx.com",
        host="2001:db8::7",
        port=5061,
        transport="WSS",
        expires=60.5,
        user_agent="",
        contact="<sip:x@y;transport=ws>",
    )

    async def scenario() -> None:
        await locator.save(b1)
        await locator.save(b2)
        await locator.remove(b1.aor, b1.contact, now=T0 + 10)
        assert locator.expire(T0 + 61) == [b2]

    await deliver(hook, scenario)
    assert [body_of(r) for r in server.received] == [
        {
            "event": "registered",
            "timestamp": 1_700_000_000,
            "location": {
                "aor": "sip:1001@pbx.com",
                "destination": "192.0.2.10:5060",
                "transport": "UDP",
                "user_agent": "Yealink SIP-T46S",
                "expires": 3600,
            },
        },
        {
            "event": "registered",
            "timestamp": 1_700_000_000,
            "location": {
                "aor": "sip:1002@pbx.com",
                "destination": "[2001:db8::7]:5061",
                "transport": "WSS",
                "user_agent": None,
                "expires": 61,
            },
        },
        {
            "event": "unregistered",
            "timestamp": 1_700_000_010,
            "location": {
                "aor": "sip:1001@pbx.com",
                "destination": "192.0.2.10:5060",
                "transport": "UDP",
                "user_agent": "Yealink SIP-T46S",
                "expires": 0,
            },
        },
        {
            "event": "offline",
            "timestamp": 1_700_000_061,
            "location": {
                "aor": "sip:1002@pbx.com",
                "destination": "[2001:db8::7]:5061",
                "transport": "WSS",
                "user_agent": None,
                "expires": 0,
            },
        },
    ]
    for request in server.received:
        assert request.path == "/locator"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["authorization"] == "Bearer xyz"
    assert hook.stats == LocatorWebhookStats(
        delivered=4, retried=0, failed=0, dropped_full=0, dropped_expired=0,
        dropped_shutdown=0, in_flight=0, queued=0,
    )  # fmt: skip


def test_payload_of_offline_after_connection_close() -> None:
    b = binding(transport="TCP")
    payload = locator_webhook_payload(LocatorEvent("offline", T0 + 5, b))
    assert payload == {
        "event": "offline",
        "timestamp": 1_700_000_005,
        "location": {
            "aor": "sip:1001@pbx.com",
            "destination": "192.0.2.10:5060",
            "transport": "TCP",
            "user_agent": "Yealink SIP-T46S",
            "expires": 0,
        },
    }


async def test_only_configured_events_are_sent(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    locator = MemoryLocator()
    hook = LocatorWebhook(server.url, events=["offline"], client=client)
    locator.subscribe(hook.notify)
    b1, b2 = binding(), binding("sip:1002@pbx.com")

    async def scenario() -> None:
        await locator.save(b1)
        await locator.save(b2)
        await locator.remove(b1.aor, b1.contact)
        locator.expire(T0 + 4000)

    await deliver(hook, scenario)
    assert [(body_of(r)["event"], aor_of(r)) for r in server.received] == [
        ("offline", "sip:1002@pbx.com")
    ]
    assert (hook.stats.delivered, hook.stats.dropped) == (1, 0)


# -- ordering and concurrency ---------------------------------------------------------------


class Tracker:
    """Answers after the test's ``gate`` opens; records how many requests overlapped,
    overall and per AoR, and each AoR's events in arrival order."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.per_aor: dict[str, int] = defaultdict(int)
        self.most_per_aor = 0
        self.events: dict[str, list[tuple[str, int]]] = defaultdict(list)
        self.answer: Callable[[Received], Reply] = ok

    def respond(self, request: Received) -> Reply:
        body = body_of(request)
        aor = body["location"]["aor"]
        with self.lock:
            self.in_flight += 1
            self.per_aor[aor] += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.most_per_aor = max(self.most_per_aor, self.per_aor[aor])
        try:
            if self.gate is not None:
                self.gate.wait(10)
            reply = self.answer(request)
            if reply.status < 300:
                with self.lock:
                    self.events[aor].append((body["event"], body["timestamp"]))
            return reply
        finally:
            with self.lock:
                self.in_flight -= 1
                self.per_aor[aor] -= 1


async def test_slow_receiver_gets_several_posts_at_once_but_one_per_aor(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    """Before: one POST at a time, so a receiver that takes 20 ms capped delivery at 50/s."""
    gate = threading.Event()
    tracker = Tracker(gate)
    server.respond = tracker.respond
    hook = LocatorWebhook(server.url, max_in_flight=4, client=client)
    aors = [f"sip:{n}@x" for n in range(6)]
    async with anyio.create_task_group() as tg:
        await tg.start(hook.serve)
        for n in range(3):
            for aor in aors:
                hook.notify(event(aor, n, "registered" if n % 2 == 0 else "unregistered"))
        # The receiver holds every request until four are in flight together.
        await until(lambda: tracker.in_flight == 4)
        assert hook.stats.in_flight == 4
        gate.set()
        await hook.drain()
        hook.close()
    assert tracker.most_in_flight == 4
    assert tracker.most_per_aor == 1
    expected = [("registered", 1_700_000_000), ("unregistered", 1_700_000_001),
                ("registered", 1_700_000_002)]  # fmt: skip
    assert tracker.events == dict.fromkeys(aors, expected)
    assert (hook.stats.delivered, hook.stats.in_flight, hook.stats.queued) == (18, 0, 0)


async def test_receiver_down_then_up_delivers_everything_in_order(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a failed POST was retried once at once, then the event was lost."""
    port = free_tcp_port()
    hook = LocatorWebhook(
        f"http://127.0.0.1:{port}/locator", max_in_flight=4, client=client, **FAST_RETRY
    )
    aors = [f"sip:{n}@x" for n in range(5)]
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        await tg.start(hook.serve)
        for n in range(4):
            for aor in aors:
                hook.notify(event(aor, n, "registered" if n % 2 == 0 else "offline"))
        await until(lambda: hook.stats.retried >= 10)
        stats = hook.stats
        assert (stats.delivered, stats.failed, stats.dropped) == (0, 0, 0)
        assert stats.in_flight + stats.queued == 20
        assert "ConnectError" in caplog.text and "retrying" in caplog.text

        # HTTP/1.0: stopping it never waits on a keep-alive connection the client holds.
        srv = start_server("/locator", port=port)
        srv.respond = tracker.respond
        try:
            await hook.drain()
        finally:
            stop_server(srv)
        hook.close()
    expected = [("registered", 1_700_000_000), ("offline", 1_700_000_001),
                ("registered", 1_700_000_002), ("offline", 1_700_000_003)]  # fmt: skip
    assert tracker.events == dict.fromkeys(aors, expected)
    assert tracker.most_per_aor == 1
    assert (hook.stats.delivered, hook.stats.dropped, hook.stats.failed) == (20, 0, 0)


async def test_5xx_408_429_and_timeouts_are_retried(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    answers = {"sip:503@x": [503, 500, 200], "sip:408@x": [408, 200],
               "sip:429@x": [429, 200], "sip:slow@x": [None, 200]}  # fmt: skip

    def respond(request: Received) -> Reply:
        status = answers[aor_of(request)].pop(0)
        return Reply(hold=True) if status is None else Reply(status)

    server.respond = respond
    hook = LocatorWebhook(server.url, timeout=0.3, client=client, **FAST_RETRY)

    def scenario() -> None:
        for aor in answers:
            hook.notify(event(aor))

    with anyio.fail_after(20):
        await deliver(hook, scenario)
    assert all(not left for left in answers.values())
    assert (hook.stats.delivered, hook.stats.retried, hook.stats.failed) == (4, 5, 0)


async def test_other_4xx_fails_without_retry(
    server: WebhookServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.respond = lambda r: Reply(404 if aor_of(r) == "sip:gone@x" else 204)
    hook = LocatorWebhook(server.url, client=client, **FAST_RETRY)
    await deliver(
        hook, lambda: [hook.notify(event(a)) for a in ("sip:gone@x", "sip:ok@x")] and None
    )
    assert sorted(aor_of(r) for r in server.received) == ["sip:gone@x", "sip:ok@x"]
    assert (hook.stats.delivered, hook.stats.failed, hook.stats.retried) == (1, 1, 0)
    assert "refused: HTTP 404" in caplog.text


async def test_an_exception_in_one_delivery_does_not_stop_the_others(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(request: httpx.Request) -> None:
        if b"sip:boom@x" in request.content:
            raise RuntimeError("bug in a request hook")

    async with httpx.AsyncClient(event_hooks={"request": [explode]}) as client:
        hook = LocatorWebhook(server.url, max_in_flight=1, client=client)

        def scenario() -> None:
            for aor in ("sip:a@x", "sip:boom@x", "sip:boom@x", "sip:b@x"):
                hook.notify(event(aor))

        await deliver(hook, scenario)
    assert [aor_of(r) for r in server.received] == ["sip:a@x", "sip:b@x"]
    assert (hook.stats.delivered, hook.stats.failed) == (2, 2)
    assert "unexpected RuntimeError: bug in a request hook" in caplog.text


# -- bounds: count and age --------------------------------------------------------------------


async def test_full_queue_drops_and_counts(
    server: WebhookServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    hook = LocatorWebhook(server.url, queue_size=2, client=client)
    # Nobody is delivering yet: notify must still return at once.
    for n in range(5):
        hook.notify(event(f"sip:{n}@x", n))
    assert (hook.stats.dropped_full, hook.stats.queued, hook.pending) == (3, 2, 2)
    # One warning for the burst, not one per event.
    assert caplog.text.count("queue full") == 1
    await deliver(hook, lambda: None)
    assert sorted(aor_of(r) for r in server.received) == ["sip:0@x", "sip:1@x"]
    assert (hook.stats.delivered, hook.stats.dropped_full, hook.stats.dropped) == (2, 3, 3)


async def test_events_older_than_max_age_are_dropped_and_counted(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_tcp_port()
    hook = LocatorWebhook(
        f"http://127.0.0.1:{port}/locator", max_age=0.3, max_in_flight=2, client=client,
        **FAST_RETRY,
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        await tg.start(hook.serve)
        for n in range(6):
            hook.notify(event(f"sip:{n % 3}@x", n))
        # Nobody answers: the two in flight retry until their age is up, the
        # ones waiting behind them are too old by the time their turn comes.
        await hook.drain()
        assert (hook.stats.dropped_expired, hook.stats.delivered) == (6, 0)
        assert "dropped after 0.3 s" in caplog.text

        # The workers are still there for the next event.
        srv = start_server("/locator", port=port)
        srv.respond = ok
        try:
            hook.notify(event("sip:later@x"))
            await hook.drain()
        finally:
            stop_server(srv)
        hook.close()
    assert [aor_of(r) for r in srv.received] == ["sip:later@x"]
    assert (hook.stats.delivered, hook.stats.dropped_expired) == (1, 6)


async def test_notify_after_close_is_dropped(server: WebhookServer) -> None:
    hook = LocatorWebhook(server.url)
    hook.notify(event("sip:queued@x"))
    hook.close()
    hook.notify(event("sip:late@x"))
    assert hook.stats.dropped_shutdown == 2
    assert server.received == []


async def test_own_client_and_cancelled_backlog(server: WebhookServer) -> None:
    server.respond = lambda _: Reply(hold=True)  # every request hangs
    hook = LocatorWebhook(server.url, timeout=30, max_in_flight=2)
    async with anyio.create_task_group() as tg:
        await tg.start(hook.serve)
        for n in range(3):
            hook.notify(event(f"sip:{n}@x"))
        await until(lambda: len(server.received) == 2)
        assert (hook.stats.in_flight, hook.stats.queued) == (2, 1)
        tg.cancel_scope.cancel()
    # Two were in flight, one queued: all three are lost and counted as such.
    stats = hook.stats
    assert (stats.delivered, stats.failed, stats.dropped_shutdown) == (0, 0, 3)
    assert (stats.in_flight, stats.queued, hook.pending) == (0, 0, 0)
    with pytest.raises(RuntimeError, match="only once"):
        await hook.serve()


# -- config ------------------------------------------------------------------------------------


async def test_from_config(server: WebhookServer, client: httpx.AsyncClient) -> None:
    cfg = LocatorWebhookConfig(
        url=server.url, events=("unregistered",), headers={"X-Key": "k"}, timeout_ms=2500,
        max_in_flight=3, queue_size=50, max_age_secs=60, retry_initial_ms=100,
        retry_max_ms=2000,
    )  # fmt: skip
    hook = locator_webhook_from_config(cfg, client=client)
    assert (hook.timeout, hook.events) == (2.5, frozenset({"unregistered"}))
    assert (hook.max_in_flight, hook.queue_size, hook.max_age) == (3, 50, 60)
    assert (hook.retry_initial, hook.retry_max) == (0.1, 2.0)

    def scenario() -> None:
        hook.notify(LocatorEvent("registered", T0, binding()))
        hook.notify(LocatorEvent("unregistered", T0, binding()))

    await deliver(hook, scenario)
    assert [(body_of(r)["event"], r.headers["x-key"]) for r in server.received] == [
        ("unregistered", "k")
    ]


def test_config_defaults() -> None:
    cfg = LocatorWebhookConfig(url="http://127.0.0.1/")
    assert (cfg.max_in_flight, cfg.queue_size, cfg.max_age_secs) == (16, 10_000, 300)
    assert (cfg.retry_initial_ms, cfg.retry_max_ms) == (500, 30_000)


@pytest.mark.parametrize(
    "kwargs",
    [{"queue_size": 0}, {"max_in_flight": 0}, {"max_age": 0}, {"retry_initial": 0}],
)
def test_rejects_bad_bounds(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        LocatorWebhook("http://127.0.0.1/", **kwargs)


# -- the lanes and the keep-alive transport --------------------------------------------------


def test_lanes_keep_order_and_hold_a_key() -> None:
    lanes: Lanes[str, int] = Lanes(limit=3)  # waiting items; held ones are apart
    assert lanes.put("a", 1, 0.0) is Put.READY
    assert lanes.put("a", 2, 0.0) is Put.QUEUED
    assert lanes.put("b", 3, 0.0) is Put.READY
    assert lanes.take("a").item == 1
    with pytest.raises(RuntimeError, match="held"):
        lanes.take("a")
    assert lanes.put("a", 4, 0.0) is Put.QUEUED  # held: not ready again
    assert lanes.put("c", 5, 0.0) is Put.FULL
    assert (lanes.queued, lanes.held) == (3, 1)
    assert lanes.done("a") is True
    assert [lanes.take("a").item, lanes.done("a"), lanes.take("a").item] == [2, True, 4]
    assert lanes.done("a") is False
    assert lanes.clear() == 1  # "b"
    assert lanes.idle


class RawServer:
    """A bare HTTP/1.1 server on a thread: answers 200 to each request and closes a
    connection after ``per_connection`` answers, as a server's idle timeout does."""

    def __init__(self, per_connection: int) -> None:
        self.per_connection = per_connection
        self.accepted = 0
        self.answered = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        # A daemon, so a test that fails before stop() cannot keep pytest from exiting.
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by stop()
            self.accepted += 1
            with conn, conn.makefile("rb") as reader:
                for _ in range(self.per_connection):
                    length = 0
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    if not line:
                        break
                    reader.read(length)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    self.answered += 1

    def stop(self) -> None:
        # close() alone does not wake a thread blocked in accept() on Linux;
        # shutdown() does (accept() fails with EINVAL).
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("per_connection", [1, 2, 10])
async def test_keepalive_transport_reuses_live_connections_only(per_connection: int) -> None:
    server = RawServer(per_connection)
    try:
        async with httpx.AsyncClient(transport=KeepAliveTransport(max_connections=2)) as client:
            url = f"http://127.0.0.1:{server.port}/x"
            for n in range(6):
                response = await client.post(url, json={"n": n})
                assert (response.status_code, response.text) == (200, "ok")
                # Let the server finish closing (if it does) before the next request.
                await until(lambda n=n: server.answered == n + 1)  # type: ignore[misc]
    finally:
        server.stop()
    # A connection the server closed while idle is noticed and replaced, never used.
    assert server.accepted == -(-6 // per_connection)


async def test_keepalive_transport_errors_are_httpx_errors() -> None:
    port = free_tcp_port()
    async with httpx.AsyncClient(transport=KeepAliveTransport(max_connections=1)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{port}/x", json={})
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.post(f"ftp://127.0.0.1:{port}/x", json={})
