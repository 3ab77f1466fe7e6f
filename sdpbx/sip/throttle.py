"""Blocking sources that keep failing authentication, without I/O.

Password guessers (SIPVicious and friends) send thousands of REGISTERs a minute.
A registrar records each failed verification here; when a source fails
``limit`` times within ``window`` seconds the crossing failure is answered 403
and the source is then ignored (requests dropped unanswered) for ``block_for``
seconds, which costs the scanner its time and us almost nothing.

Memory is bounded by ``max_sources`` for failure histories and again for
blocks; past that the least recently active entries are forgotten. Forgetting a
block early is the safe direction: the source merely gets its next few guesses.
"""

from __future__ import annotations

from collections import OrderedDict, deque

__all__ = ["FailureThrottle"]


class FailureThrottle:
    """Sliding-window failure counter per source (usually the peer's IP)."""

    def __init__(
        self,
        limit: int = 5,
        window: float = 60.0,
        block_for: float = 300.0,
        max_sources: int = 100_000,
    ) -> None:
        if limit < 1 or max_sources < 1 or window <= 0 or block_for <= 0:
            raise ValueError("limit, window, block_for and max_sources must be positive")
        self.limit = limit
        self.window = window
        self.block_for = block_for
        self.max_sources = max_sources
        # source -> times of recent failures, least recently failed first.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        # source -> end of its block, in blocking order (so ends are ascending).
        self._blocked: OrderedDict[str, float] = OrderedDict()

    def record_failure(self, source: str, now: float) -> bool:
        """Count one failure; True exactly when it makes ``source`` blocked.

        A failure recorded while already blocked neither extends the block nor
        returns True, so a caller that answers 403 on True sends it once.
        """
        if self.is_blocked(source, now):
            return False
        history = self._failures.pop(source, None)
        if history is None:
            history = deque(maxlen=self.limit)
            while len(self._failures) >= self.max_sources:
                self._failures.popitem(last=False)
        horizon = now - self.window
        while history and history[0] <= horizon:
            history.popleft()
        history.append(now)
        if len(history) < self.limit:
            self._failures[source] = history
            return False
        self._prune_blocks(now)
        while len(self._blocked) >= self.max_sources:
            self._blocked.popitem(last=False)
        self._blocked[source] = now + self.block_for
        return True

    def record_success(self, source: str, now: float) -> None:
        """Forget the failure history: a user who mistyped once then got it right
        should not carry those failures into the next window. A block stays."""
        self._failures.pop(source, None)

    def is_blocked(self, source: str, now: float) -> bool:
        until = self._blocked.get(source)
        if until is None:
            return False
        if now < until:
            return True
        del self._blocked[source]
        return False

    def blocked_count(self, now: float) -> int:
        self._prune_blocks(now)
        return len(self._blocked)

    def _prune_blocks(self, now: float) -> None:
        blocked = self._blocked
        while blocked:
            source, until = next(iter(blocked.items()))
            if now < until:
                break
            del blocked[source]
