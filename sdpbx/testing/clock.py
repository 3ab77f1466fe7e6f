"""A clock that moves only when told to, for driving sans-IO timers in tests."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Call it for the time; :meth:`advance` moves it.

    Pass it where sdpbx takes a ``clock`` (``SipStack(clock=...)``) or read it
    to give ``now`` to a sans-IO object: RFC 3261's 32-second Timer B then
    takes microseconds to test.
    """

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
        return self.now
