"""SIP over UDP on a plain non-blocking socket.

anyio's asyncio UDP socket keeps at most 100 datagrams in its own queue and
drops the oldest when the reader falls behind, which loses SIP requests under a
burst long before the kernel would. Here the kernel's receive buffer (made
large with ``SO_RCVBUF``) is the only queue: the serve loop waits until the
socket is readable, then drains it with ``recvfrom`` and hands every datagram
to the synchronous handler, with no task, future or copy per datagram.

One datagram's failure stays its own: whatever handling it raises is counted
in :attr:`UdpTransport.stats` and logged at a bounded rate (a flood of
datagrams that trip a bug must not become a flood of tracebacks), and the
receive loop carries on with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import sys

import anyio
from anyio.abc import TaskStatus

from ._guard import LogLimiter
from .base import ListenError, Peer, TransportHandler, TransportName

__all__ = ["UdpTransport"]

logger = logging.getLogger(__name__)

# Largest UDP payload; SIP over UDP stays far below it, but a datagram is
# never truncated silently.
_MAX_DATAGRAM = 65535
# Datagrams handled before going back to the event loop, so a flood cannot
# starve the other tasks (timers, TCP, HTTP).
_BATCH = 256
_MAPPED_PREFIX = "::ffff:"


@functools.lru_cache(maxsize=4096)
def _is_ip_literal(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, if anyio runs on asyncio (not trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# Linux only: like SO_RCVBUF/SO_SNDBUF but past net.core.[rw]mem_max, if privileged.
_SO_RCVBUFFORCE: int | None = getattr(socket, "SO_RCVBUFFORCE", None)
_SO_SNDBUFFORCE: int | None = getattr(socket, "SO_SNDBUFFORCE", None)


def _set_buffer(sock: socket.socket, option: int, force: int | None, size: int) -> None:
    """Ask for a kernel buffer of ``size``; a smaller grant is logged, not fatal."""
    with contextlib.suppress(OSError):  # platforms refusing the size outright
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    # Linux reports (and grants) twice the request; anything less was capped.
    wanted = size * 2 if sys.platform.startswith("linux") else size
    if sock.getsockopt(socket.SOL_SOCKET, option) >= wanted or force is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        logger.warning(
            "socket buffer capped at %d bytes (asked %d): raise net.core.rmem_max/wmem_max",
            sock.getsockopt(socket.SOL_SOCKET, option) // 2,
            size,
        )


class UdpStats:
    """Counters of one UDP transport (read by metrics and tests)."""

    __slots__ = ("datagram_errors", "receive_errors")

    def __init__(self) -> None:
        # Datagrams whose handling raised (the handler's own boundary failed).
        self.datagram_errors = 0
        # recvfrom() errors other than "nothing to read" (e.g. ICMP reports).
        self.receive_errors = 0


def _log_failure(log: LogLimiter, data: bytes, addr: object, exc: Exception) -> None:
    """Log a failed datagram by its first line (already known, nothing re-parsed)."""
    try:
        first = data[: data.find(b"\r\n")] if b"\r\n" in data[:200] else data[:80]
        log.warning("UDP handler failed on %r from %s: %r", first, addr, exc, exc=exc)
    except Exception:  # logging itself failed: the counter still has it
        logger.debug("UDP failure not logged", exc_info=True)


class UdpTransport:
    """A UDP listener on one address that also sends from it.

    Binding ``::`` accepts IPv4 too (dual stack); IPv4 peers are then reported
    as plain dotted quads, not ``::ffff:`` mapped addresses. ``rcvbuf`` is the
    kernel receive buffer requested (Linux caps it at ``net.core.rmem_max``
    unless running privileged; see :attr:`rcvbuf_actual`).
    """

    name: TransportName = "UDP"
    reliable: bool = False

    def __init__(
        self,
        host: str,
        port: int,
        *,
        rcvbuf: int = 4 * 1024 * 1024,
        sndbuf: int = 1024 * 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.rcvbuf = rcvbuf
        self.sndbuf = sndbuf
        self._sock: socket.socket | None = None
        self._v6 = ":" in host
        self._bound: tuple[str, int] = (host, port)
        self._send_lock = anyio.Lock()
        self.stats = UdpStats()
        self._log = LogLimiter(logger)

    @property
    def local_host(self) -> str:
        return self._bound[0]

    @property
    def local_port(self) -> int:
        return self._bound[1]

    @property
    def rcvbuf_actual(self) -> int:
        """The receive buffer the kernel granted (Linux reports twice the request)."""
        if self._sock is None:
            return 0
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _open(self) -> socket.socket:
        family = socket.AF_INET6 if self._v6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self._v6 and self.host in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _set_buffer(sock, socket.SO_RCVBUF, _SO_RCVBUFFORCE, self.rcvbuf)
            _set_buffer(sock, socket.SO_SNDBUF, _SO_SNDBUFFORCE, self.sndbuf)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ListenError(self.name, self.host, self.port, exc) from exc
        except BaseException:
            sock.close()
            raise
        return sock

    async def serve(
        self,
        handler: TransportHandler,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind, report readiness, then deliver datagrams until cancelled."""
        sock = self._open()
        self._sock = sock
        address = sock.getsockname()
        self._bound = (address[0], address[1])
        task_status.started()
        # One buffer for every datagram: recvfrom(65535) would malloc 64 KB per
        # datagram and shrink it, fragmenting the heap under a flood (RSS that
        # never came back); recvfrom_into copies out only the bytes received.
        buffer = bytearray(_MAX_DATAGRAM)
        view = memoryview(buffer)
        recvfrom_into = sock.recvfrom_into
        message_received = handler.message_received
        bound = self._bound
        stats = self.stats
        log = self._log

        def drain() -> None:
            if self._sock is not sock:
                return  # closed while a follow-up drain was scheduled
            for _ in range(_BATCH):
                try:
                    size, addr = recvfrom_into(buffer)
                    data = view[:size].tobytes()
                except BlockingIOError:
                    return
                except OSError as exc:
                    # e.g. ECONNREFUSED reported by an ICMP error; the socket lives on.
                    stats.receive_errors += 1
                    logger.debug("UDP receive error on %s: %s", bound, exc)
                    continue
                try:
                    host: str = addr[0]
                    if host.startswith(_MAPPED_PREFIX):
                        host = host[7:]
                    message_received(data, Peer("UDP", host, addr[1]))
                except Exception as exc:
                    stats.datagram_errors += 1
                    _log_failure(log, data, addr, exc)
            # A full batch: more may be queued. Come back after other callbacks
            # had their turn, without relying on the loop re-reporting a socket
            # that stayed readable (libuv, under uvloop, may not).
            if loop is not None:
                loop.call_soon(drain)

        loop = _asyncio_loop()
        try:
            if loop is not None:
                # On asyncio, a reader callback that stays registered costs one
                # epoll event per wake-up; anyio.wait_readable() would add and
                # remove the reader (and build a future) for every wake-up.
                loop.add_reader(sock.fileno(), drain)
                try:
                    await anyio.sleep_forever()
                finally:
                    loop.remove_reader(sock.fileno())
            else:
                while True:
                    await anyio.wait_readable(sock)
                    drain()
        finally:
            self._sock = None
            sock.close()

    def _address(self, peer: Peer) -> tuple[str, int]:
        host = peer.host
        if self._v6 and ":" not in host:
            host = _MAPPED_PREFIX + host
        return (host, peer.port)

    def send_nowait(self, data: bytes, peer: Peer) -> bool:
        """Send now; ``False`` if the socket buffer is full or the host needs resolving.

        Other :class:`OSError`\\ s (unreachable network, socket not bound yet)
        propagate, since :meth:`send` would fail the same way.
        """
        sock = self._sock
        if sock is None:
            raise OSError("UDP transport is not serving")
        if not _is_ip_literal(peer.host):
            return False
        try:
            sock.sendto(data, self._address(peer))
        except BlockingIOError:
            return False
        return True

    async def send(self, data: bytes, peer: Peer) -> None:
        """Send, resolving a host name and waiting for buffer space when needed."""
        sock = self._sock
        if sock is None:
            raise OSError("UDP transport is not serving")
        if not _is_ip_literal(peer.host):
            family = socket.AF_INET6 if self._v6 else socket.AF_INET
            infos = await anyio.getaddrinfo(
                peer.host, peer.port, family=family, type=socket.SOCK_DGRAM
            )
            if not infos:
                raise OSError(f"cannot resolve {peer.host}")
            peer = Peer("UDP", str(infos[0][4][0]), peer.port)
        address = self._address(peer)
        try:
            sock.sendto(data, address)
            return
        except BlockingIOError:
            pass
        # Only one task may wait for writability on a socket at a time.
        async with self._send_lock:
            while True:
                await anyio.wait_writable(sock)
                try:
                    sock.sendto(data, address)
                except BlockingIOError:
                    continue
                return
