"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966) and any other absolute URI.

The parser keeps every part as it was written (``%``-escapes included), so a
URI that is forwarded comes out byte for byte as it went in; the unescaped
forms are there for comparison. A URI of a scheme we do not know is not an
error here: RFC 4475 §3.3.2 wants it parsed and answered with 416 by the
application, so it becomes an :class:`AbsoluteUri`.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_to_bytes

from attrs import evolve, frozen

from .errors import SipParseError
from .headers import parse_number

__all__ = [
    "AbsoluteUri",
    "SipUri",
    "TelUri",
    "Uri",
    "format_host",
    "parse_uri",
    "unescape",
]

# RFC 3261 §25.1: a scheme is ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
# hostname / IPv4address: alphanumerics, "-" and "." (we accept "_" as many
# deployed hosts use it, and reject everything else).
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_.])?\Z")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+\Z")
# Characters that may stand unescaped in the user part or in parameters.
# Anything else (space, "<", ">", '"', "@" in params, controls) is an error.
_USER_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/]*\Z")
_PARAM_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]*\Z")
_HEADER_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/?:+$]*\Z")
_PASSWORD_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,]*\Z")

Params = tuple[tuple[str, str | None], ...]


def unescape(text: str) -> str:
    """Undo ``%HH`` escapes; an escaped NUL stays a NUL (RFC 4475 §3.1.1.4)."""
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def format_host(host: str) -> str:
    """Bracket an IPv6 literal, leave names and IPv4 as they are."""
    return f"[{host}]" if ":" in host else host


def _format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _find_param(params: Params, name: str) -> str | None:
    name = name.lower()
    for key, value in params:
        if key.lower() == name:
            return "" if value is None else value
    return None


def _parse_params(text: str, what: str) -> Params:
    """``;a=b;c`` with the leading ``;`` already removed."""
    if not text:
        return ()
    out: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if not name or not _PARAM_CHARS.match(name) or (eq and not _PARAM_CHARS.match(value)):
            raise SipParseError(f"malformed {what} parameter {part!r}")
        out.append((name, value if eq else None))
    return tuple(out)


def _parse_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {text!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        if not host or not _IPV6.match(host) or host.count(":") < 2:
            raise SipParseError(f"malformed IPv6 reference {text!r}")
        # RFC 5118 §4.10: tolerate the "::" written with three colons.
        host = host.replace(":::", "::")
        if rest and not rest.startswith(":"):
            raise SipParseError(f"junk after IPv6 reference in {text!r}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        if not host or not _HOSTNAME.match(host):
            raise SipParseError(f"malformed host {text!r}")
    port: int | None = None
    if port_text is not None:
        port = parse_number(port_text, 1, 65535, "URI port")
    return host, port


@frozen
class SipUri:
    """A ``sip:`` or ``sips:`` URI.

    ``user``, ``password``, parameter values and header values are kept
    escaped as received; :attr:`user_unescaped` gives the comparable form.
    ``host`` holds an IPv6 literal without its brackets.
    """

    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> SipUri:
        uri = parse_uri(text)
        if not isinstance(uri, SipUri):
            raise SipParseError(f"not a SIP URI: {text!r}", 416)
        return uri

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unescape(self.user)

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def host_port(self) -> str:
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, upper-cased (``"TCP"``), or ``None``."""
        value = _find_param(self.params, "transport")
        return value.upper() if value else None

    @property
    def aor(self) -> str:
        """``user@host`` (or ``host``), the key a registrar files bindings under.

        The user is unescaped and the host lower-cased, so that
        ``sip:%61lice@EXAMPLE.com`` and ``sip:alice@example.com`` meet.
        """
        host = self.host.lower()
        user = self.user_unescaped
        return host if user is None else f"{user}@{host}"

    def param(self, name: str) -> str | None:
        """The value of parameter ``name`` ("" for a flag such as ``lr``), or None."""
        return _find_param(self.params, name)

    def with_params(self, **params: str | None) -> SipUri:
        """Set (or with value ``None`` as a flag) parameters, keeping the others."""
        names = {k.lower() for k in params}
        kept = tuple(p for p in self.params if p[0].lower() not in names)
        return evolve(self, params=kept + tuple(params.items()))

    def without_params(self, *names: str) -> SipUri:
        lowered = {n.lower() for n in names}
        return evolve(self, params=tuple(p for p in self.params if p[0].lower() not in lowered))

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host_port)
        out.append(_format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)


@frozen
class TelUri:
    """A ``tel:`` URI (RFC 3966): a number and its parameters."""

    number: str
    params: Params = ()

    @property
    def scheme(self) -> str:
        return "tel"

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)

    def __str__(self) -> str:
        return f"tel:{self.number}{_format_params(self.params)}"


@frozen
class AbsoluteUri:
    """Any other absolute URI, kept opaque (RFC 3261 §19.1: ``absoluteURI``)."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


Uri = SipUri | TelUri | AbsoluteUri


def _parse_sip(scheme: str, rest: str, text: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if colon:
            if not _PASSWORD_CHARS.match(pw):
                raise SipParseError(f"malformed password in {text!r}")
            password = pw
        if not user or not _USER_CHARS.match(user):
            raise SipParseError(f"malformed user part in {text!r}")
    headers: tuple[tuple[str, str], ...] = ()
    q = rest.find("?")
    if q >= 0:
        header_text, rest = rest[q + 1 :], rest[:q]
        pairs = []
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq or not _HEADER_CHARS.match(name + value):
                raise SipParseError(f"malformed URI header {item!r} in {text!r}")
            pairs.append((name, value))
        headers = tuple(pairs)
    hostport, semi, param_text = rest.partition(";")
    host, port = _parse_hostport(hostport)
    params = _parse_params(param_text, "URI") if semi else ()
    if semi and not params:
        raise SipParseError(f"empty URI parameter in {text!r}")
    return SipUri(scheme, host, user, password, port, params, headers)


#: Entries in each memo of parsed values, and the longest text memoised.
MEMO_SIZE = 2048
MEMO_LONGEST = 256


def parse_uri(text: str) -> Uri:
    """Parse an absolute URI as it appears in a Request-Line or name-addr.

    URIs are values, so equal texts of ordinary length share one parsed
    object (a bounded cache: a call parses the same few URIs in many
    messages).

    Raises :class:`SipParseError` (400) for a URI that is malformed, such as
    one wrapped in ``<>`` where a bare URI belongs or one containing spaces.
    """
    if len(text) <= MEMO_LONGEST:
        return _uri_memo(text)
    return _parse_uri(text)


def clear_uri_cache() -> None:
    _uri_memo.cache_clear()


def _parse_uri(text: str) -> Uri:
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.match(scheme):
        raise SipParseError(f"malformed URI {text!r}")
    lscheme = scheme.lower()
    if lscheme in ("sip", "sips"):
        return _parse_sip(lscheme, rest, text)
    if any(c in rest for c in ' \t\r\n<>"'):
        raise SipParseError(f"malformed URI {text!r}")
    if lscheme == "tel":
        number, _, param_text = rest.partition(";")
        if not number:
            raise SipParseError(f"empty tel number in {text!r}")
        return TelUri(number, _parse_params(param_text, "tel"))
    if not rest:
        raise SipParseError(f"empty URI {text!r}")
    return AbsoluteUri(scheme, rest)


_uri_memo = functools.lru_cache(maxsize=MEMO_SIZE)(_parse_uri)
