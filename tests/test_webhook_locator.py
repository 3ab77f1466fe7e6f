"""LocatorWebhook against a real HTTP server (stdlib, in a thread) on 127.0.0.1,
fed by a real MemoryLocator."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import attrs
import httpx
import pytest

from sdpbx.config import LocatorWebhookConfig
from sdpbx.locator import Binding, LocatorEvent, MemoryLocator
from sdpbx.webhooks import LocatorWebhook, locator_webhook_from_config, locator_webhook_payload

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.25


# -- a recording HTTP server -------------------------------------------------------------------


@attrs.define
class Received:
    path: str
    headers: dict[str, str]
    json: Any


class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.received: list[Received] = []
        # status to answer, or None: hold the request until the test ends
        self.status: Callable[[Received], int | None] = lambda _: 200
        self.release = threading.Event()
        self.arrived = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/locator"


class _Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = Received(
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            json=json.loads(body),
        )
        self.server.received.append(request)
        self.server.arrived.set()
        status = self.server.status(request)
        if status is None:
            self.server.release.wait(30)
            return
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def start_server(port: int = 0) -> Server:
    srv = Server(port)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}).start()
    return srv


def stop_server(srv: Server) -> None:
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = start_server()
    yield srv
    stop_server(srv)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


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


async def deliver(hook: LocatorWebhook, body: Callable[[], Any]) -> None:
    """Run ``hook.serve`` around ``body`` and wait until everything queued went out."""
    async with anyio.create_task_group() as tg:
        await tg.start(hook.serve)
        result = body()
        if result is not None:
            await result
        await hook.drain()
        hook.close()


# -- payloads ---------------------------------------------------------------------------------


async def test_each_event_exact_json(server: Server, client: httpx.AsyncClient) -> None:
    locator = MemoryLocator()
    hook = LocatorWebhook(server.url, headers={"Authorization": "Bearer xyz"}, client=client)
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
    assert [r.json for r in server.received] == [
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
    assert (hook.sent, hook.failed, hook.dropped) == (4, 0, 0)


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


async def test_only_configured_events_are_sent(server: Server, client: httpx.AsyncClient) -> None:
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
    assert [(r.json["event"], r.json["location"]["aor"]) for r in server.received] == [
        ("offline", "sip:1002@pbx.com")
    ]
    assert (hook.sent, hook.dropped) == (1, 0)


# -- back-pressure and failures ------------------------------------------------------------------


async def test_full_queue_drops_and_counts(
    server: Server, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    hook = LocatorWebhook(server.url, queue_size=2, client=client)
    # Nobody is delivering yet: notify must still return at once.
    for n in range(5):
        hook.notify(LocatorEvent("registered", T0 + n, binding(f"sip:{n}@pbx.com")))
    assert (hook.dropped, hook.pending) == (3, 2)
    assert "queue full" in caplog.text
    await deliver(hook, lambda: None)
    assert [r.json["location"]["aor"] for r in server.received] == [
        "sip:0@pbx.com",
        "sip:1@pbx.com",
    ]
    assert (hook.sent, hook.failed, hook.dropped) == (2, 0, 3)


async def test_notify_after_close_is_dropped(server: Server) -> None:
    hook = LocatorWebhook(server.url)
    hook.close()
    hook.notify(LocatorEvent("registered", T0, binding()))
    assert hook.dropped == 1
    assert server.received == []


async def test_server_down_counts_failures_and_keeps_running(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hook = LocatorWebhook(f"http://127.0.0.1:{port}/locator", client=client)
    async with anyio.create_task_group() as tg:
        await tg.start(hook.serve)
        hook.notify(LocatorEvent("registered", T0, binding("sip:a@pbx.com")))
        hook.notify(LocatorEvent("registered", T0, binding("sip:b@pbx.com")))
        await hook.drain()
        assert (hook.sent, hook.failed) == (0, 2)
        assert "ConnectError" in caplog.text

        # The server comes up on that port: the same loop delivers the next event.
        srv = start_server(port)
        try:
            hook.notify(LocatorEvent("offline", T0, binding("sip:c@pbx.com")))
            await hook.drain()
        finally:
            stop_server(srv)
        hook.close()
    assert (hook.sent, hook.failed) == (1, 2)
    assert [r.json["location"]["aor"] for r in srv.received] == ["sip:c@pbx.com"]


async def test_error_status_and_timeout_are_failures_without_endless_retry(
    server: Server, client: httpx.AsyncClient
) -> None:
    def status(request: Received) -> int | None:
        return {"sip:500@x": 500, "sip:404@x": 404, "sip:hang@x": None}.get(
            request.json["location"]["aor"], 204
        )

    server.status = status
    hook = LocatorWebhook(server.url, timeout=0.3, client=client)

    def scenario() -> None:
        for aor in ("sip:500@x", "sip:404@x", "sip:hang@x", "sip:ok@x"):
            hook.notify(LocatorEvent("registered", T0, binding(aor)))

    with anyio.fail_after(10):
        await deliver(hook, scenario)
    assert [r.json["location"]["aor"] for r in server.received] == [
        "sip:500@x",
        "sip:404@x",
        "sip:hang@x",
        "sip:ok@x",
    ]
    assert (hook.sent, hook.failed, hook.dropped) == (1, 3, 0)


async def test_own_client_and_cancelled_backlog(server: Server) -> None:
    server.status = lambda _: None  # every request hangs
    hook = LocatorWebhook(server.url, timeout=30)
    async with anyio.create_task_group() as tg:
        await tg.start(hook.serve)
        for n in range(3):
            hook.notify(LocatorEvent("registered", T0, binding(f"sip:{n}@x")))
        await anyio.to_thread.run_sync(server.arrived.wait, 10)
        assert len(server.received) == 1
        tg.cancel_scope.cancel()
    # One was in flight, two queued: all three are lost and counted as such.
    assert (hook.sent, hook.failed, hook.dropped, hook.pending) == (0, 0, 3, 0)
    with pytest.raises(RuntimeError, match="only once"):
        await hook.serve()


# -- config ------------------------------------------------------------------------------------


async def test_from_config(server: Server, client: httpx.AsyncClient) -> None:
    cfg = LocatorWebhookConfig(
        url=server.url, events=("unregistered",), headers={"X-Key": "k"}, timeout_ms=2500
    )
    hook = locator_webhook_from_config(cfg, client=client)
    assert (hook.timeout, hook.events) == (2.5, frozenset({"unregistered"}))

    def scenario() -> None:
        hook.notify(LocatorEvent("registered", T0, binding()))
        hook.notify(LocatorEvent("unregistered", T0, binding()))

    await deliver(hook, scenario)
    assert [(r.json["event"], r.headers["x-key"]) for r in server.received] == [
        ("unregistered", "k")
    ]


def test_rejects_empty_queue() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        LocatorWebhook("http://127.0.0.1/", queue_size=0)
