"""The shared half of the transaction layer: values, states, timers and the heap.

The rules the machines follow are written out once, in :mod:`.transaction`'s
docstring; this module holds what the client and server halves share so
that neither imports the other.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from typing import TYPE_CHECKING, Any, TypeAlias

from attrs import field, frozen, validators

from .errors import LocalProtocolError
from .message import Request, Response

if TYPE_CHECKING:
    from ._client_txn import ClientTransaction, ResponseReceived
    from ._server_txn import ServerTransaction

_positive = validators.gt(0.0)


@frozen
class TimerConfig:
    """T1, T2, T4 of RFC 3261 §17.1.1.1 and the timers derived from them (Table 4)."""

    t1: float = field(default=0.5, validator=_positive)
    t2: float = field(default=4.0, validator=_positive)
    t4: float = field(default=5.0, validator=_positive)
    #: §17.2.1: an INVITE server transaction answers 100 itself if the TU is silent this long.
    trying_delay: float = field(default=0.2, validator=validators.ge(0.0))

    @property
    def timer_b(self) -> float:
        return 64 * self.t1

    @property
    def timer_d(self) -> float:
        return 32.0

    @property
    def timer_f(self) -> float:
        return 64 * self.t1

    @property
    def timer_h(self) -> float:
        return 64 * self.t1

    @property
    def timer_i(self) -> float:
        return self.t4

    @property
    def timer_j(self) -> float:
        return 64 * self.t1

    @property
    def timer_k(self) -> float:
        return self.t4

    @property
    def timer_l(self) -> float:
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        return 64 * self.t1


class TransactionState(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


CALLING = TransactionState.CALLING
TRYING = TransactionState.TRYING
PROCEEDING = TransactionState.PROCEEDING
COMPLETED = TransactionState.COMPLETED
CONFIRMED = TransactionState.CONFIRMED
ACCEPTED = TransactionState.ACCEPTED
TERMINATED = TransactionState.TERMINATED

#: A heap entry: [deadline, sequence, transaction or None once cancelled/fired, timer name].
#: Lists compare element-wise in C and the unique sequence number keeps the comparison away
#: from the transaction, so cancelling is one store and the heap never compares objects.
_Entry: TypeAlias = list[Any]


# --------------------------------------------------------------------------------------------
# live transactions


class Transaction:
    """What client and server transactions share. Plain objects: they have identity."""

    __slots__ = (
        "_interval",
        "_last",
        "_layer",
        "_request",
        "_t_end",
        "_t_retx",
        "context",
        "is_invite",
        "key",
        "method",
        "reliable",
        "state",
    )

    def __init__(
        self, layer: LayerCore, key: tuple[Any, ...], request: Request, reliable: bool
    ) -> None:
        self._layer = layer
        self.key = key
        self._request: Request | None = request
        self.method = request.method
        self.is_invite = request.method == "INVITE"
        self.reliable = reliable
        self.state = TERMINATED
        self._last: Response | None = None
        #: Free for the TU: its call, leg or proxy context.
        self.context: object | None = None
        self._t_retx: _Entry | None = None
        self._t_end: _Entry | None = None
        self._interval = 0.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.key[0]} {self.state.name}>"

    @property
    def request(self) -> Request:
        """The request, until a final response leaves the transaction only absorbing copies.

        From then on (COMPLETED, CONFIRMED) the layer keeps the key, the last response and
        the destination, not the request: a 10 KB request kept for Timer J's 32 s costs
        10 KB per answered request, and a flood multiplies that. A TU that needs the request
        later keeps its own reference (``IncomingRequest.request``).
        """
        request = self._request
        if request is None:
            raise LocalProtocolError(f"{self!r} no longer holds its request")
        return request

    @property
    def last_response(self) -> Response | None:
        """The last response sent (server) or received (client), None before the first."""
        last = self._last
        return last if last is not None else self._reread()

    @last_response.setter
    def last_response(self, response: Response | None) -> None:
        self._last = response

    def _reread(self) -> Response | None:
        """The last response of a released transaction, which kept only its bytes."""
        return None

    def _forget(self, core: LayerCore) -> None:
        """Drop every index entry and timer of this transaction (it is terminating)."""
        raise NotImplementedError

    def _fire(self, core: LayerCore, name: str, now: float) -> None:
        """Timer ``name`` is due."""
        raise NotImplementedError


@frozen(eq=False)
class TransactionTimeout:
    """Timer B/F (no final response), H (no ACK of a non-2xx) or L (no ACK of a 2xx)."""

    transaction: Transaction


@frozen(eq=False)
class TransactionTerminated:
    """The transaction is gone from the layer; the TU may drop its context."""

    transaction: Transaction


class LayerCore:
    """The state both halves share: indexes, the timer heap and the output queues."""

    def __init__(self, timers: TimerConfig = TimerConfig()) -> None:
        self.timers = timers
        self._client: dict[tuple[Any, ...], ClientTransaction] = {}
        self._server: dict[tuple[Any, ...], ServerTransaction] = {}
        self._acks: dict[tuple[Any, ...], ServerTransaction] = {}
        self._live_servers = 0
        self._heap: list[_Entry] = []
        self._stale = 0
        self._seq = itertools.count()
        self._out: list[tuple[bytes, object]] = []
        self._events: deque[ResponseReceived | TransactionTimeout | TransactionTerminated]
        self._events = deque()

    def __len__(self) -> int:
        """Live transactions: what a health check or a leak test counts."""
        return len(self._client) + self._live_servers

    # -- outputs ---------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[tuple[bytes, object]]:
        """Bytes to put on the wire since the last call, with their (opaque) destination.

        Server responses go to the transaction's ``response_destination``, requests and ACKs
        to the client transaction's ``destination``.
        """
        out = self._out
        self._out = []
        return out

    def next_event(self) -> ResponseReceived | TransactionTimeout | TransactionTerminated | None:
        events = self._events
        return events.popleft() if events else None

    def events(self) -> list[ResponseReceived | TransactionTimeout | TransactionTerminated]:
        out = list(self._events)
        self._events.clear()
        return out

    def send_stateless(self, message: Request | Response, destination: object) -> None:
        """Queue a message outside any transaction (the ACK of a 2xx, a forwarded ACK)."""
        self._out.append((bytes(message), destination))

    # -- timers -------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None if no timer runs."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``; a timer re-armed from here is due later."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= now:
            entry = pop(heap)
            txn = entry[2]
            if txn is None:
                self._stale -= 1
                continue
            entry[2] = None
            txn._fire(self, entry[3], now)

    def _arm(self, txn: Transaction, name: str, at: float) -> _Entry:
        entry: _Entry = [at, next(self._seq), txn, name]
        heapq.heappush(self._heap, entry)
        return entry

    def _disarm(self, entry: _Entry | None) -> None:
        if entry is not None and entry[2] is not None:
            entry[2] = None
            self._stale += 1
            heap = self._heap
            if self._stale > 64 and self._stale * 2 > len(heap):
                # Lazy deletion must not let cancelled timers pile up (Timer B/F/H run
                # for 32 s on every transaction that usually ends in milliseconds).
                heap[:] = [e for e in heap if e[2] is not None]
                heapq.heapify(heap)
                self._stale = 0

    def _terminate(self, txn: Transaction) -> None:
        """Forget ``txn`` everywhere at once: indexes, timers; then tell the TU."""
        if txn.state is TERMINATED:  # a late timer of an already ended transaction
            return
        txn.state = TERMINATED
        self._disarm(txn._t_retx)
        self._disarm(txn._t_end)
        txn._t_retx = txn._t_end = None
        txn._forget(self)
        self._events.append(TransactionTerminated(txn))
