"""Blocking password guessers without locking out the users next to them, without I/O.

Password guessers (SIPVicious and friends) send thousands of REGISTERs a minute.
A registrar records each failed verification here, keyed by the source (the
peer's IP) *and* the user name the credentials were for. The policy:

* **Per (source, user).** ``limit`` failures within ``window`` seconds block that
  user name from that source for ``block_for`` seconds: the crossing failure is
  answered 403, later requests are dropped unanswered. A phone with a stale
  password locks out only itself; a scanner trying ``1000``..``9999`` behind an
  office NAT does not lock out ``alice`` and ``bob`` at that NAT.
* **Per source.** ``source_limit`` failures (any user names) within ``window``
  block the whole source for ``block_for``: one address spraying user names is
  then dropped before its credentials are even looked at, cheaply. Users who
  authenticated from that source within ``trust_for`` seconds are *trusted* there
  and still served (subject to their own per-user limit), so a correct password
  is never locked out by someone else's failures.
* A failure counts only for a nonce we issued (the caller checks its HMAC
  first). As nonces are not secret, spoofed UDP can still fail on a victim's
  behalf, but only against the user names it names -- a trusted user who gets
  their password right keeps working.

This is Kamailio's ``pike`` (per-source rate) and fail2ban (per-IP ban after N
failures) made narrower: both block the whole address, which behind a NAT is
everyone in the office; here the whole address is blocked only for users it has
not proved.

Memory is bounded and expires: every table (failure histories, blocks, trusted
pairs) holds at most ``max_entries``, least recently touched forgotten first,
what has aged out is dropped on every failure, and :meth:`expire` (for a timer)
also gives the memory of emptied tables back. Forgetting early is the safe direction: a guesser
merely gets its next few guesses. A blocked source costs one dict entry; its
history is deleted when the block starts.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

__all__ = ["FailureThrottle"]

Pair = tuple[str, str]
K = TypeVar("K")
V = TypeVar("V")


class FailureThrottle:
    """Sliding-window failure counters per (source, user) and per source."""

    def __init__(
        self,
        limit: int = 5,
        window: float = 60.0,
        block_for: float = 300.0,
        *,
        source_limit: int | None = None,
        trust_for: float = 3600.0,
        max_entries: int = 10_000,
    ) -> None:
        if source_limit is None:
            source_limit = 5 * limit
        if limit < 1 or max_entries < 1 or window <= 0 or block_for <= 0 or trust_for <= 0:
            raise ValueError("limit, window, block_for, trust_for and max_entries must be positive")
        if source_limit < limit:
            raise ValueError("source_limit must be at least limit")
        self.limit = limit
        self.window = window
        self.block_for = block_for
        self.source_limit = source_limit
        self.trust_for = trust_for
        self.max_entries = max_entries
        # (source, user) -> times of recent failures (a short tuple), least recently failed first.
        self._pairs: OrderedDict[Pair, tuple[float, ...]] = OrderedDict()
        # source -> (start of its current window, failures in it); a fixed window is
        # two numbers where a sliding one would be source_limit of them.
        self._sources: OrderedDict[str, tuple[float, int]] = OrderedDict()
        # blocked key -> end of its block, in blocking order (so ends are ascending).
        self._blocked_pairs: OrderedDict[Pair, float] = OrderedDict()
        self._blocked_sources: OrderedDict[str, float] = OrderedDict()
        # (source, user) -> end of trust, least recently authenticated first.
        self._trusted: OrderedDict[Pair, float] = OrderedDict()

    def __len__(self) -> int:
        """Entries held in all tables (for tests and the flood benchmark)."""
        return (
            len(self._pairs)
            + len(self._sources)
            + len(self._blocked_pairs)
            + len(self._blocked_sources)
            + len(self._trusted)
        )

    # -- queries ------------------------------------------------------------------------

    def is_source_blocked(self, source: str, now: float) -> bool:
        return _active(self._blocked_sources, source, now)

    def is_trusted(self, source: str, user: str, now: float) -> bool:
        return _active(self._trusted, (source, user), now)

    def is_blocked(self, source: str, user: str | None, now: float) -> bool:
        """Whether a request from ``source`` acting as ``user`` is to be dropped."""
        if user is not None and _active(self._blocked_pairs, (source, user), now):
            return True
        if not self.is_source_blocked(source, now):
            return False
        return user is None or not self.is_trusted(source, user, now)

    def blocked_count(self, now: float) -> int:
        self._prune(now)
        return len(self._blocked_pairs) + len(self._blocked_sources)

    # -- updates ------------------------------------------------------------------------

    def record_failure(self, source: str, user: str, now: float) -> bool:
        """Count one failure; True exactly when it blocks the pair or the source.

        A failure recorded while already blocked neither extends the block nor
        returns True, so a caller that answers 403 on True sends it once.
        """
        self._prune(now)
        if self.is_blocked(source, user, now):
            return False
        pair = (source, user)
        horizon = now - self.window
        history = (*(t for t in self._pairs.pop(pair, ()) if t > horizon), now)
        blocked = False
        if len(history) >= self.limit:
            _put(self._blocked_pairs, pair, now + self.block_for, self.max_entries)
            blocked = True
        else:
            _put(self._pairs, pair, history, self.max_entries)
        start, count = self._sources.pop(source, (now, 0))
        if start <= horizon:
            start, count = now, 0
        count += 1
        if count >= self.source_limit and not self.is_source_blocked(source, now):
            _put(self._blocked_sources, source, now + self.block_for, self.max_entries)
            return True
        _put(self._sources, source, (start, count), self.max_entries)
        return blocked

    def record_success(self, source: str, user: str, now: float) -> None:
        """Forget the pair's failures (a user who mistyped once then got it right
        should not carry them into the next window) and trust the pair, so a
        block of the source does not lock this user out. A pair's block stays."""
        pair = (source, user)
        self._pairs.pop(pair, None)
        self._trusted.pop(pair, None)
        _put(self._trusted, pair, now + self.trust_for, self.max_entries)

    def expire(self, now: float) -> None:
        """Drop histories, blocks and trust that have aged out, and give the
        memory of emptied tables back; for a timer every few seconds."""
        self._prune(now)
        # A dict never shrinks its hash table on deletion: after a flood, an
        # emptied table would keep its peak size, so start it afresh.
        if not self._pairs:
            self._pairs = OrderedDict()
        if not self._sources:
            self._sources = OrderedDict()
        if not self._blocked_pairs:
            self._blocked_pairs = OrderedDict()
        if not self._blocked_sources:
            self._blocked_sources = OrderedDict()
        if not self._trusted:
            self._trusted = OrderedDict()

    def _prune(self, now: float) -> None:
        """Drop what aged out, oldest first: this stops at the first live entry of
        each table, so it is cheap enough to run on every failure. (Sources are
        ordered by their last failure, not their window start, so a few may
        outlive their window until an older one ahead of them goes.)"""
        horizon = now - self.window
        pairs = self._pairs
        while pairs:
            pair, history = next(iter(pairs.items()))
            if history[-1] > horizon:
                break
            del pairs[pair]
        sources = self._sources
        while sources:
            source, (start, _) = next(iter(sources.items()))
            if start > horizon:
                break
            del sources[source]
        _prune_ends(self._blocked_pairs, now)
        _prune_ends(self._blocked_sources, now)
        # Trust is renewed by re-inserting, so its ends are ascending as well.
        _prune_ends(self._trusted, now)


def _active(table: OrderedDict[K, float], key: K, now: float) -> bool:
    until = table.get(key)
    if until is None:
        return False
    if now < until:
        return True
    del table[key]
    return False


def _put(table: OrderedDict[K, V], key: K, value: V, cap: int) -> None:
    while len(table) >= cap:
        table.popitem(last=False)
    table[key] = value


def _prune_ends(table: OrderedDict[K, float], now: float) -> None:
    while table:
        key, until = next(iter(table.items()))
        if now < until:
            break
        del table[key]
