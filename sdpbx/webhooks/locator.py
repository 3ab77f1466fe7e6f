"""Tell the operator's web service when phones register, unregister or go offline.

The locator calls :meth:`LocatorWebhook.notify` synchronously from inside
REGISTER handling and from the expiry timer, so ``notify`` only files the event
in a bounded queue and returns: a slow or dead web service never delays a
200 OK.

Delivery has to keep up with a restart, when every phone re-registers at once
(thousands of events in seconds), so :meth:`LocatorWebhook.serve` runs several
POSTs at a time (``max_in_flight``) over httpx's keep-alive pool. Events of one
AoR still go out one at a time and in order (see :mod:`._lanes`), so the
service never sees a phone's ``offline`` before its ``registered``. Each POST
costs CPU in the process that answers the REGISTERs, so while the event loop
runs late (the storm itself) only one delivery runs and the rest catch up
after (see :mod:`._pace`); an owned client uses :class:`._keepalive.KeepAliveTransport`,
several times cheaper per request than httpx's default pool.

While the service is down or failing (a connection error, a timeout, a 5xx,
408 or 429), events wait and are retried with exponential backoff and jitter.
The wait is bounded twice: by count (``queue_size``; a new event that finds
the queue full is dropped) and by age (``max_age``; an event that old is given
up on rather than sent late). Every event ends in exactly one counter of
:attr:`LocatorWebhook.stats`, and drops are logged, at most once per kind every
``warn_interval`` seconds so a dead service cannot flood the log.

The body is RustPBX's::

    {"event": "registered", "timestamp": 1700000000,
     "location": {"aor": "sip:1001@pbx.com", "destination": "192.0.2.10:5060",
                  "transport": "UDP", "user_agent": "Yealink", "expires": 3600}}

``timestamp`` is when the event happened (Unix seconds), ``expires`` the
seconds the binding had left at that moment: the granted expiry for
``registered``, 0 for ``unregistered`` and ``offline`` (the binding is gone).
``user_agent`` is ``null`` when the phone sent none.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping

import anyio
import anyio.abc
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from attrs import frozen

from .._serde import unstructure_json
from ..config import LocatorWebhookConfig
from ..locator import LocatorEvent, LocatorEventName
from ..transport.base import TransportName
from ._keepalive import KeepAliveTransport
from ._lanes import Entry, Lanes, Put
from ._pace import LoopPace

__all__ = [
    "LocatorWebhook",
    "LocatorWebhookStats",
    "locator_webhook_from_config",
    "locator_webhook_payload",
]

logger = logging.getLogger("sdpbx.webhooks.locator")

_ALL_EVENTS: tuple[LocatorEventName, ...] = ("registered", "unregistered", "offline")
#: Answers that say "not now" rather than "never": retried like a connection error.
_RETRY_STATUSES = frozenset({408, 429})


@frozen
class _Location:
    aor: str
    destination: str
    transport: TransportName
    user_agent: str | None
    expires: int


@frozen
class _Payload:
    event: LocatorEventName
    timestamp: int
    location: _Location


def locator_webhook_payload(event: LocatorEvent) -> object:
    """The JSON-ready body POSTed for ``event``."""
    binding = event.binding
    expires = binding.expires_in(event.timestamp) if event.event == "registered" else 0
    payload = _Payload(
        event=event.event,
        timestamp=int(event.timestamp),
        location=_Location(
            aor=binding.aor,
            destination=binding.destination,
            transport=binding.transport,
            user_agent=binding.user_agent or None,
            expires=expires,
        ),
    )
    return unstructure_json(payload)


@frozen
class LocatorWebhookStats:
    """Where the webhook's events went; each accepted event is in exactly one of
    ``delivered``, ``failed``, the ``dropped_*`` counters, ``in_flight`` or ``queued``.

    ``retried`` counts extra POSTs (an event retried three times adds 3).
    """

    #: The service answered 2xx.
    delivered: int
    #: POSTs repeated after a connection error, timeout, 5xx, 408 or 429.
    retried: int
    #: Refused for good (another 4xx) or broken by an unexpected error.
    failed: int
    #: The queue held ``queue_size`` events already.
    dropped_full: int
    #: Waited (or kept failing) longer than ``max_age``.
    dropped_expired: int
    #: Still queued or in flight when the webhook stopped (or after it stopped).
    dropped_shutdown: int
    #: Being POSTed or waiting for a retry.
    in_flight: int
    #: Waiting for their turn.
    queued: int

    @property
    def dropped(self) -> int:
        """Every event given up on without the service refusing it."""
        return self.dropped_full + self.dropped_expired + self.dropped_shutdown


class _Warnings:
    """At most one warning of each kind every ``interval`` seconds; the ones held
    back are counted into the next one of that kind."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held_back[kind] = self._held_back.get(kind, 0) + 1
            return
        held_back = self._held_back.pop(kind, 0)
        self._last[kind] = now
        if held_back and last is not None:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, held_back, now - last)
        logger.warning(message, *args)


class LocatorWebhook:
    """Queue and deliver locator events; subscribe with ``locator.subscribe(hook.notify)``.

    :meth:`serve` runs once, with ``max_in_flight`` deliveries at a time; when it
    ends, whatever is left is counted as ``dropped_shutdown``. :meth:`close`
    stops taking events and lets a running :meth:`serve` return once the queue
    has emptied. Times are seconds; ``clock`` (monotonic) dates queued events.
    """

    def __init__(
        self,
        url: str,
        *,
        events: Iterable[LocatorEventName] = _ALL_EVENTS,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        max_in_flight: int = 16,
        queue_size: int = 10_000,
        max_age: float = 300.0,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        warn_interval: float = 10.0,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_age <= 0 or retry_initial <= 0 or retry_max <= 0:
            raise ValueError("max_age, retry_initial and retry_max must be greater than 0")
        self.url = url
        self.events = frozenset(events)
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.queue_size = queue_size
        self.max_age = max_age
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._client = client
        self._clock = clock
        self._random = random.Random()
        self._warnings = _Warnings(warn_interval, clock)
        self._lanes: Lanes[str, LocatorEvent] = Lanes(queue_size)
        # AoRs whose lane is ready; at most one entry per queued event, so the
        # queue bound also bounds this buffer.
        self._ready_send: MemoryObjectSendStream[str]
        self._ready_receive: MemoryObjectReceiveStream[str]
        self._ready_send, self._ready_receive = anyio.create_memory_object_stream[str](math.inf)
        self._delivered = 0
        self._retried = 0
        self._failed = 0
        self._dropped_full = 0
        self._dropped_expired = 0
        self._dropped_shutdown = 0
        self._idle: anyio.Event | None = None
        self._pace = LoopPace()
        self._closed = False
        self._served = False

    # -- producer side (synchronous, called from the locator) -----------------------

    def notify(self, event: LocatorEvent) -> None:
        """Queue ``event`` if it is one of the configured events; never blocks or raises."""
        if event.event not in self.events:
            return
        aor = event.binding.aor
        if self._closed:
            self._dropped_shutdown += 1
            self._warnings.warn(
                "stopped", "locator webhook stopped, %s event for %s dropped", event.event, aor
            )
            return
        put = self._lanes.put(aor, event, self._clock())
        if put is Put.FULL:
            self._dropped_full += 1
            self._warnings.warn(
                "full",
                "locator webhook queue full (%d events), %s event for %s dropped "
                "(%d dropped for a full queue so far)",
                self.queue_size,
                event.event,
                aor,
                self._dropped_full,
            )
        elif put is Put.READY:
            self._hand_out(aor)

    @property
    def stats(self) -> LocatorWebhookStats:
        """A snapshot of the counters."""
        return LocatorWebhookStats(
            delivered=self._delivered,
            retried=self._retried,
            failed=self._failed,
            dropped_full=self._dropped_full,
            dropped_expired=self._dropped_expired,
            dropped_shutdown=self._dropped_shutdown,
            in_flight=self._lanes.held,
            queued=self._lanes.queued,
        )

    @property
    def pending(self) -> int:
        """Events queued or being delivered."""
        return self._lanes.queued + self._lanes.held

    async def drain(self) -> None:
        """Wait until every queued event has been delivered or given up on.

        Needs :meth:`serve` running; useful before a graceful shutdown.
        """
        while not self._lanes.idle:
            self._idle = anyio.Event()
            await self._idle.wait()

    def close(self) -> None:
        """Stop accepting events; a running :meth:`serve` returns once the queue is empty."""
        self._closed = True
        if not self._served:
            self._dropped_shutdown += self._lanes.clear()
            self._ready_send.close()
            self._ready_receive.close()
        elif self._lanes.idle:
            self._ready_send.close()

    # -- delivery ---------------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver queued events until :meth:`close` (or cancellation)."""
        if self._served:
            raise RuntimeError("LocatorWebhook.serve() runs only once")
        self._served = True
        client = self._client
        owned = client is None
        if client is None:
            client = httpx.AsyncClient(
                transport=KeepAliveTransport(max_connections=self.max_in_flight)
            )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pace.run)
                async with anyio.create_task_group() as workers:
                    for n in range(self.max_in_flight):
                        workers.start_soon(self._worker, client, n == 0)
                    task_status.started()
                tg.cancel_scope.cancel()  # the workers are done: stop watching the loop
        finally:
            self._closed = True
            self._ready_send.close()
            self._ready_receive.close()
            # The workers counted what they held; what never left the queue is lost too.
            self._dropped_shutdown += self._lanes.clear()
            if self._idle is not None:
                self._idle.set()
            stats = self.stats
            if stats.dropped or stats.failed:
                logger.warning(
                    "locator webhook %s stopped: %d delivered, %d failed, %d dropped "
                    "(%d queue full, %d expired, %d at shutdown)",
                    self.url,
                    stats.delivered,
                    stats.failed,
                    stats.dropped,
                    stats.dropped_full,
                    stats.dropped_expired,
                    stats.dropped_shutdown,
                )
            if owned:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def _worker(self, client: httpx.AsyncClient, first: bool) -> None:
        while True:
            if not first:
                await self._pace.calm()
            try:
                aor = await self._ready_receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            entry = self._lanes.take(aor)
            try:
                await self._deliver(client, entry)
            except Exception as exc:
                # The failure boundary of one delivery: count it, say what it was,
                # and go on with the next event.
                self._failed += 1
                self._warnings.warn(
                    "error",
                    "locator webhook %s: %s event for %s not delivered: unexpected %s: %s",
                    self.url,
                    entry.item.event,
                    aor,
                    type(exc).__name__,
                    exc,
                )
            except BaseException:
                self._dropped_shutdown += 1  # cancelled mid-delivery
                raise
            finally:
                if self._lanes.done(aor):
                    self._hand_out(aor)
                elif self._lanes.idle:
                    self._went_idle()

    def _hand_out(self, aor: str) -> None:
        try:
            self._ready_send.send_nowait(aor)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # stopping: serve() counts what is left in the lanes

    def _went_idle(self) -> None:
        if self._idle is not None:
            self._idle.set()
        if self._closed:
            self._ready_send.close()

    async def _deliver(self, client: httpx.AsyncClient, entry: Entry[LocatorEvent]) -> None:
        event = entry.item
        if self._clock() - entry.queued_at > self.max_age:
            self._expire(event, "it waited too long in the queue")
            return
        body = locator_webhook_payload(event)
        attempt = 0
        while True:
            problem, retry = await self._post(client, body)
            if problem is None:
                self._delivered += 1
                return
            if not retry:
                self._failed += 1
                self._warnings.warn(
                    "failed",
                    "locator webhook %s: %s event for %s refused: %s",
                    self.url,
                    event.event,
                    event.binding.aor,
                    problem,
                )
                return
            attempt += 1
            delay = self._backoff(attempt)
            if self._clock() + delay - entry.queued_at > self.max_age:
                self._expire(event, problem)
                return
            self._warnings.warn(
                "retry",
                "locator webhook %s: %s; retrying with backoff (%d events waiting)",
                self.url,
                problem,
                self.pending,
            )
            await anyio.sleep(delay)
            self._retried += 1

    async def _post(self, client: httpx.AsyncClient, body: object) -> tuple[str | None, bool]:
        """``(None, _)`` on a 2xx, else what went wrong and whether a retry may help."""
        try:
            with anyio.fail_after(self.timeout):
                response = await client.post(
                    self.url, json=body, headers=self.headers, timeout=httpx.Timeout(self.timeout)
                )
        except (TimeoutError, httpx.TimeoutException):
            return f"no answer within {self.timeout:g} s", True
        except httpx.TransportError as exc:
            # Refused or reset connections, including a pooled keep-alive one the
            # service closed while it sat idle.
            return f"{type(exc).__name__}: {exc}", True
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}", False
        if response.is_success:
            return None, False
        status = response.status_code
        return f"HTTP {status}", status >= 500 or status in _RETRY_STATUSES

    def _backoff(self, attempt: int) -> float:
        """Doubling from ``retry_initial`` up to ``retry_max``, half of it random so
        that events which failed together do not all come back together."""
        ceiling = min(self.retry_max, self.retry_initial * 2.0 ** min(attempt - 1, 30))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _expire(self, event: LocatorEvent, why: str) -> None:
        self._dropped_expired += 1
        self._warnings.warn(
            "expired",
            "locator webhook %s: %s event for %s dropped after %g s: %s "
            "(%d dropped for age so far)",
            self.url,
            event.event,
            event.binding.aor,
            self.max_age,
            why,
            self._dropped_expired,
        )


def locator_webhook_from_config(
    cfg: LocatorWebhookConfig, client: httpx.AsyncClient | None = None
) -> LocatorWebhook:
    """The webhook ``[proxy.locator_webhook]`` describes."""
    return LocatorWebhook(
        cfg.url,
        events=cfg.events,
        headers=cfg.headers,
        timeout=cfg.timeout_ms / 1000,
        max_in_flight=cfg.max_in_flight,
        queue_size=cfg.queue_size,
        max_age=cfg.max_age_secs,
        retry_initial=cfg.retry_initial_ms / 1000,
        retry_max=cfg.retry_max_ms / 1000,
        client=client,
    )
