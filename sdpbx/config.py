"""The RustPBX-compatible configuration file, as frozen attrs values.

The key names and defaults are RustPBX's (see ``docs/guide/config.rst``), so an
existing ``config.toml`` keeps working. Two things differ on purpose:

- An unknown key or a bad value is a startup error that names the key path
  (``proxy.trunks.carrier1.max_calls: expected an integer``). RustPBX ignores a
  misspelt key and runs with the default, which is how a PBX ends up open to
  the world with an ACL nobody wrote.
- Values are checked when they are built, whether they come from a file or from
  Python (``ProxyConfig(udp_port=70000)`` raises :class:`ConfigError` too), so the
  objects built from a config never need to re-validate it.

Checks of a single value are field metadata (:data:`sdpbx._serde.CHECK`), run
as the file is read; rules tying several keys of one table together
(``tls_port`` needs a certificate, a route's ``dest`` must name trunks) are each
class's ``_cross_rules``, run over the keys that could be read even when other
keys of the table are broken. So one :class:`ConfigError` lists every problem
of the file, value errors and cross-key errors together.
"""

import os
import tomllib
from collections.abc import Mapping
from typing import Literal, TypeAlias

from attrs import field, frozen

from sdpbx import _serde
from sdpbx._config_checks import (
    _HEADERS,
    _HOST,
    _IP,
    _LISTEN_PORT,
    _LOG_LEVELS,
    _NON_EMPTY,
    _POSITIVE,
    _RTP_PORT,
    _URL,
    ROUTE_MATCH_KEYS,
    AclRule,
    _acl_problem,
    _check,
    _Checked,
    _each,
    _host_port_problem,
    _match_check,
    _min,
    _network_problem,
    _one,
    _Problems,
    _rewrite_check,
    _trunk_dest_problem,
    parse_acl_rule,
)
from sdpbx.errors import ConfigError
from sdpbx.sip.auth import DEFAULT_ALGORITHMS

__all__ = [
    "ROUTE_MATCH_KEYS",
    "AclRule",
    "AmiConfig",
    "ApiTokenConfig",
    "CallRecordConfig",
    "Config",
    "ConsoleConfig",
    "ExtensionUserBackendConfig",
    "HttpCallRecordConfig",
    "HttpRouterConfig",
    "HttpUserBackendConfig",
    "LocalCallRecordConfig",
    "LocatorWebhookConfig",
    "MemoryUserBackendConfig",
    "MemoryUserConfig",
    "PlainUserBackendConfig",
    "ProxyConfig",
    "RecordingConfig",
    "RejectConfig",
    "RouteConfig",
    "S3CallRecordConfig",
    "SipflowConfig",
    "TrunkConfig",
    "UserBackendConfig",
    "config_from_dict",
    "config_warnings",
    "load_config",
    "parse_acl_rule",
    "parse_config",
]

MediaProxyMode: TypeAlias = Literal["auto", "always", "all", "nat", "none"]
LocatorEvent: TypeAlias = Literal["registered", "unregistered", "offline"]
TrunkTransport: TypeAlias = Literal["udp", "tcp", "tls", "ws", "wss"]
RouteSelect: TypeAlias = Literal["rr", "random", "hash", "weighted"]
RouteAction: TypeAlias = Literal["forward", "reject", "busy"]
HttpMethod: TypeAlias = Literal["GET", "POST"]


# -- [proxy.http_router], [proxy.locator_webhook] ---------------------------------------------


@frozen
class HttpRouterConfig(_Checked):
    """``[proxy.http_router]``: ask a web service where each new call goes."""

    url: str = field(metadata=_check(_URL))
    fallback_to_static: bool = False
    timeout_ms: int = field(default=5000, metadata=_check(_POSITIVE))
    headers: Mapping[str, str] = field(factory=dict, metadata=_check(_HEADERS))


@frozen
class LocatorWebhookConfig(_Checked):
    """``[proxy.locator_webhook]``: tell a web service when phones come and go.

    Beyond RustPBX's keys: ``max_in_flight`` POSTs at a time (one per AoR),
    at most ``queue_size`` events waiting, each for at most ``max_age_secs``
    while failed POSTs are retried after ``retry_initial_ms``, doubling up to
    ``retry_max_ms``.
    """

    url: str = field(metadata=_check(_URL))
    events: tuple[LocatorEvent, ...] = ("registered", "unregistered", "offline")
    headers: Mapping[str, str] = field(factory=dict, metadata=_check(_HEADERS))
    timeout_ms: int = field(default=5000, metadata=_check(_POSITIVE))
    max_in_flight: int = field(default=16, metadata=_check(_POSITIVE))
    queue_size: int = field(default=10_000, metadata=_check(_POSITIVE))
    max_age_secs: int = field(default=300, metadata=_check(_POSITIVE))
    retry_initial_ms: int = field(default=500, metadata=_check(_POSITIVE))
    retry_max_ms: int = field(default=30_000, metadata=_check(_POSITIVE))


# -- [[proxy.user_backends]] -------------------------------------------------------------------


@frozen
class MemoryUserConfig(_Checked):
    """One entry of a memory backend's ``users`` list."""

    username: str = field(metadata=_check(_NON_EMPTY))
    password: str
    realm: str | None = None
    display_name: str | None = None
    email: str | None = None
    enabled: bool = True
    allow_guest_calls: bool = False


@frozen
class MemoryUserBackendConfig:
    """``type = "memory"``: users listed in the config file itself."""

    users: tuple[MemoryUserConfig, ...] = ()


@frozen
class PlainUserBackendConfig(_Checked):
    """``type = "plain"``: a file of ``user:password`` lines."""

    path: str = field(metadata=_check(_NON_EMPTY))
    realm: str | None = None


@frozen
class ExtensionUserBackendConfig:
    """``type = "extension"``: extensions managed through the console (database).

    ``database_url`` defaults to the top-level one.
    """

    database_url: str | None = None


@frozen
class HttpUserBackendConfig(_Checked):
    """``type = "http"``: ask a web service for each user's credentials."""

    url: str = field(metadata=_check(_URL))
    method: HttpMethod = "GET"
    username_field: str = field(default="username", metadata=_check(_NON_EMPTY))
    realm_field: str = field(default="realm", metadata=_check(_NON_EMPTY))
    headers: Mapping[str, str] = field(factory=dict, metadata=_check(_HEADERS))
    timeout_ms: int = field(default=5000, metadata=_check(_POSITIVE))


UserBackendConfig: TypeAlias = (
    MemoryUserBackendConfig
    | PlainUserBackendConfig
    | ExtensionUserBackendConfig
    | HttpUserBackendConfig
)

_serde.register_tagged_union(
    UserBackendConfig,
    "type",
    {
        "memory": MemoryUserBackendConfig,
        "plain": PlainUserBackendConfig,
        "extension": ExtensionUserBackendConfig,
        "http": HttpUserBackendConfig,
    },
)


# -- [proxy.trunks.<name>], [[proxy.routes]] --------------------------------------------------


@frozen
class TrunkConfig(_Checked):
    """``[proxy.trunks.<name>]``: a carrier or another PBX."""

    dest: str = field(metadata=_check(_one(_trunk_dest_problem)))
    username: str | None = None
    password: str | None = None
    transport: TrunkTransport | None = None
    inbound_hosts: tuple[str, ...] = field(default=(), metadata=_check(_each(_network_problem)))
    max_calls: int | None = field(default=None, metadata=_check(_POSITIVE))
    max_cps: float | None = field(default=None, metadata=_check(_POSITIVE))
    register_enabled: bool = False
    register_expires: int = field(default=3600, metadata=_check(_POSITIVE))

    def _register_needs_credentials(self) -> _Problems:
        if not self.register_enabled:
            return []
        return [
            (name, "required when register_enabled is true")
            for name in ("username", "password")
            if not getattr(self, name)
        ]

    _cross_rules = (_register_needs_credentials,)


def _reject_code_problem(code: int) -> str | None:
    return None if 400 <= code <= 699 else "must be a SIP failure status (400-699)"


@frozen
class RejectConfig(_Checked):
    """A route's ``reject = {code, reason}``."""

    code: int = field(default=403, metadata=_check(_one(_reject_code_problem)))
    reason: str | None = None


@frozen
class RouteConfig(_Checked):
    """One ``[[proxy.routes]]`` entry: a static routing rule.

    A ``match`` value containing regex characters (``^$.*+?()[]{}|\\``) is a
    regular expression (searched, so anchor it with ``^``/``$``); any other value
    must equal the field exactly. ``{1}`` in a ``rewrite`` value is capture group
    1 of that field's match.
    """

    name: str | None = None
    priority: int = 0
    disabled: bool = False
    match: Mapping[str, str] = field(factory=dict, metadata=_check(_match_check))
    rewrite: Mapping[str, str] = field(factory=dict, metadata=_check(_rewrite_check))
    dest: tuple[str, ...] = field(default=(), metadata={_serde.ONE_OR_MANY: True})
    select: RouteSelect = "rr"
    action: RouteAction = "forward"
    reject: RejectConfig | None = None

    def _forward_needs_dest(self) -> _Problems:
        if self.action == "forward" and not self.dest:
            return [("dest", 'required when action is "forward"')]
        return []

    _cross_rules = (_forward_needs_dest,)


# -- [proxy] -----------------------------------------------------------------------------------


def _algorithms_check(algorithms: tuple[str, ...]) -> _Problems:
    if not algorithms:
        return [("", "must list at least one algorithm")]
    known = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")
    return [
        (f"[{i}]", f"expected one of {', '.join(known)}, got {name!r}")
        for i, name in enumerate(algorithms)
        if name.upper() not in {k.upper() for k in known}
    ]


def _realm_problem(realm: str) -> str | None:
    return None if _HOST.match(realm) else f"not a valid realm: {realm!r}"


@frozen
class ProxyConfig(_Checked):
    """``[proxy]``: the SIP side: listeners, registrar, auth, routing.

    Ports left out are not listened on, except ``udp_port`` (5060). Port 0
    (an sdpbx extension) asks the OS for a free port, for tests.
    """

    addr: str | None = field(default=None, metadata=_check(_IP))
    udp_port: int | None = field(default=5060, metadata=_check(_LISTEN_PORT))
    tcp_port: int | None = field(default=None, metadata=_check(_LISTEN_PORT))
    tls_port: int | None = field(default=None, metadata=_check(_LISTEN_PORT))
    ws_port: int | None = field(default=None, metadata=_check(_LISTEN_PORT))
    ssl_certificate: str | None = None
    ssl_private_key: str | None = None
    realms: tuple[str, ...] = field(default=(), metadata=_check(_each(_realm_problem)))
    useragent: str | None = None
    registrar_expires: int = field(default=3600, metadata=_check(_POSITIVE))
    max_registrar_expires: int = field(default=7200, metadata=_check(_POSITIVE))
    min_registrar_expires: int = field(default=60, metadata=_check(_POSITIVE))
    media_proxy: MediaProxyMode = "auto"
    nat_fix: bool = True
    acl_rules: tuple[str, ...] = field(default=("allow all",), metadata=_check(_each(_acl_problem)))
    #: Seconds an unanswered call rings before the caller gets 408, unless the
    #: route decision gives its own ``timeout``. Never unlimited: a caller that
    #: vanishes without a CANCEL would hold the call (and a trunk's max_calls) forever.
    max_ring_time: int = field(default=60, metadata=_check(_POSITIVE))
    rtp_timeout: int = field(default=60, metadata=_check(_min(0, "must be 0 (disabled) or more")))
    #: Calls (INVITE) must come from an authenticated user or a trunk's
    #: inbound_hosts. True by default, unlike RustPBX's false, because false means
    #: calls are not challenged at all (RustPBX challenges them anyway).
    ensure_user: bool = True
    auth_failure_limit: int = field(
        default=10, metadata=_check(_min(0, "must be 0 (disabled) or more"))
    )
    auth_block_seconds: int = field(default=300, metadata=_check(_POSITIVE))
    #: Failures from one source, any user names, before the whole source is
    #: blocked (users proved from it stay served); unset means 5 x the limit.
    auth_source_failure_limit: int | None = field(default=None, metadata=_check(_POSITIVE))
    auth_trust_seconds: int = field(default=3600, metadata=_check(_POSITIVE))
    auth_max_tracked: int = field(default=10_000, metadata=_check(_POSITIVE))
    #: RFC 2069 credentials (no qop, no nonce count) for old phones; each nonce
    #: then answers one request only.
    auth_allow_qop_less: bool = False
    #: Compare the digest uri with the Request-URI strictly (equivalent URIs
    #: only, no bare host:port form).
    auth_strict_digest_uri: bool = False
    #: Digest challenges offered, in order. MD5 alone by default, the same as
    #: :class:`~sdpbx.authn.Authenticator` (see :data:`sdpbx.sip.auth.DEFAULT_ALGORITHMS`).
    auth_algorithms: tuple[str, ...] = field(
        default=DEFAULT_ALGORITHMS, metadata=_check(_algorithms_check)
    )
    #: TCP, TLS and WebSocket connections together; at the cap the connection
    #: idle longest (one that never sent SIP first) is closed for a newcomer.
    max_connections: int = field(default=10_000, metadata=_check(_POSITIVE))
    #: Connections from one IPv4 address or one IPv6 /64.
    max_connections_per_source: int = field(default=1_000, metadata=_check(_POSITIVE))
    #: Seconds a SIP message over a stream may take from its first byte to its
    #: last (and a WebSocket upgrade to finish): trickling peers are closed.
    message_deadline_secs: float = field(default=10.0, metadata=_check(_POSITIVE))
    http_router: HttpRouterConfig | None = None
    user_backends: tuple[UserBackendConfig, ...] = ()
    locator_webhook: LocatorWebhookConfig | None = None
    trunks: Mapping[str, TrunkConfig] = field(factory=dict)
    routes: tuple[RouteConfig, ...] = ()

    def _tls_needs_certificate(self) -> _Problems:
        if self.tls_port is None:
            return []
        return [
            (name, "required when tls_port is set")
            for name in ("ssl_certificate", "ssl_private_key")
            if not getattr(self, name)
        ]

    def _expires_in_bounds(self) -> _Problems:
        if self.min_registrar_expires <= self.registrar_expires <= self.max_registrar_expires:
            return []
        message = "must be between min_registrar_expires and max_registrar_expires"
        return [("registrar_expires", message)]

    def _routes_name_trunks(self) -> _Problems:
        # Entries that could not be read (not RouteConfig) are skipped; a trunk
        # whose own keys are broken still exists by name.
        problems: _Problems = []
        for index, route in enumerate(self.routes):
            if not isinstance(route, RouteConfig):
                continue
            if missing := [name for name in route.dest if name not in self.trunks]:
                message = f"unknown trunk {', '.join(map(repr, missing))}"
                problems.append((f"routes[{index}].dest", message))
        return problems

    def _route_names_unique(self) -> _Problems:
        problems: _Problems = []
        names: set[str] = set()
        for index, route in enumerate(self.routes):
            if not isinstance(route, RouteConfig) or route.name is None:
                continue
            if route.name in names:
                problems.append((f"routes[{index}].name", f"duplicate name {route.name!r}"))
            names.add(route.name)
        return problems

    _cross_rules = (
        _tls_needs_certificate,
        _expires_in_bounds,
        _routes_name_trunks,
        _route_names_unique,
    )

    @property
    def acl(self) -> tuple[AclRule, ...]:
        """``acl_rules`` parsed (first match wins; no match means deny)."""
        return tuple(parse_acl_rule(rule) for rule in self.acl_rules)


# -- [recording], [callrecord] ------------------------------------------------------------------


@frozen
class RecordingConfig(_Checked):
    """``[recording]``: WAV recording of calls (stereo: caller left, callee right)."""

    enabled: bool = False
    path: str = field(default="recordings", metadata=_check(_NON_EMPTY))
    auto_start: bool = True
    filename_pattern: str = field(default="{session_id}", metadata=_check(_NON_EMPTY))


@frozen
class LocalCallRecordConfig(_Checked):
    """``type = "local"``: CDR JSON files under ``root``."""

    root: str = field(default="cdr", metadata=_check(_NON_EMPTY))


@frozen
class HttpCallRecordConfig(_Checked):
    """``type = "http"``: POST each CDR (and optionally its media) to a web service.

    ``timeout_ms`` is an sdpbx extension (RustPBX has no setting).
    """

    url: str = field(metadata=_check(_URL))
    headers: Mapping[str, str] = field(factory=dict, metadata=_check(_HEADERS))
    with_media: bool = False
    timeout_ms: int = field(default=30000, metadata=_check(_POSITIVE))


@frozen
class S3CallRecordConfig(_Checked):
    """``type = "s3"``: archive CDRs and recordings in an S3-compatible bucket."""

    bucket: str = field(metadata=_check(_NON_EMPTY))
    vendor: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    endpoint: str | None = field(default=None, metadata=_check(_URL))
    root: str = ""

    def _keys_together(self) -> _Problems:
        if (self.access_key is None) != (self.secret_key is None):
            return [("secret_key", "access_key and secret_key go together")]
        return []

    _cross_rules = (_keys_together,)


CallRecordConfig: TypeAlias = LocalCallRecordConfig | HttpCallRecordConfig | S3CallRecordConfig

_serde.register_tagged_union(
    CallRecordConfig,
    "type",
    {"local": LocalCallRecordConfig, "http": HttpCallRecordConfig, "s3": S3CallRecordConfig},
)


# -- [ami], [console], [sipflow] ----------------------------------------------------------------


@frozen
class AmiConfig(_Checked):
    """``[ami]``: who may use the management API (``/ami/v1``); ``"*"`` is anyone."""

    allows: tuple[str, ...] = field(
        default=("127.0.0.1", "::1"), metadata=_check(_each(_network_problem))
    )


def _token_problem(token: str) -> str | None:
    if token and not any(ch.isspace() for ch in token):
        return None
    return "must be non-empty and contain no spaces"


@frozen
class ApiTokenConfig(_Checked):
    """One ``[[console.api_tokens]]`` entry, accepted as ``Authorization: Bearer``."""

    token: str = field(metadata=_check(_one(_token_problem)))


@frozen
class ConsoleConfig(_Checked):
    """``[console]``: the web console / REST API (``/console``)."""

    session_secret: str | None = None
    api_tokens: tuple[ApiTokenConfig, ...] = ()
    admin_username: str | None = None
    admin_password: str | None = None

    def _admin_together(self) -> _Problems:
        if (self.admin_username is None) != (self.admin_password is None):
            return [("admin_password", "admin_username and admin_password go together")]
        return []

    _cross_rules = (_admin_together,)


@frozen
class SipflowConfig(_Checked):
    """``[sipflow]``: keep every SIP message per call for ladder diagrams.

    ``retention_days`` (0 = keep forever) is sdpbx's name for the retention period.
    """

    enabled: bool = False
    retention_days: int = field(
        default=7, metadata=_check(_min(0, "must be 0 (keep forever) or more"))
    )


# -- top level ---------------------------------------------------------------------------------


def _database_url_problem(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    return None if sep and scheme and rest else "expected scheme://location, e.g. sqlite://pbx.db"


def _log_level_problem(level: str) -> str | None:
    if level.lower() in _LOG_LEVELS:
        return None
    return f"expected one of {', '.join(_LOG_LEVELS)}, got {level!r}"


@frozen
class Config(_Checked):
    """The whole configuration file; ``Config()`` is every default."""

    http_addr: str = field(
        default="0.0.0.0:8080", metadata=_check(_one(lambda a: _host_port_problem(a, 0)))
    )
    database_url: str = field(
        default="sqlite://sdpbx.sqlite3", metadata=_check(_one(_database_url_problem))
    )
    external_ip: str | None = field(default=None, metadata=_check(_IP))
    rtp_start_port: int = field(default=12000, metadata=_check(_RTP_PORT))
    rtp_end_port: int = field(default=42000, metadata=_check(_RTP_PORT))
    log_level: str | None = field(default=None, metadata=_check(_one(_log_level_problem)))
    proxy: ProxyConfig = field(factory=ProxyConfig)
    recording: RecordingConfig = field(factory=RecordingConfig)
    callrecord: CallRecordConfig | None = None
    ami: AmiConfig = field(factory=AmiConfig)
    console: ConsoleConfig = field(factory=ConsoleConfig)
    sipflow: SipflowConfig = field(factory=SipflowConfig)

    def _rtp_range(self) -> _Problems:
        if self.rtp_start_port >= self.rtp_end_port:
            return [("rtp_end_port", "must be greater than rtp_start_port")]
        return []

    _cross_rules = (_rtp_range,)


def config_warnings(config: Config) -> list[str]:
    """One message per key that is valid but has no effect yet (``[callrecord] is
    configured but not implemented yet; ignored``), and per setting that leaves
    calls open. The server logs each at WARNING when it starts; a config meant to
    do exactly what it says yields none."""
    from sdpbx._config_warnings import config_warnings as warnings_for

    return warnings_for(config)


def config_from_dict(data: Mapping[str, object]) -> Config:
    """Build a :class:`Config` from already-parsed TOML (or any nested dicts).

    Raises :class:`~sdpbx.errors.ConfigError` listing every bad key path.
    """
    return _serde.structure_config(data, Config)


def parse_config(text: str, *, source: str = "<string>") -> Config:
    """Parse TOML text into a :class:`Config`.

    A TOML syntax error becomes a :class:`~sdpbx.errors.ConfigError` whose path is
    ``source`` and whose message gives the line and column.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(source, f"invalid TOML: {exc}")]) from None
    return config_from_dict(data)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a RustPBX-compatible TOML config file.

    Every problem is reported at once, each with its key path, e.g.
    ``ConfigError: proxy.udpport: unknown key; proxy.routes[0].dest: unknown
    trunk 'carrier2'``. Relative paths inside the file (database, recordings,
    CDRs) are relative to the working directory, as in RustPBX.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise ConfigError([(source, f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([(source, f"not UTF-8: {exc}")]) from None
    return parse_config(text, source=source)
