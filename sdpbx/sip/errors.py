"""Errors of the sans-IO SIP core.

As in h11, an error says whose fault it is. :class:`SipParseError` means the
peer sent something we cannot accept; it carries the status a server should
answer with (400, 416, 420, 505, 513, ...) so the transport layer can reply
without knowing why. :class:`LocalProtocolError` means the caller misused the
API (for example, sent a second final response on a transaction).
"""

from __future__ import annotations

from ..errors import SdpbxError

__all__ = ["LocalProtocolError", "SipError", "SipParseError"]


class SipError(SdpbxError):
    """Base class of the SIP core's errors."""


class SipParseError(SipError):
    """The remote side sent a message we cannot parse or must reject.

    ``status`` is the response code a server should send back (when the
    message is a request and a response can be built at all); ``reason`` is a
    short human-readable explanation that is safe to put in a reason phrase.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __repr__(self) -> str:
        return f"SipParseError({self.reason!r}, status={self.status})"


class LocalProtocolError(SipError):
    """This program tried to do something the protocol forbids."""
