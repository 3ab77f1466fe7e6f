"""Answers and log lines built from raw bytes, for requests that failed.

The stack's error paths (a request that did not parse, a handler that
raised while reading a broken header) must not fail in turn, so nothing
here re-parses what just failed: a start line is sliced out of the bytes,
and an error response copies the Via, From, To, Call-ID and CSeq lines as
they are.
"""

from __future__ import annotations

import logging

from .sip import Headers, Request, Response, new_tag
from .sip.headers import canonical_key

log = logging.getLogger("sdpbx.stack")

_ERROR_COPY = frozenset({"via", "from", "to", "call-id", "cseq"})


def first_line(data: bytes) -> str:
    """The start line of raw bytes, for a log line (never raises)."""
    return data.lstrip(b"\r\n")[:200].split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def safe_first_line(request: Request) -> str:
    """The start line of a parsed request; its method if even serialising fails."""
    try:
        return first_line(bytes(request))
    except Exception:
        return request.method


def error_response(data: bytes, status: int, reason: str) -> bytes | None:
    """A best-effort response to a request we could not parse or handle.

    Without a Via there is nowhere RFC 3261 would let us answer, so the
    answer is None (stay silent); a failure here is logged, never raised.
    """
    try:
        return _build_error_response(data, status, reason)
    except Exception:
        log.exception("could not build a %d from %r", status, first_line(data))
        return None


def _build_error_response(data: bytes, status: int, reason: str) -> bytes | None:
    text = data.decode("utf-8", "replace")
    head = text.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    lines = head.replace("\r\n", "\n").split("\n")
    copied: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and canonical_key(name.strip()) in _ERROR_COPY:
            copied.append((name.strip(), value.strip()))
    keys = {canonical_key(n) for n, _ in copied}
    if "via" not in keys:
        return None
    if "to" in keys and not any(
        canonical_key(n) == "to" and ";tag=" in v.replace(" ", "") for n, v in copied
    ):
        copied = [(n, f"{v};tag={new_tag()}" if canonical_key(n) == "to" else v) for n, v in copied]
    reason = reason.replace("\r", " ").replace("\n", " ")[:100]
    response = Response.create(status, Headers(copied), reason=reason)
    return bytes(response)
