"""The DEBUG trace of every SIP message the stack receives and sends.

One line per message, built from the raw bytes (never a re-parse): direction,
transport, peer, size and start line, e.g. ``recv UDP 127.0.0.1:40112 (512
bytes): REGISTER sip:127.0.0.1 SIP/2.0``. It has a logger of its own,
``sdpbx.wire``, so an operator can switch it on or off apart from the rest of
``sdpbx``'s DEBUG output.

The stack calls :func:`trace` only after ``WIRE.isEnabledFor(logging.DEBUG)``
said yes: with the trace off, a message costs one cached level lookup and no
formatting.
"""

from __future__ import annotations

import logging

from ._stack_errors import first_line
from .transport.base import Peer

__all__ = ["WIRE", "trace"]

#: The trace's logger; a child of ``sdpbx`` so ``log_level = "debug"`` turns it on.
WIRE = logging.getLogger("sdpbx.wire")


def trace(direction: str, data: bytes, peer: Peer) -> None:
    """Log one message at DEBUG (``direction`` is ``"recv"`` or ``"send"``)."""
    connection = "" if peer.connection_id is None else f" #{peer.connection_id}"
    WIRE.debug(
        "%s %s %s%s (%d bytes): %s",
        direction,
        peer.transport,
        peer.address,
        connection,
        len(data),
        first_line(data),
    )
