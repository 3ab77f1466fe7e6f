"""A transport handler that keeps what a MemoryNetwork delivers to a test's phone."""

from __future__ import annotations

import anyio

from sdpbx.transport import Peer


class Inbox:
    """Collects every message sent to one in-memory transport, in order."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.arrived = anyio.Event()

    def message_received(self, data: bytes, peer: Peer) -> None:
        self.messages.append(data)
        self.arrived.set()

    def connection_lost(self, peer: Peer) -> None:
        pass

    async def wait_for(self, count: int) -> list[bytes]:
        """Until ``count`` messages arrived (10 s at most); all of them."""
        with anyio.fail_after(10):
            while len(self.messages) < count:
                self.arrived = anyio.Event()
                await self.arrived.wait()
        return self.messages
