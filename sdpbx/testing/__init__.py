"""Public test kit: drive sdpbx without a network, or give SIPp something to call.

- :class:`FakeClock` for sans-IO timers;
- :class:`~sdpbx.transport.MemoryNetwork` (re-exported) to connect stacks in memory;
- :class:`AnsweringUas`, a user agent server that answers every call;
- :class:`Phone`, a small user agent that registers, calls, answers and hangs up.
  A phone is its stack's request handler, so each phone needs a stack of its own
  (not the proxy's, not another phone's).
"""

from ..transport.memory import MemoryNetwork, MemoryTransport
from .clock import FakeClock
from .phone import CallFailed, Phone, PhoneCall
from .uas import AnsweringUas, UasStats

__all__ = [
    "AnsweringUas",
    "CallFailed",
    "FakeClock",
    "MemoryNetwork",
    "MemoryTransport",
    "Phone",
    "PhoneCall",
    "UasStats",
]
