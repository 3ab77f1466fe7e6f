"""Registering to a carrier: the client side of a trunk's ``register_enabled``.

Many carriers only send calls to a PBX that keeps a registration with them, so
one :class:`TrunkRegistration` per such trunk runs for the life of the server:
REGISTER (answering the digest challenge), refresh well before the granted
expiry, back off when the carrier fails, and remove the binding on the way out
so calls stop arriving at an address that no longer answers.

The schedule is a pure function (:func:`refresh_delay`, :func:`retry_delay`),
so its rules are unit tests; the loop only sleeps and sends. Every REGISTER
goes out as a fresh transaction from a challenge-free request: credentials
are never sent before the carrier asks, which costs a round trip per refresh
and never trips a carrier's replay or stale-nonce rules.

Status is a frozen :class:`RegistrationStatus` value that is replaced, never
mutated, so a health endpoint or a console can read :attr:`TrunkRegistration.status`
at any time and an ``on_change`` callback sees each transition exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import anyio
from anyio.abc import TaskStatus
from attrs import evolve, frozen

from .b2bua.uac_auth import add_credentials
from .errors import TransactionClosed, TransactionTimedOut
from .sip import Headers, NameAddr, Request, Response, SipParseError, SipUri, parse_uri
from .sip.ids import new_call_id, new_tag
from .transport.base import Peer, TransportName

if TYPE_CHECKING:
    from .config import TrunkConfig
    from .stack import SipStack

__all__ = [
    "DEFAULT_RETRY_DELAYS",
    "MIN_REFRESH_DELAY",
    "RegistrationState",
    "RegistrationStatus",
    "TrunkRegistration",
    "refresh_delay",
    "retry_delay",
    "trunk_registration_from_config",
]

log = logging.getLogger("sdpbx.trunk_registration")

RegistrationState = Literal["registering", "registered", "failed", "stopped"]

#: Seconds between attempts after 1, 2, 3, 4+ consecutive failures.
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (5.0, 10.0, 30.0, 60.0)
#: No refresh is scheduled sooner than this, whatever a registrar grants: a
#: carrier answering ``expires=0`` or ``1`` must not turn us into a flood.
MIN_REFRESH_DELAY = 2.0
#: A ``Retry-After`` longer than this is treated as this (a misconfigured
#: carrier should not silence a trunk for a day).
MAX_RETRY_AFTER = 3600.0
#: Challenges answered within one attempt before giving up (wrong password).
MAX_AUTH_ROUNDS = 3


@frozen
class RegistrationStatus:
    """Where one trunk registration stands, as health checks and consoles show it.

    ``expires_at`` is wall-clock time (the ``clock`` given to the registration)
    when the carrier's binding runs out, set only while ``registered``.
    ``registered_count`` counts every 2xx, first registration and refreshes.
    """

    state: RegistrationState
    last_code: int | None = None
    expires_at: float | None = None
    last_error: str | None = None
    registered_count: int = 0


def refresh_delay(granted: int) -> float:
    """Seconds until a binding granted for ``granted`` seconds is refreshed.

    80 % of the grant, but never later than 30 s before it ends (so a long
    grant is not refreshed an hour early, and a lost refresh still has time
    for retransmissions), and never sooner than :data:`MIN_REFRESH_DELAY`.
    """
    return max(granted * 0.8, granted - 30.0, MIN_REFRESH_DELAY)


def retry_delay(failures: int, delays: Sequence[float] = DEFAULT_RETRY_DELAYS) -> float:
    """Seconds before the next attempt after ``failures`` consecutive failures (>= 1)."""
    if not delays:
        raise ValueError("need at least one retry delay")
    return float(delays[min(max(failures, 1), len(delays)) - 1])


class _Failed(Exception):
    def __init__(self, message: str, code: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after = retry_after


def _same_contact(a: SipUri, b: SipUri) -> bool:
    """Loose URI match: registrars rewrite case and drop or reorder parameters."""
    default = 5061 if a.secure else 5060
    return (
        a.user_unescaped == b.user_unescaped
        and a.host.lower() == b.host.lower()
        and (a.port or default) == (b.port or default)
    )


def _retry_after(response: Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    head = value.split(";", 1)[0].split("(", 1)[0].strip()
    if not head.isdigit():
        return None
    return min(float(head), MAX_RETRY_AFTER)


class TrunkRegistration:
    """Keeps one binding at a carrier's registrar alive; see the module docstring.

    Run it in a task group (``await tg.start(registration.run)``: it reports
    started at once, before the first REGISTER); :meth:`stop` or cancelling the
    task removes the binding with ``Expires: 0``. Stop it before the stack it
    sends through, or the un-REGISTER can only time out.
    """

    def __init__(
        self,
        stack: SipStack,
        name: str,
        *,
        registrar: Peer,
        aor: str,
        username: str,
        password: str,
        expires: int = 3600,
        contact_user: str | None = None,
        registrar_uri: str | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[RegistrationStatus], None] | None = None,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        unregister_timeout: float = 5.0,
    ) -> None:
        aor_uri = parse_uri(aor)
        if not isinstance(aor_uri, SipUri):
            raise ValueError(f"the AoR must be a sip: or sips: URI, got {aor!r}")
        if expires <= 0:
            raise ValueError("expires must be positive")
        if not retry_delays or any(d < 0 for d in retry_delays):
            raise ValueError("retry_delays must be non-negative and not empty")
        self.stack = stack
        self.name = name
        self.registrar = registrar
        self.aor = aor_uri
        self.username = username
        self.password = password
        #: What we ask for; raised for good when a registrar answers 423.
        self.expires = expires
        self.registrar_uri = registrar_uri or f"{aor_uri.scheme}:{aor_uri.host_port}"
        parse_uri(self.registrar_uri)
        self.clock = clock
        self.on_change = on_change
        self.retry_delays = tuple(retry_delays)
        self.unregister_timeout = unregister_timeout
        self.contact_user = contact_user or aor_uri.user
        # Fixed when run() starts: before the stack is serving, its port may still be 0.
        self._contact: str | None = None
        self.call_id = new_call_id()
        self.from_tag = new_tag()
        self.status = RegistrationStatus("stopped")
        self._cseq = 0
        self._bound_until: float | None = None
        self._failures = 0
        # Created on first wait, so the object can be built outside an event loop.
        self._changed: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None

    @property
    def contact(self) -> str:
        """Our Contact (``<sip:user@host:port>``), as registered at the carrier."""
        if self._contact is not None:
            return self._contact
        return self.stack.contact_for(self.registrar.transport, self.contact_user)

    # -- status ----------------------------------------------------------------

    def _set_status(self, status: RegistrationStatus) -> None:
        if status == self.status:
            return
        self.status = status
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        if self.on_change is not None:
            try:
                self.on_change(status)
            except Exception:
                log.exception("trunk %s: on_change callback failed", self.name)

    async def wait_until(
        self, predicate: Callable[[RegistrationStatus], bool]
    ) -> RegistrationStatus:
        """Wait for a status that satisfies ``predicate`` (checked now, then on each change)."""
        while not predicate(self.status):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return self.status

    # -- the loop ----------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Register and keep the registration fresh until stopped or cancelled."""
        if self._done is not None:
            raise RuntimeError(f"trunk registration {self.name!r} is already running")
        self._done = anyio.Event()
        self._contact = self.contact
        self._set_status(evolve(self.status, state="registering", expires_at=None))
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                while True:
                    delay = await self._attempt()
                    await anyio.sleep(delay)
        finally:
            self._scope = None
            with anyio.CancelScope(shield=True):
                await self._unregister()
                self._contact = None
                self._set_status(evolve(self.status, state="stopped", expires_at=None))
                self._done.set()
                self._done = None

    async def stop(self) -> None:
        """Remove the binding (``Expires: 0``) and end :meth:`run`."""
        done = self._done
        scope = self._scope
        if done is None:
            return
        if scope is not None:
            scope.cancel()
        await done.wait()

    async def _attempt(self) -> float:
        """One registration (with its challenge rounds); returns the seconds to sleep."""
        try:
            response = await self._register(self.expires)
            granted = self._granted(response)
        except _Failed as failure:
            return self._failed(failure)
        self._failures = 0
        now = self.clock()
        self._bound_until = now + granted
        self._set_status(
            RegistrationStatus(
                "registered",
                last_code=response.status,
                expires_at=now + granted,
                last_error=None,
                registered_count=self.status.registered_count + 1,
            )
        )
        delay = refresh_delay(granted)
        log.info("trunk %s: registered for %d s, refreshing in %.1f s", self.name, granted, delay)
        return delay

    def _failed(self, failure: _Failed) -> float:
        self._failures += 1
        delay = retry_delay(self._failures, self.retry_delays)
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        log.warning(
            "trunk %s: registration failed (%s), retrying in %.1f s",
            self.name,
            failure.message,
            delay,
        )
        self._set_status(
            evolve(
                self.status,
                state="failed",
                last_code=failure.code,
                expires_at=None,
                last_error=failure.message,
            )
        )
        return delay

    def _granted(self, response: Response) -> int:
        """The expiry the registrar granted our Contact (RFC 3261 §10.2.4)."""
        granted: int | None = None
        try:
            ours = NameAddr.parse(self.contact).uri
            for contact in response.contacts:
                uri = contact.uri
                if (
                    isinstance(uri, SipUri)
                    and isinstance(ours, SipUri)
                    and _same_contact(uri, ours)
                    and contact.expires is not None
                ):
                    granted = contact.expires
                    break
            if granted is None:
                granted = response.expires
        except SipParseError as exc:
            log.info("trunk %s: unreadable expiry in 2xx (%s)", self.name, exc.reason)
        if granted is None:
            granted = self.expires
        if granted <= 0:
            raise _Failed("registrar granted no time", response.status)
        return granted

    # -- REGISTER ----------------------------------------------------------------

    def _build(self, expires: int) -> Request:
        self._cseq += 1
        aor = str(self.aor)
        headers = Headers(
            [
                ("Max-Forwards", "70"),
                ("From", f"<{aor}>;tag={self.from_tag}"),
                ("To", f"<{aor}>"),
                ("Call-ID", self.call_id),
                ("CSeq", f"{self._cseq} REGISTER"),
                ("Contact", self.contact),
                ("Expires", str(expires)),
                ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"),
            ]
        )
        if self.stack.user_agent:
            headers = headers.add("User-Agent", self.stack.user_agent)
        return Request.create("REGISTER", self.registrar_uri, headers)

    async def _register(self, expires: int) -> Response:
        """Send REGISTER until a 2xx; raise :class:`_Failed` otherwise.

        Challenges are answered up to :data:`MAX_AUTH_ROUNDS` times and a 423
        raises ``expires`` to the registrar's ``Min-Expires`` once.
        """
        request = self._build(expires)
        auth_rounds = 0
        raised_expiry = False
        while True:
            response = await self._send(request)
            status = response.status
            self._cseq = max(self._cseq, request.cseq.number)
            if 200 <= status < 300:
                return response
            if status in (401, 407) and auth_rounds < MAX_AUTH_ROUNDS:
                retry = add_credentials(
                    request, response, username=self.username, password=self.password
                )
                if retry is not None:
                    auth_rounds += 1
                    request = retry
                    continue
                raise _Failed(f"{status} {response.reason}: credentials refused", status)
            if status == 423 and not raised_expiry and expires > 0:
                minimum = self._min_expires(response)
                if minimum is not None and minimum > expires:
                    log.info("trunk %s: registrar wants expires >= %d", self.name, minimum)
                    raised_expiry = True
                    expires = self.expires = minimum
                    request = self._build(expires)
                    auth_rounds = 0
                    continue
            raise _Failed(f"{status} {response.reason}", status, _retry_after(response))

    @staticmethod
    def _min_expires(response: Response) -> int | None:
        value = (response.headers.get("min-expires") or "").strip()
        return int(value) if value.isdigit() else None

    async def _send(self, request: Request) -> Response:
        try:
            async with self.stack.request(request, self.registrar) as client:
                return await client.final_response()
        except TransactionTimedOut:
            raise _Failed("timeout: no answer from the registrar", 408) from None
        except TransactionClosed:
            # The stack closed, or dropped the transaction: still no answer.
            raise _Failed("no final response from the registrar", 408) from None
        except OSError as exc:
            raise _Failed(f"cannot send: {exc}") from None
        except SipParseError as exc:
            raise _Failed(f"unreadable response: {exc.reason}") from None

    async def _unregister(self) -> None:
        """Remove our binding if the registrar may still hold it; bounded, never raises."""
        until = self._bound_until
        if until is None or until <= self.clock():
            return
        with anyio.move_on_after(self.unregister_timeout) as scope:
            try:
                await self._register(0)
            except _Failed as failure:
                log.warning("trunk %s: un-REGISTER failed: %s", self.name, failure.message)
            else:
                self._bound_until = None
                log.info("trunk %s: unregistered", self.name)
        if scope.cancelled_caught:
            log.warning("trunk %s: un-REGISTER timed out", self.name)


_TRANSPORTS: dict[str, TransportName] = {
    "UDP": "UDP",
    "TCP": "TCP",
    "TLS": "TLS",
    "WS": "WS",
    "WSS": "WSS",
}


def _trunk_peer(dest: str, transport: str | None) -> tuple[Peer, str]:
    """(where to send, Request-URI) for a trunk's ``dest``."""
    text = dest if dest.startswith(("sip:", "sips:")) else f"sip:{dest}"
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise ValueError(f"not a SIP destination: {dest!r}")
    name = (transport or uri.transport or ("TLS" if uri.secure else "UDP")).upper()
    tname = _TRANSPORTS.get(name)
    if tname is None:
        raise ValueError(f"unknown transport {name!r} for {dest!r}")
    port = uri.port or (5061 if tname == "TLS" else 5060)
    return Peer(tname, uri.host, port), f"{uri.scheme}:{uri.host_port}"


def trunk_registration_from_config(
    stack: SipStack,
    name: str,
    cfg: TrunkConfig,
    *,
    clock: Callable[[], float] = time.time,
    on_change: Callable[[RegistrationStatus], None] | None = None,
) -> TrunkRegistration:
    """The registration ``[proxy.trunks.<name>]`` asks for (AoR ``sip:username@dest-host``)."""
    if not cfg.username or cfg.password is None:
        raise ValueError(f"trunk {name!r}: registering needs username and password")
    peer, request_uri = _trunk_peer(cfg.dest, cfg.transport)
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return TrunkRegistration(
        stack,
        name,
        registrar=peer,
        aor=f"sip:{cfg.username}@{host}",
        username=cfg.username,
        password=cfg.password,
        expires=cfg.register_expires,
        registrar_uri=request_uri,
        clock=clock,
        on_change=on_change,
    )
