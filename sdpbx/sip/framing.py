"""Cutting a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3, RFC 5626 §3.5.1).

On a stream the only message boundary is ``Content-Length``, so every message
must carry one; a message without it cannot be framed and the connection has to
be closed after answering 400. CRLFs before a start line are keep-alives: a
double CRLF is a "ping" that the transport must answer with a single CRLF
"pong", and single CRLFs (pongs) are ignored.

The framer is sans-IO like h11's receive buffer: the transport feeds bytes and
pulls whole messages. It never scans a byte twice for the end of the header
section, and it refuses (513) a message larger than ``max_message_size`` as soon
as its size is known, so a peer cannot make it buffer without limit. Any error
leaves the framer broken, because after a framing error the position of the
next message in the stream is unknowable.
"""

from __future__ import annotations

import re

from .errors import SipParseError
from .headers import DEFAULT_LIMITS, ParseLimits

__all__ = ["StreamFramer"]

# A Content-Length header (long or compact form, any case, LWS before and after
# the colon) at the start of a header line, with its folded continuation lines.
_CONTENT_LENGTH = re.compile(
    rb"\r\n(?:content-length|l)[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
    re.IGNORECASE,
)
_HEADER_END = b"\r\n\r\n"
# Ten digits already exceed any sane maximum; longer values are refused before
# int() so a hostile header cannot make the conversion itself expensive.
_MAX_LENGTH_DIGITS = 10


class StreamFramer:
    """Frames SIP messages out of a byte stream.

    Call :meth:`feed` with received bytes, then :meth:`next_message` until it
    returns ``None``; answer each ping counted by :meth:`take_pings` with
    ``b"\\r\\n"``. :class:`SipParseError` (status 400 or 513) means the
    connection must be closed.
    """

    def __init__(
        self, max_message_size: int | None = None, *, limits: ParseLimits | None = None
    ) -> None:
        if limits is None:
            limits = DEFAULT_LIMITS
        if max_message_size is None:
            max_message_size = limits.max_message_size
        if max_message_size < 16:
            raise ValueError("max_message_size is too small for any SIP message")
        self.max_message_size = max_message_size
        self.limits = limits
        # Line feeds counted in the header section scanned so far: a flood of
        # header lines is refused while it arrives, not once it is buffered.
        self._lines = 0
        self._buf = bytearray()
        # Where the next search for the end of the header section starts.
        self._scan = 0
        # Offset in _buf where the current message ends, once its headers are known.
        self._message_end: int | None = None
        # True once the first byte of a start line was seen (keep-alives skipped).
        self._in_message = False
        # Line feeds seen in a row between messages; two make a ping.
        self._newlines = 0
        self._pings = 0
        self._error: SipParseError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf)

    @property
    def in_message(self) -> bool:
        """Whether a partial message is pending (an EOF now truncates it)."""
        return self._in_message

    def feed(self, data: bytes) -> None:
        """Add bytes received from the stream."""
        if self._error is not None:
            raise self._error
        self._buf += data

    def take_pings(self) -> int:
        """How many double-CRLF pings arrived since the last call."""
        pings, self._pings = self._pings, 0
        return pings

    def next_message(self) -> bytes | None:
        """One whole message (headers and body), or ``None`` if more bytes are needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_message()
        except SipParseError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _next_message(self) -> bytes | None:
        buf = self._buf
        end = self._message_end
        if end is None:
            if not self._in_message and not self._skip_keepalives():
                return None
            header_end = buf.find(_HEADER_END, self._scan)
            if header_end < 0:
                if len(buf) > self.max_message_size:
                    raise SipParseError("Message Too Large", 513)
                # The terminator may straddle the next chunk: keep its first 3 bytes.
                scan = max(len(buf) - 3, 0)
                self._count_lines(scan)
                return None
            self._count_lines(header_end)
            body_start = header_end + 4
            end = body_start + self._content_length(header_end + 2)
            if end > self.max_message_size:
                raise SipParseError("Message Too Large", 513)
            self._message_end = end
        if len(buf) < end:
            return None
        message = bytes(buf[:end])
        del buf[:end]
        self._message_end = None
        self._in_message = False
        self._scan = 0
        self._lines = 0
        return message

    def _count_lines(self, scan: int) -> None:
        """Count the line feeds in ``_buf[_scan:scan]`` and move ``_scan`` there."""
        if scan > self._scan:
            self._lines += self._buf.count(b"\n", self._scan, scan)
            self._scan = scan
        # The start line ends with one of the line feeds counted.
        if self._lines > self.limits.max_headers + 1:
            raise SipParseError(f"more than {self.limits.max_headers} header lines")

    def _skip_keepalives(self) -> bool:
        """Drop CRLFs before a start line, counting pings; ``True`` once a message starts."""
        buf = self._buf
        i = 0
        size = len(buf)
        while i < size:
            byte = buf[i]
            if byte == 10:  # LF; a CR alone is ignored, so bare-LF peers work too
                self._newlines += 1
                if self._newlines == 2:
                    self._pings += 1
                    self._newlines = 0
            elif byte != 13:
                break
            i += 1
        if i:
            del buf[:i]
        if not buf:
            return False
        self._in_message = True
        self._newlines = 0
        self._scan = 0
        self._lines = 0
        return True

    def _content_length(self, headers_end: int) -> int:
        """The body length declared in the header section ``_buf[:headers_end]``."""
        length: int | None = None
        for match in _CONTENT_LENGTH.finditer(self._buf, 0, headers_end):
            raw = match.group(1)
            value = b" ".join(raw.split()) if b"\r\n" in raw else raw.strip()
            if not value.isdigit():
                raise SipParseError("Bad Content-Length", 400)
            if len(value) > _MAX_LENGTH_DIGITS:
                raise SipParseError("Message Too Large", 513)
            number = int(value)
            if length is not None and number != length:
                raise SipParseError("Conflicting Content-Length", 400)
            length = number
        if length is None:
            raise SipParseError("Missing Content-Length", 400)
        return length
