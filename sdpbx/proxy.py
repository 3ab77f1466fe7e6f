"""Proxy: the facade users import, a B2BUA PBX assembled from parts.

``Proxy`` is the transaction user of a :class:`~sdpbx.stack.SipStack`. It
drops what the ACL denies, answers REGISTER through the :class:`Registrar`,
authenticates new INVITEs (407), asks the :class:`~sdpbx.routing.Router`
where each call goes and bridges it as a :class:`~sdpbx.b2bua.call.Call`,
and relays in-dialog requests between the legs of live calls::

    from sdpbx import Proxy
    from sdpbx.routing import RouteDecision, RouteRequest

    async def route(request: RouteRequest) -> RouteDecision:
        return RouteDecision.forward("sip:echo@127.0.0.1:5090")

    proxy = Proxy.from_parts(stack, router=route)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)

Nothing slow runs inside SIP handling: 100 Trying goes out before the
router is awaited (after authentication, so a challenge is one packet), and
every call runs in its own task owned by the proxy.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from attrs import define

from .authn import Authenticated, Authenticator, answer_refusal
from .b2bua.call import Call, CallServices
from .b2bua.leg import Leg
from .b2bua.registry import CallRegistry
from .config import AclRule
from .locator import Locator
from .media import MediaBackend, PassthroughMedia
from .registrar import Registrar
from .routing import (
    RouteDecision,
    Router,
    RouteRequest,
    as_router,
    detect_direction,
    direction_after_route,
)
from .routing.trunks import Trunk, TrunkLimiter
from .sip import DialogId, SipUri, dialog_id_for_request
from .stack import ALLOWED_METHODS, IncomingRequest, RequestHandler, SipStack
from .transport.base import Peer

__all__ = ["Proxy", "ProxyStats"]

log = logging.getLogger("sdpbx.proxy")

#: Methods this proxy handles somewhere (in a dialog, or not).
_IMPLEMENTED = frozenset(m.strip() for m in ALLOWED_METHODS.split(","))


@define
class ProxyStats:
    acl_denied: int = 0
    invites: int = 0
    rejected_shutdown: int = 0
    unknown_dialogs: int = 0
    #: Calls that ended on a fault the call contained (a router's bug, a bad callee).
    call_errors: int = 0


class Proxy(RequestHandler):
    """A registrar + B2BUA over one SipStack. Build with :meth:`from_parts`."""

    def __init__(
        self,
        stack: SipStack,
        router: Router,
        *,
        registrar: Registrar | None = None,
        authenticator: Authenticator | None = None,
        locator: Locator | None = None,
        media: MediaBackend | None = None,
        trunks: Mapping[str, Trunk] | None = None,
        acl: Sequence[AclRule] = (),
        ring_timeout: float = 60.0,
        authenticate_invites: bool = True,
        local_realms: Sequence[str] = (),
        user_agent: str | None = "sdpbx",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stack = stack
        stack.handler = self
        self.router = router
        self.registrar = registrar
        self.authenticator = authenticator
        self.locator = locator or (registrar.locator if registrar else None)
        self.media: MediaBackend = media or PassthroughMedia()
        self.trunks: dict[str, Trunk] = dict(trunks or {})
        self.limiter = TrunkLimiter(self.trunks) if self.trunks else None
        self.acl = list(acl)
        self.authenticate_invites = authenticate_invites
        self.local_realms = tuple(r.lower() for r in local_realms)
        self.calls = CallRegistry()
        self.stats = ProxyStats()
        self.clock = clock
        self.started_at = clock()
        self.accepting = True
        self._tg: TaskGroup | None = None
        self._dialogs: dict[DialogId, tuple[Call, Leg]] = {}
        self._services = CallServices(
            stack=stack,
            registry=self.calls,
            media=self.media,
            spawn=self._spawn,
            dialogs=self._dialogs,
            trunks=self.trunks,
            limiter=self.limiter,
            ring_timeout=ring_timeout,
            user_agent=user_agent,
            clock=clock,
            on_error=self._call_failed,
        )

    @classmethod
    def from_parts(
        cls,
        stack: SipStack,
        *,
        router: Router | Callable[[RouteRequest], Awaitable[RouteDecision]],
        **kwargs: Any,
    ) -> Proxy:
        """Assemble a proxy from objects; every keyword but ``router`` is optional.

        Without a registrar the proxy answers REGISTER 405, and without an
        authenticator it routes every INVITE unauthenticated: a Proxy is as open
        as the parts it is given. The keywords:

        ``router``
            Where each new call goes: a :class:`~sdpbx.routing.Router`, or a plain
            ``async def route(request: RouteRequest) -> RouteDecision``
            (wrapped with :func:`~sdpbx.routing.as_router`).
        ``registrar``
            A :class:`~sdpbx.registrar.Registrar` that answers REGISTER. The proxy
            runs its binding expiry on the stack's timer task, and drops the
            bindings learned over a TCP/TLS/WS connection when it closes.
        ``authenticator``
            An :class:`~sdpbx.authn.Authenticator` that challenges each new INVITE
            (407) before the router is asked. Usually the registrar's own, so a
            phone calls with the password it registers with.
        ``authenticate_invites``
            ``False`` routes INVITEs without a challenge even when an
            authenticator is given (REGISTER stays authenticated); default ``True``.
        ``trunks``
            ``{name: Trunk}``. An INVITE whose source address is in a
            :class:`~sdpbx.routing.Trunk`'s ``networks`` is *inbound from that
            trunk*: it is not challenged (a carrier has no password of ours) and
            the CDR names the trunk. Calls sent to a trunk use its transport,
            answer its 401/407 with its ``username``/``password`` and respect its
            ``max_calls``/``max_cps``. Give the router the same trunks.
        ``locator``
            Where phones are found; defaults to the registrar's.
        ``local_realms``
            The domains this PBX serves; a callee elsewhere makes a call
            ``outbound``. Empty (the default) means every domain is ours.
        ``acl``
            :class:`~sdpbx.config.AclRule` values, first match wins
            (``parse_acl_rule("allow 10.0.0.0/8")``, ``parse_acl_rule("deny all")``);
            a denied source is dropped unanswered. Empty means everyone.
        ``media``
            The :class:`~sdpbx.media.MediaBackend`; SDP passes through unchanged
            by default (:class:`~sdpbx.media.PassthroughMedia`).
        ``ring_timeout``
            Seconds a forwarded call rings when the decision gives no ``timeout``
            (60), then 408.
        ``user_agent``
            The ``User-Agent`` of the INVITEs sent to callees; ``None`` sends none.
        ``clock``
            Wall-clock seconds for call records and statistics.

        Users from a dict, a registrar, an authenticator, and a carrier whose
        calls from ``203.0.113.0/24`` reach the registered phones without a
        password, while the phones (1001, 1002) call each other after a challenge:

        .. code-block:: python

            import os
            from ipaddress import ip_network

            import anyio

            from sdpbx import Authenticator, MemoryLocator, MemoryUserBackend, Proxy, Registrar
            from sdpbx.routing import StaticRouter, Trunk
            from sdpbx.sip.auth import NonceManager
            from sdpbx.stack import SipStack
            from sdpbx.transport import UdpTransport

            REALM = "pbx.example.com"

            users = MemoryUserBackend.from_passwords({"1001": "secret", "1002": "secret"})
            auth = Authenticator(users, realm_for=REALM, nonces=NonceManager(os.urandom(32)))
            locator = MemoryLocator()
            carrier = Trunk(
                name="carrier", scheme="sip", host="203.0.113.5", port=5060,
                networks=(ip_network("203.0.113.0/24"),),
            )
            trunks = {"carrier": carrier}

            async def main() -> None:
                proxy = Proxy.from_parts(
                    SipStack([UdpTransport("127.0.0.1", 5060)]),
                    router=StaticRouter([], trunks, locator=locator, local_realms=[REALM]),
                    registrar=Registrar(locator, auth, realms=[REALM]),
                    authenticator=auth,
                    trunks=trunks,
                    local_realms=[REALM],
                )
                async with anyio.create_task_group() as tg:
                    await tg.start(proxy.serve)

            anyio.run(main)

        ``[[proxy.routes]]`` in the config file (or your own router before a
        :class:`~sdpbx.routing.FallbackRouter`) send numbers out through the
        carrier; :class:`~sdpbx.pbx.Pbx` builds this same assembly from a file.
        """
        return cls(stack, as_router(router), **kwargs)

    # -- lifecycle ------------------------------------------------------------------
    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the stack and every call; returns (after cancel) with calls cleaned up."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self.registrar is not None:
                self.stack.add_timer_client(self.registrar.timer_client, self.registrar.clock)
            # Throttle and nonce-count state ages out on the timer, not only on
            # the next failure, so memory comes back after a flood ends.
            authenticators = [self.authenticator]
            if self.registrar is not None:
                authenticators.append(self.registrar.authenticator)
            unique = {id(a): a for a in authenticators if a is not None}
            for authenticator in unique.values():
                self.stack.add_timer_client(authenticator, authenticator.clock)
            await tg.start(self.stack.serve)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def drain(self, grace: float) -> None:
        """Stop taking new calls (503) and wait up to ``grace`` s for live ones."""
        self.accepting = False
        with anyio.move_on_after(grace):
            while len(self.calls):
                await anyio.sleep(0.1)

    def _spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        tg = self._tg
        if tg is not None:
            tg.start_soon(self._guarded, fn)

    async def _guarded(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except Exception:
            self.stats.call_errors += 1
            log.exception("background task failed")

    def _call_failed(self) -> None:
        self.stats.call_errors += 1

    # -- the transaction user ----------------------------------------------------------
    def allowed(self, host: str) -> bool:
        """ACL, first match wins; no rules means everyone, no match means deny."""
        if not self.acl:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        for rule in self.acl:
            if rule.matches(ip):
                return rule.allow
        return False

    async def handle_request(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        method = request.method
        if not self.allowed(incoming.peer.host):
            self.stats.acl_denied += 1
            log.info("ACL denied %s from %s", method, incoming.peer.address)
            incoming.discard()  # judged again, as cheaply, if retransmitted
            return
        if method == "REGISTER":
            if self.registrar is None:
                incoming.respond_stateless(405, headers=[("Allow", ALLOWED_METHODS)])
            else:
                await self.registrar.handle(incoming)
            return
        if request.to.tag is not None and method != "CANCEL":
            if method not in _IMPLEMENTED:
                incoming.respond(501, headers=[("Allow", ALLOWED_METHODS)])
                return
            await self._in_dialog(incoming)
            return
        if method == "ACK":
            return
        if method == "CANCEL":
            self._cancel(incoming)
        elif method == "INVITE":
            await self._new_call(incoming)
        elif method == "OPTIONS":
            await super().handle_request(incoming)
        elif method in _IMPLEMENTED:
            # RFC 3261 §8.2.1: a method we handle, but not outside a dialog. Like every
            # answer that is cheap to give again, sent statelessly (no Timer J state).
            incoming.respond_stateless(405, headers=[("Allow", ALLOWED_METHODS)])
        else:
            # §21.5.2: REFER, SUBSCRIBE, PRACK or FOO are supported for no one here.
            incoming.respond_stateless(501, headers=[("Allow", ALLOWED_METHODS)])

    def connection_lost(self, peer: Peer) -> None:
        if self.registrar is not None:
            self.registrar.connection_lost(peer)

    async def _in_dialog(self, incoming: IncomingRequest) -> None:
        entry = self._dialogs.get(dialog_id_for_request(incoming.request))
        if entry is None:
            if incoming.request.method != "ACK":
                self.stats.unknown_dialogs += 1
                incoming.respond(481)
            return
        call, leg = entry
        await call.handle_in_dialog(leg, incoming)

    def _cancel(self, incoming: IncomingRequest) -> None:
        invite = incoming.cancelled_invite()
        if invite is None:
            incoming.respond(481)
            return
        call = invite.owner
        if isinstance(call, Call) and call.decision is not None and call.decision.action == "spam":
            incoming.drop()  # a scanner learns nothing from a dropped call
            return
        incoming.respond(200, to_tag=invite.to_tag)
        if isinstance(call, Call):
            call.cancel()
        elif not invite.answered:
            invite.respond(487)

    async def _new_call(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        self.stats.invites += 1
        if not self.accepting:
            self.stats.rejected_shutdown += 1
            incoming.respond(503, "Shutting Down", headers=[("Retry-After", "30")])
            return
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            incoming.respond(483)
            return
        direction, inbound_trunk = detect_direction(
            incoming.peer.host, self.trunks, True, callee_is_local=self._is_local(request.uri)
        )
        if inbound_trunk is None and self.authenticator is not None and self.authenticate_invites:
            # No 100 before this: an INVITE without credentials costs one packet,
            # its stateless 407 (a slow user backend gets the transaction's own
            # 100 after TimerConfig.trying_delay).
            outcome = await self.authenticator.authenticate(request, incoming.peer, proxy=True)
            if not isinstance(outcome, Authenticated):
                answer_refusal(incoming, outcome)
                return
            if incoming.answered:  # CANCELled (487) while the user backend thought
                return
        incoming.respond(100)  # the router may take its time from here
        call = Call(self._services, incoming, direction=direction, inbound_trunk=inbound_trunk)
        incoming.owner = call
        route_request = RouteRequest.from_request(request, incoming.peer.address, direction)

        async def route() -> RouteDecision:
            decision = await self.router.route(route_request)
            if isinstance(decision, RouteDecision):  # the Call judges anything else
                call.direction = direction_after_route(direction, decision)
            return decision

        self._spawn(lambda: call.run(route))

    def _is_local(self, uri: object) -> bool:
        if not isinstance(uri, SipUri):
            return False
        if not self.local_realms:
            return True
        return uri.host.lower() in self.local_realms
