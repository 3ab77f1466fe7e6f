"""HTTP Digest authentication for SIP, both sides, without I/O.

SIP borrows Digest from HTTP (RFC 3261 §22); RFC 7616 adds SHA-256 and RFC 8760
brings it back to SIP. A server may send several challenges, strongest first, for
the client to answer the first one it understands; in practice many deployed
clients answer only the first, or fail outright when one is SHA-256, so a server
offers MD5 alone by default (:data:`DEFAULT_ALGORITHMS`) and SHA-256 when asked.

Nonces are stateless: an HMAC over the issue time and a random salt. Any nonce we
issued verifies without a table, survives a restart that keeps the secret, and
its age is read from the nonce itself. The only state is the nonce-count seen per
(nonce, user) (replay protection), recorded only for requests that proved the
password; that table is bounded, and a nonce whose entry was evicted is answered
as *stale*, which costs the client one extra round trip and never costs us
memory. Credentials without ``qop`` (RFC 2069) carry no count, so they are
refused unless the server allows them, and then their nonce answers exactly one
request. The digest ``uri`` must name the same resource as the Request-URI
(RFC 7616 §3.4.6): compared by URI equivalence (RFC 3261 §19.1.4), because a
client or proxy may re-serialise the URI (host case, escapes, parameter order)
while meaning the same target, and byte equality would refuse it for nothing.

The header values are parsed leniently where real phones disagree (quoted or
bare tokens, empty list elements, any case), and strictly where it matters
(duplicate parameters, unterminated quotes and control characters are a 400).
Every field is validated when a header is parsed -- text without control
characters or undecodable bytes, a hexadecimal ``response``, tokens where
tokens belong -- so that checking credentials can only fail with
:class:`SipParseError`, never with an exception from deeper down.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from attrs import field, frozen

from .errors import SipParseError
from .nonce import NonceManager, NonceStatus
from .uri import SipUri, parse_uri, unescape

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "AuthResult",
    "DigestChallenge",
    "DigestCredentials",
    "DigestServer",
    "UnsupportedAuthScheme",
    "UserSecret",
    "build_authorization",
    "choose_challenge",
    "compute_ha1",
    "compute_response",
    "digest_uri_matches",
]


class UnsupportedAuthScheme(SipParseError):
    """The peer used an authentication scheme or variant we do not speak.

    A registrar answers this with a fresh Digest challenge (RFC 4475 regaut01),
    which is why the default status is 401 rather than 400.
    """

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason, status)


# ---------------------------------------------------------------------------
# Hashing


_HASHES: dict[str, Callable[[bytes], Any]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}

#: Algorithms we implement, in order of preference (strongest first).
ALGORITHMS: tuple[str, ...] = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")

#: What a server offers unless told otherwise: MD5 alone, as Kamailio and
#: Asterisk do. Offering SHA-256 as well (RFC 8760) breaks deployed clients:
#: baresip 1.0 (Debian) fails with "Function not implemented" when a SHA-256
#: challenge is present at all, and SIPp 3.6 and sipsak answer only the first
#: challenge and speak only MD5. Ask for SHA-256 explicitly (``algorithms=``,
#: ``[proxy] auth_algorithms``) for a fleet that supports it.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("MD5",)

_CANONICAL = {name.lower(): name for name in ALGORITHMS}


def _canonical_algorithm(name: str) -> str:
    """Algorithm tokens are case-insensitive; we compare canonical spellings."""
    return _CANONICAL.get(name.lower(), name)


def _base(algorithm: str) -> str:
    """The hash behind an algorithm; raises for one we do not implement."""
    canonical = _canonical_algorithm(algorithm)
    if canonical not in _CANONICAL.values():
        raise UnsupportedAuthScheme(f"unsupported digest algorithm {algorithm!r}")
    return canonical.removesuffix("-sess")


def _hex(base: str, text: str) -> str:
    return str(_HASHES[base](text.encode()).hexdigest())


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password), the value a user store may keep instead of a password.

    For ``-sess`` algorithms this is still the plain HA1; the session key is
    derived per nonce inside :func:`compute_response`, so one stored value serves
    both variants.
    """
    return _hex(_base(algorithm), f"{username}:{realm}:{password}")


def compute_response(
    ha1: str,
    *,
    algorithm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: int | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest of RFC 7616 §3.4.1 (and RFC 2069 when ``qop`` is None)."""
    base = _base(algorithm)
    canonical = _canonical_algorithm(algorithm)
    if canonical.endswith("-sess"):
        if cnonce is None:
            raise ValueError("-sess algorithms need a cnonce")
        ha1 = _hex(base, f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        ha2 = _hex(base, f"{method}:{uri}:{_HASHES[base](body).hexdigest()}")
    else:
        ha2 = _hex(base, f"{method}:{uri}")
    if qop is None:
        return _hex(base, f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce")
    return _hex(base, f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


# ---------------------------------------------------------------------------
# Header values: parsing and formatting

_WS = "[ \t\r\n]*"
_TOKEN_CHARS = r"!%'*+\-.0-9A-Z^_`a-z|~"
_SCHEME_RE = re.compile(rf"{_WS}([{_TOKEN_CHARS}]+)(?:[ \t\r\n]+|\Z)")
_QTEXT = r'[^"\\\x00-\x08\x0a-\x1f\x7f]'
_QPAIR = r"\\[^\x00-\x08\x0a-\x1f\x7f]"
_PARAM_RE = re.compile(
    rf"([{_TOKEN_CHARS}]+){_WS}={_WS}"
    # quoted-string as an unrolled loop, so a long value is scanned once
    rf'(?:"({_QTEXT}*(?:{_QPAIR}{_QTEXT}*)*)"'
    r'|([^ \t\r\n,"\x00-\x1f\x7f]+))'
)
_SEP_RE = re.compile(rf"{_WS}(?:,{_WS})*")
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_TOKEN_RE = re.compile(rf"[{_TOKEN_CHARS}]+")
# Control characters, and the lone surrogates that stand for bytes which were not
# UTF-8 on the wire (headers are decoded with "surrogateescape").
_CTL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_HEX_RE = re.compile(r"[0-9A-Fa-f]{1,128}")
_NC_RE = re.compile(r"[0-9A-Fa-f]{1,8}")


def _skip_separators(value: str, pos: int) -> int:
    """Skip LWS and commas; empty list elements are legal (RFC 7230 §7)."""
    m = _SEP_RE.match(value, pos)
    return pos if m is None else m.end()


def _parse_params(value: str) -> dict[str, str]:
    """Split ``Digest a=b, c="d"`` into lower-cased names and unquoted values."""
    scheme = _SCHEME_RE.match(value)
    if scheme is None:
        raise SipParseError("malformed authentication header: no scheme")
    if scheme.group(1).lower() != "digest":
        raise UnsupportedAuthScheme(f"unsupported authentication scheme {scheme.group(1)!r}")
    params: dict[str, str] = {}
    end = len(value)
    pos = _skip_separators(value, scheme.end())
    while pos < end:
        m = _PARAM_RE.match(value, pos)
        if m is None:
            raise SipParseError("malformed auth-param")
        name = m.group(1).lower()
        if name in params:
            raise SipParseError(f"duplicate auth-param {name!r}")
        quoted = m.group(2)
        if quoted is None:
            params[name] = m.group(3)
        else:
            params[name] = _UNESCAPE_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
        sep = _skip_separators(value, m.end())
        if sep < end and "," not in value[m.end() : sep]:
            raise SipParseError("auth-params must be separated by commas")
        pos = sep
    return params


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_text(_inst: object, attribute: Any, value: Any) -> None:
    """Refuse control characters (they would let a value inject header lines) and
    undecodable bytes (they cannot be hashed, nor compared with our own values)."""
    if value is not None and _CTL_RE.search(value):
        raise ValueError(f"{attribute.name} contains a control character or invalid UTF-8")


def _check_hex(_inst: object, attribute: Any, value: Any) -> None:
    if not _HEX_RE.fullmatch(value):
        raise ValueError(f"{attribute.name} must be hexadecimal")


def _check_token(_inst: object, attribute: Any, value: Any) -> None:
    if value is not None and not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"{attribute.name} must be a token, got {value!r}")


def _check_tokens(inst: object, attribute: Any, value: tuple[str, ...]) -> None:
    for item in value:
        _check_token(inst, attribute, item)


def _to_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _require(params: dict[str, str], name: str) -> str:
    try:
        return params[name]
    except KeyError:
        raise SipParseError(f"digest parameter {name!r} missing") from None


@frozen
class DigestChallenge:
    """One ``WWW-Authenticate`` / ``Proxy-Authenticate`` Digest challenge."""

    realm: str = field(validator=_check_text)
    nonce: str = field(validator=_check_text)
    algorithm: str = field(default="MD5", converter=_canonical_algorithm, validator=_check_token)
    qop: tuple[str, ...] = field(default=(), converter=_to_tuple, validator=_check_tokens)
    opaque: str | None = field(default=None, validator=_check_text)
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> DigestChallenge:
        """Parse a header value; raises :class:`SipParseError` (or its subclass
        :class:`UnsupportedAuthScheme` for a non-Digest scheme)."""
        params = _parse_params(value)
        qop = params.get("qop")
        try:
            return cls(
                realm=_require(params, "realm"),
                nonce=_require(params, "nonce"),
                algorithm=params.get("algorithm", "MD5"),
                qop=tuple(q.strip().lower() for q in qop.split(",") if q.strip()) if qop else (),
                opaque=params.get("opaque"),
                stale=params.get("stale", "").lower() == "true",
            )
        except ValueError as exc:
            raise SipParseError(f"malformed digest challenge: {exc}") from None

    def to_header_value(self) -> str:
        parts = [
            f"Digest realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"algorithm={self.algorithm}",
        ]
        if self.qop:
            parts.append(f'qop="{",".join(self.qop)}"')
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=TRUE")
        return ", ".join(parts)


@frozen
class DigestCredentials:
    """One ``Authorization`` / ``Proxy-Authorization`` Digest answer."""

    username: str = field(validator=_check_text)
    realm: str = field(validator=_check_text)
    nonce: str = field(validator=_check_text)
    uri: str = field(validator=_check_text)
    response: str = field(validator=_check_hex)
    algorithm: str = field(default="MD5", converter=_canonical_algorithm, validator=_check_token)
    cnonce: str | None = field(default=None, validator=_check_text)
    nc: int | None = None
    qop: str | None = field(default=None, validator=_check_token)
    opaque: str | None = field(default=None, validator=_check_text)

    def __attrs_post_init__(self) -> None:
        if self.qop is not None and (self.cnonce is None or self.nc is None):
            raise ValueError("qop requires cnonce and nc")
        if self.nc is not None and not 0 <= self.nc <= 0xFFFFFFFF:
            raise ValueError("nc must fit in 8 hex digits")

    @classmethod
    def parse(cls, value: str) -> DigestCredentials:
        """Parse a header value; raises :class:`SipParseError` (or its subclass
        :class:`UnsupportedAuthScheme` for a non-Digest scheme)."""
        params = _parse_params(value)
        nc_text = params.get("nc")
        if nc_text is not None and not _NC_RE.fullmatch(nc_text):
            raise SipParseError("digest nc must be hexadecimal")
        qop = params.get("qop")
        try:
            return cls(
                username=_require(params, "username"),
                realm=_require(params, "realm"),
                nonce=_require(params, "nonce"),
                uri=_require(params, "uri"),
                response=_require(params, "response"),
                algorithm=params.get("algorithm", "MD5"),
                cnonce=params.get("cnonce"),
                nc=None if nc_text is None else int(nc_text, 16),
                qop=None if qop is None else qop.lower(),
                opaque=params.get("opaque"),
            )
        except ValueError as exc:
            raise SipParseError(f"malformed digest credentials: {exc}") from None

    def to_header_value(self) -> str:
        parts = [
            f"Digest username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc:08x}")
        return ", ".join(parts)


# ---------------------------------------------------------------------------
# Server side


class AuthResult(enum.Enum):
    OK = "ok"
    #: The digest was right but the nonce is old: re-challenge with stale=true.
    STALE = "stale"
    #: Wrong password, unknown user or a digest that does not add up.
    BAD_CREDENTIALS = "bad_credentials"
    #: A correct digest seen before (nonce-count not increased).
    REPLAY = "replay"
    #: A nonce (or opaque) we never issued, or the opaque we issued left out.
    INVALID_NONCE = "invalid_nonce"
    #: The digest ``uri`` names another resource than the Request-URI: answer 400
    #: (RFC 7616 §3.4.6), a sign of credentials lifted from another request.
    URI_MISMATCH = "uri_mismatch"
    REALM_MISMATCH = "realm_mismatch"
    #: An algorithm or qop we do not accept, or no stored HA1 for it.
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"


def _freeze_ha1(value: Mapping[str, str]) -> Mapping[str, str]:
    """Key stored HA1 values by base hash so ``MD5-sess`` finds the ``MD5`` one."""
    frozen: dict[str, str] = {}
    for algorithm, ha1 in value.items():
        canonical = _canonical_algorithm(algorithm)
        if canonical not in ALGORITHMS:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        frozen[canonical.removesuffix("-sess")] = ha1.lower()
    return MappingProxyType(frozen)


@frozen
class UserSecret:
    """What a user store knows about one user: a password, or HA1 values per hash.

    An HA1 is bound to its realm and hash, so a user stored with only an MD5
    HA1 can answer MD5 challenges only; :meth:`algorithms` says which.
    """

    password: str | None = None
    ha1: Mapping[str, str] = field(factory=dict, converter=_freeze_ha1, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if (self.password is None) == (not self.ha1):
            raise ValueError("give either a password or HA1 values")

    @classmethod
    def hashed(
        cls,
        username: str,
        realm: str,
        password: str,
        algorithms: Iterable[str] = ("SHA-256", "MD5"),
    ) -> UserSecret:
        """The HA1-only secret to store instead of ``password``."""
        return cls(ha1={a: compute_ha1(username, realm, password, a) for a in algorithms})

    def ha1_for(self, username: str, realm: str, algorithm: str) -> str | None:
        if self.password is not None:
            return compute_ha1(username, realm, self.password, algorithm)
        return self.ha1.get(_base(algorithm))

    def algorithms(self) -> tuple[str, ...]:
        """Algorithms this secret can verify, in our order of preference."""
        if self.password is not None:
            return ALGORITHMS
        return tuple(a for a in ALGORITHMS if _base(a) in self.ha1)


class DigestServer:
    """Challenges and verifies Digest credentials for a registrar or proxy.

    The caller looks the user up by ``credentials.username`` and passes what it
    found; an unknown user is ``secret=None`` and yields BAD_CREDENTIALS, the
    same answer as a wrong password, so replies do not reveal which users exist.
    """

    def __init__(
        self,
        nonces: NonceManager,
        *,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        qop_required: bool = True,
    ) -> None:
        self.nonces = nonces
        self.algorithms = tuple(_canonical_algorithm(a) for a in algorithms)
        for algorithm in self.algorithms:
            _base(algorithm)
        self.qop_required = qop_required

    def challenges(
        self,
        realm: str,
        now: float,
        stale: bool = False,
        *,
        algorithms: Iterable[str] | None = None,
    ) -> list[DigestChallenge]:
        """One challenge per configured algorithm, in that order, sharing one fresh nonce.

        Pass ``algorithms`` (e.g. ``secret.algorithms()``) to offer only what a
        known user's stored HA1 can verify.
        """
        offered = self.algorithms
        if algorithms is not None:
            allowed = {_canonical_algorithm(a) for a in algorithms}
            offered = tuple(a for a in offered if a in allowed)
        nonce = self.nonces.issue(now)
        opaque = self.nonces.opaque
        return [
            DigestChallenge(realm, nonce, algorithm, ("auth",), opaque, stale)
            for algorithm in offered
        ]

    def verify(
        self,
        credentials: DigestCredentials,
        *,
        method: str,
        secret: UserSecret | None,
        now: float,
        expected_realm: str,
        body: bytes = b"",
        request_uri: str | None = None,
        strict_uri: bool = False,
    ) -> AuthResult:
        """Check ``credentials`` for a ``method`` request to ``request_uri``.

        ``request_uri`` (the Request-URI as received) should always be given;
        without it the digest ``uri`` is not compared and credentials lifted
        from a request to another target would verify. ``strict_uri``: see
        :func:`digest_uri_matches`.
        """
        if credentials.realm != expected_realm:
            return AuthResult.REALM_MISMATCH
        if request_uri is not None and not digest_uri_matches(
            credentials.uri, request_uri, strict=strict_uri
        ):
            return AuthResult.URI_MISMATCH
        algorithm = credentials.algorithm
        qop = credentials.qop
        if algorithm not in self.algorithms or qop not in (None, "auth", "auth-int"):
            return AuthResult.UNSUPPORTED_ALGORITHM
        if qop is None and self.qop_required:
            return AuthResult.UNSUPPORTED_ALGORITHM
        user = credentials.username
        status = self.nonces.check(credentials.nonce, credentials.nc, now, user=user, record=False)
        if status is NonceStatus.INVALID:
            return AuthResult.INVALID_NONCE
        # We always send an opaque, and RFC 7616 §3.3 has the client return it.
        opaque = credentials.opaque
        if opaque is None or not hmac.compare_digest(opaque.encode(), self.nonces.opaque.encode()):
            return AuthResult.INVALID_NONCE
        if secret is None or (algorithm.endswith("-sess") and credentials.cnonce is None):
            return AuthResult.BAD_CREDENTIALS
        ha1 = secret.ha1_for(credentials.username, credentials.realm, algorithm)
        if ha1 is None:
            return AuthResult.UNSUPPORTED_ALGORITHM
        expected = compute_response(
            ha1,
            algorithm=algorithm,
            method=method,
            uri=credentials.uri,
            nonce=credentials.nonce,
            qop=qop,
            nc=credentials.nc,
            cnonce=credentials.cnonce,
            body=body,
        )
        if not hmac.compare_digest(expected, credentials.response.lower()):
            return AuthResult.BAD_CREDENTIALS
        if status is NonceStatus.VALID:
            status = self.nonces.check(credentials.nonce, credentials.nc, now, user=user)
        if status is NonceStatus.STALE:
            return AuthResult.STALE
        if status is NonceStatus.REPLAY:
            return AuthResult.REPLAY
        return AuthResult.OK


# URI parameters that make two SIP URIs differ when either has them (§19.1.4).
_SIGNIFICANT_PARAMS = frozenset(("user", "ttl", "method", "maddr", "transport"))


def _uri_params(uri: SipUri) -> dict[str, str]:
    return {name.lower(): unescape(value or "").lower() for name, value in uri.params}


def _sip_uris_equivalent(a: SipUri, b: SipUri) -> bool:
    """RFC 3261 §19.1.4: scheme, user and password exactly (after unescaping), host
    without case, port as written (no default), the parameters that matter when
    either side has them, other parameters when both have them, all headers."""
    if (a.scheme, a.user_unescaped, a.password, a.host.lower(), a.port) != (
        b.scheme,
        b.user_unescaped,
        b.password,
        b.host.lower(),
        b.port,
    ):
        return False
    pa, pb = _uri_params(a), _uri_params(b)
    for name in _SIGNIFICANT_PARAMS:
        if pa.get(name) != pb.get(name):
            return False
    if any(pb[name] != value for name, value in pa.items() if name in pb):
        return False
    headers_a = {(k.lower(), unescape(v)) for k, v in a.headers}
    return headers_a == {(k.lower(), unescape(v)) for k, v in b.headers}


def digest_uri_matches(digest_uri: str, request_uri: str, *, strict: bool = False) -> bool:
    """Whether a digest ``uri`` names the Request-URI's resource (RFC 7616 §3.4.6).

    SIP URIs compare by equivalence (RFC 3261 §19.1.4), anything else as text;
    a ``uri`` that does not parse matches only itself. Unless ``strict``, a
    digest ``uri`` that is just the Request-URI's server (``sip:host:port``, no
    user, no parameters) matches too: SIPp 3.6 sends that by default (its
    ``-auth_uri`` is ``remote_ip:remote_port``), and it still ties the
    credentials to the server they were made for.
    """
    if digest_uri == request_uri:
        return True
    try:
        a, b = parse_uri(digest_uri), parse_uri(request_uri)
    except SipParseError:
        return False
    if isinstance(a, SipUri) and isinstance(b, SipUri):
        if _sip_uris_equivalent(a, b):
            return True
        return (
            not strict
            and a.user is None
            and not a.params
            and not a.headers
            and (a.scheme, a.host.lower(), a.port) == (b.scheme, b.host.lower(), b.port)
        )
    return str(a) == str(b)


# ---------------------------------------------------------------------------
# Client side


def _usable(challenge: DigestChallenge) -> bool:
    if challenge.algorithm not in ALGORITHMS:
        return False
    return not challenge.qop or "auth" in challenge.qop or "auth-int" in challenge.qop


def choose_challenge(challenges: Iterable[DigestChallenge]) -> DigestChallenge:
    """The strongest challenge we can answer (SHA-256 before MD5, RFC 8760 §2.4)."""
    usable = [c for c in challenges if _usable(c)]
    if not usable:
        raise UnsupportedAuthScheme("no supported digest challenge offered")
    return min(usable, key=lambda c: ALGORITHMS.index(c.algorithm))


def build_authorization(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
) -> DigestCredentials:
    """Answer ``challenge``; qop ``auth`` when offered, else ``auth-int``, else RFC 2069.

    Reusing a nonce for later requests is allowed; increase ``nc`` each time.
    """
    if not _usable(challenge):
        raise UnsupportedAuthScheme(
            f"cannot answer digest challenge (algorithm {challenge.algorithm!r},"
            f" qop {','.join(challenge.qop)!r})"
        )
    qop: str | None = None
    if "auth" in challenge.qop:
        qop = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    sess = challenge.algorithm.endswith("-sess")
    if cnonce is None and (qop is not None or sess):
        cnonce = secrets.token_hex(16)
    ha1 = compute_ha1(username, challenge.realm, password, challenge.algorithm)
    response = compute_response(
        ha1,
        algorithm=challenge.algorithm,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc if qop is not None else None,
        cnonce=cnonce,
        body=body,
    )
    return DigestCredentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        cnonce=cnonce,
        nc=nc if qop is not None else None,
        qop=qop,
        opaque=challenge.opaque,
    )
