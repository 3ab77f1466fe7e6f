"""What happens to a call, as values Python code can subscribe to.

The console's active-call list, the AMI counters and the CDR writer all
listen to these instead of poking into :class:`~sdpbx.b2bua.call.Call`
internals, so a user's own code can do the same.
"""

from __future__ import annotations

import enum
from typing import Literal

from attrs import frozen

__all__ = [
    "CallAnswered",
    "CallEnded",
    "CallEvent",
    "CallRinging",
    "CallStarted",
    "CallState",
    "HangupReason",
]


class CallState(enum.Enum):
    """``ringing`` covers routing and ringing, as the console shows it."""

    RINGING = "ringing"
    TALKING = "talking"
    ENDED = "ended"


#: Why a call ended, in the CDR's words (``hangupReason``).
HangupReason = Literal[
    "byCaller", "byCallee", "bySystem", "noAnswer", "canceled", "rejected", "failed", "rtpTimeout"
]


@frozen
class CallStarted:
    call_id: str
    timestamp: float
    caller: str
    callee: str
    direction: str


@frozen
class CallRinging:
    call_id: str
    timestamp: float
    status: int


@frozen
class CallAnswered:
    call_id: str
    timestamp: float
    target: str


@frozen
class CallEnded:
    """``status`` is the final INVITE status the caller saw (200 if answered)."""

    call_id: str
    timestamp: float
    reason: HangupReason
    status: int


CallEvent = CallStarted | CallRinging | CallAnswered | CallEnded
