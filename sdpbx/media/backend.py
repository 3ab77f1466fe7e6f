"""The seam between a call and whatever carries its media.

A B2BUA rewrites each SDP that crosses it when media is anchored (the built-in
relay, or rtpengine for a cluster), and passes it through unchanged when it
is not. The call asks its backend for the SDP to send on; the backend
allocates, updates and releases relay endpoints per leg.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["MediaBackend", "PassthroughMedia"]


class MediaBackend(Protocol):
    """Allocate / update / release relay endpoints per call leg."""

    async def offer(self, call_id: str, leg: str, sdp: bytes) -> bytes:
        """The SDP offer ``leg`` sent, rewritten for the other side."""
        ...

    async def answer(self, call_id: str, leg: str, sdp: bytes) -> bytes:
        """The SDP answer ``leg`` sent, rewritten for the other side."""
        ...

    async def release(self, call_id: str) -> None:
        """The call ended: free every endpoint it held."""
        ...


class PassthroughMedia:
    """Media flows end to end; SDP crosses unchanged."""

    async def offer(self, call_id: str, leg: str, sdp: bytes) -> bytes:
        return sdp

    async def answer(self, call_id: str, leg: str, sdp: bytes) -> bytes:
        return sdp

    async def release(self, call_id: str) -> None:
        return None
