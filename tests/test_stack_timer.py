"""The stack's asyncio timer: one loop handle, re-armed only for an earlier deadline."""

from __future__ import annotations

from collections.abc import Callable

from sdpbx.sip import Request
from sdpbx.stack import SipStack
from sdpbx.transport import MemoryNetwork, Peer


class _Handle:
    """Like uvloop's Handle: cancel() and nothing else (no when())."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    def __init__(self) -> None:
        self.now = 100.0
        self.scheduled: list[tuple[float, _Handle]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle()
        self.scheduled.append((when, handle))
        return handle


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


def test_rearm_works_with_handles_that_have_no_when() -> None:
    network = MemoryNetwork()
    stack = SipStack([network.transport("UDP", "127.0.0.1", 5998)])
    loop = _Loop()
    stack._loop = loop  # type: ignore[assignment]
    first = stack.layer.create_client(
        _options(1), destination=Peer("UDP", "127.0.0.1", 5999), reliable=False,
        now=stack.clock(),
    )  # fmt: skip
    stack._rearm()
    assert len(loop.scheduled) == 1
    # A later deadline does not re-arm; an earlier one cancels and re-arms.
    stack._rearm()
    assert len(loop.scheduled) == 1
    stack.layer.create_client(
        _options(2), destination=Peer("UDP", "127.0.0.1", 5999), reliable=False,
        now=stack.clock() - 0.4,
    )  # fmt: skip
    stack._rearm()
    assert len(loop.scheduled) == 2
    assert loop.scheduled[0][1].cancelled
    assert loop.scheduled[1][0] < loop.scheduled[0][0]
    assert first is not None
    # This stack never served: close its request queue as serve() would.
    stack._work_send.close()
    stack._work_receive.close()
