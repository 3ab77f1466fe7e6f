"""The active calls of one proxy, and the listeners that hear about them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .events import CallEnded, CallEvent

if TYPE_CHECKING:
    from .call import Call

__all__ = ["CallListener", "CallRegistry"]

log = logging.getLogger("sdpbx.calls")

CallListener = Callable[[CallEvent], None]


class CallRegistry:
    """Active calls by id, lifetime counters, and event fan-out.

    Listeners are called synchronously and must not block; one that raises is
    logged and the others still run.
    """

    def __init__(self) -> None:
        self._calls: dict[str, Call] = {}
        self._listeners: list[CallListener] = []
        self.total_calls = 0
        self.failed_calls = 0
        self.answered_calls = 0
        #: INVITEs a router called spam, dropped without a response.
        self.spam_calls = 0

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._calls.values()))

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def add(self, call: Call) -> None:
        self._calls[call.id] = call
        self.total_calls += 1

    def remove(self, call: Call) -> None:
        self._calls.pop(call.id, None)

    def subscribe(self, listener: CallListener) -> Callable[[], None]:
        """Hear every call event; returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: CallEvent) -> None:
        if isinstance(event, CallEnded) and (event.status >= 300 or event.reason == "failed"):
            self.failed_calls += 1
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("call listener failed on %s", type(event).__name__)
