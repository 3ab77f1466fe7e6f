"""RouteRequest / RouteDecision (the HTTP router JSON), as_router and FallbackRouter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdpbx.errors import PayloadError, SdpbxError
from sdpbx.routing import (
    FallbackRouter,
    RewriteInfo,
    RouteDecision,
    Router,
    RouteRequest,
    RouterError,
    as_router,
)
from sdpbx.sip.message import Request, parse_message

SDP = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"

INVITE = (
    "INVITE sip:1002@pbx.com SIP/2.0\r\n"
    "v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1\r\n"
    'f: "Alice" <sip:1001@pbx.com>;tag=a1\r\n'
    "To: <sip:1002@pbx.com>\r\n"
    "Call-ID: cid-42@192.0.2.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "x-tenant: acme\r\n"
    "X-Tenant: other\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n"
    "\r\n"
    f"{SDP}"
).encode()


def request(**kw: object) -> RouteRequest:
    fields: dict[str, object] = {
        "call_id": "c1",
        "from_": "sip:1001@pbx.com",
        "to": "sip:1002@pbx.com",
        "source_addr": "192.0.2.1:5060",
        "direction": "internal",
        "method": "INVITE",
        "uri": "sip:1002@pbx.com",
    }
    fields.update(kw)
    return RouteRequest(**fields)  # type: ignore[arg-type]


# -- RouteRequest --------------------------------------------------------------------------------


def test_from_request_builds_the_webhook_json() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    req = RouteRequest.from_request(msg, "192.0.2.1:5060", "internal")
    assert req.to_json() == {
        "call_id": "cid-42@192.0.2.1",
        "from": "sip:1001@pbx.com",
        "to": "sip:1002@pbx.com",
        "source_addr": "192.0.2.1:5060",
        "direction": "internal",
        "method": "INVITE",
        "uri": "sip:1002@pbx.com",
        "headers": {
            "Via": "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1",
            "From": '"Alice" <sip:1001@pbx.com>;tag=a1',
            "To": "<sip:1002@pbx.com>",
            "Call-ID": "cid-42@192.0.2.1",
            "CSeq": "1 INVITE",
            "x-tenant": "acme",  # first value, original casing
            "Max-Forwards": "70",
            "Content-Type": "application/sdp",
            "Content-Length": str(len(SDP)),
        },
        "body": SDP,
    }
    assert req.header("X-TENANT") == "acme"
    assert req.header("Subject") is None


def test_request_json_round_trip() -> None:
    req = request(headers={"X-A": "1"}, body="v=0\r\n")
    data = req.to_json()
    assert data["from"] == "sip:1001@pbx.com" and "from_" not in data
    assert RouteRequest.from_json(data) == req
    with pytest.raises(PayloadError, match="direction"):
        RouteRequest.from_json({**data, "direction": "sideways"})


# -- RouteDecision -------------------------------------------------------------------------------


def test_forward_constructor_and_json_excludes_sdpbx_fields() -> None:
    rewrite = RewriteInfo("sip:a@x", "sip:b@x", "sip:1@x", "sip:2@x")
    decision = RouteDecision.forward(
        "sip:+15551234@gw1.example.net;transport=tcp",
        "sip:+15551234@gw2.example.net",
        timeout=30,
        headers={"X-Route": "intl"},
        target_trunks=("gw1", "gw2"),
        route_name="intl",
        rewrite=rewrite,
        caller="sip:b@x",
    )
    assert decision.trunk == "gw1"
    assert decision.to_json() == {
        "action": "forward",
        "targets": ["sip:+15551234@gw1.example.net;transport=tcp", "sip:+15551234@gw2.example.net"],
        "strategy": "sequential",
        "record": False,
        "timeout": 30,
        "media_proxy": None,
        "headers": {"X-Route": "intl"},
        "status": None,
        "reason": None,
    }
    assert rewrite.to_json() == {
        "callerOriginal": "sip:a@x",
        "callerFinal": "sip:b@x",
        "calleeOriginal": "sip:1@x",
        "calleeFinal": "sip:2@x",
    }


def test_convenience_constructors() -> None:
    assert RouteDecision.reject(486, "Busy").to_json()["status"] == 486
    assert RouteDecision.reject().status == 403
    assert RouteDecision.abort(reason="no credit").final_status == 403
    assert RouteDecision.spam().action == "spam"
    assert RouteDecision.not_handled().action == "not_handled"
    assert RouteDecision(action="reject").final_status == 403


def test_from_json_defaults_nulls_and_unknown_keys() -> None:
    decision = RouteDecision.from_json(
        {
            "action": "forward",
            "targets": ["sip:1002@10.0.0.5:5062"],
            "strategy": "parallel",
            "record": True,
            "timeout": 20,
            "media_proxy": "always",
            "headers": {"X-A": "b"},
            "status": None,
            "future_field": 1,
            "trunk": "sneaky",  # sdpbx-only: not settable from JSON
        }
    )
    assert decision == RouteDecision.forward(
        "sip:1002@10.0.0.5:5062",
        strategy="parallel",
        record=True,
        timeout=20.0,
        media_proxy="always",
        headers={"X-A": "b"},
    )
    assert decision.trunk is None
    rejected = RouteDecision.from_json({"action": "reject", "reason": "nope", "targets": None})
    assert (rejected.status, rejected.reason) == (403, "nope")
    assert RouteDecision.from_json({"action": "abort"}).status == 403
    assert RouteDecision.from_json({"action": "reject", "status": 488}).status == 488


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"action": "redirect"}, "action"),
        ({}, "action"),
        ({"action": "forward"}, "targets"),
        ({"action": "forward", "targets": "sip:a@b"}, "targets"),
        ({"action": "forward", "targets": ["not a uri"]}, "targets[0]"),
        ({"action": "forward", "targets": ["tel:+1555"]}, "targets[0]"),
        ({"action": "forward", "targets": ["sip:a@b"], "strategy": "all"}, "strategy"),
        ({"action": "forward", "targets": ["sip:a@b"], "timeout": "30"}, "timeout"),
        ({"action": "forward", "targets": ["sip:a@b"], "timeout": 0}, "timeout"),
        ({"action": "forward", "targets": ["sip:a@b"], "media_proxy": "all"}, "media_proxy"),
        ({"action": "forward", "targets": ["sip:a@b"], "record": "yes"}, "record"),
        ({"action": "forward", "targets": ["sip:a@b"], "headers": {"X-A": "1\r\nX-B: 2"}}, "X-A"),
        ({"action": "forward", "targets": ["sip:a@b"], "headers": {"Bad Name": "1"}}, "headers"),
        ({"action": "reject", "status": 200}, "status"),
        ({"action": "reject", "status": "486"}, "status"),
        ({"action": "reject", "reason": "a\nb"}, "reason"),
        (["forward"], "<root>"),
    ],
)
def test_from_json_rejects_bad_replies_naming_the_field(data: object, path: str) -> None:
    with pytest.raises(PayloadError) as info:
        RouteDecision.from_json(data)
    assert any(path in p for p, _ in info.value.errors), info.value.errors


def test_name_addr_target_is_accepted() -> None:
    # Stored as the bare URI, so that every dialler can parse it.
    assert RouteDecision.forward("<sip:1002@10.0.0.5>").targets == ("sip:1002@10.0.0.5",)


def test_python_construction_is_checked_too() -> None:
    with pytest.raises(PayloadError, match="target_trunks"):
        RouteDecision.forward("sip:a@b", "sip:c@d", target_trunks=("gw1",))
    with pytest.raises(PayloadError, match="action"):
        RouteDecision(action="forwrd", targets=("sip:a@b",))  # type: ignore[arg-type]
    assert issubclass(PayloadError, SdpbxError)


# -- routers -------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, answer: RouteDecision | Exception) -> None:
        self.answer = answer
        self.seen: list[RouteRequest] = []

    async def route(self, req: RouteRequest) -> RouteDecision:
        self.seen.append(req)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.anyio
async def test_as_router_wraps_functions_and_passes_routers() -> None:
    async def route(req: RouteRequest) -> RouteDecision:
        return RouteDecision.forward(f"sip:{req.to.split(':')[1]}")

    router = as_router(route)
    assert isinstance(router, Router)
    decision = await router.route(request())
    assert decision.targets == ("sip:1002@pbx.com",)
    rec = Recorder(RouteDecision.spam())
    assert as_router(rec) is rec
    with pytest.raises(TypeError):
        as_router(42)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_fallback_router() -> None:
    static = Recorder(RouteDecision.reject(404))
    forward = RouteDecision.forward("sip:a@b")

    # a decision from the primary is final
    primary = Recorder(forward)
    assert await FallbackRouter(primary, static).route(request()) is forward
    assert static.seen == []

    # not_handled goes to the fallback, whatever fallback_on_error says
    for on_error in (True, False):
        router = FallbackRouter(
            Recorder(RouteDecision.not_handled()), static, fallback_on_error=on_error
        )
        assert (await router.route(request())).status == 404

    # an error falls back only when allowed
    failing = Recorder(RouterError("down"))
    assert (await FallbackRouter(failing, static).route(request())).status == 404
    with pytest.raises(RouterError, match="down"):
        await FallbackRouter(failing, static, fallback_on_error=False).route(request())

    # other exceptions are bugs, never swallowed
    with pytest.raises(ZeroDivisionError):
        await FallbackRouter(Recorder(ZeroDivisionError()), static).route(request())

    # chains nest, and the fallback may be a plain function
    async def last(req: RouteRequest) -> RouteDecision:
        return forward

    chain = FallbackRouter(Recorder(RouteDecision.not_handled()), FallbackRouter(failing, last))
    assert await chain.route(request()) is forward


GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "routing.rst"
GUIDE_TEXT = GUIDE.read_text()


@pytest.mark.anyio
async def test_the_guide_example_runs() -> None:
    guide = GUIDE
    block = GUIDE_TEXT.split(".. code-block:: python\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    code = "\n".join(lines)
    assert len([line for line in lines if line.strip()]) < 15
    namespace: dict[str, Any] = {}
    exec(compile(code, str(guide), "exec"), namespace)
    route = as_router(namespace["route"])
    assert (await route.route(request(from_="sip:spammer@example.net"))).action == "spam"
    premium = request(to="sip:09001234@pbx.com", uri="sip:09001234@pbx.com")
    assert (await route.route(premium)).status == 403
    acme = await route.route(request(headers={"x-tenant": "acme"}))
    assert (acme.targets, acme.timeout) == (("sip:reception@10.0.0.20",), 20)
    assert (await route.route(request())).action == "not_handled"
