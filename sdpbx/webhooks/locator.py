"""Tell the operator's web service when phones register, unregister or go offline.

The locator calls :meth:`LocatorWebhook.notify` synchronously from inside
REGISTER handling and from the expiry timer, so ``notify`` only drops the event
into a bounded queue and returns; one task (:meth:`LocatorWebhook.serve`)
POSTs the events one by one, in order. A slow or dead web service therefore
never delays a 200 OK: the queue fills, further events are dropped and
counted, and registration carries on. Events are a notification, not a
ledger: a failed POST is retried once at most and then counted and forgotten,
because a retry loop would only grow the backlog that a dead server causes.

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
from collections.abc import Iterable, Mapping

import anyio
import anyio.abc
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from attrs import frozen

from .._serde import unstructure_json
from ..config import LocatorWebhookConfig
from ..locator import LocatorEvent, LocatorEventName
from ..transport.base import TransportName

__all__ = ["LocatorWebhook", "locator_webhook_from_config", "locator_webhook_payload"]

logger = logging.getLogger("sdpbx.webhooks.locator")

_ALL_EVENTS: tuple[LocatorEventName, ...] = ("registered", "unregistered", "offline")


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


class LocatorWebhook:
    """Queue and deliver locator events; subscribe with ``locator.subscribe(hook.notify)``.

    Counters: ``sent`` (2xx received), ``failed`` (given up after the retry),
    ``dropped`` (queue full, or the webhook already stopped). :meth:`serve`
    runs once; when it ends the queue is closed. An instance that is never
    served must be :meth:`close`-d.
    """

    def __init__(
        self,
        url: str,
        *,
        events: Iterable[LocatorEventName] = _ALL_EVENTS,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        queue_size: int = 1000,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.url = url
        self.events = frozenset(events)
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._client = client
        self._send: MemoryObjectSendStream[LocatorEvent]
        self._receive: MemoryObjectReceiveStream[LocatorEvent]
        self._send, self._receive = anyio.create_memory_object_stream[LocatorEvent](queue_size)
        self._pending = 0
        self._idle: anyio.Event | None = None
        self._served = False

    # -- producer side (synchronous, called from the locator) -----------------------

    def notify(self, event: LocatorEvent) -> None:
        """Queue ``event`` if it is one of the configured events; never blocks."""
        if event.event not in self.events:
            return
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1
            logger.warning(
                "locator webhook queue full, %s event for %s dropped (%d dropped so far)",
                event.event,
                event.binding.aor,
                self.dropped,
            )
            return
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.dropped += 1
            logger.warning("locator webhook stopped, %s event dropped", event.event)
            return
        self._pending += 1

    @property
    def pending(self) -> int:
        """Events queued or being delivered."""
        return self._pending

    async def drain(self) -> None:
        """Wait until every queued event has been delivered or given up on.

        Needs :meth:`serve` running; useful before a graceful shutdown.
        """
        while self._pending:
            self._idle = anyio.Event()
            await self._idle.wait()

    def close(self) -> None:
        """Stop accepting events; a running :meth:`serve` returns once the queue is empty."""
        self._send.close()
        if not self._served:
            self._receive.close()
            self._pending = 0

    # -- delivery task ----------------------------------------------------------------

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
            client = httpx.AsyncClient()
        try:
            async with self._receive:
                task_status.started()
                async for event in self._receive:
                    await self._deliver(client, event)
                    self._pending -= 1
                    if self._pending == 0 and self._idle is not None:
                        self._idle.set()
        finally:
            self._send.close()
            if self._pending:
                # Cancelled with a backlog (the event in flight included):
                # those events will never go out.
                self.dropped += self._pending
                self._pending = 0
            if self._idle is not None:
                self._idle.set()
            if owned:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def _deliver(self, client: httpx.AsyncClient, event: LocatorEvent) -> None:
        body = locator_webhook_payload(event)
        for attempt in (1, 2):
            try:
                with anyio.fail_after(self.timeout):
                    response = await client.post(
                        self.url,
                        json=body,
                        headers=self.headers,
                        timeout=httpx.Timeout(self.timeout),
                    )
            except (TimeoutError, httpx.TimeoutException):
                # The timeout already cost a full deadline; a retry would double the backlog.
                problem = f"no answer within {self.timeout:g} s"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if attempt == 1:
                    # A pooled keep-alive connection the server closed fails once; retry.
                    continue
            else:
                if response.is_success:
                    self.sent += 1
                    return
                problem = f"HTTP {response.status_code}"
            break
        self.failed += 1
        logger.warning(
            "locator webhook %s: %s event for %s not delivered: %s",
            self.url,
            event.event,
            event.binding.aor,
            problem,
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
        client=client,
    )
