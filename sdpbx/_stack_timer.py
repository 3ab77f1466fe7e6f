"""The stack's one timer: a task asleep in a cancel scope whose deadline moves.

Every sans-IO object of a stack (the transaction layer, the locator, the
registrar's nonces) answers ``next_deadline()`` and ``handle_timer(now)``.
One task sleeps until the earliest deadline, fires what is due and sleeps
again; an input that brings a deadline forward moves the sleeping scope's
deadline in place (``scope.deadline = earlier``), which allocates nothing.

The path is the same on every anyio backend and for every clock: the
deadlines are in the clock the stack was given (``time.monotonic``, or a
test's ``FakeClock``), the scope's in the event loop's, and the two meet
through the delay (``loop_now + deadline - clock()``), never through an
offset between clocks (trio's clock has a random one).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio

if TYPE_CHECKING:
    from .sip.transaction import TransactionLayer
    from .stack import StackStats

log = logging.getLogger("sdpbx.stack")

#: A deadline less than this much earlier than the armed one does not re-arm (re-arming
#: costs a loop timer handle; a millisecond is far below SIP's timer resolution).
_SLACK = 0.001


class TimerClient(Protocol):
    """Anything with sans-IO timers that shares the stack's timer task."""

    def next_deadline(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class StackTimer:
    """The timer task of one stack and the clients that share it."""

    def __init__(
        self,
        layer: TransactionLayer,
        clock: Callable[[], float],
        stats: StackStats,
        flush: Callable[[], None],
    ) -> None:
        self.layer = layer
        self.clock = clock
        self.stats = stats
        self._flush = flush
        self.clients: list[tuple[TimerClient, Callable[[], float]]] = []
        #: The scope the task sleeps in; None while the timers run or before it started.
        self._scope: anyio.CancelScope | None = None
        self._loop_time: Callable[[], float] = _no_loop

    def add_client(self, client: TimerClient, clock: Callable[[], float]) -> None:
        self.clients.append((client, clock))
        self.rearm()

    def next_delay(self) -> float:
        """Seconds until the earliest deadline (0 if one is due, inf if none runs)."""
        delays = []
        deadline = self.layer.next_deadline()
        if deadline is not None:
            delays.append(deadline - self.clock())
        for client, clock in self.clients:
            try:
                d = client.next_deadline()
            except Exception:
                self.stats.timer_errors += 1
                log.exception("next_deadline() of %r failed", client)
                continue
            if d is not None:
                delays.append(d - clock())
        return max(min(delays), 0.0) if delays else math.inf

    def rearm(self) -> None:
        """Bring the sleeping task's deadline forward if an input made one earlier."""
        scope = self._scope
        if scope is None:
            return  # not asleep: the task computes its deadline before it sleeps again
        delay = self.next_delay()
        if delay == math.inf:
            return
        deadline = self._loop_time() + delay
        if deadline < scope.deadline - _SLACK:
            scope.deadline = deadline

    async def run(self) -> None:
        """The timer task: sleep until the earliest deadline, fire, repeat; never returns."""
        self._loop_time = now = _loop_clock()
        try:
            while True:
                with anyio.CancelScope(deadline=now() + self.next_delay()) as scope:
                    self._scope = scope
                    await anyio.sleep_forever()
                # While the timers run, rearm() leaves the deadline alone: the loop
                # computes it afresh before sleeping again.
                self._scope = None
                self.tick()
        finally:
            self._scope = None

    def tick(self) -> None:
        """Fire what is due, send what that produced; never raises."""
        self.run_timers()
        try:
            self._flush()
        except Exception:
            self.stats.internal_errors += 1
            log.exception("flush after the timers failed")

    def run_timers(self) -> None:
        """Fire what is due; each client fails on its own (one bad timer stops no other)."""
        try:
            self.layer.handle_timer(self.clock())
        except Exception:
            self.stats.timer_errors += 1
            log.exception("transaction timer handling failed")
        for client, clock in self.clients:
            try:
                d = client.next_deadline()
                if d is not None and d <= clock():
                    client.handle_timer(clock())
            except Exception:
                self.stats.timer_errors += 1
                log.exception("timer client %r failed", client)


def _loop_clock() -> Callable[[], float]:
    """The running event loop's clock, the one cancel-scope deadlines are in.

    asyncio's is read directly (``anyio.current_time()`` looks the backend up on
    every call, which re-arming after every message would pay).
    """
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        return anyio.current_time


def _no_loop() -> float:
    return 0.0
