"""Where each address-of-record can be reached: the registrar's bindings.

A :class:`Binding` is what one successful REGISTER leaves behind for one
Contact. Bindings are keyed by ``(aor, contact)``; the AoR is normalised by the
caller (:attr:`sdpbx.sip.uri.SipUri.aor`: unescaped user, lower-cased host), so
the locator itself is a plain key store that any backend can implement.

Expiry uses no task per binding: one heap of ``(expires_at, seq, binding)``
with lazy deletion (a refreshed or removed binding leaves a stale entry that is
skipped when it surfaces), and the stack's single timer asks
:meth:`Locator.next_deadline` and calls :meth:`Locator.expire`. Those two, and
:meth:`Locator.connection_closed`, are synchronous because the stack calls them
from its timer and from its transport callbacks; a persistent locator queues
its database writes from them and :meth:`Locator.flush` awaits those writes.

Events (for the locator webhook and the AMI):

- ``registered`` on **every** successful save, a refresh included, because
  RustPBX's locator webhook fires on each successful REGISTER and integrations
  count on that heartbeat; ``LocatorEvent.refreshed`` tells a refresh apart.
- ``unregistered`` when a binding is removed on purpose (``Expires: 0``,
  ``Contact: *``, the console).
- ``offline`` when a binding expires or the TCP/TLS/WS connection it was
  learned over closes.

Bindings restored by :meth:`SqliteLocator.load` after a restart emit nothing:
they were announced when they were made.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Literal, Protocol

from attrs import frozen

from .store.database import Database
from .transport.base import Peer, TransportName

__all__ = [
    "Binding",
    "Locator",
    "LocatorEvent",
    "LocatorEventName",
    "LocatorListener",
    "MemoryLocator",
    "SqliteLocator",
]

logger = logging.getLogger("sdpbx.locator")

LocatorEventName = Literal["registered", "unregistered", "offline"]


@frozen
class Binding:
    """One Contact registered for one AoR.

    ``host``/``port`` are the real source address of the REGISTER, not the
    Contact's, because a phone behind NAT is reachable only there; ``contact``
    is kept exactly as received (escaped headers and parameters intact) so it
    can be echoed back in the 200 OK and used as the Request-URI. No parsed
    message objects are kept: 100k bindings must fit in a few hundred MB at
    most.
    """

    aor: str
    contact: str
    transport: TransportName
    host: str
    port: int
    expires_at: float
    registered_at: float
    call_id: str
    cseq: int
    connection_id: int | None = None
    q: float = 1.0
    path: tuple[str, ...] = ()
    user_agent: str = ""
    instance_id: str | None = None
    reg_id: int | None = None

    @property
    def destination(self) -> str:
        """``ip:port`` (IPv6 in brackets), as the locator webhook reports it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def peer(self) -> Peer:
        """Where to send a request for this binding, over the same connection if open."""
        return Peer(self.transport, self.host, self.port, self.connection_id)

    def expires_in(self, now: float) -> int:
        """Whole seconds left (rounded up, never negative), for ``Contact;expires=``."""
        return max(0, math.ceil(self.expires_at - now))


@frozen
class LocatorEvent:
    """A change of a binding, delivered to :meth:`Locator.subscribe` listeners."""

    event: LocatorEventName
    timestamp: float
    binding: Binding
    refreshed: bool = False


LocatorListener = Callable[[LocatorEvent], None]


class Locator(Protocol):
    """The registrar's bindings store; memory and SQLite implementations ship.

    A shared backend (Redis, PostgreSQL) for several nodes implements the same
    methods.
    """

    async def lookup(self, aor: str, now: float) -> list[Binding]:
        """Unexpired bindings of ``aor``, highest ``q`` first, newest first on ties."""

    async def bindings(self, aor: str) -> list[Binding]:
        """Every stored binding of ``aor``, expired or not (RFC 3261 §10.3 step 8)."""

    async def save(self, binding: Binding) -> None:
        """Insert, or replace the binding with the same ``(aor, contact)``."""

    async def remove(self, aor: str, contact: str, *, now: float | None = None) -> Binding | None:
        """Remove one binding; returns it, or ``None`` if there was none."""

    async def remove_aor(self, aor: str, *, now: float | None = None) -> list[Binding]:
        """Remove every binding of ``aor`` (``Contact: *``)."""

    async def count(self) -> int:
        """Number of stored bindings (expired ones not yet swept included)."""

    async def flush(self) -> None:
        """Wait for writes queued by the synchronous methods to be durable."""

    def next_deadline(self) -> float | None:
        """When the earliest binding expires, or ``None`` if there is none."""

    def expire(self, now: float) -> list[Binding]:
        """Remove and return every binding with ``expires_at <= now``."""

    def connection_closed(self, connection_id: int, *, now: float | None = None) -> list[Binding]:
        """Remove and return the bindings learned over that stream connection."""

    def subscribe(self, listener: LocatorListener) -> Callable[[], None]:
        """Call ``listener`` for every event; returns a function that unsubscribes."""


def _sort_key(binding: Binding) -> tuple[float, float]:
    return (-binding.q, -binding.registered_at)


class MemoryLocator:
    """Bindings in dicts: the fast path, and the index :class:`SqliteLocator` reuses."""

    def __init__(self) -> None:
        self._aors: dict[str, dict[str, Binding]] = {}
        self._by_connection: dict[int, set[tuple[str, str]]] = {}
        self._heap: list[tuple[float, int, Binding]] = []
        self._seq = itertools.count()
        self._count = 0
        self._listeners: list[LocatorListener] = []

    # -- the async API (nothing here awaits; it is async to match the Protocol) --

    async def lookup(self, aor: str, now: float) -> list[Binding]:
        return self.lookup_nowait(aor, now)

    async def bindings(self, aor: str) -> list[Binding]:
        return list(self._aors.get(aor, {}).values())

    async def save(self, binding: Binding) -> None:
        old = self.put(binding)
        self.emit("registered", binding.registered_at, binding, refreshed=old is not None)

    async def remove(self, aor: str, contact: str, *, now: float | None = None) -> Binding | None:
        binding = self.pop(aor, contact)
        if binding is not None:
            self.emit("unregistered", _now(now), binding)
        return binding

    async def remove_aor(self, aor: str, *, now: float | None = None) -> list[Binding]:
        removed = self.pop_aor(aor)
        timestamp = _now(now)
        for binding in removed:
            self.emit("unregistered", timestamp, binding)
        return removed

    async def count(self) -> int:
        return self._count

    async def flush(self) -> None:
        return None

    # -- synchronous API ---------------------------------------------------------------

    def lookup_nowait(self, aor: str, now: float) -> list[Binding]:
        contacts = self._aors.get(aor)
        if not contacts:
            return []
        live = [b for b in contacts.values() if b.expires_at > now]
        live.sort(key=_sort_key)
        return live

    def __len__(self) -> int:
        return self._count

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not self._is_current(heap[0][2]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> list[Binding]:
        heap = self._heap
        expired: list[Binding] = []
        while heap and heap[0][0] <= now:
            binding = heapq.heappop(heap)[2]
            if self._is_current(binding):
                self._unlink(binding)
                expired.append(binding)
        for binding in expired:
            self.emit("offline", now, binding)
        return expired

    def connection_closed(self, connection_id: int, *, now: float | None = None) -> list[Binding]:
        keys = self._by_connection.pop(connection_id, None)
        if not keys:
            return []
        closed: list[Binding] = []
        for aor, contact in keys:
            binding = self._aors[aor][contact]
            self._unlink(binding)
            closed.append(binding)
        closed.sort(key=lambda b: b.registered_at)
        timestamp = _now(now)
        for binding in closed:
            self.emit("offline", timestamp, binding)
        return closed

    def subscribe(self, listener: LocatorListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- index maintenance (also used by SqliteLocator) --------------------------------

    def put(self, binding: Binding) -> Binding | None:
        """Store ``binding`` without emitting; returns the binding it replaced."""
        contacts = self._aors.get(binding.aor)
        if contacts is None:
            contacts = self._aors[binding.aor] = {}
        old = contacts.get(binding.contact)
        if old is not None:
            self._unindex_connection(old)
        else:
            self._count += 1
        contacts[binding.contact] = binding
        if binding.connection_id is not None:
            keys = self._by_connection.get(binding.connection_id)
            if keys is None:
                keys = self._by_connection[binding.connection_id] = set()
            keys.add((binding.aor, binding.contact))
        heapq.heappush(self._heap, (binding.expires_at, next(self._seq), binding))
        # Refreshes leave stale heap entries behind; rebuild once they dominate.
        if len(self._heap) > 2 * self._count + 1024:
            self._compact()
        return old

    def pop(self, aor: str, contact: str) -> Binding | None:
        """Remove without emitting; the heap entry is dropped lazily."""
        binding = self._aors.get(aor, {}).get(contact)
        if binding is not None:
            self._unlink(binding)
        return binding

    def pop_aor(self, aor: str) -> list[Binding]:
        removed = list(self._aors.get(aor, {}).values())
        for binding in removed:
            self._unlink(binding)
        return removed

    def emit(
        self,
        event: LocatorEventName,
        timestamp: float,
        binding: Binding,
        *,
        refreshed: bool = False,
    ) -> None:
        if not self._listeners:
            return
        message = LocatorEvent(event, timestamp, binding, refreshed)
        for listener in tuple(self._listeners):
            try:
                listener(message)
            except Exception:
                # One broken listener (a webhook bug) must not break registration.
                logger.exception("locator listener %r failed on %s", listener, event)

    def _is_current(self, binding: Binding) -> bool:
        contacts = self._aors.get(binding.aor)
        return contacts is not None and contacts.get(binding.contact) is binding

    def _unlink(self, binding: Binding) -> None:
        contacts = self._aors[binding.aor]
        del contacts[binding.contact]
        if not contacts:
            del self._aors[binding.aor]
        self._unindex_connection(binding)
        self._count -= 1

    def _unindex_connection(self, binding: Binding) -> None:
        if binding.connection_id is None:
            return
        keys = self._by_connection.get(binding.connection_id)
        if keys is not None:
            keys.discard((binding.aor, binding.contact))
            if not keys:
                del self._by_connection[binding.connection_id]

    def _compact(self) -> None:
        self._heap = [
            (b.expires_at, next(self._seq), b)
            for contacts in self._aors.values()
            for b in contacts.values()
        ]
        heapq.heapify(self._heap)


def _now(now: float | None) -> float:
    return time.time() if now is None else now


_UPSERT = (
    "INSERT OR REPLACE INTO locations (aor, contact, transport, host, port, connection_id, "
    "expires_at, q, call_id, cseq, path, user_agent, instance_id, reg_id, registered_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE = "DELETE FROM locations WHERE aor = ? AND contact = ?"


def _row_of(b: Binding) -> tuple[object, ...]:
    return (
        b.aor,
        b.contact,
        b.transport,
        b.host,
        b.port,
        b.connection_id,
        b.expires_at,
        b.q,
        b.call_id,
        b.cseq,
        json.dumps(list(b.path)),
        b.user_agent,
        b.instance_id,
        b.reg_id,
        b.registered_at,
    )


def _binding_of(row: sqlite3.Row) -> Binding:
    return Binding(
        aor=row["aor"],
        contact=row["contact"],
        transport=row["transport"],
        host=row["host"],
        port=row["port"],
        # The connection died with the previous process; the stack reconnects.
        connection_id=None,
        expires_at=row["expires_at"],
        registered_at=row["registered_at"],
        q=row["q"],
        call_id=row["call_id"],
        cseq=row["cseq"],
        path=tuple(json.loads(row["path"])),
        user_agent=row["user_agent"],
        instance_id=row["instance_id"],
        reg_id=row["reg_id"],
    )


class SqliteLocator:
    """:class:`MemoryLocator` plus write-through to the ``locations`` table.

    Reads never touch the database: the in-memory index is authoritative while
    the process runs, and the table exists so that :meth:`load` can restore the
    bindings after a restart (phones re-register only when their expiry runs
    out, which may be an hour away).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._memory = MemoryLocator()

    async def load(self, now: float) -> int:
        """Restore unexpired bindings and delete expired ones; returns how many
        were restored. Call once at startup, before the first REGISTER."""
        rows = await self._db.fetchall("SELECT * FROM locations WHERE expires_at > ?", (now,))
        await self._db.execute("DELETE FROM locations WHERE expires_at <= ?", (now,))
        for row in rows:
            self._memory.put(_binding_of(row))
        return len(rows)

    async def lookup(self, aor: str, now: float) -> list[Binding]:
        return self._memory.lookup_nowait(aor, now)

    async def bindings(self, aor: str) -> list[Binding]:
        return await self._memory.bindings(aor)

    async def save(self, binding: Binding) -> None:
        old = self._memory.put(binding)
        # ``execute`` queues its job before its first suspension, so database
        # writes happen in the same order as the memory updates above.
        await self._db.execute(_UPSERT, _row_of(binding))
        self._memory.emit("registered", binding.registered_at, binding, refreshed=old is not None)

    async def remove(self, aor: str, contact: str, *, now: float | None = None) -> Binding | None:
        binding = self._memory.pop(aor, contact)
        if binding is None:
            return None
        await self._db.execute(_DELETE, (aor, contact))
        self._memory.emit("unregistered", _now(now), binding)
        return binding

    async def remove_aor(self, aor: str, *, now: float | None = None) -> list[Binding]:
        removed = self._memory.pop_aor(aor)
        await self._db.execute("DELETE FROM locations WHERE aor = ?", (aor,))
        timestamp = _now(now)
        for binding in removed:
            self._memory.emit("unregistered", timestamp, binding)
        return removed

    async def count(self) -> int:
        return len(self._memory)

    async def flush(self) -> None:
        await self._db.flush()

    def next_deadline(self) -> float | None:
        return self._memory.next_deadline()

    def expire(self, now: float) -> list[Binding]:
        expired = self._memory.expire(now)
        for binding in expired:
            self._db.defer(_DELETE, (binding.aor, binding.contact))
        return expired

    def connection_closed(self, connection_id: int, *, now: float | None = None) -> list[Binding]:
        closed = self._memory.connection_closed(connection_id, now=now)
        for binding in closed:
            self._db.defer(_DELETE, (binding.aor, binding.contact))
        return closed

    def subscribe(self, listener: LocatorListener) -> Callable[[], None]:
        return self._memory.subscribe(listener)


def _check_protocol(memory: MemoryLocator, sqlite: SqliteLocator) -> tuple[Locator, Locator]:
    # mypy verifies here that both implementations satisfy the Protocol.
    return memory, sqlite
