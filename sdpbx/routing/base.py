"""What a router is asked and what it answers, and how routers combine.

:class:`RouteRequest` and :class:`RouteDecision` are the HTTP router webhook's
JSON (``docs/guide/routing.rst``) as values, so one contract serves every
router: a Python class, the static routes of the config file and a web
service all take the same question and give the same kind of answer, and a
router written in Python can later move behind a webhook unchanged.

A decision also carries a few fields that are not part of the JSON
(:data:`SDPBX_ONLY`): which trunk each target goes through, the route's name and
what was rewritten. The static router fills them so the B2BUA can fail over
between trunks and the CDR can say what happened; they are never sent to, nor
accepted from, a web service.

A decision is checked when it is built, from JSON or from Python: the targets
must be SIP URIs and the extra headers must be safe to write into an INVITE,
because a router is code (or a server) the PBX does not control, and a header
value with a line break in it would let it inject arbitrary SIP.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, Protocol, TypeAlias, cast, runtime_checkable

from attrs import field, fields, frozen

from .._serde import KEY, structure_json, unstructure_json
from ..errors import PayloadError, SdpbxError
from ..locator import Binding
from ..sip.errors import SipParseError
from ..sip.fields import NameAddr
from ..sip.headers import canonical_key, pretty_name
from ..sip.message import Request
from ..sip.uri import SipUri, TelUri, parse_uri

__all__ = [
    "SDPBX_ONLY",
    "Direction",
    "FallbackRouter",
    "MediaProxy",
    "RewriteInfo",
    "RouteAction",
    "RouteDecision",
    "RouteRequest",
    "Router",
    "RouterError",
    "RouterFunction",
    "Strategy",
    "as_router",
]

logger = logging.getLogger("sdpbx.routing")

Direction: TypeAlias = Literal["inbound", "outbound", "internal"]
RouteAction: TypeAlias = Literal["forward", "reject", "abort", "spam", "not_handled"]
Strategy: TypeAlias = Literal["parallel", "sequential"]
MediaProxy: TypeAlias = Literal["auto", "always", "none", "nat"]

SDPBX_ONLY = "sdpbx.routing.sdpbx_only"
"""Field metadata: a :class:`RouteDecision` field that is not part of the webhook JSON."""

_ACTIONS = frozenset(("forward", "reject", "abort", "spam", "not_handled"))
_STRATEGIES = frozenset(("parallel", "sequential"))
_MEDIA_PROXY = frozenset(("auto", "always", "none", "nat"))
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
DEFAULT_REJECT_STATUS = 403


class RouterError(SdpbxError):
    """A router could not decide: its web service timed out, failed or talked nonsense.

    Not a decision to reject the call: whoever holds the router decides what a
    failure means (:class:`FallbackRouter` tries static routes, the proxy
    answers 503), so an outage of the routing service never looks like a
    deliberate 403 to the caller.
    """


# -- the question ------------------------------------------------------------------------------


@frozen
class RouteRequest:
    """A new call to route: the HTTP router's request JSON.

    ``from_`` and ``to`` are the URIs of the From and To headers (no display
    name, no tag); ``uri`` is the Request-URI; ``headers`` holds the first
    value of each header; ``body`` is the SDP offer as text.
    """

    call_id: str
    from_: str = field(metadata={KEY: "from"})
    to: str
    source_addr: str
    direction: Direction
    method: str = "INVITE"
    uri: str = ""
    headers: Mapping[str, str] = field(factory=dict)
    body: str = ""

    @classmethod
    def from_request(cls, request: Request, source_addr: str, direction: Direction) -> RouteRequest:
        """The question for ``request``, received from ``source_addr`` (``"ip:port"``).

        Header names keep the spelling the caller used, except compact forms
        (``f:``), which are written out (``From``) so a web service need not
        know SIP's abbreviations.
        """
        headers: dict[str, str] = {}
        seen: set[str] = set()
        for name, value in request.headers:
            key = canonical_key(name)
            if key in seen:
                continue
            seen.add(key)
            headers[pretty_name(key) if len(name) == 1 else name] = value
        return cls(
            call_id=request.call_id,
            from_=str(request.from_.uri),
            to=str(request.to.uri),
            source_addr=source_addr,
            direction=direction,
            method=request.method,
            uri=str(request.uri),
            headers=headers,
            body=request.body.decode("utf-8", "replace"),
        )

    @classmethod
    def from_json(cls, data: object) -> RouteRequest:
        """Read the request JSON (a router service written with sdpbx uses this).

        Raises :class:`~sdpbx.errors.PayloadError` naming the bad field.
        """
        return structure_json(data, cls, strict=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON object POSTed to an HTTP router."""
        return cast("dict[str, Any]", unstructure_json(self))

    @property
    def callee_user(self) -> str | None:
        """Who is called: the user part of the Request-URI, else of the To URI.

        The Request-URI comes first because it is where the caller asked the call
        to go (the static routes' own lookup does the same); the To URI stands in
        when the Request-URI has no user (``sip:pbx.example.com``). The value is
        unescaped (``%23`` reads ``#``), a ``tel:`` URI gives its number, and
        ``None`` means neither URI has a user (or neither could be read), so a
        router compares it with ``==`` and needs no URI parsing of its own.
        """
        user = _uri_user(self.uri)
        return user if user is not None else _uri_user(self.to)

    @property
    def caller_user(self) -> str | None:
        """Who calls: the user part of the From URI, unescaped; ``None`` if it has none."""
        return _uri_user(self.from_)

    def header(self, name: str) -> str | None:
        """The value of header ``name``, whatever its spelling (``x-foo`` finds ``X-Foo``)."""
        value = self.headers.get(name)
        if value is not None:
            return value
        key = canonical_key(name)
        for other, value in self.headers.items():
            if canonical_key(other) == key:
                return value
        return None


def _uri_user(text: str) -> str | None:
    """The user of a URI (bare, or ``<>``-wrapped as a web service may send it)."""
    if not text:
        return None
    try:
        uri = NameAddr.parse(text).uri
    except SipParseError:
        return None
    if isinstance(uri, SipUri):
        return uri.user_unescaped
    if isinstance(uri, TelUri):
        return uri.number
    return None


# -- the answer --------------------------------------------------------------------------------


@frozen
class RewriteInfo:
    """Caller and callee before and after a route rewrote them, for the CDR's ``rewrite``."""

    caller_original: str = field(metadata={KEY: "callerOriginal"})
    caller_final: str = field(metadata={KEY: "callerFinal"})
    callee_original: str = field(metadata={KEY: "calleeOriginal"})
    callee_final: str = field(metadata={KEY: "calleeFinal"})

    def to_json(self) -> dict[str, Any]:
        return cast("dict[str, Any]", unstructure_json(self))


def _sdpbx_only() -> dict[str, bool]:
    return {SDPBX_ONLY: True}


def _bare_targets(targets: Iterable[str]) -> tuple[str, ...]:
    """Targets as bare URIs: one written as a name-addr (``<sip:...>``, a common
    slip) is accepted and stored as its URI, so every dialler can parse it. What
    does not parse is kept as given, for :func:`_target_problem` to name."""
    bare: list[str] = []
    for target in targets:
        if isinstance(target, str) and "<" in target:
            try:
                target = str(NameAddr.parse(target).uri)
            except SipParseError:
                pass  # reported by _target_problem
        bare.append(target)
    return tuple(bare)


@frozen
class RouteDecision:
    """Where a call goes: the HTTP router's response JSON plus sdpbx-only details.

    ``action``:

    - ``forward``: dial ``targets`` (SIP URIs). ``parallel`` rings them all and
      the first 2xx wins; ``sequential`` tries the next one when a target fails
      or does not answer within ``timeout`` seconds.
    - ``reject`` / ``abort``: answer ``status`` (403 unless given) with ``reason``.
    - ``spam``: send no response at all.
    - ``not_handled``: this router has no opinion; the next one decides
      (:class:`FallbackRouter`, the static routes).

    ``headers`` are added to the INVITE sent to the callee. ``media_proxy``
    ``None`` means the proxy's configured mode.

    Not part of the JSON: ``target_trunks`` is empty or names, for each target
    in order, the trunk it goes through (``trunk`` is the first one);
    ``target_bindings`` is empty or holds, for each target, the registration
    it came from (so the B2BUA sends to the address the phone registered from
    and over its connection); ``route_name``, ``rewrite`` and ``caller`` (the
    rewritten From URI) describe what a static route did.
    """

    action: RouteAction
    targets: tuple[str, ...] = field(default=(), converter=_bare_targets)
    strategy: Strategy = "sequential"
    record: bool = False
    timeout: float | None = None
    media_proxy: MediaProxy | None = None
    headers: Mapping[str, str] = field(factory=dict)
    status: int | None = None
    reason: str | None = None
    trunk: str | None = field(default=None, metadata=_sdpbx_only())
    target_trunks: tuple[str, ...] = field(default=(), metadata=_sdpbx_only())
    target_bindings: tuple[Binding, ...] = field(default=(), metadata=_sdpbx_only())
    route_name: str | None = field(default=None, metadata=_sdpbx_only())
    rewrite: RewriteInfo | None = field(default=None, metadata=_sdpbx_only())
    caller: str | None = field(default=None, metadata=_sdpbx_only())

    def __attrs_post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise PayloadError(problems)

    def _problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if self.action not in _ACTIONS:
            problems.append(("action", f"unknown action {self.action!r}"))
        if self.strategy not in _STRATEGIES:
            problems.append(("strategy", f"unknown strategy {self.strategy!r}"))
        if self.media_proxy is not None and self.media_proxy not in _MEDIA_PROXY:
            problems.append(("media_proxy", f"unknown mode {self.media_proxy!r}"))
        if self.action == "forward" and not self.targets:
            problems.append(("targets", 'required when action is "forward"'))
        for index, target in enumerate(self.targets):
            if message := _target_problem(target):
                problems.append((f"targets[{index}]", message))
        if self.timeout is not None and not self.timeout > 0:
            problems.append(("timeout", "must be greater than 0"))
        if self.status is not None and not 300 <= self.status <= 699:
            problems.append(("status", "must be a SIP final status (300-699)"))
        if self.reason is not None and ("\r" in self.reason or "\n" in self.reason):
            problems.append(("reason", "must not contain line breaks"))
        for name, value in self.headers.items():
            if not isinstance(name, str) or not _TOKEN.match(name):
                problems.append((f"headers.{name}", "not a valid header name"))
            elif not isinstance(value, str) or "\r" in value or "\n" in value:
                problems.append((f"headers.{name}", "value must be text without line breaks"))
        for name, aligned in (
            ("target_trunks", self.target_trunks),
            ("target_bindings", self.target_bindings),
        ):
            if aligned and len(aligned) != len(self.targets):
                problems.append((name, "must be empty or have one entry per target"))
        return problems

    # -- constructors ----------------------------------------------------------------------

    @classmethod
    def forward(
        cls,
        *targets: str,
        strategy: Strategy = "sequential",
        record: bool = False,
        timeout: float | None = None,
        media_proxy: MediaProxy | None = None,
        headers: Mapping[str, str] | None = None,
        target_trunks: tuple[str, ...] = (),
        route_name: str | None = None,
        rewrite: RewriteInfo | None = None,
        caller: str | None = None,
    ) -> RouteDecision:
        """Dial ``targets``: ``RouteDecision.forward("sip:1001@10.0.0.5")``."""
        return cls(
            action="forward",
            targets=targets,
            strategy=strategy,
            record=record,
            timeout=timeout,
            media_proxy=media_proxy,
            headers=dict(headers or {}),
            trunk=target_trunks[0] if target_trunks else None,
            target_trunks=target_trunks,
            route_name=route_name,
            rewrite=rewrite,
            caller=caller,
        )

    @classmethod
    def reject(
        cls, status: int = DEFAULT_REJECT_STATUS, reason: str | None = None
    ) -> RouteDecision:
        """Refuse the call with a final ``status``."""
        return cls(action="reject", status=status, reason=reason)

    @classmethod
    def abort(cls, status: int = DEFAULT_REJECT_STATUS, reason: str | None = None) -> RouteDecision:
        """Like :meth:`reject`; the webhook contract distinguishes them for logs only."""
        return cls(action="abort", status=status, reason=reason)

    @classmethod
    def spam(cls) -> RouteDecision:
        """Drop the INVITE without answering (a scanner learns nothing)."""
        return cls(action="spam")

    @classmethod
    def not_handled(cls) -> RouteDecision:
        """Let the next router decide."""
        return cls(action="not_handled")

    # -- JSON --------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: object) -> RouteDecision:
        """Read a router's response JSON; raise :class:`~sdpbx.errors.PayloadError` naming
        the bad field.

        ``null`` counts as absent (services written with optional fields often
        send them), unknown keys are ignored, and the sdpbx-only fields cannot
        be set this way. ``status`` of a reject/abort defaults to 403.
        """
        if isinstance(data, Mapping):
            data = {key: value for key, value in data.items() if value is not None}
        wire = structure_json(data, _WireDecision, strict=False)
        status = wire.status
        if status is None and wire.action in ("reject", "abort"):
            status = DEFAULT_REJECT_STATUS
        return cls(
            action=wire.action,
            targets=wire.targets,
            strategy=wire.strategy,
            record=wire.record,
            timeout=wire.timeout,
            media_proxy=wire.media_proxy,
            headers=wire.headers,
            status=status,
            reason=wire.reason,
        )

    def to_json(self) -> dict[str, Any]:
        """The response JSON (sdpbx-only fields left out)."""
        out = cast("dict[str, Any]", unstructure_json(self))
        for attribute in fields(RouteDecision):
            if attribute.metadata.get(SDPBX_ONLY):
                del out[attribute.name]
        return out

    @property
    def final_status(self) -> int:
        """The status to answer a reject/abort with."""
        return DEFAULT_REJECT_STATUS if self.status is None else self.status


@frozen
class _WireDecision:
    """Exactly the response JSON; what a web service may set."""

    action: RouteAction
    targets: tuple[str, ...] = ()
    strategy: Strategy = "sequential"
    record: bool = False
    timeout: float | None = None
    media_proxy: MediaProxy | None = None
    headers: Mapping[str, str] = field(factory=dict)
    status: int | None = None
    reason: str | None = None


def _target_problem(target: object) -> str | None:
    if not isinstance(target, str):
        return "expected a string"
    try:
        # A name-addr target (``<sip:...>``) was made bare by _bare_targets already.
        uri = parse_uri(target.strip())
    except SipParseError as exc:
        return f"not a SIP URI ({exc})"
    if not isinstance(uri, SipUri):
        return f"not a SIP URI: {target!r}"
    return None


# -- routers -----------------------------------------------------------------------------------


@runtime_checkable
class Router(Protocol):
    """Decides where each new call goes.

    Called once per new out-of-dialog INVITE, after 100 Trying went out.
    Raise :class:`RouterError` when no decision can be made (the proxy answers
    503 unless a :class:`FallbackRouter` has somewhere else to ask).
    """

    async def route(self, request: RouteRequest) -> RouteDecision: ...


RouterFunction: TypeAlias = Callable[[RouteRequest], Awaitable[RouteDecision]]


class _FunctionRouter:
    __slots__ = ("_fn",)

    def __init__(self, fn: RouterFunction) -> None:
        self._fn = fn

    async def route(self, request: RouteRequest) -> RouteDecision:
        return await self._fn(request)

    def __repr__(self) -> str:
        return f"as_router({self._fn!r})"


def as_router(fn: RouterFunction | Router) -> Router:
    """A :class:`Router` from an ``async def route(request) -> RouteDecision`` function.

    A router object is returned unchanged, so callers can accept either.
    """
    if isinstance(fn, Router):
        return fn
    if not callable(fn):
        raise TypeError(f"expected a Router or an async function, got {fn!r}")
    return _FunctionRouter(fn)


class FallbackRouter:
    """Ask ``primary``; when it answers ``not_handled`` (or fails), ask ``fallback``.

    With ``fallback_on_error=False`` a :class:`RouterError` of ``primary``
    propagates (the proxy answers 503), but ``not_handled`` still falls back:
    RustPBX's ``fallback_to_static = false`` means "don't paper over an
    outage", not "ignore the static routes".
    """

    def __init__(
        self,
        primary: Router | RouterFunction,
        fallback: Router | RouterFunction,
        *,
        fallback_on_error: bool = True,
    ) -> None:
        self.primary = as_router(primary)
        self.fallback = as_router(fallback)
        self.fallback_on_error = fallback_on_error

    async def route(self, request: RouteRequest) -> RouteDecision:
        try:
            decision = await self.primary.route(request)
        except RouterError as exc:
            if not self.fallback_on_error:
                raise
            logger.warning("call %s: router failed (%s); using the fallback", request.call_id, exc)
            return await self.fallback.route(request)
        if decision.action == "not_handled":
            return await self.fallback.route(request)
        return decision

    async def aclose(self) -> None:
        """Close both routers if they hold resources (an :class:`HttpRouter`'s client)."""
        for router in (self.primary, self.fallback):
            close = getattr(router, "aclose", None)
            if close is not None:
                await close()
