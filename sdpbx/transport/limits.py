"""How many stream connections a process keeps, and which one gives way.

Every TCP, TLS and WS connection holds a file descriptor and some 20 KiB of
buffers and task state, so without a cap a client opening idle connections
exhausts the descriptor limit, after which no phone can connect (issue 13
item 14). One :class:`ConnectionTable` per process is shared by all stream
transports, so the total spans them. When a newcomer would exceed the total or
its source's share, the connection idle longest gives way, preferring one that
never completed a SIP message (what an idle flood looks like, and what a
registered phone is not); when every candidate is in the middle of a message
the newcomer is refused instead, since a half-received message is someone's
work in progress and the message deadline bounds how long that lasts.

Evictions and refusals are counted (in the table and in each transport's
stats) and logged at a bounded rate. When a surge of connections ends, freed
heap is handed back to the system (:meth:`ConnectionTable.maintain`), which
glibc does not do by itself for memory freed below the top of the heap.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from attrs import field, frozen, validators

from .._memory import release_free_memory
from ._guard import LogLimiter

if TYPE_CHECKING:
    from ._guard import TransportStats

__all__ = ["ConnectionLimits", "ConnectionSlot", "ConnectionTable", "raise_open_file_limit"]

logger = logging.getLogger(__name__)

# Idle candidates looked at per eviction, in each recency order.
_SCAN = 256
# Hand freed heap back when the count falls to half of a peak of at least
# this many connections (peak since the last time).
_TRIM_AFTER = 1000
# How often :meth:`ConnectionTable.maintain` looks whether a trim is due, and
# how many looks it waits for a quiet interval before trimming anyway.
_TRIM_CHECK = 1.0
_TRIM_PATIENCE = 5


@frozen
class ConnectionLimits:
    """The connection policy of a process's stream transports.

    ``max_connections`` spans TCP, TLS and WS together; keep it below the
    open-file limit (see :func:`raise_open_file_limit`) with room for UDP,
    HTTP clients and the database. ``max_per_source`` caps one IPv4 address or
    one IPv6 /64, so a single host cannot take every slot. ``message_deadline``
    is how long a SIP message may take from its first byte to its last, and
    how long a WebSocket upgrade may take; a peer trickling bytes is closed
    when it passes.
    """

    max_connections: int = field(default=10_000, validator=validators.ge(1))
    max_per_source: int = field(default=1_000, validator=validators.ge(1))
    message_deadline: float = field(default=10.0, validator=validators.gt(0))


def _source_key(host: str) -> str:
    """IPv4 addresses as they are; IPv6 by /64, the unit one subscriber gets."""
    if ":" not in host:
        return host
    try:
        network = ipaddress.IPv6Network((host.partition("%")[0], 64), strict=False)
    except ValueError:
        return host
    return str(network)


class ConnectionSlot:
    """One connection's place in the table; the transport reports its activity.

    ``busy`` is true while part of a message is buffered. The table keeps two
    recency orders: connections that never completed a SIP message, and those
    that did, each oldest activity first.
    """

    __slots__ = (
        "_close",
        "_table",
        "busy",
        "closed",
        "completed",
        "description",
        "released",
        "source",
        "stats",
    )

    def __init__(
        self,
        table: ConnectionTable,
        source: str | None,
        close: Callable[[], None],
        stats: TransportStats,
        description: str,
    ) -> None:
        self._table = table
        self._close = close
        self.source = source
        self.stats = stats
        self.description = description
        self.busy = False
        self.completed = False
        self.released = False
        self.closed = False

    def message_started(self) -> None:
        """The first byte of a message arrived: not evictable until it completes."""
        if not self.busy and not self.released:
            self.busy = True
            self._table._refresh(self)

    def message_done(self, *, busy: bool = False) -> None:
        """A whole SIP message arrived; ``busy`` if the next one has begun."""
        self.busy = busy
        if self.released:
            return
        if not self.completed:
            self.completed = True
            self._table._promote(self)
        else:
            self._table._refresh(self)

    def keepalive(self, *, busy: bool = False) -> None:
        """A ping or pong: recent activity, but no proof of a SIP client."""
        self.busy = busy
        if not self.released:
            self._table._refresh(self)

    def release(self) -> None:
        """The connection closed, its socket too (idempotent)."""
        self.closed = True
        if not self.released:
            self._table._remove(self)

    def _evict(self) -> None:
        self.stats.connections_evicted += 1
        try:
            self._close()
        except Exception as exc:  # a close callback must not stop admission
            logger.debug("closing evicted %s failed: %r", self.description, exc)


class _Orders:
    """Slots in two recency orders, oldest activity first: those that never
    completed a SIP message, and those that did."""

    __slots__ = ("fresh", "used")

    def __init__(self) -> None:
        self.fresh: OrderedDict[ConnectionSlot, None] = OrderedDict()
        self.used: OrderedDict[ConnectionSlot, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.fresh) + len(self.used)

    def add(self, slot: ConnectionSlot) -> None:
        self.fresh[slot] = None

    def refresh(self, slot: ConnectionSlot) -> None:
        order = self.used if slot.completed else self.fresh
        if slot in order:
            order.move_to_end(slot)

    def promote(self, slot: ConnectionSlot) -> None:
        if self.fresh.pop(slot, 0) is None:
            self.used[slot] = None

    def discard(self, slot: ConnectionSlot) -> None:
        self.fresh.pop(slot, None)
        self.used.pop(slot, None)

    def first_idle(self) -> ConnectionSlot | None:
        """The slot idle longest, preferring one that never completed a message.

        Slots move to the back when they become busy, so the front is idle
        unless many are mid-message at once; the scan is bounded so that a
        flood of half-sent messages cannot make each admission O(n).
        """
        for order in (self.fresh, self.used):
            for scanned, slot in enumerate(order):
                if scanned >= _SCAN:
                    break
                if not slot.busy:
                    return slot
        return None


class ConnectionTable:
    """The open stream connections of a process, across TCP, TLS and WS.

    Create one and pass it as ``connections=`` to every stream transport.
    """

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self._all = _Orders()
        self._by_source: dict[str, _Orders] = {}
        self.evicted = 0
        self.refused = 0
        self._peak = 0
        self._surge = False
        self._trim_due = False
        self._closed = 0
        self._fd_victim: ConnectionSlot | None = None
        self._log = LogLimiter(logger)

    @property
    def count(self) -> int:
        """Connections holding a slot now."""
        return len(self._all)

    def busy_count(self) -> int:
        """Connections with part of a message buffered (not evictable now)."""
        return sum(slot.busy for order in (self._all.fresh, self._all.used) for slot in order)

    def source_count(self, host: str) -> int:
        """Inbound connections from ``host``'s source (its IPv6 /64)."""
        return len(self._by_source.get(_source_key(host), ()))

    def admit(
        self,
        host: str,
        close: Callable[[], None],
        stats: TransportStats,
        *,
        name: str,
        inbound: bool = True,
    ) -> ConnectionSlot | None:
        """A slot for a new connection, evicting an idle one if a cap is reached.

        ``close`` ends the connection (cancels its scope) when it is evicted.
        Outbound connections count in the total only: the per-source cap is
        about clients. ``None`` means refused: close the newcomer at once.
        """
        source = _source_key(host) if inbound else None
        peers = self._by_source.get(source) if source is not None else None
        what = f"{name} connection {'from' if inbound else 'to'} {host}"
        if peers is not None and len(peers) >= self.limits.max_per_source:
            victim = peers.first_idle()
            if victim is None:
                return self._refuse(stats, what, "its source has %d busy connections", len(peers))
            self._evict(victim, what, "per-source cap")
        if self.count >= self.limits.max_connections:
            victim = self._all.first_idle()
            if victim is None:
                return self._refuse(stats, what, "all %d connections are busy", self.count)
            self._evict(victim, what, "total cap")
        slot = ConnectionSlot(self, source, close, stats, what)
        self._all.add(slot)
        if source is not None:
            if peers is None:
                peers = self._by_source[source] = _Orders()
            peers.add(slot)
        self._peak = max(self._peak, self.count)
        return slot

    def evict_idle(self, reason: str) -> bool:
        """Close the connection idle longest to free its descriptor.

        ``False`` if none is idle. While the previous victim is still closing,
        nothing more is evicted (its descriptor is on its way back), so a
        burst of failed accepts costs one connection, not one per attempt.
        """
        pending = self._fd_victim
        if pending is not None and not pending.closed:
            return True
        victim = self._all.first_idle()
        self._fd_victim = victim
        if victim is None:
            return False
        self._evict(victim, "a new connection", reason)
        return True

    # -- bookkeeping -----------------------------------------------------------

    def _evict(self, victim: ConnectionSlot, newcomer: str, reason: str) -> None:
        self.evicted += 1
        self._remove(victim)
        self._log.warning(
            "connection limit (%s): closing idle %s to admit %s",
            reason,
            victim.description,
            newcomer,
        )
        victim._evict()

    def _refuse(
        self, stats: TransportStats, what: str, why: str, *args: object
    ) -> ConnectionSlot | None:
        self.refused += 1
        stats.connections_refused += 1
        self._log.warning("connection limit: refusing %s, " + why, what, *args)
        return None

    def _refresh(self, slot: ConnectionSlot) -> None:
        self._all.refresh(slot)
        if slot.source is not None:
            self._by_source[slot.source].refresh(slot)

    def _promote(self, slot: ConnectionSlot) -> None:
        self._all.promote(slot)
        if slot.source is not None:
            self._by_source[slot.source].promote(slot)

    def _remove(self, slot: ConnectionSlot) -> None:
        slot.released = True
        self._all.discard(slot)
        if slot.source is not None:
            peers = self._by_source.get(slot.source)
            if peers is not None:
                peers.discard(slot)
                if not peers:
                    del self._by_source[slot.source]
        # Each halving after a surge hands freed heap back, and so does the
        # last close of a surge; a steady state never trims.
        self._closed += 1
        count = self.count
        if self._peak >= _TRIM_AFTER and count <= self._peak // 2:
            self._peak = count
            self._surge = self._trim_due = True
        elif count == 0 and self._surge:
            self._surge = False
            self._trim_due = True

    async def maintain(self) -> None:
        """Hand freed heap back after surges; every stream transport's serve() runs this.

        Waits until a whole check interval passed without a connection
        closing (or a few intervals under steady churn), because closing
        connections still hold their buffers. Several transports sharing the
        table run it concurrently; one trim serves all.
        """
        seen = self._closed
        waited = 0
        while True:
            await anyio.sleep(_TRIM_CHECK)
            quiet, seen = self._closed == seen, self._closed
            if not self._trim_due:
                waited = 0
                continue
            waited += 1
            if quiet or waited >= _TRIM_PATIENCE:
                self._trim_due = False
                waited = 0
                release_free_memory()


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit after.

    Each connection is a descriptor, and the soft limit (often 1024) is far
    below the default :attr:`ConnectionLimits.max_connections`. Never raises:
    on a platform without ``resource``, or when refused, the current soft
    limit (or -1 if unknown) is returned.
    """
    try:
        import resource
    except ImportError:
        return -1
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return -1
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard
        if hard == resource.RLIM_INFINITY:
            # Linux refuses an infinite soft limit above fs.nr_open; ask for a
            # large finite one instead.
            target = max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            logger.debug("could not raise RLIMIT_NOFILE from %d to %d", soft, target)
            return int(soft)
        return int(target)
    return int(soft)
