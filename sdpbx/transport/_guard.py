"""What keeps one bad peer from stopping a stream listener.

Every connection task of TCP, TLS and WS runs under :func:`guarded`: whatever
escapes it (a parser bug, a socket that vanished between accept and
``getpeername``, a codec error on hostile bytes) closes that connection only,
is counted, and is logged at a bounded rate, since a peer able to trigger an
error at will could otherwise fill the disk with tracebacks. Accept loops use
:func:`accept_forever`, which survives every error and backs off when the
process is out of file descriptors instead of spinning.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import SocketListener, SocketStream

__all__ = ["LogLimiter", "TransportStats", "accept_forever", "guarded"]

# Errors of accept() meaning "no resources right now": wait, do not spin.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_EXHAUSTED_BACKOFF = 0.1


class TransportStats:
    """Counters of one stream transport (read by metrics and tests)."""

    __slots__ = ("accept_errors", "connection_errors", "connections_accepted")

    def __init__(self) -> None:
        self.connections_accepted = 0
        # Connections closed by the guard after an unexpected exception.
        self.connection_errors = 0
        self.accept_errors = 0


class LogLimiter:
    """At most one log line per ``interval`` seconds; the rest are counted.

    The first occurrence carries the traceback; later ones say how many were
    suppressed meanwhile, so the log shows the rate without growing with it.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next = -math.inf
        self._suppressed = 0
        self._traceback_shown = False

    def warning(self, msg: str, *args: Any, exc: BaseException | None = None) -> None:
        now = anyio.current_time()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self.interval
        if self._suppressed:
            msg += " (%d similar suppressed)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        show = exc is not None and not self._traceback_shown
        self._traceback_shown = self._traceback_shown or show
        self.logger.warning(msg, *args, exc_info=exc if show else None)
        if exc is not None and not show:
            self.logger.debug("traceback", exc_info=exc)


async def guarded(
    run: Callable[[], Awaitable[None]],
    describe: Callable[[], str],
    stats: TransportStats,
    log: LogLimiter,
) -> None:
    """Run one connection's task; an exception ends that connection alone.

    Cancellation (a BaseException) still propagates, so stopping the
    transport stops every connection.
    """
    try:
        await run()
    except Exception as exc:
        stats.connection_errors += 1
        log.warning("closing %s after an unexpected error: %r", describe(), exc, exc=exc)


async def accept_forever(
    listener: SocketListener,
    spawn: Callable[[SocketStream], None],
    name: str,
    stats: TransportStats,
    log: LogLimiter,
) -> None:
    """Accept until the listener closes; no error of accept() ends the loop."""
    while True:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return
        except Exception as exc:
            stats.accept_errors += 1
            log.warning("%s accept failed: %r", name, exc)
            exhausted = not isinstance(exc, OSError) or exc.errno in _EXHAUSTED
            await anyio.sleep(_EXHAUSTED_BACKOFF if exhausted else 0)
            continue
        stats.connections_accepted += 1
        spawn(stream)
