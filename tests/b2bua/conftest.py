"""Every test here runs on both backends with a virtual event-loop clock.

The stacks' RFC 3261 timers run on a :class:`~sdpbx.testing.FakeClock` the
tests move by hand. A call's own deadlines (the ring timeout, the wait for a
caller's ACK, the grace for its last BYEs) are cancel scopes on the event
loop's clock, which a FakeClock cannot move: so the loop's clock jumps
straight to the next deadline whenever every task is blocked (trio's
``MockClock`` with ``autojump_threshold=0``, and the same for asyncio in
:class:`VirtualTimeLoop`). A 60-second ring timeout then takes no wall time,
and a test that would hang fails at its ``fail_after`` guard at once.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any

import pytest
import trio.testing


class _JumpingSelector(selectors.DefaultSelector):
    """Never sleeps: when nothing is ready before the loop's next timer, time jumps to it."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:  # no timer at all: only I/O can wake the loop
            return super().select(None)
        self.offset += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock autojumps, like trio's ``MockClock(autojump_threshold=0)``."""

    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return time.monotonic() + self._jumping.offset


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    if request.param == "asyncio":
        return "asyncio", {"loop_factory": VirtualTimeLoop}
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}
