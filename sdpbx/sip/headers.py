"""The header section of a SIP message: an ordered multidict of raw text.

Headers are kept exactly as received (raw names, compact forms, order), so a
proxy forwards what it did not touch unchanged. Lookups go by the canonical
lower-case long name: ``headers.get("call-id")`` finds ``i:`` too. Values are
strings; the typed views (Via, From, CSeq, ...) live in :mod:`.fields` and are
parsed only when asked for.

A header whose value is a comma-separated list may be split into its elements
only if RFC 3261 §7.3.1 allows it for that header; splitting an
``Authorization`` or a ``Date`` on commas would corrupt it, so
:meth:`Headers.get_list` refuses to do that.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from attrs import frozen

from .errors import SipParseError

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "Headers",
    "ParseLimits",
    "canonical_key",
    "parse_delta_seconds",
    "parse_number",
    "split_commas",
]

# No legitimate SIP number (leading zeros included) is longer; refusing longer
# text before int() keeps the conversion cheap and below CPython's 4300-digit
# limit, whose ValueError would otherwise escape.
_MAX_NUMBER_CHARS = 16
MAX_DELTA_SECONDS = 2**32 - 1


def parse_number(text: str, low: int, high: int, what: str) -> int:
    """A decimal number from wire data: ASCII digits only, ``low <= n <= high``.

    ``str.isdigit()`` alone accepts Unicode digits ("²", Arabic-Indic) that
    ``int()`` then refuses (or silently converts): every number the parser
    reads goes through here so that bad text is always a 400.
    """
    if not (text.isdigit() and text.isascii()) or len(text) > _MAX_NUMBER_CHARS:
        raise SipParseError(f"malformed {what} {text[:20]!r}")
    number = int(text)
    if not low <= number <= high:
        raise SipParseError(f"{what} {text} out of range {low}..{high}")
    return number


def parse_delta_seconds(text: str, what: str) -> int:
    """An Expires-style number: ASCII digits, overlarge values capped at 2**32-1.

    RFC 3261 §20.19 bounds delta-seconds to 2**32-1; a registrar treats an
    overlarge value as "as long as you allow", so it is capped, not refused.
    """
    if not (text.isdigit() and text.isascii()):
        raise SipParseError(f"malformed {what} {text[:20]!r}")
    digits = text.lstrip("0")
    if len(digits) > 10:
        return MAX_DELTA_SECONDS
    return min(int(digits or "0"), MAX_DELTA_SECONDS)


@frozen
class ParseLimits:
    """Bounds on what one message may make the parser do.

    A 60 KB datagram of 3,000 header lines or a 30,000-token Require costs
    ten times a normal message; these limits refuse such messages (400, or
    513 for size) with a cheap count before any per-element work. Real
    messages carry 20-40 header lines, a handful of Vias (at most one per
    hop, and Max-Forwards starts at 70) and lists of a few dozen elements.
    Header lines are counted physically (a folded continuation counts), list
    elements by commas (a comma inside quotes counts too), both upper bounds.
    """

    max_message_size: int = 65535
    max_headers: int = 256
    max_vias: int = 70
    max_list_elements: int = 128

    def __attrs_post_init__(self) -> None:
        if self.max_message_size < 64:
            raise ValueError("max_message_size is too small for any SIP message")
        if min(self.max_headers, self.max_vias, self.max_list_elements) < 1:
            raise ValueError("parse limits must be at least 1")


DEFAULT_LIMITS = ParseLimits()

#: RFC 3261 §7.3.3 and later RFCs: the compact form -> canonical key.
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

#: Headers whose grammar is ``#element``, so they may be split on commas.
LIST_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "in-reply-to",
        "p-asserted-identity",
        "path",
        "proxy-require",
        "reason",
        "record-route",
        "require",
        "route",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)

#: Canonical spelling used when we write a header we created ourselves.
_PRETTY: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
}


_KEY_CACHE: dict[str, str] = {}


def canonical_key(name: str) -> str:
    """The lookup key of a header name: lower-case, compact forms expanded."""
    key = _KEY_CACHE.get(name)
    if key is None:
        key = name.lower()
        key = COMPACT_FORMS.get(key, key)
        if len(_KEY_CACHE) < 4096:  # bounded: hostile traffic cannot grow it
            _KEY_CACHE[name] = key
    return key


def pretty_name(key: str) -> str:
    return _PRETTY.get(key) or "-".join(part.capitalize() for part in key.split("-"))


def split_commas(value: str) -> list[str]:
    """Split a list header value on commas outside quotes and ``<...>``.

    Empty elements (``a,,b``) are an error, as RFC 4475 §3.1.2.1 expects.
    """
    if "," not in value:
        return [value.strip()]
    out: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    out.append(value[start:].strip())
    if any(not part for part in out):
        raise SipParseError(f"empty element in list {value!r}")
    return out


class Headers:
    """An immutable ordered multidict of ``(raw name, value)`` pairs.

    Every "modifying" method returns a new :class:`Headers`; messages are
    values, so the Headers they hold must not change under them.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] = tuple(items)
        self._index: dict[str, list[int]] | None = None

    @classmethod
    def _from_parsed(cls, items: list[tuple[str, str]], index: dict[str, list[int]]) -> Headers:
        self = cls.__new__(cls)
        self._items = tuple(items)
        self._index = index
        return self

    def _idx(self) -> dict[str, list[int]]:
        index = self._index
        if index is None:
            index = {}
            key_of = _KEY_CACHE.get
            for i, (name, _) in enumerate(self._items):
                key = key_of(name) or canonical_key(name)
                positions = index.get(key)
                if positions is None:
                    index[key] = [i]
                else:
                    positions.append(i)
            self._index = index
        return index

    # -- reading --------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_key(name) in self._idx()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (any spelling), or ``default``."""
        positions = self._idx().get(canonical_key(name))
        return default if not positions else self._items[positions[0]][1]

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order, one per header line."""
        positions = self._idx().get(canonical_key(name), ())
        items = self._items
        return [items[i][1] for i in positions]

    def get_list(self, name: str) -> list[str]:
        """Every element of a list header, header lines and commas both split."""
        key = canonical_key(name)
        if key not in LIST_HEADERS:
            raise ValueError(f"{name} is not a comma-separated list header")
        out: list[str] = []
        for value in self.get_all(key):
            out.extend(split_commas(value))
        return out

    def count(self, name: str) -> int:
        return len(self._idx().get(canonical_key(name), ()))

    def keys(self) -> list[str]:
        """Canonical keys present, in first-appearance order."""
        return list(self._idx())

    # -- building new Headers ---------------------------------------------
    def add(self, name: str, value: str) -> Headers:
        """Append a header line."""
        return Headers((*self._items, (name, value)))

    def prepend(self, name: str, value: str) -> Headers:
        """Insert a header line before the first one (a new top Via)."""
        return Headers(((name, value), *self._items))

    def remove(self, name: str) -> Headers:
        """Drop every line of ``name``."""
        key = canonical_key(name)
        return Headers(i for i in self._items if canonical_key(i[0]) != key)

    def remove_first(self, name: str) -> Headers:
        """Drop the first line of ``name`` (popping the top Via)."""
        positions = self._idx().get(canonical_key(name))
        if not positions:
            return self
        skip = positions[0]
        return Headers(item for i, item in enumerate(self._items) if i != skip)

    def set(self, name: str, value: str) -> Headers:
        """Replace every line of ``name`` by one, in the place of the first."""
        key = canonical_key(name)
        positions = self._idx().get(key)
        if not positions:
            return self.add(name, value)
        first = positions[0]
        out = []
        for i, item in enumerate(self._items):
            if i == first:
                out.append((item[0], value))
            elif canonical_key(item[0]) != key:
                out.append(item)
        return Headers(out)

    def replace_first(self, name: str, value: str) -> Headers:
        """Replace only the first line of ``name`` (e.g. a top Via)."""
        positions = self._idx().get(canonical_key(name))
        if not positions:
            return self.prepend(name, value)
        first = positions[0]
        items = list(self._items)
        items[first] = (items[first][0], value)
        return Headers(items)

    def extend(self, items: Iterable[tuple[str, str]]) -> Headers:
        return Headers((*self._items, *items))
