"""Routing by the config file's ``[[proxy.routes]]`` table, then by registrations.

Routes are tried from the highest ``priority`` down (config order breaks
ties); disabled ones are skipped; the first whose every ``match`` entry holds
decides. A match value containing a regex character (``^$.*+?()[]{}|\\``) is
a regular expression, *searched* in the field (``"^1"`` anchors, ``"1"`` alone
is an exact match because it has no regex character); any other value must
equal the field. Hosts compare case-insensitively, users and headers exactly.
Users are compared as written in the URI (``%``-escapes not undone).

``rewrite`` values may use ``{0}`` (the whole match of that same field), ``{1}``,
``{2}``... (its capture groups); a group that did not take part is empty.
Rewriting ``to.user`` or ``request_uri.user`` changes the number dialled on the
trunk (``request_uri`` wins when both are set); ``from.*`` changes the caller
(:attr:`RouteDecision.caller`); ``header.X-Foo`` adds that header to the INVITE
sent out.

When no route matches, a callee in one of our realms is looked up in the
locator and every registered device rings at once; nobody registered is 480,
and a callee elsewhere is 404. This is the route most PBX calls take, so it
costs one dict lookup in the memory locator.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence

from attrs import evolve, frozen

from .._config_checks import is_regex
from ..config import RouteConfig, TrunkConfig
from ..errors import ConfigError
from ..locator import Binding, Locator
from ..sip.errors import SipParseError
from ..sip.fields import NameAddr
from ..sip.uri import SipUri, TelUri, Uri, unescape
from .base import RewriteInfo, RouteDecision, RouteRequest
from .trunks import Trunk, TrunkSelector

__all__ = ["StaticRouter", "is_regex"]

_PLACEHOLDER = re.compile(r"\{(\d+)\}")
_URI_FIELDS = ("from", "to", "request_uri")


@frozen
class _Matcher:
    key: str
    exact: str | None
    pattern: re.Pattern[str] | None

    @classmethod
    def build(cls, key: str, value: str) -> _Matcher:
        host = key.endswith(".host")
        if is_regex(value):
            return cls(key, None, re.compile(value, re.IGNORECASE if host else 0))
        return cls(key, value.lower() if host else value, None)

    def groups(self, value: str | None) -> list[str] | None:
        """``[whole, group1, ...]`` when ``value`` matches, else ``None``."""
        if value is None:
            return None
        if self.pattern is None:
            return [value] if value == self.exact else None
        found = self.pattern.search(value)
        if found is None:
            return None
        return [found.group(0), *(g or "" for g in found.groups())]


@frozen
class _Route:
    index: int
    config: RouteConfig
    matchers: tuple[_Matcher, ...]

    @property
    def key(self) -> object:
        return self.config.name if self.config.name is not None else self.index


class _Fields:
    """The routable parts of a request, parsed once per call."""

    __slots__ = ("request", "uris", "values")

    def __init__(self, request: RouteRequest) -> None:
        self.request = request
        self.uris: dict[str, Uri | None] = {
            "from": _parse(request.from_),
            "to": _parse(request.to),
            "request_uri": _parse(request.uri),
        }
        values: dict[str, str] = {}
        for name, uri in self.uris.items():
            user, host = _user_host(uri)
            values[f"{name}.user"] = user
            values[f"{name}.host"] = host.lower()
        self.values = values

    def get(self, key: str) -> str | None:
        if key.startswith("header."):
            return self.request.header(key[len("header.") :])
        return self.values.get(key)


def _parse(text: str) -> Uri | None:
    if not text:
        return None
    try:
        return NameAddr.parse(text).uri
    except SipParseError:
        return None


def _user_host(uri: Uri | None) -> tuple[str, str]:
    if isinstance(uri, SipUri):
        return uri.user or "", uri.host
    if isinstance(uri, TelUri):
        return uri.number, ""
    return "", ""


def _fill(template: str, found: list[str]) -> str:
    def group(placeholder: re.Match[str]) -> str:
        number = int(placeholder[1])
        return found[number] if number < len(found) else ""

    return _PLACEHOLDER.sub(group, template)


def _with_user_host(uri: Uri | None, user: str, host: str, fallback: str) -> str:
    if isinstance(uri, SipUri):
        return str(evolve(uri, user=user or None, host=host))
    if isinstance(uri, TelUri):
        return str(evolve(uri, number=user))
    return fallback


class StaticRouter:
    """Routes from ``[[proxy.routes]]`` and ``[proxy.trunks]``, then the locator.

    ``local_realms`` are the domains this PBX serves (case-insensitive); left
    empty, every domain counts as ours, which suits a single-domain PBX.
    Without a ``locator`` a local callee no route catches is 404. ``rng``
    seeds the ``random`` and ``weighted`` trunk choices.
    """

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        trunks: Mapping[str, TrunkConfig | Trunk],
        *,
        locator: Locator | None = None,
        local_realms: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        selector: TrunkSelector | None = None,
    ) -> None:
        self.locator = locator
        self.clock = clock
        self.local_realms = frozenset(realm.lower() for realm in local_realms)
        self.selector = selector or TrunkSelector()
        self._routes: tuple[_Route, ...] = ()
        self._trunks: dict[str, Trunk] = {}
        self.reload(routes, trunks)

    def reload(
        self, routes: Sequence[RouteConfig], trunks: Mapping[str, TrunkConfig | Trunk]
    ) -> None:
        """Swap in a new routing table at once (AMI ``/reload/routes``); checks it first."""
        built = {
            name: t if isinstance(t, Trunk) else Trunk.from_config(name, t)
            for name, t in trunks.items()
        }
        problems: list[tuple[str, str]] = []
        for index, route in enumerate(routes):
            if missing := [name for name in route.dest if name not in built]:
                message = f"unknown trunk {', '.join(map(repr, missing))}"
                problems.append((f"proxy.routes[{index}].dest", message))
        if problems:
            raise ConfigError(problems)
        ordered = [(index, route) for index, route in enumerate(routes) if not route.disabled]
        ordered.sort(key=lambda item: -item[1].priority)  # stable: config order breaks ties
        self._routes = tuple(
            _Route(
                index,
                route,
                tuple(_Matcher.build(key, value) for key, value in route.match.items()),
            )
            for index, route in ordered
        )
        self._trunks = built

    @property
    def trunks(self) -> Mapping[str, Trunk]:
        return self._trunks

    async def route(self, request: RouteRequest) -> RouteDecision:
        fields = _Fields(request)
        for route in self._routes:
            groups: dict[str, list[str]] = {}
            for matcher in route.matchers:
                found = matcher.groups(fields.get(matcher.key))
                if found is None:
                    break
                groups[matcher.key] = found
            else:
                return self._apply(route, fields, groups)
        return await self._local(fields)

    # -- a matching route ----------------------------------------------------------------------

    def _apply(self, route: _Route, fields: _Fields, groups: dict[str, list[str]]) -> RouteDecision:
        cfg = route.config
        values = dict(fields.values)
        headers: dict[str, str] = {}
        for key, template in cfg.rewrite.items():
            found = groups.get(key) or [fields.get(key) or ""]
            result = _fill(template, found)
            if key.startswith("header."):
                headers[key[len("header.") :]] = result
            else:
                values[key] = result
        rewrite, caller, callee_user = self._rewritten(cfg, fields, values)
        if cfg.action == "reject":
            reject = cfg.reject
            return RouteDecision(
                action="reject",
                status=reject.code if reject is not None else 403,
                reason=reject.reason if reject is not None else None,
                route_name=cfg.name,
                rewrite=rewrite,
                caller=caller,
            )
        if cfg.action == "busy":
            return RouteDecision(
                action="reject",
                status=486,
                reason="Busy Here",
                route_name=cfg.name,
                rewrite=rewrite,
                caller=caller,
            )
        caller_key = fields.values["from.user"] + "@" + fields.values["from.host"]
        names = self.selector.order(
            route.key,
            cfg.dest,
            cfg.select,
            caller=caller_key,
            weights=[self._trunks[name].weight for name in cfg.dest],
        )
        return RouteDecision.forward(
            *(self._trunks[name].target_uri(callee_user) for name in names),
            strategy="sequential",
            headers=headers,
            target_trunks=tuple(names),
            route_name=cfg.name,
            rewrite=rewrite,
            caller=caller,
        )

    @staticmethod
    def _rewritten(
        cfg: RouteConfig, fields: _Fields, values: dict[str, str]
    ) -> tuple[RewriteInfo | None, str | None, str]:
        """The CDR's rewrite record, the new From URI and the user to dial."""
        changed = cfg.rewrite.keys()
        if "request_uri.user" in changed:
            callee_user = values["request_uri.user"]
        elif "to.user" in changed:
            callee_user = values["to.user"]
        else:
            callee_user = values["request_uri.user"] or values["to.user"]
        request = fields.request
        caller: str | None = None
        if "from.user" in changed or "from.host" in changed:
            original_host = _user_host(fields.uris["from"])[1]
            host = values["from.host"] if "from.host" in changed else original_host
            caller = _with_user_host(fields.uris["from"], values["from.user"], host, request.from_)
        if not changed:
            return None, caller, callee_user
        ruri = fields.uris["request_uri"]
        callee_host = (
            values["request_uri.host"] if "request_uri.host" in changed else _user_host(ruri)[1]
        )
        callee_final = _with_user_host(ruri, callee_user, callee_host, request.uri)
        rewrite = RewriteInfo(
            caller_original=request.from_,
            caller_final=caller or request.from_,
            callee_original=request.uri,
            callee_final=callee_final,
        )
        return rewrite, caller, callee_user

    # -- no route: our own users ----------------------------------------------------------------

    def is_local(self, host: str) -> bool:
        """Whether ``host`` is one of the realms this PBX serves."""
        return not self.local_realms or host.lower() in self.local_realms

    async def _local(self, fields: _Fields) -> RouteDecision:
        values = fields.values
        host = values["request_uri.host"] or values["to.host"]
        user = values["request_uri.user"] or values["to.user"]
        if not host or not self.is_local(host) or self.locator is None:
            return RouteDecision.reject(404, "Not Found")
        aor = f"{unescape(user)}@{host}" if user else host
        bindings = await self.locator.lookup(aor, self.clock())
        targets: list[str] = []
        kept: list[Binding] = []
        for binding in bindings:
            uri = _parse(binding.contact)
            if isinstance(uri, SipUri):
                targets.append(str(uri))
                kept.append(binding)
        if not targets:
            return RouteDecision.reject(480, "Temporarily Unavailable")
        return RouteDecision(
            action="forward",
            targets=tuple(targets),
            strategy="parallel",
            target_bindings=tuple(kept),
        )
