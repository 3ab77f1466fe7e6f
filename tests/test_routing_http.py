"""HttpRouter against a real HTTP server (stdlib, in a thread) on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from helpers.webhook_server import Received, Reply, WebhookServer, running_server

from sdpbx.config import HttpRouterConfig, RouteConfig, TrunkConfig
from sdpbx.routing import FallbackRouter, RouteDecision, RouteRequest, RouterError, StaticRouter
from sdpbx.webhooks.http_router import HttpRouter, http_router_from_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    # HTTP/1.1: the router reuses its connection, as it would with a real service.
    with running_server("/route", protocol="HTTP/1.1") as srv:
        yield srv


@pytest.fixture
async def client() -> Any:
    async with httpx.AsyncClient() as c:
        yield c


def answer(status: int = 200, body: Any = None, **kw: Any) -> Callable[[Received], Reply]:
    return lambda _: Reply(status, body, **kw)


REQUEST = RouteRequest(
    call_id="cid-1",
    from_="sip:1001@pbx.com",
    to="sip:+4930123@pbx.com",
    source_addr="192.0.2.10:5060",
    direction="outbound",
    method="INVITE",
    uri="sip:+4930123@pbx.com",
    headers={"X-Tenant": "acme", "Via": "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1"},
    body="v=0\r\n",
)


async def test_request_shape_and_headers(server: WebhookServer, client: httpx.AsyncClient) -> None:
    server.respond = answer(200, {"action": "forward", "targets": ["sip:+4930123@gw.example.net"]})
    router = HttpRouter(server.url, headers={"Authorization": "Bearer s3cret"}, client=client)
    decision = await router.route(REQUEST)
    assert decision == RouteDecision.forward("sip:+4930123@gw.example.net")
    (got,) = server.received
    assert (got.method, got.path) == ("POST", "/route")
    assert got.headers["content-type"] == "application/json"
    assert got.headers["authorization"] == "Bearer s3cret"
    assert json.loads(got.body) == {
        "call_id": "cid-1",
        "from": "sip:1001@pbx.com",
        "to": "sip:+4930123@pbx.com",
        "source_addr": "192.0.2.10:5060",
        "direction": "outbound",
        "method": "INVITE",
        "uri": "sip:+4930123@pbx.com",
        "headers": {"X-Tenant": "acme", "Via": "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1"},
        "body": "v=0\r\n",
    }


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            {
                "action": "forward",
                "targets": ["sip:1002@10.0.0.5", "sip:1002@10.0.0.6"],
                "strategy": "parallel",
                "record": True,
                "timeout": 25,
                "media_proxy": "none",
                "headers": {"X-Account": "42"},
            },
            RouteDecision.forward(
                "sip:1002@10.0.0.5",
                "sip:1002@10.0.0.6",
                strategy="parallel",
                record=True,
                timeout=25,
                media_proxy="none",
                headers={"X-Account": "42"},
            ),
        ),
        ({"action": "reject", "status": 486, "reason": "Busy"}, RouteDecision.reject(486, "Busy")),
        ({"action": "reject"}, RouteDecision.reject(403)),
        ({"action": "abort", "reason": "No credit"}, RouteDecision.abort(403, "No credit")),
        ({"action": "spam"}, RouteDecision.spam()),
        ({"action": "not_handled"}, RouteDecision.not_handled()),
    ],
)
async def test_each_action(
    server: WebhookServer, client: httpx.AsyncClient, reply: Any, expected: RouteDecision
) -> None:
    server.respond = answer(200, reply)
    assert await HttpRouter(server.url, client=client).route(REQUEST) == expected


async def test_any_2xx_is_an_answer(server: WebhookServer, client: httpx.AsyncClient) -> None:
    server.respond = answer(201, {"action": "spam"})
    assert (await HttpRouter(server.url, client=client).route(REQUEST)).action == "spam"


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (Reply(500, {"action": "forward"}), "HTTP 500"),
        (Reply(404, b"not here"), "HTTP 404"),
        (Reply(200, b"<html>oops</html>"), "not JSON"),
        (Reply(200, {"action": "transfer"}), "action: expected one of"),
        (Reply(200, {"action": "forward", "targets": [42]}), "targets[0]"),
        (Reply(200, {"action": "forward"}), "targets: required"),
        (Reply(200, [1, 2]), "expected an object"),
    ],
)
async def test_failures_are_router_errors(
    server: WebhookServer, client: httpx.AsyncClient, reply: Reply, problem: str
) -> None:
    server.respond = lambda _: reply
    with pytest.raises(RouterError) as info:
        await HttpRouter(server.url, client=client).route(REQUEST)
    assert problem in str(info.value)
    assert server.url in str(info.value) and "cid-1" in str(info.value)


async def test_timeout_when_no_answer(server: WebhookServer, client: httpx.AsyncClient) -> None:
    server.respond = answer(hold=True)
    with pytest.raises(RouterError, match=r"no answer within 0.2 s"):
        await HttpRouter(server.url, timeout=0.2, client=client).route(REQUEST)


async def test_timeout_when_the_body_trickles(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    # httpx's read timeout restarts with each byte; the overall deadline must still hold.
    server.respond = answer(200, b"", trickle=True)
    with pytest.raises(RouterError, match="no answer within"):
        await HttpRouter(server.url, timeout=0.3, client=client).route(REQUEST)


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with HttpRouter(f"http://127.0.0.1:{port}/route", timeout=2) as router:
            with pytest.raises(RouterError, match="ConnectError"):
                await router.route(REQUEST)


async def test_own_client_is_opened_and_closed(server: WebhookServer) -> None:
    server.respond = answer(200, {"action": "spam"})
    async with HttpRouter(server.url) as router:
        assert (await router.route(REQUEST)).action == "spam"
        assert (await router.route(REQUEST)).action == "spam"
    assert len(server.received) == 2


# -- http_router_from_config ----------------------------------------------------------------------

STATIC_ROUTES = [RouteConfig(name="static", dest=("gw",))]
STATIC_TRUNKS = {"gw": TrunkConfig(dest="gw.example.net")}
STATIC_TARGET = "sip:+4930123@gw.example.net"


def config(server: WebhookServer, fallback: bool) -> HttpRouterConfig:
    return HttpRouterConfig(
        url=server.url,
        fallback_to_static=fallback,
        timeout_ms=300,
        headers={"X-Api-Key": "k"},
    )


async def test_from_config_without_static_routes(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    server.respond = answer(200, {"action": "not_handled"})
    router = http_router_from_config(config(server, True), None, client=client)
    assert isinstance(router, HttpRouter)
    assert router.timeout == 0.3
    assert (await router.route(REQUEST)).action == "not_handled"
    assert server.received[0].headers["x-api-key"] == "k"


@pytest.mark.parametrize("fallback", [True, False])
async def test_from_config_not_handled_goes_to_static_routes(
    server: WebhookServer, client: httpx.AsyncClient, fallback: bool
) -> None:
    server.respond = answer(200, {"action": "not_handled"})
    static = StaticRouter(STATIC_ROUTES, STATIC_TRUNKS)
    router = http_router_from_config(config(server, fallback), static, client=client)
    assert isinstance(router, FallbackRouter)
    decision = await router.route(REQUEST)
    assert (decision.targets, decision.route_name) == ((STATIC_TARGET,), "static")


@pytest.mark.parametrize(
    "reply",
    [Reply(500), Reply(200, b"{not json"), Reply(200, {"action": "bogus"}), Reply(hold=True)],
)
async def test_from_config_errors_fall_back_only_when_configured(
    server: WebhookServer, client: httpx.AsyncClient, reply: Reply
) -> None:
    server.respond = lambda _: reply
    static = StaticRouter(STATIC_ROUTES, STATIC_TRUNKS)
    falls_back = http_router_from_config(config(server, True), static, client=client)
    assert (await falls_back.route(REQUEST)).targets == (STATIC_TARGET,)
    strict = http_router_from_config(config(server, False), static, client=client)
    with pytest.raises(RouterError):
        await strict.route(REQUEST)


async def test_from_config_decisions_are_final(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    server.respond = answer(200, {"action": "reject", "status": 404, "reason": "No such DID"})
    static = StaticRouter(STATIC_ROUTES, STATIC_TRUNKS)
    router = http_router_from_config(config(server, True), static, client=client)
    decision = await router.route(REQUEST)
    assert (decision.action, decision.status, decision.reason) == ("reject", 404, "No such DID")
