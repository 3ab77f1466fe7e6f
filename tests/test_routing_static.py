"""StaticRouter ([[proxy.routes]] + trunks + locator), trunks, direction and limits."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest

from sdpbx.config import RejectConfig, RouteConfig, TrunkConfig, parse_config
from sdpbx.errors import ConfigError
from sdpbx.locator import Binding, MemoryLocator
from sdpbx.routing import (
    RewriteInfo,
    RouteDecision,
    RouteRequest,
    StaticRouter,
    Trunk,
    TrunkLimiter,
    TrunkSelector,
    detect_direction,
    direction_after_route,
    is_regex,
    trunks_from_config,
)

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0

TRUNKS = {
    "gw1": TrunkConfig(dest="sip:gw1.example.net:5080", transport="tcp"),
    "gw2": TrunkConfig(dest="198.51.100.20:5060", inbound_hosts=("198.51.100.0/24",)),
    "gw3": TrunkConfig(dest="sips:gw3.example.net"),
}


def req(
    to_user: str = "1002",
    *,
    from_: str = "sip:1001@pbx.com",
    host: str = "pbx.com",
    headers: dict[str, str] | None = None,
) -> RouteRequest:
    return RouteRequest(
        call_id="c1",
        from_=from_,
        to=f"sip:{to_user}@{host}",
        source_addr="192.0.2.1:5060",
        direction="internal",
        method="INVITE",
        uri=f"sip:{to_user}@{host}",
        headers=headers or {},
    )


def router(*routes: RouteConfig, **kw: object) -> StaticRouter:
    return StaticRouter(routes, TRUNKS, **kw)  # type: ignore[arg-type]


# -- matching --------------------------------------------------------------------------------


async def test_priority_order_disabled_and_config_order_on_ties() -> None:
    r = router(
        RouteConfig(name="low", priority=1, match={"to.user": "^9"}, dest=("gw1",)),
        RouteConfig(name="off", priority=100, disabled=True, dest=("gw3",)),
        RouteConfig(name="high", priority=10, match={"to.user": "^9"}, dest=("gw2",)),
        RouteConfig(name="high-too", priority=10, match={"to.user": "^9"}, dest=("gw3",)),
    )
    decision = await r.route(req("9123"))
    assert decision.route_name == "high"
    assert decision.targets == ("sip:9123@198.51.100.20:5060",)
    assert decision.target_trunks == ("gw2",)
    assert decision.trunk == "gw2"
    assert decision.strategy == "sequential"


async def test_exact_versus_regex_and_host_case() -> None:
    r = router(
        RouteConfig(name="exact", match={"to.user": "100"}, dest=("gw1",)),
        RouteConfig(
            name="regex", match={"to.user": "^1\\d\\d$", "to.host": "PBX\\.com$"}, dest=("gw2",)
        ),
        RouteConfig(name="host", match={"from.host": "Other.ORG"}, dest=("gw3",)),
    )
    assert (await r.route(req("100"))).route_name == "exact"
    assert (await r.route(req("101"))).route_name == "regex"
    # "100" is exact: "1000" does not match it, nor the 3-digit regex
    assert (await r.route(req("1000", host="elsewhere.net"))).status == 404
    # host comparisons ignore case; users do not
    assert (await r.route(req("x", from_="sip:a@other.org", host="x.net"))).route_name == "host"


async def test_search_semantics_unanchored_regex() -> None:
    r = router(RouteConfig(name="r", match={"to.user": "55.1"}, dest=("gw1",)))
    assert (await r.route(req("+1555-1234", host="x.net"))).route_name == "r"
    assert (await r.route(req("5512", host="x.net"))).status == 404


async def test_all_match_entries_must_hold_and_headers_match_case_insensitively() -> None:
    r = router(
        RouteConfig(
            name="acme",
            match={"header.X-Tenant": "acme", "request_uri.user": "^00"},
            dest=("gw1",),
        ),
        RouteConfig(name="vip", match={"header.X-Priority": "^(urgent|high)$"}, dest=("gw2",)),
    )
    assert (await r.route(req("0044", headers={"x-tenant": "acme"}))).route_name == "acme"
    other = await r.route(req("0044", headers={"X-Tenant": "other"}))
    assert (other.route_name, other.status) == (None, 404)
    no_header = await r.route(req("0044", host="x.net"))
    assert (no_header.action, no_header.status) == ("reject", 404)
    vip = await r.route(req("1", host="x.net", headers={"X-Priority": "high"}))
    assert vip.route_name == "vip"


async def test_catch_all_route_with_empty_match() -> None:
    r = router(RouteConfig(name="default", priority=-1, dest=("gw1",)))
    decision = await r.route(req("whatever", host="anywhere.net"))
    assert decision.targets == ("sip:whatever@gw1.example.net:5080;transport=tcp",)


# -- rewrite ---------------------------------------------------------------------------------


async def test_rewrite_with_captures_headers_and_caller() -> None:
    r = router(
        RouteConfig(
            name="intl",
            match={"to.user": "^00(\\d+)$", "from.user": "^(\\d{4})$"},
            rewrite={
                "to.user": "+{1}",
                "from.user": "+1555{1}",
                "header.X-Orig": "{0}-{2}",  # header not matched: {0} is its value, {2} empty
                "header.X-Route": "intl",
            },
            dest=("gw1",),
        )
    )
    decision = await r.route(req("0044207", headers={"X-Orig": "abc"}))
    assert decision.targets == ("sip:+44207@gw1.example.net:5080;transport=tcp",)
    assert decision.caller == "sip:+15551001@pbx.com"
    assert decision.headers == {"X-Orig": "abc-", "X-Route": "intl"}
    assert decision.rewrite == RewriteInfo(
        caller_original="sip:1001@pbx.com",
        caller_final="sip:+15551001@pbx.com",
        callee_original="sip:0044207@pbx.com",
        callee_final="sip:+44207@pbx.com",
    )


async def test_request_uri_rewrite_wins_and_no_rewrite_leaves_info_empty() -> None:
    r = router(
        RouteConfig(
            name="both",
            match={"to.user": "^(\\d+)$", "request_uri.user": "^(\\d)"},
            rewrite={"to.user": "to-{1}", "request_uri.user": "ruri-{1}", "from.host": "x.org"},
            dest=("gw2",),
        ),
    )
    decision = await r.route(req("42"))
    assert decision.targets == ("sip:ruri-4@198.51.100.20:5060",)
    # placeholders refer to the same field's match: a field without one has only {0}
    unmatched = RouteConfig(
        match={"to.user": "^(\\d+)$"}, rewrite={"request_uri.user": "n{1}{0}"}, dest=("gw2",)
    )
    other = await router(unmatched).route(req("42"))
    assert other.targets == ("sip:n42@198.51.100.20:5060",)
    assert decision.caller == "sip:1001@x.org"
    plain = await router(RouteConfig(match={"to.user": "42"}, dest=("gw2",))).route(req("42"))
    assert (plain.rewrite, plain.caller, plain.headers) == (None, None, {})
    assert plain.targets == ("sip:42@198.51.100.20:5060",)


# -- actions -----------------------------------------------------------------------------------


async def test_reject_and_busy_actions() -> None:
    r = router(
        RouteConfig(
            name="premium",
            match={"to.user": "^900"},
            action="reject",
            reject=RejectConfig(code=603, reason="Premium numbers barred"),
        ),
        RouteConfig(name="plain-reject", match={"to.user": "^666"}, action="reject"),
        RouteConfig(name="busy", match={"to.user": "^486"}, action="busy"),
    )
    premium = await r.route(req("9001"))
    assert (premium.action, premium.status, premium.reason) == (
        "reject",
        603,
        "Premium numbers barred",
    )
    assert premium.route_name == "premium"
    assert (await r.route(req("666"))).status == 403
    busy = await r.route(req("4861"))
    assert (busy.action, busy.status, busy.reason) == ("reject", 486, "Busy Here")


# -- trunk selection -----------------------------------------------------------------------------


def multi(select: str) -> RouteConfig:
    return RouteConfig(name=f"m-{select}", dest=("gw1", "gw2", "gw3"), select=select)  # type: ignore[arg-type]


async def test_rr_rotates_and_lists_failover_candidates() -> None:
    r = router(multi("rr"))
    firsts = []
    for _ in range(4):
        decision = await r.route(req("5"))
        firsts.append(decision.target_trunks)
        assert len(decision.targets) == 3
        assert decision.strategy == "sequential"
    assert firsts == [
        ("gw1", "gw2", "gw3"),
        ("gw2", "gw3", "gw1"),
        ("gw3", "gw1", "gw2"),
        ("gw1", "gw2", "gw3"),
    ]
    last = await r.route(req("5"))
    assert last.targets == (
        "sip:5@198.51.100.20:5060",
        "sips:5@gw3.example.net",
        "sip:5@gw1.example.net:5080;transport=tcp",
    )


async def test_hash_is_stable_per_caller_and_spreads_callers() -> None:
    r = router(multi("hash"))
    seen = set()
    for n in range(40):
        caller = f"sip:{2000 + n}@pbx.com"
        first = (await r.route(req("5", from_=caller))).target_trunks
        again = (await r.route(req("5", from_=caller))).target_trunks
        assert first == again
        assert sorted(first) == ["gw1", "gw2", "gw3"]
        seen.add(first[0])
    assert seen == {"gw1", "gw2", "gw3"}


async def test_random_is_a_permutation_and_reproducible_with_a_seed() -> None:
    r1 = router(multi("random"), selector=TrunkSelector(random.Random(7)))
    r2 = router(multi("random"), selector=TrunkSelector(random.Random(7)))
    got1 = [(await r1.route(req("5"))).target_trunks for _ in range(30)]
    got2 = [(await r2.route(req("5"))).target_trunks for _ in range(30)]
    assert got1 == got2
    assert all(sorted(order) == ["gw1", "gw2", "gw3"] for order in got1)
    assert len({order[0] for order in got1}) == 3


def test_weighted_prefers_heavy_trunks_and_puts_zero_weight_last() -> None:
    selector = TrunkSelector(random.Random(3))
    firsts = Counter(
        selector.order("k", ["heavy", "light", "off"], "weighted", weights=[9, 1, 0])[0]
        for _ in range(2000)
    )
    assert firsts["off"] == 0
    assert firsts["heavy"] > 4 * firsts["light"] > 0
    order = selector.order("k", ["heavy", "light", "off"], "weighted", weights=[9, 1, 0])
    assert order[-1] == "off"
    # without weights every trunk is equally likely to come first
    even = Counter(selector.order("k", ["a", "b"], "weighted")[0] for _ in range(2000))
    assert even["a"] > 700 and even["b"] > 700


async def test_weighted_route_uses_trunk_weights() -> None:
    trunks = {
        "big": Trunk(name="big", scheme="sip", host="big.example.net", weight=1000),
        "small": Trunk(name="small", scheme="sip", host="small.example.net", weight=0.001),
    }
    r = StaticRouter(
        [RouteConfig(dest=("small", "big"), select="weighted")],
        trunks,
        selector=TrunkSelector(random.Random(5)),
    )
    firsts = Counter([(await r.route(req("1"))).trunk for _ in range(50)])
    assert firsts["big"] >= 45


def test_unknown_trunk_in_python_built_routes_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"proxy.routes\[0\].dest: unknown trunk 'nope'"):
        StaticRouter([RouteConfig(dest=("nope",))], TRUNKS)


# -- no route: locator ---------------------------------------------------------------------------


def binding(
    contact: str, *, aor: str = "1002@pbx.com", expires: float = 60, q: float = 1.0
) -> Binding:
    return Binding(
        aor=aor,
        contact=contact,
        transport="UDP",
        host="203.0.113.9",
        port=40000,
        expires_at=T0 + expires,
        registered_at=T0,
        call_id="reg-1",
        cseq=1,
        q=q,
    )


async def test_local_callee_rings_every_registered_device() -> None:
    locator = MemoryLocator()
    desk = binding('<sip:1002@10.0.0.5:5062;transport=tcp>;+sip.instance="<urn:x>"', q=0.5)
    mobile = binding("sip:1002@10.0.0.6:5060", q=1.0)
    stale = binding("<sip:1002@10.0.0.7>", expires=5)
    for b in (desk, mobile, stale):
        locator.put(b)
    r = router(locator=locator, local_realms=["PBX.com"], clock=lambda: T0 + 10)
    decision = await r.route(req("1002"))
    assert decision.action == "forward"
    assert decision.strategy == "parallel"
    assert decision.targets == ("sip:1002@10.0.0.6:5060", "sip:1002@10.0.0.5:5062;transport=tcp")
    assert decision.target_bindings == (mobile, desk)
    assert decision.target_trunks == ()
    # the same AoR whatever the case of the host
    assert (await r.route(req("1002", host="PBX.COM"))).targets == decision.targets


async def test_local_callee_not_registered_is_480_and_foreign_is_404() -> None:
    r = router(locator=MemoryLocator(), local_realms=["pbx.com"], clock=lambda: T0)
    offline = await r.route(req("1003"))
    assert (offline.action, offline.status, offline.reason) == (
        "reject",
        480,
        "Temporarily Unavailable",
    )
    foreign = await r.route(req("1003", host="elsewhere.net"))
    assert (foreign.status, foreign.reason) == (404, "Not Found")
    # no realms configured: every domain is ours
    anywhere = router(locator=MemoryLocator(), clock=lambda: T0)
    assert (await anywhere.route(req("1003", host="elsewhere.net"))).status == 480
    # no locator: nobody can be found
    assert (await router(local_realms=["pbx.com"]).route(req("1003"))).status == 404


async def test_routes_come_before_the_locator() -> None:
    locator = MemoryLocator()
    locator.put(binding("sip:1002@10.0.0.6"))
    r = router(
        RouteConfig(name="divert", match={"to.user": "1002"}, dest=("gw1",)),
        locator=locator,
        clock=lambda: T0,
    )
    assert (await r.route(req("1002"))).route_name == "divert"
    assert (await r.route(req("1003"))).status == 480


async def test_reload_swaps_the_table() -> None:
    r = router(RouteConfig(name="a", dest=("gw1",)))
    assert (await r.route(req("1"))).trunk == "gw1"
    r.reload([RouteConfig(name="b", dest=("x",))], {"x": TrunkConfig(dest="x.example.net")})
    assert (await r.route(req("1"))).targets == ("sip:1@x.example.net",)
    with pytest.raises(ConfigError):
        r.reload([RouteConfig(dest=("gone",))], {})
    assert (await r.route(req("1"))).route_name == "b"  # the old table stays


async def test_from_a_config_file() -> None:
    cfg = parse_config(
        """
        [proxy]
        realms = ["pbx.com"]
        [proxy.trunks.carrier]
        dest = "sip:carrier.example.net:5060"
        transport = "udp"
        inbound_hosts = ["203.0.113.0/24"]
        [[proxy.routes]]
        name = "e164"
        match = { "to.user" = "^0(\\\\d+)$" }
        rewrite = { "to.user" = "+49{1}" }
        dest = "carrier"
        """
    )
    r = StaticRouter(cfg.proxy.routes, cfg.proxy.trunks, local_realms=cfg.proxy.realms)
    decision = await r.route(req("0301234"))
    assert decision.targets == ("sip:+49301234@carrier.example.net:5060;transport=udp",)
    assert decision.to_json()["targets"] == list(decision.targets)
    assert isinstance(decision, RouteDecision)


def test_router_and_config_check_share_one_regex_rule() -> None:
    from sdpbx import _config_checks

    assert is_regex is _config_checks.is_regex
    assert is_regex("^1") and is_regex("a.b") and not is_regex("1001")
    assert is_regex("+1555")  # E.164 numbers must be written as a regex: "^\\+1555$"


# -- trunks ------------------------------------------------------------------------------------


def test_trunk_from_config_and_target_uri() -> None:
    trunks = trunks_from_config(
        {
            "a": TrunkConfig(dest="sip:gw.example.net;transport=TCP"),
            "b": TrunkConfig(
                dest="[2001:db8::1]:5070", transport="tls", username="u", password="p"
            ),
            "c": TrunkConfig(dest="gw.example.net", inbound_hosts=("*",)),
        }
    )
    assert trunks["a"].target_uri("123") == "sip:123@gw.example.net;transport=tcp"
    assert trunks["b"].target_uri("123") == "sip:123@[2001:db8::1]:5070;transport=tls"
    assert trunks["b"].username == "u"
    assert trunks["c"].target_uri(None) == "sip:gw.example.net"
    assert trunks["c"].networks is None
    assert trunks["c"].accepts_from(ipaddress.ip_address("192.0.2.1"))


def test_detect_direction() -> None:
    trunks = trunks_from_config(
        {
            "a": TrunkConfig(dest="gw-a.example.net", inbound_hosts=("198.51.100.7",)),
            "b": TrunkConfig(
                dest="gw-b.example.net", inbound_hosts=("203.0.113.0/24", "2001:db8::/32")
            ),
        }
    )
    assert detect_direction("198.51.100.7", trunks, False) == ("inbound", "a")
    assert detect_direction("203.0.113.99", trunks, True) == ("inbound", "b")
    assert detect_direction("[2001:db8::5]", trunks, False) == ("inbound", "b")
    assert detect_direction("::ffff:203.0.113.1", trunks.values(), False) == ("inbound", "b")
    assert detect_direction("192.0.2.1", trunks, True) == ("internal", None)
    assert detect_direction("192.0.2.1", trunks, True, callee_is_local=False) == ("outbound", None)
    assert detect_direction("192.0.2.1", trunks, False) == ("inbound", None)
    assert detect_direction("not-an-ip", trunks, True) == ("internal", None)

    via_trunk = RouteDecision.forward("sip:1@gw-a.example.net", target_trunks=("a",))
    local = RouteDecision.forward("sip:1@10.0.0.1")
    assert direction_after_route("internal", via_trunk) == "outbound"
    assert direction_after_route("internal", local) == "internal"
    assert direction_after_route("inbound", via_trunk) == "inbound"


def test_limiter_max_calls() -> None:
    limiter = TrunkLimiter({"a": TrunkConfig(dest="a.net", max_calls=2)})
    assert limiter.try_acquire("a", T0)
    assert limiter.try_acquire("a", T0)
    assert not limiter.try_acquire("a", T0)
    assert limiter.active("a") == 2
    limiter.release("a")
    assert limiter.try_acquire("a", T0)
    for _ in range(5):
        limiter.release("a")  # extra releases never go below zero
    assert limiter.active("a") == 0
    # unknown trunks are unlimited
    assert all(limiter.try_acquire("other", T0) for _ in range(100))


def test_limiter_calls_per_second_sliding_window() -> None:
    limiter = TrunkLimiter({"a": TrunkConfig(dest="a.net", max_cps=3)})
    assert [limiter.try_acquire("a", T0 + t) for t in (0.0, 0.2, 0.4, 0.6)] == [
        True,
        True,
        True,
        False,
    ]
    assert not limiter.try_acquire("a", T0 + 0.99)
    assert limiter.try_acquire("a", T0 + 1.0)  # the call at T0 left the window
    assert limiter.try_acquire("a", T0 + 1.2)
    assert not limiter.try_acquire("a", T0 + 1.3)
    # a refused attempt does not count as a call
    assert limiter.active("a") == 5


def test_limiter_fractional_rate_and_reload() -> None:
    limiter = TrunkLimiter({"a": TrunkConfig(dest="a.net", max_cps=0.5)})
    assert limiter.try_acquire("a", T0)
    assert not limiter.try_acquire("a", T0 + 1.9)
    assert limiter.try_acquire("a", T0 + 2.0)
    limiter.update({"a": TrunkConfig(dest="a.net", max_calls=2)})
    assert limiter.active("a") == 2
    assert not limiter.try_acquire("a", T0 + 2.0)
