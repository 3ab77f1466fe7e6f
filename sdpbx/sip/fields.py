"""Typed views of the header values that SIP routing depends on.

Each class parses one header element (``Via``, ``From``/``To``/``Contact``/
``Route`` as :class:`NameAddr`, ``CSeq``) and prints back a canonical form.
They are values: parsing never mutates a message, and a malformed element
raises :class:`~.errors.SipParseError` carrying status 400.
"""

from __future__ import annotations

import functools
import re

from attrs import evolve, frozen

from .errors import SipParseError
from .headers import MAX_DELTA_SECONDS, parse_delta_seconds, parse_number
from .uri import MEMO_LONGEST, MEMO_SIZE, Uri, clear_uri_cache, format_host, parse_uri

__all__ = ["MAX_DELTA_SECONDS", "CSeq", "NameAddr", "Params", "Via", "parse_header_params"]

Params = tuple[tuple[str, str | None], ...]

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_TOKEN_SEQ = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`'~]+)*\Z")
_PROTOCOL = re.compile(r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*", re.IGNORECASE)
_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+\Z")
_VIA_HOST = re.compile(r"[A-Za-z0-9\-._]+\Z")
_VIA_IPV6 = re.compile(r"[0-9A-Fa-f:.]+\Z")
# RFC 3261 §20.10 qvalue, with a few more decimals tolerated.
_QVALUE = re.compile(r"[01](?:\.[0-9]{0,6})?\Z")
MAX_CSEQ = 2**31 - 1
_VIA_VALUED = frozenset(("branch", "received", "maddr", "ttl"))


def _split_params(text: str) -> list[str]:
    """Split ``;a=b ; c="x;y"`` on semicolons outside quoted strings."""
    if '"' not in text:
        return text.split(";")
    parts: list[str] = []
    start = 0
    in_quotes = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == ";":
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise SipParseError(f"unterminated quoted string in {text!r}")
    parts.append(text[start:])
    return parts


def parse_header_params(text: str) -> Params:
    """Parse ``;name[=value]...`` (text starting at the first ``;``).

    LWS around ``;`` and ``=`` is allowed; values are tokens, hosts (IPv6
    too, RFC 5118 §4.5) or quoted strings kept with their quotes.
    """
    text = text.strip()
    if not text:
        return ()
    if not text.startswith(";"):
        raise SipParseError(f"junk before parameters: {text!r}")
    out: list[tuple[str, str | None]] = []
    for part in _split_params(text[1:]):
        name, eq, value = part.partition("=")
        name = name.strip()
        value = value.strip()
        if not _TOKEN.match(name):
            raise SipParseError(f"malformed parameter {part.strip()!r}")
        if eq:
            if not value or not (
                _VALUE.match(value) or (len(value) >= 2 and value[0] == value[-1] == '"')
            ):
                raise SipParseError(f"malformed parameter value {part.strip()!r}")
            out.append((name, value))
        else:
            out.append((name, None))
    return tuple(out)


def _format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _find(params: Params, name: str) -> str | None:
    for key, value in params:
        if key.lower() == name:
            return "" if value is None else value
    return None


@frozen
class CSeq:
    """``CSeq: 4711 INVITE``: the number orders requests within a dialog."""

    number: int
    method: str

    @classmethod
    def parse(cls, value: str) -> CSeq:
        return _parse_cseq(value)

    @classmethod
    def _parse(cls, value: str) -> CSeq:
        parts = value.split()
        if len(parts) != 2 or not _TOKEN.match(parts[1]):
            raise SipParseError(f"malformed CSeq {value[:60]!r}")
        return cls(parse_number(parts[0], 0, MAX_CSEQ, "CSeq number"), parts[1])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


@frozen
class Via:
    """One Via element: who sent the request and how to answer it."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    @classmethod
    def parse(cls, value: str) -> Via:
        return _parse_via(value)

    @classmethod
    def _parse(cls, value: str) -> Via:
        m = _PROTOCOL.match(value)
        if m is None:
            raise SipParseError(f"malformed Via {value!r}")
        rest = value[m.end() :]
        sent_by, semi, param_text = rest.partition(";")
        sent_by = sent_by.strip()
        if not sent_by:
            raise SipParseError(f"Via without sent-by: {value!r}")
        if sent_by.startswith("["):
            end = sent_by.find("]")
            if end < 0:
                raise SipParseError(f"malformed Via host {sent_by!r}")
            host = sent_by[1:end]
            if not _VIA_IPV6.match(host) or host.count(":") < 2:
                raise SipParseError(f"malformed Via host {sent_by!r}")
            host = host.replace(":::", "::")
            port_text = sent_by[end + 1 :].strip()
            if port_text and not port_text.startswith(":"):
                raise SipParseError(f"malformed Via sent-by {sent_by!r}")
            port_text = port_text[1:].strip()
        else:
            host, _, port_text = sent_by.partition(":")
            host = host.strip()
            port_text = port_text.strip()
            if not _VIA_HOST.match(host):
                raise SipParseError(f"malformed Via host {sent_by!r}")
        port: int | None = None
        if port_text:
            port = parse_number(port_text, 1, 65535, "Via port")
        params = parse_header_params(";" + param_text) if semi else ()
        via = cls(m.group(1).upper(), host, port, params)
        # The parameters a response is routed by are checked now, so that
        # reading them later cannot fail (RFC 3261 §20.42, RFC 3581).
        if params:
            _ = via.rport
            for name, param_value in params:
                if param_value is None and name.lower() in _VIA_VALUED:
                    raise SipParseError(f"Via {name} without a value")
            ttl = _find(params, "ttl")
            if ttl is not None:
                parse_number(ttl, 0, 255, "Via ttl")
        return via

    @property
    def branch(self) -> str | None:
        return _find(self.params, "branch")

    @property
    def received(self) -> str | None:
        value = _find(self.params, "received")
        return value.strip("[]") if value else value

    @property
    def rport(self) -> int | None:
        """The ``rport`` value; ``None`` when absent or requested but unfilled."""
        value = _find(self.params, "rport")
        return parse_number(value, 1, 65535, "rport") if value else None

    @property
    def wants_rport(self) -> bool:
        return _find(self.params, "rport") is not None

    @property
    def maddr(self) -> str | None:
        return _find(self.params, "maddr")

    @property
    def sent_by(self) -> str:
        host = format_host(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def is_rfc3261_branch(self) -> bool:
        """True when the branch carries the magic cookie and something after it."""
        branch = self.branch
        return branch is not None and branch.startswith("z9hG4bK") and len(branch) > 7

    def param(self, name: str) -> str | None:
        return _find(self.params, name.lower())

    def with_params(self, **params: str | None) -> Via:
        names = {k.lower() for k in params}
        kept = tuple(p for p in self.params if p[0].lower() not in names)
        return evolve(self, params=kept + tuple(params.items()))

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{_format_params(self.params)}"


@frozen
class NameAddr:
    """``"Display" <uri>;param=value``, the shape of From, To, Contact, Route.

    ``display_name`` keeps its quotes if it had them, so it prints back
    unchanged. ``params`` are header parameters (``tag``, ``q``,
    ``expires``), never the URI's own.
    """

    uri: Uri
    display_name: str | None = None
    params: Params = ()

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        return _parse_name_addr(value)

    @classmethod
    def _parse(cls, value: str) -> NameAddr:
        text = value.strip()
        lt = -1
        display: str | None = None
        if text.startswith('"'):
            i = 1
            while i < len(text):
                if text[i] == "\\":
                    i += 2
                    continue
                if text[i] == '"':
                    break
                i += 1
            else:
                raise SipParseError(f"unterminated display name in {value!r}")
            display = text[: i + 1]
            rest = text[i + 1 :].lstrip()
            if not rest.startswith("<"):
                raise SipParseError(f"display name without <uri> in {value!r}")
            lt = len(text) - len(rest)
        else:
            lt = text.find("<")
            if lt > 0:
                candidate = text[:lt].strip()
                if candidate:
                    if not _TOKEN_SEQ.match(candidate):
                        raise SipParseError(f"malformed display name {candidate!r}")
                    display = candidate
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise SipParseError(f"unterminated <uri> in {value!r}")
            uri_text = text[lt + 1 : gt]
            if uri_text != uri_text.strip():
                raise SipParseError(f"whitespace inside <uri> in {value!r}")
            uri = parse_uri(uri_text)
            params = parse_header_params(text[gt + 1 :])
        else:
            # addr-spec: the URI cannot carry ; or ? (they would be ambiguous),
            # everything after the first ; is a header parameter.
            uri_text, semi, param_text = text.partition(";")
            uri_text = uri_text.strip()
            if "?" in uri_text or "," in uri_text or " " in uri_text:
                raise SipParseError(f"addr-spec must be enclosed in <> here: {value!r}")
            uri = parse_uri(uri_text)
            params = parse_header_params(";" + param_text) if semi else ()
        return cls(uri, display, params)

    @property
    def tag(self) -> str | None:
        value = _find(self.params, "tag")
        return value or None

    @property
    def q(self) -> float:
        """The ``q`` preference (RFC 3261 §20.10); 1.0 when absent."""
        value = _find(self.params, "q")
        if value is None:
            return 1.0
        if not _QVALUE.match(value):
            raise SipParseError(f"malformed q value {value[:20]!r}")
        q = float(value)
        if not 0.0 <= q <= 1.0:
            raise SipParseError(f"q value out of range: {value!r}")
        return q

    @property
    def expires(self) -> int | None:
        value = _find(self.params, "expires")
        if value is None:
            return None
        return parse_delta_seconds(value, "expires parameter")

    @property
    def display_name_unquoted(self) -> str | None:
        d = self.display_name
        if d is None:
            return None
        if len(d) >= 2 and d[0] == d[-1] == '"':
            return re.sub(r"\\(.)", r"\1", d[1:-1])
        return d

    def param(self, name: str) -> str | None:
        return _find(self.params, name.lower())

    def with_params(self, **params: str | None) -> NameAddr:
        names = {k.lower() for k in params}
        kept = tuple(p for p in self.params if p[0].lower() not in names)
        return evolve(self, params=kept + tuple(params.items()))

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_params(tag=tag)

    def __str__(self) -> str:
        uri = f"<{self.uri}>"
        if self.display_name:
            uri = f"{self.display_name} {uri}"
        return uri + _format_params(self.params)


# Header values repeat across the messages of a call (a response copies the
# request's From, To and Via; a dialog re-reads them), and the parsed values
# are immutable, so equal texts share one parsed object. The caches are
# bounded in entries and, because a flood of unique long values would
# otherwise pin megabytes of text, only values of ordinary length are kept.
_cseq_memo = functools.lru_cache(maxsize=MEMO_SIZE)(CSeq._parse)
_via_memo = functools.lru_cache(maxsize=MEMO_SIZE)(Via._parse)
_name_addr_memo = functools.lru_cache(maxsize=MEMO_SIZE)(NameAddr._parse)


def _parse_cseq(value: str) -> CSeq:
    return _cseq_memo(value) if len(value) <= MEMO_LONGEST else CSeq._parse(value)


def _parse_via(value: str) -> Via:
    return _via_memo(value) if len(value) <= MEMO_LONGEST else Via._parse(value)


def _parse_name_addr(value: str) -> NameAddr:
    return _name_addr_memo(value) if len(value) <= MEMO_LONGEST else NameAddr._parse(value)


def clear_caches() -> None:
    """Forget every memoised header and URI value (for memory measurements)."""
    for memo in (_cseq_memo, _via_memo, _name_addr_memo):
        memo.cache_clear()
    clear_uri_cache()
