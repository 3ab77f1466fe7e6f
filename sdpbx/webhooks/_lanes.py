"""Per-key FIFO lanes under one bound: ordered per key, concurrent across keys.

A phone's events must reach the web service in the order they happened, and
two of them must never be in flight together (a ``registered`` overtaken by
the ``offline`` before it would leave the service believing the phone is
there). Events of different phones have no order between them, so they can
go out side by side. Each key (an AoR) gets a lane; a consumer :meth:`take`-s
the head of a lane and *holds* that lane until :meth:`done`, so a second
consumer never gets the same key meanwhile.

Plain data, no I/O and no clock: the caller says when an entry was queued and
hands each key that :meth:`put` or :meth:`done` reports ready to one consumer
(the webhook sends it down a memory stream its workers read).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from enum import Enum
from typing import Generic, TypeVar

from attrs import frozen

__all__ = ["Entry", "Lanes", "Put"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@frozen
class Entry(Generic[T]):
    item: T
    queued_at: float


class Put(Enum):
    """What :meth:`Lanes.put` did with an item."""

    #: Refused: the lanes already hold ``limit`` items.
    FULL = "full"
    #: Queued behind earlier items of its key (or while the key is held).
    QUEUED = "queued"
    #: Queued, and its key just became ready: hand the key to a consumer.
    READY = "ready"


class Lanes(Generic[K, T]):
    """FIFO lanes keyed by ``K``, holding at most ``limit`` items in all.

    A key is *ready* when its lane has items and no consumer holds it. Each
    ready key is reported exactly once (by :meth:`put` or :meth:`done`), so a
    consumer that is handed a key may :meth:`take` it without checking.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._lanes: dict[K, deque[Entry[T]]] = {}
        self._held: set[K] = set()
        self._queued = 0

    @property
    def queued(self) -> int:
        """Items waiting in a lane (not taken yet)."""
        return self._queued

    @property
    def held(self) -> int:
        """Keys a consumer holds (one item of each is in its hands)."""
        return len(self._held)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing held."""
        return self._queued == 0 and not self._held

    def put(self, key: K, item: T, queued_at: float) -> Put:
        """Append ``item`` to the lane of ``key``, unless the lanes are full."""
        if self._queued >= self.limit:
            return Put.FULL
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        lane.append(Entry(item, queued_at))
        self._queued += 1
        if len(lane) == 1 and key not in self._held:
            return Put.READY
        return Put.QUEUED

    def take(self, key: K) -> Entry[T]:
        """The head of a ready ``key``'s lane; the key is held until :meth:`done`."""
        if key in self._held:
            raise RuntimeError(f"lane {key!r} is already held")
        entry = self._lanes[key].popleft()
        self._queued -= 1
        self._held.add(key)
        return entry

    def done(self, key: K) -> bool:
        """Release ``key``; True when its lane has more items (the key is ready again)."""
        self._held.discard(key)
        lane = self._lanes.get(key)
        if lane:
            return True
        self._lanes.pop(key, None)
        return False

    def clear(self) -> int:
        """Forget every queued item (held keys stay held); returns how many there were."""
        dropped = self._queued
        for key in [k for k in self._lanes if k not in self._held]:
            del self._lanes[key]
        for lane in self._lanes.values():
            lane.clear()
        self._queued = 0
        return dropped
