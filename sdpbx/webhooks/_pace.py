"""Background deliveries give way while the event loop runs late.

Webhook deliveries share the event loop with the SIP stack. In a registration
storm the stack alone can keep the loop busy, and every POST started then
delays a REGISTER's answer until phones retransmit and give up, which makes
the storm worse. Events can wait (they are queued); phones cannot. So a
:class:`LoopPace` task times a short sleep over and over: when it wakes up
late, other work is queued ahead of it, and deliveries beyond the first wait
until the loop keeps time again.
"""

from __future__ import annotations

import anyio

__all__ = ["LoopPace"]


class LoopPace:
    """``busy`` while a ``period``-second sleep wakes up more than ``late`` seconds late."""

    def __init__(self, *, period: float = 0.01, late: float = 0.015) -> None:
        self.period = period
        self.late = late
        self.busy = False
        self._calm: anyio.Event | None = None

    async def run(self) -> None:
        """Watch the loop until cancelled."""
        while True:
            start = anyio.current_time()
            await anyio.sleep(self.period)
            self.busy = anyio.current_time() - start - self.period > self.late
            if not self.busy and self._calm is not None:
                self._calm.set()
                self._calm = None

    async def calm(self) -> None:
        """Return once the loop keeps time (at once when it does already)."""
        while self.busy:
            if self._calm is None:
                self._calm = anyio.Event()
            await self._calm.wait()
