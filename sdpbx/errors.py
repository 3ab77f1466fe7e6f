"""The one exception tree of sdpbx.

Every error that sdpbx raises on purpose derives from :class:`SdpbxError`, so an
application can catch ours without catching everything. Errors from third-party
libraries (httpx, sqlite3, ssl) are translated at the boundary where they occur.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "PayloadError",
    "SdpbxError",
    "TransactionClosed",
    "TransactionTimedOut",
]


class SdpbxError(Exception):
    """Base class of every exception sdpbx raises deliberately."""


class ConfigError(SdpbxError):
    """A configuration file or object is invalid.

    ``errors`` lists ``(path, message)`` pairs such as
    ``("proxy.user_backends[1].url", "not a valid URL")``, so that a bad
    config is reported with every offending key at once.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.errors))


class PayloadError(SdpbxError):
    """A JSON payload (webhook reply, REST body) does not fit the expected shape.

    ``errors`` lists ``(path, message)`` pairs such as
    ``("targets[0]", "expected a string")``; an HTTP handler answers 400/422
    with them, a webhook client treats the reply as failed.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.errors))


class TransactionClosed(SdpbxError):
    """A client transaction ended without a final response.

    The stack closed, or the transaction was destroyed (a CANCELled INVITE
    whose final response never came, RFC 3261 §9.1). Catching this catches
    :class:`TransactionTimedOut` too: both mean "no final response will come".
    """


class TransactionTimedOut(TransactionClosed):
    """No final response came back before Timer B/F fired (RFC 3261 §17.1)."""
