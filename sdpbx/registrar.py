"""The registrar: REGISTER in, bindings out (RFC 3261 §10.3, RFC 3327 Path, RFC 5626).

:class:`Registrar` is a transaction user for one method. It owns no I/O and no
storage of its own: it authenticates through an
:class:`~sdpbx.authn.Authenticator`, writes to a :class:`~sdpbx.locator.Locator`
and answers through the :class:`~sdpbx.stack.IncomingRequest`, so the proxy,
a user's own handler and the tests drive the very same code.

The steps of §10.3, as implemented:

1. The To URI must be ``sip:``/``sips:`` (else 400, RFC 4475 unksm2) and, when
   ``realms`` is set, its host one of them (else 403). The Request-URI is not
   checked: phones often register to the server's IP with a To of the domain.
   Every Contact must parse (else 400, RFC 4475 regbadct), before the realm check.
2. Authentication: 401 challenge, 403, silence or 503 as the authenticator decides.
3. Contacts: ``*`` only alone and with ``Expires: 0`` (else 400). A Contact's
   ``expires`` parameter wins over the Expires header, which wins over
   ``default_expires``; ``0 < expires < min_expires`` is a 423 with
   ``Min-Expires``; above ``max_expires`` the grant is capped. Parameters after
   ``>`` are contact parameters, never part of the stored URI (RFC 4475
   cparam01/cparam02), and the URI is stored as written, escaped headers
   included (regescrt).
4. Ordering: for a binding that exists with the same Call-ID, a CSeq not higher
   than the stored one aborts the whole request with 500 (the step says "the
   update MUST be aborted and the request fails"; 500 is the status the same
   step gives for a failed update). A different Call-ID always updates.
5. A Contact with ``+sip.instance`` (and ``reg-id``) replaces the binding of the
   same instance (and reg-id) under another URI (RFC 5626 §6): a phone that
   changed its address leaves no dead binding behind.
6. 200 OK lists every current binding of the AoR, ``<uri>;expires=N`` (``;q=``
   when not 1), with a Date header, and echoes Path when the UA supports it.

Bindings record the real source of the REGISTER (transport, address, port and
stream connection), which is where a phone behind NAT can be reached (``nat_fix``,
on by default). With ``nat_fix=False`` a UDP binding is reached at its Contact's
address instead, when that is an IP address (a name would need DNS, so its
source is kept); stream bindings always stay on their connection, the only way
to reach a phone over TCP, TLS or WebSocket from behind NAT (RFC 5626).

Expiry needs no task: the locator keeps a heap, and :attr:`Registrar.timer_client`
shares the stack's timer (``stack.add_timer_client(registrar.timer_client,
registrar.clock)``). The SQLite locator queues its deletes from there itself;
they need no flush to happen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from email.utils import formatdate
from typing import TYPE_CHECKING

from attrs import define, frozen

from .authn import Authenticator, Reject, Unavailable, answer_refusal
from .locator import Binding, Locator
from .sip.errors import SipParseError
from .sip.fields import NameAddr
from .sip.uri import SipUri
from .transport.base import is_ip_address

if TYPE_CHECKING:
    from .config import ProxyConfig
    from .stack import IncomingRequest
    from .transport.base import Peer

__all__ = ["Registrar", "RegistrarStats"]

logger = logging.getLogger("sdpbx.registrar")


@define
class RegistrarStats:
    """Counters for the health endpoint and tests."""

    #: Bindings created or refreshed.
    registrations: int = 0
    #: Bindings removed on request (``Expires: 0``, ``Contact: *``).
    unregistrations: int = 0
    #: REGISTERs without Contact (binding queries) answered.
    queries: int = 0
    #: Final non-2xx answers (challenges are counted by the authenticator).
    rejections: int = 0
    #: Bindings that ran out, and bindings lost with their connection.
    expired: int = 0
    disconnected: int = 0


@frozen
class _Update:
    """One tentative change of the binding set, applied only if all are valid."""

    contact: str
    binding: Binding | None  # None: remove ``contact``
    refresh: bool = False  # the binding existed: logged at DEBUG, not INFO


@frozen
class _Context:
    """What every Contact of one REGISTER shares."""

    aor: str
    header_expires: int | None
    call_id: str
    cseq: int
    existing: dict[str, Binding]
    now: float
    peer: Peer
    path: tuple[str, ...]
    user_agent: str


class _Refused(Exception):
    def __init__(
        self, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)


class _ExpiryTimer:
    """The registrar's share of the stack's timer task (a :class:`~sdpbx.stack.TimerClient`)."""

    def __init__(self, registrar: Registrar) -> None:
        self._registrar = registrar

    def next_deadline(self) -> float | None:
        return self._registrar.locator.next_deadline()

    def handle_timer(self, now: float) -> None:
        expired = self._registrar.locator.expire(now)
        if expired:
            self._registrar.stats.expired += len(expired)
            for binding in expired:
                _log_change("expired", binding)


def _log_change(what: str, binding: Binding, detail: str = "") -> None:
    """One INFO line per binding that came or went, for the operator."""
    logger.info(
        "%s %s -> %s (%s %s)%s",
        what,
        binding.aor,
        binding.contact,
        binding.transport,
        binding.destination,
        detail,
    )


def _format_q(q: float) -> str:
    return f"{q:.3f}".rstrip("0").rstrip(".")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


class Registrar:
    """Answers REGISTER requests; see the module docstring for the rules."""

    def __init__(
        self,
        locator: Locator,
        authenticator: Authenticator | None = None,
        *,
        realms: Sequence[str] = (),
        default_expires: int = 3600,
        min_expires: int = 60,
        max_expires: int = 7200,
        nat_fix: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < min_expires <= default_expires <= max_expires:
            raise ValueError("need 0 < min_expires <= default_expires <= max_expires")
        self.locator = locator
        self.authenticator = authenticator
        self.realms = frozenset(r.lower() for r in realms)
        self.default_expires = default_expires
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.nat_fix = nat_fix
        self.clock = clock
        self.stats = RegistrarStats()
        #: Add to the stack so bindings expire: ``stack.add_timer_client(r.timer_client, r.clock)``.
        self.timer_client = _ExpiryTimer(self)

    @classmethod
    def from_config(
        cls,
        config: ProxyConfig,
        locator: Locator,
        authenticator: Authenticator | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> Registrar:
        """``[proxy]`` realms, ``registrar_expires`` / ``min_`` / ``max_registrar_expires``
        and ``nat_fix``."""
        return cls(
            locator,
            authenticator,
            realms=config.realms,
            default_expires=config.registrar_expires,
            min_expires=config.min_registrar_expires,
            max_expires=config.max_registrar_expires,
            nat_fix=config.nat_fix,
            clock=clock,
        )

    # -- the transaction user ------------------------------------------------------------

    async def handle(self, incoming: IncomingRequest) -> None:
        """Answer one REGISTER (anything else gets 405)."""
        request = incoming.request
        if request.method != "REGISTER":
            incoming.respond(405, headers=[("Allow", "REGISTER")])
            return
        try:
            await self._register(incoming)
        except _Refused as refusal:
            self.stats.rejections += 1
            incoming.respond(refusal.status, refusal.reason, headers=refusal.headers)
        except SipParseError as exc:
            self.stats.rejections += 1
            logger.info("bad REGISTER from %s: %s", incoming.peer.address, exc.reason)
            incoming.respond(exc.status, exc.reason[:100])

    def connection_lost(self, peer: Peer) -> None:
        """Drop the bindings learned over a stream connection that closed."""
        if peer.connection_id is None:
            return
        closed = self.locator.connection_closed(peer.connection_id, now=self.clock())
        self.stats.disconnected += len(closed)
        for binding in closed:
            _log_change("unregistered", binding, ": its connection closed")

    async def _register(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        to_uri = request.to.uri
        if not isinstance(to_uri, SipUri):
            raise _Refused(400, "To must be a SIP or SIPS URI")
        # Syntax before policy: a Contact that does not parse is a 400 (RFC 4475
        # regbadct), not a 403 or a challenge the phone answers in vain.
        if not request.contact_is_star:
            _ = request.contacts
        if self.realms and to_uri.host.lower() not in self.realms:
            raise _Refused(403, "Domain not served here")
        aor = to_uri.aor

        if self.authenticator is not None:
            outcome = await self.authenticator.authenticate(request, incoming.peer, proxy=False)
            if answer_refusal(incoming, outcome):
                if isinstance(outcome, (Reject, Unavailable)):
                    self.stats.rejections += 1
                return

        now = self.clock()
        if request.contact_is_star:
            await self._remove_all(request.headers.get_all("contact"), incoming, aor, now)
        elif "contact" in request.headers:
            updates = await self._plan(incoming, aor, now)
            await self._apply(aor, updates, now)
        else:
            self.stats.queries += 1
        await self._answer(incoming, aor, now)

    async def _remove_all(
        self, values: list[str], incoming: IncomingRequest, aor: str, now: float
    ) -> None:
        request = incoming.request
        if len(values) != 1 or request.expires != 0:
            raise _Refused(400, "Contact: * needs Expires: 0 and no other Contact")
        call_id, cseq = request.call_id, request.cseq.number
        for binding in await self.locator.bindings(aor):
            if binding.call_id == call_id and cseq <= binding.cseq:
                raise _Refused(500, "Out of order CSeq")
        removed = await self.locator.remove_aor(aor, now=now)
        self.stats.unregistrations += len(removed)
        for binding in removed:
            _log_change("unregistered", binding, ": Contact: *")

    async def _plan(self, incoming: IncomingRequest, aor: str, now: float) -> list[_Update]:
        """Every change the request asks for, validated before any is made."""
        request = incoming.request
        ctx = _Context(
            aor=aor,
            header_expires=request.expires,
            call_id=request.call_id,
            cseq=request.cseq.number,
            existing={b.contact: b for b in await self.locator.bindings(aor)},
            now=now,
            peer=incoming.peer,
            path=tuple(v.strip() for v in request.headers.get_list("path") if v.strip()),
            user_agent=request.user_agent or "",
        )
        updates: list[_Update] = []
        for contact in request.contacts:
            updates.extend(self._plan_one(contact, ctx))
        return updates

    def _plan_one(self, contact: NameAddr, ctx: _Context) -> list[_Update]:
        uri = contact.uri
        if not isinstance(uri, SipUri):
            raise _Refused(400, "Contact must be a SIP or SIPS URI")
        key = str(uri)
        expires = contact.expires
        if expires is None:
            expires = ctx.header_expires if ctx.header_expires is not None else self.default_expires
        if 0 < expires < self.min_expires:
            raise _Refused(
                423, "Interval Too Brief", headers=[("Min-Expires", str(self.min_expires))]
            )
        expires = min(expires, self.max_expires)
        old = ctx.existing.get(key)
        if old is not None and old.call_id == ctx.call_id and ctx.cseq <= old.cseq:
            raise _Refused(500, "Out of order CSeq")
        if expires == 0:
            return [_Update(key, None)]

        instance = contact.param("+sip.instance")
        instance_id = _unquote(instance) if instance else None
        reg_id_text = contact.param("reg-id")
        reg_id: int | None = None
        if reg_id_text is not None:
            if not reg_id_text.isdigit():
                raise _Refused(400, f"malformed reg-id {reg_id_text[:20]!r}")
            reg_id = int(reg_id_text)
        updates: list[_Update] = []
        if instance_id is not None:
            # RFC 5626 §6: the same instance (and flow) under a new URI replaces the old one.
            updates.extend(
                _Update(b.contact, None)
                for b in ctx.existing.values()
                if b.contact != key and b.instance_id == instance_id and b.reg_id == reg_id
            )
        host, port = self._reach(uri, ctx.peer)
        binding = Binding(
            aor=ctx.aor,
            contact=key,
            transport=ctx.peer.transport,
            host=host,
            port=port,
            connection_id=ctx.peer.connection_id,
            expires_at=ctx.now + expires,
            registered_at=ctx.now,
            call_id=ctx.call_id,
            cseq=ctx.cseq,
            q=contact.q,
            path=ctx.path,
            user_agent=ctx.user_agent,
            instance_id=instance_id,
            reg_id=reg_id,
        )
        # Same contact from the same place: a refresh. From elsewhere (NAT rebinding,
        # another transport), the operator hears of it as a new registration.
        refresh = old is not None and old.peer == binding.peer
        updates.append(_Update(key, binding, refresh=refresh))
        return updates

    def _reach(self, contact: SipUri, peer: Peer) -> tuple[str, int]:
        """Where requests for a binding go: its source (``nat_fix``), or, without
        it, a UDP Contact's own IP address and port."""
        if self.nat_fix or peer.connection_id is not None or not is_ip_address(contact.host):
            return peer.host, peer.port
        return contact.host, contact.port or (5061 if contact.secure else 5060)

    async def _apply(self, aor: str, updates: list[_Update], now: float) -> None:
        stats = self.stats
        for update in updates:
            binding = update.binding
            if binding is None:
                removed = await self.locator.remove(aor, update.contact, now=now)
                if removed is not None:
                    stats.unregistrations += 1
                    _log_change("unregistered", removed)
            else:
                await self.locator.save(binding)
                stats.registrations += 1
                if update.refresh:
                    logger.debug(
                        "refreshed %s -> %s for %d s", aor, binding.contact, binding.expires_in(now)
                    )
                elif logger.isEnabledFor(logging.INFO):
                    agent = f", {binding.user_agent}" if binding.user_agent else ""
                    _log_change("registered", binding, f" for {binding.expires_in(now)} s{agent}")

    async def _answer(self, incoming: IncomingRequest, aor: str, now: float) -> None:
        headers: list[tuple[str, str]] = []
        for binding in await self.locator.lookup(aor, now):
            value = f"<{binding.contact}>;expires={binding.expires_in(now)}"
            if binding.q != 1.0:
                value += f";q={_format_q(binding.q)}"
            headers.append(("Contact", value))
        request = incoming.request
        if "path" in (s.lower() for s in request.supported):
            headers.extend(("Path", v) for v in request.headers.get_all("path"))
        headers.append(("Date", formatdate(now, usegmt=True)))
        incoming.respond(200, headers=headers)
