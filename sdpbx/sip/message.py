"""SIP requests and responses as immutable values, and the wire parser.

``parse_message`` does the least work that lets every message be routed and
answered: the start line, the header lines, the framing and the presence of
the mandatory headers. Everything else is parsed when asked for, by typed
accessors that cache their result (``msg.via``, ``msg.cseq``, ``msg.from_``).
A message that is forwarded unchanged is sent as the very bytes received.

Errors raise :class:`~.errors.SipParseError` with the status a server should
answer. An accessor may raise it too, later, for a header nobody looked at
during parsing; :meth:`Message.validate` parses every known header at once.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from attrs import define, field

from .errors import SipParseError
from .fields import CSeq, NameAddr, Via, _parse_cseq, _parse_name_addr, _parse_via
from .headers import (
    DEFAULT_LIMITS,
    LIST_HEADERS,
    Headers,
    ParseLimits,
    canonical_key,
    parse_delta_seconds,
    parse_number,
    pretty_name,
    split_commas,
)
from .reasons import reason_phrase
from .uri import Uri, parse_uri

__all__ = [
    "MAX_MESSAGE_SIZE",
    "Message",
    "Request",
    "Response",
    "make_response",
    "parse_message",
]

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
#: Headers that may appear once only; two of them make the message invalid.
_SINGLE = ("call-id", "cseq", "from", "to", "max-forwards", "content-type")
_MANDATORY = ("via", "from", "to", "call-id", "cseq")
MAX_MESSAGE_SIZE = DEFAULT_LIMITS.max_message_size
# RFC 3261 §25.1 callid = word ["@" word]: visible ASCII, no spaces.
_CALL_ID = re.compile(r"[!-~]+\Z")


class Message:
    """Behaviour shared by :class:`Request` and :class:`Response`."""

    __slots__ = ()
    headers: Headers
    body: bytes
    _raw: bytes | None
    _cache: dict[str, Any]

    # -- typed accessors (lazy, cached) ------------------------------------
    def _single(self, key: str) -> str:
        value = self.headers.get(key)
        if value is None:
            raise SipParseError(f"missing {pretty_name(key)} header")
        return value

    @property
    def call_id(self) -> str:
        cache = self._cache
        v = cache.get("call_id")
        if v is None:
            v = self._single("call-id").strip()
            if not _CALL_ID.match(v):
                raise SipParseError(f"malformed Call-ID {v[:60]!r}")
            cache["call_id"] = v
        return v

    @property
    def cseq(self) -> CSeq:
        cache = self._cache
        v = cache.get("cseq")
        if v is None:
            v = cache["cseq"] = CSeq.parse(self._single("cseq"))
        return v

    @property
    def from_(self) -> NameAddr:
        cache = self._cache
        v = cache.get("from")
        if v is None:
            v = cache["from"] = NameAddr.parse(self._single("from"))
        return v

    @property
    def to(self) -> NameAddr:
        cache = self._cache
        v = cache.get("to")
        if v is None:
            v = cache["to"] = NameAddr.parse(self._single("to"))
        return v

    @property
    def via(self) -> tuple[Via, ...]:
        """Every Via element, topmost first."""
        cache = self._cache
        v = cache.get("via")
        if v is None:
            v = cache["via"] = tuple(Via.parse(x) for x in self.headers.get_list("via"))
        return v

    @property
    def top_via(self) -> Via:
        cache = self._cache
        v = cache.get("top_via")
        if v is None:
            first = self.headers.get("via")
            if first is None:
                raise SipParseError("missing Via header")
            v = cache["top_via"] = Via.parse(split_commas(first)[0])
        return v

    def _name_addrs(self, key: str) -> tuple[NameAddr, ...]:
        cache = self._cache
        v = cache.get(key)
        if v is None:
            v = cache[key] = tuple(NameAddr.parse(x) for x in self.headers.get_list(key))
        return v

    @property
    def contact_is_star(self) -> bool:
        """``Contact: *`` (only legal in a REGISTER that removes every binding)."""
        values = self.headers.get_all("contact")
        return len(values) == 1 and values[0].strip() == "*"

    @property
    def contacts(self) -> tuple[NameAddr, ...]:
        """Every Contact element; raises for ``*`` (check :attr:`contact_is_star`)."""
        if self.contact_is_star:
            raise SipParseError("Contact: * where a URI was expected")
        return self._name_addrs("contact")

    @property
    def routes(self) -> tuple[NameAddr, ...]:
        return self._name_addrs("route")

    @property
    def record_routes(self) -> tuple[NameAddr, ...]:
        return self._name_addrs("record-route")

    @property
    def paths(self) -> tuple[NameAddr, ...]:
        return self._name_addrs("path")

    def _int(self, key: str, limit: int) -> int | None:
        value = self.headers.get(key)
        if value is None:
            return None
        return parse_number(value.strip(), 0, limit, pretty_name(key))

    @property
    def max_forwards(self) -> int | None:
        return self._int("max-forwards", 255)

    @property
    def expires(self) -> int | None:
        """The Expires header; overlarge values are capped (RFC 3261 §20.19)."""
        value = self.headers.get("expires")
        return None if value is None else parse_delta_seconds(value.strip(), "Expires")

    @property
    def content_length(self) -> int:
        return len(self.body)

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return None if value is None else value.strip()

    def _tokens(self, key: str) -> tuple[str, ...]:
        return tuple(t for t in self.headers.get_list(key) if t)

    @property
    def allow(self) -> tuple[str, ...]:
        return self._tokens("allow")

    @property
    def supported(self) -> tuple[str, ...]:
        return self._tokens("supported")

    @property
    def require(self) -> tuple[str, ...]:
        return self._tokens("require")

    @property
    def proxy_require(self) -> tuple[str, ...]:
        return self._tokens("proxy-require")

    @property
    def authorization(self) -> list[str]:
        return self.headers.get_all("authorization")

    @property
    def proxy_authorization(self) -> list[str]:
        return self.headers.get_all("proxy-authorization")

    @property
    def www_authenticate(self) -> list[str]:
        return self.headers.get_all("www-authenticate")

    @property
    def proxy_authenticate(self) -> list[str]:
        return self.headers.get_all("proxy-authenticate")

    @property
    def user_agent(self) -> str | None:
        return self.headers.get("user-agent")

    def validate(self) -> None:
        """Parse every header that has a typed accessor; raise if any is bad."""
        if isinstance(self, Request):
            _ = self.uri
        _ = (self.call_id, self.cseq, self.from_, self.to, self.via, self.max_forwards)
        if not self.contact_is_star:
            _ = self.contacts
        _ = (self.routes, self.record_routes, self.expires)
        _ = (self.allow, self.supported, self.require, self.proxy_require)

    # -- serialisation ---------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        raw = self._raw
        if raw is not None:
            return raw
        lines = [self.start_line()]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        head = "\r\n".join(lines) + "\r\n\r\n"
        raw = head.encode("utf-8", "surrogateescape") + self.body
        object.__setattr__(self, "_raw", raw)
        return raw


def _fresh(headers: Headers, body: bytes) -> Headers:
    """Headers with a Content-Length matching ``body``."""
    length = str(len(body))
    if (headers.get("content-length") or "").strip() == length:
        return headers
    return headers.set("Content-Length", length)


@define(frozen=True, slots=True, eq=False)
class Request(Message):
    """A SIP request. Build one with :meth:`create`, or parse bytes."""

    method: str
    #: The Request-URI; the parser stores its text and :attr:`uri` parses it
    #: on first use, so a retransmission or a stray message costs nothing.
    _uri: Uri | str = field(alias="uri")
    headers: Headers
    body: bytes = b""
    version: str = "SIP/2.0"
    _raw: bytes | None = field(default=None, repr=False)
    _cache: dict[str, Any] = field(factory=dict, init=False, repr=False)

    is_request: ClassVar[bool] = True

    @property
    def uri(self) -> Uri:
        uri = self._uri
        if isinstance(uri, str):
            # The text stays in _uri so the start line is written as received.
            cached = self._cache.get("uri")
            if cached is None:
                cached = self._cache["uri"] = parse_uri(uri)
            return cached
        return uri

    @classmethod
    def create(
        cls,
        method: str,
        uri: Uri | str,
        headers: Headers | list[tuple[str, str]] | tuple[tuple[str, str], ...],
        body: bytes = b"",
    ) -> Request:
        """A new request; Content-Length is set from ``body``."""
        if isinstance(uri, str):
            uri = parse_uri(uri)
        if not isinstance(headers, Headers):
            headers = Headers(headers)
        return cls(method, uri, _fresh(headers, body), body)

    def start_line(self) -> str:
        return f"{self.method} {self._uri} {self.version}"

    def replace(
        self,
        *,
        uri: Uri | None = None,
        headers: Headers | None = None,
        body: bytes | None = None,
        method: str | None = None,
    ) -> Request:
        """A copy with some parts replaced (and fresh bytes when serialised)."""
        new_body = self.body if body is None else body
        new_headers = self.headers if headers is None else headers
        if body is not None:
            new_headers = _fresh(new_headers, new_body)
        return Request(
            self.method if method is None else method,
            self._uri if uri is None else uri,
            new_headers,
            new_body,
            self.version,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.method, str(self.uri), self.headers, self.body) == (
            other.method,
            str(other.uri),
            other.headers,
            other.body,
        )

    def __hash__(self) -> int:
        return hash((self.method, str(self.uri), self.headers, self.body))


@define(frozen=True, slots=True, eq=False)
class Response(Message):
    """A SIP response."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    version: str = "SIP/2.0"
    _raw: bytes | None = field(default=None, repr=False)
    _cache: dict[str, Any] = field(factory=dict, init=False, repr=False)

    is_request: ClassVar[bool] = False

    @classmethod
    def create(
        cls,
        status: int,
        headers: Headers | list[tuple[str, str]] | tuple[tuple[str, str], ...],
        body: bytes = b"",
        reason: str | None = None,
    ) -> Response:
        if not isinstance(headers, Headers):
            headers = Headers(headers)
        return cls(
            status, reason_phrase(status) if reason is None else reason, _fresh(headers, body), body
        )

    @property
    def method(self) -> str:
        """The method of the request this answers (from CSeq)."""
        return self.cseq.method

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def replace(self, *, headers: Headers | None = None, body: bytes | None = None) -> Response:
        new_body = self.body if body is None else body
        new_headers = self.headers if headers is None else headers
        if body is not None:
            new_headers = _fresh(new_headers, new_body)
        return Response(self.status, self.reason, new_headers, new_body, self.version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.status, self.reason, self.headers, self.body) == (
            other.status,
            other.reason,
            other.headers,
            other.body,
        )

    def __hash__(self) -> int:
        return hash((self.status, self.headers, self.body))


_COPY_TO_RESPONSE = frozenset(("via", "from", "call-id", "cseq"))


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> Response:
    """Build a response to ``request`` as RFC 3261 §8.2.6.2 prescribes.

    Via, From, Call-ID and CSeq are copied verbatim (Via lines in order),
    To is copied and gets ``to_tag`` unless it already has a tag, and
    Record-Route is copied into dialog-creating 1xx/2xx responses
    (§12.1.1). ``headers`` are appended after those, then Content-Length.
    """
    out: list[tuple[str, str]] = []
    copy_rr = 100 < status < 300
    for name, value in request.headers:
        key = canonical_key(name)
        if key in _COPY_TO_RESPONSE:
            out.append((name, value))
        elif key == "to":
            if to_tag is not None and status != 100 and request.to.tag is None:
                value = f"{value};tag={to_tag}"
            out.append((name, value))
        elif copy_rr and key == "record-route":
            out.append((name, value))
    out.extend(headers)
    if not any(canonical_key(name) == "content-length" for name, _ in headers):
        out.append(("Content-Length", str(len(body))))
    return Response(status, reason_phrase(status) if reason is None else reason, Headers(out), body)


# --------------------------------------------------------------------------
# the parser


def _unfold(head: str) -> list[str]:
    """Split the header block into logical lines, joining folded ones."""
    lines = head.split("\r\n") if "\r\n" in head else head.split("\n")
    if "\n " in head or "\n\t" in head:
        out: list[str] = []
        for line in lines:
            if line[:1] in (" ", "\t") and out:
                out[-1] = out[-1].rstrip() + " " + line.strip()
            else:
                out.append(line)
        return out
    return lines


def _find_head_end(data: bytes) -> tuple[int, int]:
    """Return (end of header block, start of body)."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return end, end + 4
    end = data.find(b"\n\n")
    if end >= 0:
        return end, end + 2
    # A datagram that ends without the empty line (the RFC 4475 baddn
    # archive quirk): the header section runs to the end.
    stripped = data.rstrip(b"\r\n")
    if len(stripped) < len(data):
        return len(stripped), len(data)
    raise SipParseError("no end of header section")


# Raw header name (as written, colon side stripped) -> lookup key. Names seen
# once are not validated again; the cache is bounded so hostile traffic that
# invents names cannot grow it.
_NAME_KEYS: dict[str, tuple[str, str]] = {}
_NAME_CACHE_LIMIT = 4096


def _header_name(name: str) -> tuple[str, str]:
    """(lookup key, name without trailing LWS) of a raw header name."""
    stripped = name.rstrip(" \t")
    if not stripped or not _TOKEN_CHARS.issuperset(stripped):
        raise SipParseError(f"malformed header name {name[:60]!r}")
    entry = (canonical_key(stripped), stripped)
    if len(_NAME_KEYS) < _NAME_CACHE_LIMIT:
        _NAME_KEYS[name] = entry
    return entry


def _check_lists(
    items: list[tuple[str, str]], index: dict[str, list[int]], limits: ParseLimits
) -> None:
    """Refuse overlong Via and list headers before anyone splits them."""
    for key, positions in index.items():
        if key in LIST_HEADERS:
            count = sum(items[p][1].count(",") + 1 for p in positions)
            limit = limits.max_vias if key == "via" else limits.max_list_elements
            if count > limit:
                raise SipParseError(f"more than {limit} {pretty_name(key)} elements")


def _core_cache(
    items: list[tuple[str, str]], index: dict[str, list[int]], *, request: bool
) -> dict[str, Any]:
    """Parse what answering or matching a message needs: the message's cache.

    A request is answered from its top Via, From, To, Call-ID and CSeq, so a
    request whose copies of them are bad is refused here, once, rather than
    failing again in the error path that tries to answer it. A response is
    matched to its transaction on the top Via and CSeq alone; its From and
    To stay lazy so that a 2xx with a broken To still reaches the INVITE
    that must ACK it (the caller of an accessor gets :class:`SipParseError`).
    The header parsers are memoised, so a retransmission or the next message
    of the same call costs a few dictionary lookups.
    """
    top = items[index["via"][0]][1]
    call_id = items[index["call-id"][0]][1]
    if not _CALL_ID.match(call_id):
        raise SipParseError(f"malformed Call-ID {call_id[:60]!r}")
    cache = {
        "top_via": _parse_via(split_commas(top)[0] if "," in top else top),
        "cseq": _parse_cseq(items[index["cseq"][0]][1]),
        "call_id": call_id,
    }
    if request:
        cache["from"] = _parse_name_addr(items[index["from"][0]][1])
        cache["to"] = _parse_name_addr(items[index["to"][0]][1])
    return cache


def parse_message(
    data: bytes, *, datagram: bool = True, limits: ParseLimits | None = None
) -> Request | Response:
    """Parse one SIP message.

    With ``datagram=True`` (UDP) a Content-Length larger than the data is an
    error and bytes after the body are ignored (RFC 3261 §18.3); without a
    Content-Length the body is the rest of the datagram. Stream transports
    pass exactly one framed message. ``limits`` bounds the work a message may
    cause (:class:`~sdpbx.sip.headers.ParseLimits`).

    A returned request can always be answered with :func:`make_response`,
    and the headers a transaction is matched on are already parsed.
    """
    if limits is None:
        limits = DEFAULT_LIMITS
    if len(data) > limits.max_message_size:
        raise SipParseError("message too large", 513)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    head_end, body_start = _find_head_end(data)
    if data.count(b"\n", 0, head_end) > limits.max_headers:
        raise SipParseError(f"more than {limits.max_headers} header lines")
    lines = _unfold(data[:head_end].decode("utf-8", "surrogateescape"))
    start = lines[0]

    items: list[tuple[str, str]] = []
    index: dict[str, list[int]] = {}
    known = _NAME_KEYS.get
    i = 0
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        entry = known(name)
        if entry is None or not colon:
            if not colon:
                raise SipParseError(f"malformed header line {line[:60]!r}")
            entry = _header_name(name)
        key = entry[0]
        items.append((entry[1], value.strip()))
        positions = index.get(key)
        if positions is None:
            index[key] = [i]
        else:
            positions.append(i)
        i += 1
    headers = Headers._from_parsed(items, index)
    # One count over the header block decides whether the lists need a look.
    if len(index.get("via", ())) > limits.max_vias or data.count(b",", 0, head_end) >= min(
        limits.max_vias, limits.max_list_elements
    ):
        _check_lists(items, index, limits)

    for key in _MANDATORY:
        if key not in index:
            raise SipParseError(f"missing {pretty_name(key)} header")
    for key in _SINGLE:
        positions = index.get(key)
        if positions is not None and len(positions) > 1:
            raise SipParseError(f"more than one {pretty_name(key)} header")

    cl_positions = index.get("content-length")
    if cl_positions is not None:
        cl_text = items[cl_positions[0]][1]
        if len(cl_positions) > 1 and any(items[p][1] != cl_text for p in cl_positions):
            raise SipParseError("conflicting Content-Length headers")
        body_end = body_start + parse_number(cl_text, 0, limits.max_message_size, "Content-Length")
        if body_end > len(data):
            raise SipParseError("Content-Length larger than the message")
    elif datagram:
        body_end = len(data)
    else:
        raise SipParseError("missing Content-Length on a stream transport")
    body = data[body_start:body_end]
    raw = data if body_end == len(data) else data[:body_end]

    if start[:4].upper() == "SIP/":
        parts = start.split(" ", 2)
        if parts[0].upper() != "SIP/2.0":
            raise SipParseError(f"unsupported version in {start[:40]!r}", 505)
        code = parts[1] if len(parts) > 1 else ""
        if len(code) != 3:
            raise SipParseError(f"malformed status code {code[:12]!r}")
        status = parse_number(code, 100, 699, "status code")
        response = Response(
            status, parts[2] if len(parts) > 2 else "", headers, body, parts[0], raw
        )
        object.__setattr__(response, "_cache", _core_cache(items, index, request=False))
        return response

    parts = start.split()
    if len(parts) != 3:
        raise SipParseError(f"malformed request line {start[:80]!r}")
    method, uri_text, version = parts
    if not _TOKEN_CHARS.issuperset(method):
        raise SipParseError(f"malformed method {method[:40]!r}")
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        if version.upper().startswith("SIP/"):
            raise SipParseError(f"unsupported version {version[:20]!r}", 505)
        raise SipParseError(f"malformed request line {start[:80]!r}")
    if uri_text[:1] == "<":
        raise SipParseError(f"Request-URI in angle brackets: {uri_text[:60]!r}")
    cache = _core_cache(items, index, request=True)
    if cache["cseq"].method != method:
        raise SipParseError("CSeq method does not match the request method")
    cache["uri"] = parse_uri(uri_text)
    request = Request(method, uri_text, headers, body, version, raw)
    object.__setattr__(request, "_cache", cache)
    return request
