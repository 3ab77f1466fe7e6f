"""Value checks for :mod:`sdpbx.config`: one function per kind of value.

Each check returns ``[(path relative to the field, message)]``; they are
attached to config fields as metadata, so :mod:`sdpbx._serde` runs them as a
file is read (every bad value is reported at once) and :class:`_Checked`
runs them again for objects built in Python. Kept apart from the schema so
that ``config.py`` reads as the list of keys it is.
"""

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeAlias, cast
from urllib.parse import urlsplit

from attrs import AttrsInstance, fields, frozen

from sdpbx import _serde
from sdpbx.errors import ConfigError

ROUTE_MATCH_KEYS = frozenset(
    {"from.user", "from.host", "to.user", "to.host", "request_uri.user", "request_uri.host"}
)
"""Keys allowed in a route's ``match`` and ``rewrite`` tables, besides ``header.<Name>``."""


_LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REGEX_CHARS = frozenset("^$.*+?()[]{}|\\")


def is_regex(value: str) -> bool:
    """Whether a route ``match`` value is a regular expression (it has a regex
    character) rather than an exact value; the static router uses the same rule."""
    return any(ch in _REGEX_CHARS for ch in value)


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?$")

_Problems: TypeAlias = list[tuple[str, str]]
_Check: TypeAlias = Callable[[Any], _Problems]


# -- field checks --------------------------------------------------------------------------------
# Each returns ``[(path relative to the field, message)]``. They are attached to fields
# as metadata, so _serde runs them as each value is read (a bad value is reported even
# when its neighbours are broken too) and _Checked runs them again for Python callers.


def _check(check: _Check) -> dict[str, _Check]:
    return {_serde.CHECK: check}


def _each(check: Callable[[Any], str | None]) -> _Check:
    """Apply a per-item check to every item of a tuple, naming the index."""
    return lambda items: [
        (f"[{i}]", message) for i, item in enumerate(items) if (message := check(item))
    ]


def _one(check: Callable[[Any], str | None]) -> _Check:
    """A check of a single optional value; ``None`` (absent) is always fine."""
    return lambda value: [] if value is None or not (msg := check(value)) else [("", msg)]


def _port_problem(port: int, low: int = 1) -> str | None:
    return None if low <= port <= 65535 else f"port must be between {low} and 65535"


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return "not a valid URL"
    return None


def _ip_problem(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return f"not an IP address: {text!r}"
    return None


def _network_problem(text: str) -> str | None:
    if text == "*":
        return None
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"not an IP address or CIDR: {text!r}"
    return None


def _host_port_problem(text: str, low: int) -> str | None:
    """``host:port`` with an IPv6 host in brackets (``[::1]:8080``)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        return f"expected host:port, got {text!r}"
    if host.startswith("[") and host.endswith("]"):
        if _ip_problem(host[1:-1]):
            return f"not an IP address: {host[1:-1]!r}"
    elif _ip_problem(host) and not _HOST.match(host):
        return f"not a host name or IP address: {host!r}"
    return _port_problem(int(port_text), low)


def _acl_problem(rule: str) -> str | None:
    try:
        parse_acl_rule(rule)
    except ValueError as exc:
        return str(exc)
    return None


def _trunk_dest_problem(dest: str) -> str | None:
    if dest.startswith(("sip:", "sips:")):
        return None if dest.partition(":")[2] else "SIP URI without a host"
    if ":" in dest:
        return _host_port_problem(dest, 1)
    return None if _HOST.match(dest) else f"expected a SIP URI or host[:port], got {dest!r}"


def _headers_check(headers: Mapping[str, str]) -> _Problems:
    problems: _Problems = []
    for name, value in headers.items():
        if not _TOKEN.match(name):
            problems.append((name, "not a valid header name"))
        elif "\r" in value or "\n" in value:
            problems.append((name, "header value must not contain line breaks"))
    return problems


def _route_key_problem(key: str) -> str | None:
    if key in ROUTE_MATCH_KEYS:
        return None
    if key.startswith("header."):
        return None if _TOKEN.match(key[len("header.") :]) else f"bad header name in {key!r}"
    return f"unknown key {key!r}"


def _match_check(table: Mapping[str, str]) -> _Problems:
    problems: _Problems = []
    for key, value in table.items():
        if message := _route_key_problem(key):
            problems.append(("", message))
        elif is_regex(value):
            try:
                re.compile(value)
            except re.error as exc:
                problems.append((key, f"invalid regex: {exc}"))
    return problems


def _rewrite_check(table: Mapping[str, str]) -> _Problems:
    problems: _Problems = []
    for key, value in table.items():
        if message := _route_key_problem(key):
            problems.append(("", message))
        elif not all(group.isdigit() for group in _PLACEHOLDER.findall(value)):
            problems.append((key, "placeholders must be {N}, N a capture group number"))
    return problems


def _min(low: float, message: str) -> _Check:
    return _one(lambda value: None if value >= low else message)


_POSITIVE = _one(lambda value: None if value > 0 else "must be greater than 0")
_NON_EMPTY = _one(lambda value: None if value else "must not be empty")
_URL = _one(_url_problem)
_IP = _one(_ip_problem)
_LISTEN_PORT = _one(lambda port: _port_problem(port, 0))
_RTP_PORT = _one(_port_problem)
_HEADERS: _Check = _headers_check


def _join(name: str, rel: str) -> str:
    return name + rel if not rel or rel.startswith("[") else f"{name}.{rel}"


#: A rule tying several keys of one table together: reads the table's values as
#: attributes, returns ``[(path relative to the table, message)]``.
_Rule: TypeAlias = Callable[[Any], _Problems]


class _Unknown(Exception):
    """A cross-key rule read a key whose value is broken: the rule cannot judge."""


class _Partial:
    """The keys of a table that were read successfully, for cross-key rules.

    When some keys of a table are broken the table cannot be built, but the rules
    that relate its *other* keys can still run, so that one ``ConfigError`` lists
    every problem of the file at once. Reading a broken key raises
    :class:`_Unknown`, which skips the rule.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise _Unknown(name) from None


class _Checked:
    """Mixin: validate every field's check and the class's cross-key rules on init.

    A subclass lists its cross-key rules in ``_cross_rules``; each is a function
    of the table (or of a :class:`_Partial` view of it, see :meth:`_sdpbx_cross_check`).
    """

    __slots__ = ()
    _cross_rules: ClassVar[tuple[_Rule, ...]] = ()

    def __attrs_post_init__(self) -> None:
        problems: _Problems = []
        for attribute in fields(cast("type[AttrsInstance]", type(self))):
            check = attribute.metadata.get(_serde.CHECK)
            if check is not None:
                for rel, message in check(getattr(self, attribute.name)):
                    problems.append((_join(attribute.name, rel), message))
        for rule in self._cross_rules:
            problems.extend(rule(self))
        if problems:
            raise ConfigError(problems)

    @classmethod
    def _sdpbx_cross_check(cls, values: Mapping[str, Any]) -> _Problems:
        """The cross-key rules over the keys that were read (``_serde`` calls this
        when other keys of the table are broken). A rule that needs a broken key,
        or that trips over a broken entry of a list or table, is skipped: this
        runs on an error path and must not raise."""
        view = _Partial(values)
        problems: _Problems = []
        for rule in cls._cross_rules:
            try:
                problems.extend(rule(view))
            except Exception:  # _Unknown, or a broken entry the rule cannot read
                continue
        return problems


# -- ACL ---------------------------------------------------------------------------------------


@frozen
class AclRule:
    """One parsed ``acl_rules`` entry; ``network`` is ``None`` for ``all``."""

    allow: bool
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None

    def matches(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether this rule applies to ``ip`` (``all`` applies to everything)."""
        if self.network is None:
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.version == self.network.version and ip in self.network


def parse_acl_rule(text: str) -> AclRule:
    """Parse ``"allow 10.0.0.0/8"`` / ``"deny all"``; raise :class:`ValueError` if malformed."""
    words = text.split()
    if len(words) != 2 or words[0].lower() not in ("allow", "deny"):
        raise ValueError(f"expected 'allow|deny <ip|cidr|all>', got {text!r}")
    allow = words[0].lower() == "allow"
    if words[1].lower() == "all":
        return AclRule(allow=allow, network=None)
    try:
        return AclRule(allow=allow, network=ipaddress.ip_network(words[1], strict=False))
    except ValueError:
        raise ValueError(f"not an IP address or CIDR in ACL rule {text!r}") from None
