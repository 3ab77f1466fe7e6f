"""Digest authentication of requests, as one object the registrar and the proxy share.

:class:`Authenticator` turns a request into exactly one :data:`AuthOutcome`, and
the caller maps that outcome onto the wire: a challenge (401 or 407), a final
rejection, silence, or a 503 when the user service is down. Keeping the decision
separate from the response lets the registrar, the proxy and a user's own
:class:`~sdpbx.stack.RequestHandler` answer alike, and lets tests check the
decision without parsing responses.

The rules, in the order they apply:

1. A request the :class:`~sdpbx.sip.throttle.FailureThrottle` blocks is
   dropped unanswered (counted, logged once per block): a (source, user) pair
   that failed too often, or a source that failed too often across user names,
   unless the user authenticated from there before (see that module for the
   policy). The user is the credentials' username, else the To (REGISTER) or
   From user. Anything malformed from a blocked source is dropped, not answered.
2. Credentials are taken from ``Authorization`` (``proxy=False``) or
   ``Proxy-Authorization`` (``proxy=True``); the first Digest value whose realm
   is ours is used. Values for other realms belong to other servers (RFC 3261
   §22.3) and values of unknown schemes (RFC 4475 regaut01) are skipped, so a
   request carrying only those is challenged, never refused. A malformed Digest
   value (any field: every one is validated when parsed), or a request whose
   To/From cannot be read, is a 400: checking credentials fails only with
   :class:`~sdpbx.sip.errors.SipParseError`, which becomes that 400 here.
   Credentials whose digest ``uri`` does not name the Request-URI (RFC 7616
   §3.4.6, compared by URI equivalence; the bare ``sip:host:port`` of the
   Request-URI is accepted too unless ``strict_digest_uri``, as SIPp sends it)
   are a 400 too.
3. The credentials' username must equal the user of the To URI for REGISTER,
   of the From URI otherwise (``check_username``, on by default): a device may
   only register or call as itself. Some deployments (and SIPp's ``-au``) use
   one auth account for many AoRs; they turn the check off.
4. The user is looked up with a deadline (``backend_timeout``): a backend
   error or timeout is a 503 within that time, never a hang. A rejection by the
   backend is a 403, or silence when it says ``spam``.
5. The digest is verified. A wrong password (or unknown user: the same answer,
   so replies do not reveal who exists) is challenged again and counted against
   the source; the failure that reaches the throttle limit is answered 403 and
   the source is dropped while blocked. A stale nonce is re-challenged with
   ``stale=true``; a replayed nonce-count is re-challenged with a fresh nonce
   (friendlier than 403 to a phone that lost count, and useless to an attacker);
   a nonce we never issued is re-challenged too (a restart with a new secret).
   Credentials without ``qop`` are re-challenged (offering qop=auth) unless
   ``allow_qop_less`` is set for old phones; then each nonce answers one request.

Challenges are sent statelessly (:meth:`IncomingRequest.respond_stateless`): an
unauthenticated source, possibly a spoofed one, gets one response per request
and no Timer G retransmissions, and costs no transaction state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import anyio
from attrs import define, frozen

from .sip.auth import (
    DEFAULT_ALGORITHMS,
    AuthResult,
    DigestCredentials,
    DigestServer,
    UnsupportedAuthScheme,
    digest_uri_matches,
)
from .sip.errors import SipParseError
from .sip.message import Request
from .sip.nonce import NonceManager
from .sip.throttle import FailureThrottle
from .sip.uri import SipUri
from .users import SipUser, UserBackend, UserBackendError, UserRejected

if TYPE_CHECKING:
    from .config import ProxyConfig
    from .stack import IncomingRequest
    from .transport.base import Peer

__all__ = [
    "AuthOutcome",
    "AuthStats",
    "Authenticated",
    "Authenticator",
    "Challenge",
    "Drop",
    "Reject",
    "Unavailable",
    "answer_refusal",
    "request_domain",
]

logger = logging.getLogger("sdpbx.authn")

#: Seconds between sweeps of aged-out throttle and nonce-count state.
EXPIRE_INTERVAL = 10.0


@frozen
class Authenticated:
    """The request proved it comes from ``user``."""

    user: SipUser


@frozen
class Challenge:
    """Answer ``status`` (401 or 407) with these ``WWW-``/``Proxy-Authenticate`` headers."""

    status: Literal[401, 407]
    headers: tuple[tuple[str, str], ...]


@frozen
class Reject:
    """Answer with this final status (403, or 400 for malformed credentials)."""

    status: int
    reason: str


@frozen
class Drop:
    """Send nothing at all (a blocked source, or a user the backend calls spam).

    ``absorb`` keeps the transaction for 64*T1 to swallow retransmissions: for
    a decision that cost a backend lookup. Otherwise nothing is kept and a
    retransmission is judged again.
    """

    reason: str
    absorb: bool = False


@frozen
class Unavailable:
    """The user service failed or timed out: answer 503 (with Retry-After) or 500."""

    status: int
    reason: str
    retry_after: int | None = 5


AuthOutcome = Authenticated | Challenge | Reject | Drop | Unavailable


@define
class AuthStats:
    """Counters for the health endpoint and tests."""

    challenges: int = 0
    successes: int = 0
    failures: int = 0
    rejections: int = 0
    drops: int = 0
    backend_errors: int = 0
    #: Requests answered 503 because their source had too many lookups waiting.
    shed: int = 0


def request_domain(request: Request) -> str:
    """The realm a request authenticates in: the To host of a REGISTER (the domain
    of the AoR), the From host of anything else (the caller's domain)."""
    addr = request.to if request.method == "REGISTER" else request.from_
    uri = addr.uri
    if isinstance(uri, SipUri):
        return uri.host.lower()
    raise SipParseError(f"{'To' if request.method == 'REGISTER' else 'From'} is not a SIP URI")


def _claimed_user(request: Request) -> str | None:
    """The user part the request claims to act as (unescaped), if any."""
    addr = request.to if request.method == "REGISTER" else request.from_
    uri = addr.uri
    return uri.user_unescaped if isinstance(uri, SipUri) else None


class Authenticator:
    """Decides whether a request is authenticated; see the module docstring for the rules.

    ``realm_for`` is either one realm for every request or a function of the
    request (e.g. :func:`request_domain` for a multi-domain PBX). ``clock`` gives
    wall-clock seconds for nonces (so they survive a restart) and the throttle.
    """

    def __init__(
        self,
        users: UserBackend,
        *,
        realm_for: Callable[[Request], str] | str,
        nonces: NonceManager,
        throttle: FailureThrottle | None = None,
        backend_timeout: float = 5.0,
        check_username: bool = True,
        algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS,
        allow_qop_less: bool = False,
        strict_digest_uri: bool = False,
        max_lookups_per_source: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if backend_timeout <= 0:
            raise ValueError("backend_timeout must be positive")
        if max_lookups_per_source < 1:
            raise ValueError("max_lookups_per_source must be positive")
        self.users = users
        self._realm_for = realm_for
        self.nonces = nonces
        self.digest = DigestServer(nonces, algorithms=algorithms, qop_required=not allow_qop_less)
        self.throttle = throttle
        self.strict_digest_uri = strict_digest_uri
        self.backend_timeout = backend_timeout
        self.check_username = check_username
        self.clock = clock
        self.stats = AuthStats()
        self._next_expiry = clock() + EXPIRE_INTERVAL
        #: User lookups one source may have waiting at once. A burst from one
        #: address (a flood, or a NAT whose phones all re-register) beyond it is
        #: answered 503 at once instead of queueing behind a slow backend, so
        #: the work and memory a source can hold are bounded.
        self.max_lookups_per_source = max_lookups_per_source
        self._lookups: dict[str, int] = {}

    @classmethod
    def from_config(
        cls,
        config: ProxyConfig,
        users: UserBackend,
        *,
        nonces: NonceManager,
        realm_for: Callable[[Request], str] | str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Authenticator:
        """Wire ``[proxy]``: the first realm (or the request's domain when there is
        none), the throttle (``auth_failure_limit`` per user and source, 0
        disables; ``auth_source_failure_limit``, default five times that, per
        source; ``auth_block_seconds``, ``auth_trust_seconds``,
        ``auth_max_tracked``), ``auth_algorithms`` (challenges offered, in that
        order), ``auth_allow_qop_less`` and ``auth_strict_digest_uri``."""
        if realm_for is None:
            realm_for = config.realms[0] if len(config.realms) == 1 else request_domain
        throttle = None
        if config.auth_failure_limit > 0:
            source_limit = config.auth_source_failure_limit
            throttle = FailureThrottle(
                limit=config.auth_failure_limit,
                block_for=config.auth_block_seconds,
                source_limit=source_limit or 5 * config.auth_failure_limit,
                trust_for=config.auth_trust_seconds,
                max_entries=config.auth_max_tracked,
            )
        return cls(
            users,
            realm_for=realm_for,
            nonces=nonces,
            throttle=throttle,
            algorithms=config.auth_algorithms,
            allow_qop_less=config.auth_allow_qop_less,
            strict_digest_uri=config.auth_strict_digest_uri,
            clock=clock,
        )

    def realm(self, request: Request) -> str:
        realm_for = self._realm_for
        return realm_for if isinstance(realm_for, str) else realm_for(request)

    def challenge(
        self,
        request: Request,
        *,
        proxy: bool,
        stale: bool = False,
        algorithms: tuple[str, ...] | None = None,
    ) -> Challenge:
        """A fresh challenge for ``request``: one header per offered algorithm."""
        self.stats.challenges += 1
        challenges = self.digest.challenges(
            self.realm(request), self.clock(), stale, algorithms=algorithms
        )
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        headers = tuple((name, c.to_header_value()) for c in challenges)
        return Challenge(407 if proxy else 401, headers)

    async def authenticate(self, request: Request, peer: Peer, *, proxy: bool) -> AuthOutcome:
        stats = self.stats
        source = peer.host
        throttle = self.throttle
        if throttle is not None and throttle.is_source_blocked(source, self.clock()):
            # Cheap: one parse of the credentials to see whether this is a user
            # trusted at this source; anything else is dropped at once.
            try:
                found = self._credentials(request, self.realm(request), proxy=proxy)
                acting = found.username if found is not None else _claimed_user(request)
            except SipParseError:
                acting = None
            if throttle.is_blocked(source, acting, self.clock()):
                return self._drop(request, source)

        try:
            realm = self.realm(request)
            credentials = self._credentials(request, realm, proxy=proxy)
            claimed = _claimed_user(request)
            request_uri = str(request.uri)
        except SipParseError as exc:
            stats.rejections += 1
            return Reject(400, f"malformed credentials: {exc.reason}"[:100])
        if throttle is not None:
            acting = credentials.username if credentials is not None else claimed
            if throttle.is_blocked(source, acting, self.clock()):
                return self._drop(request, source)
        if credentials is None:
            return self.challenge(request, proxy=proxy)

        if not digest_uri_matches(credentials.uri, request_uri, strict=self.strict_digest_uri):
            stats.rejections += 1
            logger.info(
                "%s from %s: digest uri %r is not the Request-URI %r",
                request.method,
                source,
                credentials.uri,
                request_uri,
            )
            return Reject(400, "Digest uri does not match the Request-URI")

        if self.check_username and credentials.username != claimed:
            stats.rejections += 1
            logger.info(
                "%s from %s: username %r is not the %s user",
                request.method,
                source,
                credentials.username,
                "To" if request.method == "REGISTER" else "From",
            )
            return Reject(403, "Username does not match the address")

        # A nonce we never issued costs an HMAC here, never a backend lookup.
        if not self.nonces.is_ours(credentials.nonce):
            return self.challenge(request, proxy=proxy)

        waiting = self._lookups.get(source, 0)
        if waiting >= self.max_lookups_per_source:
            stats.shed += 1
            return Unavailable(503, "Too many requests from this address")
        self._lookups[source] = waiting + 1
        try:
            with anyio.fail_after(self.backend_timeout):
                user = await self.users.get_user(credentials.username, realm)
        except TimeoutError:
            stats.backend_errors += 1
            logger.warning("user backend timed out looking up %r", credentials.username)
            return Unavailable(503, "User backend timeout")
        except UserBackendError as exc:
            stats.backend_errors += 1
            logger.warning("user backend failed looking up %r: %s", credentials.username, exc)
            return Unavailable(503, "User backend unavailable")
        except UserRejected as exc:
            if exc.spam:
                stats.drops += 1
                logger.info("dropped %s from %s: backend says spam", request.method, source)
                return Drop("spam", absorb=True)
            stats.rejections += 1
            return Reject(403, f"User {exc.reason}"[:100])
        finally:
            left = self._lookups[source] - 1
            if left:
                self._lookups[source] = left
            else:
                del self._lookups[source]

        secret = None if user is None else user.secret()
        now = self.clock()
        result = self.digest.verify(
            credentials,
            method=request.method,
            secret=secret,
            now=now,
            expected_realm=realm,
            body=request.body,
            request_uri=request_uri,
            strict_uri=self.strict_digest_uri,
        )
        if result is AuthResult.OK:
            assert user is not None
            stats.successes += 1
            if throttle is not None:
                throttle.record_success(source, credentials.username, now)
            return Authenticated(user)
        if result is AuthResult.BAD_CREDENTIALS:
            stats.failures += 1
            if throttle is not None and throttle.record_failure(source, credentials.username, now):
                stats.rejections += 1
                logger.warning(
                    "blocking %r from %s for %.0f s after repeated authentication failures",
                    credentials.username,
                    source,
                    throttle.block_for,
                )
                return Reject(403, "Too many authentication failures")
            return self.challenge(request, proxy=proxy)
        if result is AuthResult.STALE:
            return self.challenge(request, proxy=proxy, stale=True)
        if result is AuthResult.UNSUPPORTED_ALGORITHM and secret is not None:
            # e.g. an MD5-only stored HA1 asked to verify SHA-256: offer what works.
            return self.challenge(request, proxy=proxy, algorithms=secret.algorithms())
        # REPLAY, INVALID_NONCE, REALM_MISMATCH: a fresh nonce ends the confusion.
        return self.challenge(request, proxy=proxy)

    def _drop(self, request: Request, source: str) -> Drop:
        self.stats.drops += 1
        logger.debug("dropped %s from blocked source %s", request.method, source)
        return Drop("blocked after repeated authentication failures")

    def expire(self, now: float) -> None:
        """Forget throttle and nonce-count state that has aged out, so memory
        returns after a flood ends (the stack's timer calls it every
        :data:`EXPIRE_INTERVAL` seconds once the authenticator is a timer client)."""
        if self.throttle is not None:
            self.throttle.expire(now)
        self.nonces.expire(now)

    # -- TimerClient: ``stack.add_timer_client(authenticator, authenticator.clock)``
    def next_deadline(self) -> float | None:
        return self._next_expiry

    def handle_timer(self, now: float) -> None:
        self._next_expiry = now + EXPIRE_INTERVAL
        self.expire(now)

    @staticmethod
    def _credentials(request: Request, realm: str, *, proxy: bool) -> DigestCredentials | None:
        values = request.proxy_authorization if proxy else request.authorization
        for value in values:
            try:
                credentials = DigestCredentials.parse(value)
            except UnsupportedAuthScheme:
                continue
            if credentials.realm == realm:
                return credentials
        return None


def answer_refusal(incoming: IncomingRequest, outcome: AuthOutcome) -> bool:
    """Put a non-:class:`Authenticated` outcome on the wire; ``True`` if it was one.

    Nothing of an unauthenticated request is kept, as Kamailio's ``sl``
    replies keep nothing: a :class:`Drop` sends nothing and forgets the
    transaction (its retransmissions are judged again, as cheaply); a
    :class:`Challenge` or :class:`Reject` is sent once, statelessly. (A
    backend's spam verdict is the exception: its drop absorbs retransmissions
    for 64*T1, so the backend is asked once.) Kept
    state would be an INVITE server transaction retransmitting (Timer G) until
    an ACK that a spoofed source never sends -- 11 responses per request -- or
    a REGISTER's answer held for Timer J: 20,000 wrong passwords in four
    seconds held ~25 MB for 32 s.
    """
    if isinstance(outcome, Authenticated):
        return False
    if incoming.answered:
        # Answered while the backend was asked (a CANCEL's 487): nothing to add.
        return True
    if isinstance(outcome, Drop):
        if outcome.absorb:
            incoming.drop()
        else:
            incoming.discard()
    elif isinstance(outcome, Challenge):
        incoming.respond_stateless(outcome.status, headers=outcome.headers)
    elif isinstance(outcome, Reject):
        incoming.respond_stateless(outcome.status, outcome.reason)
    elif isinstance(outcome, Unavailable):
        retry = outcome.retry_after
        headers = () if retry is None else (("Retry-After", str(retry)),)
        incoming.respond(outcome.status, outcome.reason, headers=headers)
    return True
