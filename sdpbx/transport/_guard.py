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
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
from anyio import TypedAttributeLookupError
from anyio.abc import SocketAttribute, SocketListener, SocketStream

from .._ratelog import LogLimiter

__all__ = [
    "MAPPED_PREFIX",
    "LogLimiter",
    "TransportStats",
    "accept_forever",
    "guarded",
    "remote_of",
    "serve_accepted",
    "unmapped",
]

# Errors of accept() meaning "no resources right now": wait, do not spin.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_EXHAUSTED_BACKOFF = 0.1
# After closing an idle connection for its descriptor: long enough for its
# task to run its cleanup and close the socket.
_FREED_BACKOFF = 0.005


class TransportStats:
    """Counters of one stream transport (read by metrics and tests)."""

    __slots__ = (
        "accept_errors",
        "connection_errors",
        "connections_accepted",
        "connections_evicted",
        "connections_refused",
        "deadline_closes",
    )

    def __init__(self) -> None:
        self.connections_accepted = 0
        # Connections closed by the guard after an unexpected exception.
        self.connection_errors = 0
        self.accept_errors = 0
        # Closed idle to make room under the connection limits, and newcomers
        # closed at once because every connection was mid-message.
        self.connections_evicted = 0
        self.connections_refused = 0
        # Closed because a message (or WS handshake) missed its deadline.
        self.deadline_closes = 0


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


#: How a dual-stack socket shows an IPv4 peer.
MAPPED_PREFIX = "::ffff:"


def unmapped(host: str) -> str:
    """An IPv4-mapped IPv6 address as the IPv4 address it maps."""
    return host[len(MAPPED_PREFIX) :] if host.startswith(MAPPED_PREFIX) else host


def remote_of(raw: SocketStream) -> tuple[str, int] | None:
    """An accepted connection's peer, or None when it reset before we looked
    (getpeername: ENOTCONN), which port scanners and NAT timeouts do."""
    try:
        remote = raw.extra(SocketAttribute.remote_address)
    except (TypedAttributeLookupError, OSError):
        return None
    return unmapped(str(remote[0])), int(remote[1])


async def serve_accepted(
    raw: SocketStream,
    serve: Callable[[SocketStream], Awaitable[None]],
    name: str,
    stats: TransportStats,
    log: LogLimiter,
) -> None:
    """One accepted connection, from accept to close, under the guard: whatever
    ``serve`` raises ends this connection alone, and its socket is closed."""
    try:
        await guarded(lambda: serve(raw), lambda: f"inbound {name} connection", stats, log)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(raw)


async def accept_forever(
    listener: SocketListener,
    spawn: Callable[[SocketStream], None],
    name: str,
    stats: TransportStats,
    log: LogLimiter,
    exhausted: Callable[[], bool] | None = None,
) -> None:
    """Accept until the listener closes; no error of accept() ends the loop.

    Out of descriptors, ``exhausted`` may close an idle connection to make
    room (it says whether it did); otherwise the loop waits before retrying.
    """
    while True:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return
        except Exception as exc:
            stats.accept_errors += 1
            log.warning("%s accept failed: %r", name, exc)
            out_of_resources = not isinstance(exc, OSError) or exc.errno in _EXHAUSTED
            if not out_of_resources:
                await anyio.lowlevel.checkpoint()
                continue
            freed = False
            if exhausted is not None:
                try:
                    freed = exhausted()
                except Exception as hook_exc:
                    log.warning("%s could not free a descriptor: %r", name, hook_exc)
            await anyio.sleep(_FREED_BACKOFF if freed else _EXHAUSTED_BACKOFF)
            continue
        stats.connections_accepted += 1
        spawn(stream)
