"""The stack's one timer task: the same code on every backend and for every clock.

A cancel scope's deadline is moved in place when an input brings a deadline forward;
a later deadline leaves it alone. The scope's deadline is in the event loop's clock and
the stack's deadlines in its own (a FakeClock here): they meet through the delay.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from sdpbx.sip import Request
from sdpbx.stack import SipStack
from sdpbx.testing import FakeClock
from sdpbx.transport import MemoryNetwork, Peer

pytestmark = pytest.mark.anyio

PEER = Peer("UDP", "127.0.0.1", 5999)


def _options(n: int) -> Request:
    return Request.create(
        "OPTIONS",
        "sip:x@127.0.0.1:5999",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5998;branch=z9hG4bKtimer{n}"),
            ("From", f"<sip:a@x>;tag={n}"),
            ("To", "<sip:x@y>"),
            ("Call-ID", f"c{n}"),
            ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70"),
        ],
    )


class Alarm:
    """A timer client due at ``at`` (in its own clock) that records when it fired."""

    def __init__(self, at: float) -> None:
        self.at: float | None = at
        self.fired = anyio.Event()

    def next_deadline(self) -> float | None:
        return self.at

    def handle_timer(self, now: float) -> None:
        self.at = None
        self.fired.set()


Served = tuple[SipStack, FakeClock, MemoryNetwork]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    clock = FakeClock()
    network = MemoryNetwork()
    stack = SipStack([network.transport("UDP", "127.0.0.1", 5998)], clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        await anyio.wait_all_tasks_blocked()  # the timer task is asleep in its scope
        yield stack, clock, network
        tg.cancel_scope.cancel()


async def test_an_earlier_deadline_moves_the_sleeping_scope(served: Served) -> None:
    stack, clock, _ = served
    scope = stack.timer._scope
    assert scope is not None and scope.deadline == float("inf")  # nothing to wait for
    stack.layer.create_client(_options(1), destination=PEER, reliable=False, now=clock())
    stack._rearm()
    first = scope.deadline
    # Timer E at T1 = 0.5 s of the FakeClock, converted through the delay.
    assert 0.4 < first - anyio.current_time() <= 0.5
    stack.layer.create_client(_options(2), destination=PEER, reliable=False, now=clock() + 1)
    stack._rearm()
    assert scope.deadline == first  # later: left alone
    stack.layer.create_client(_options(3), destination=PEER, reliable=False, now=clock() - 0.4)
    stack._rearm()
    assert stack.timer._scope is scope  # the same scope, its deadline moved
    assert scope.deadline < first


async def test_a_deadline_in_the_past_fires_at_once(served: Served) -> None:
    stack, clock, network = served
    stack.layer.create_client(_options(4), destination=PEER, reliable=False, now=clock())
    clock.advance(0.5)  # Timer E is due; the task learns it from the next input
    alarm = Alarm(clock())
    stack.add_timer_client(alarm, clock)
    with anyio.fail_after(10):
        await alarm.fired.wait()
    sent = [m for m in network.sent if b"timer4" in m.data]
    assert len(sent) == 2  # the request, then Timer E's copy


async def test_the_timer_fires_on_the_real_clock() -> None:
    stack = SipStack([MemoryNetwork().transport("UDP", "127.0.0.1", 5998)])
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        alarm = Alarm(0.0)  # a wall-clock deadline long past
        stack.add_timer_client(alarm)
        with anyio.fail_after(10):
            await alarm.fired.wait()
        tg.cancel_scope.cancel()
