"""The HTTP router: ask the operator's web service where each new call goes.

One ``POST`` of the :class:`~sdpbx.routing.RouteRequest` JSON per new call;
the ``2xx`` reply is a :class:`~sdpbx.routing.RouteDecision`. Anything else (a
timeout, a refused connection, a non-2xx status, a body that is not JSON or
not a decision) is a :class:`~sdpbx.routing.RouterError` naming what went
wrong, raised within ``timeout`` seconds; what that means for the call is the
caller's choice (static routes when ``fallback_to_static``, else 503), which
is why this router never turns a failure into a rejection itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio
import httpx

from ..config import HttpRouterConfig
from ..errors import PayloadError
from ..routing.base import FallbackRouter, RouteDecision, Router, RouteRequest, RouterError
from ._client import WebhookClient

__all__ = ["HttpRouter", "http_router_from_config"]

logger = logging.getLogger("sdpbx.webhooks.http_router")


class HttpRouter(WebhookClient):
    """A :class:`~sdpbx.routing.Router` backed by a web service.

    ``headers`` go on every request (an API key, say). ``client`` is an
    :class:`httpx.AsyncClient` to share and stays the caller's to close;
    without one the router opens its own on first use, closed by
    :meth:`aclose` or ``async with``. The deadline is enforced twice, by
    httpx's timeouts and by an overall :func:`anyio.fail_after`, because
    httpx's read timeout restarts with every chunk and a service that trickles
    bytes would otherwise hold the call forever.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be greater than 0")
        self.url = url
        self.timeout = timeout
        self.headers = {"Accept": "application/json", **(headers or {})}
        super().__init__(client)

    async def route(self, request: RouteRequest) -> RouteDecision:
        payload = request.to_json()
        client = self._get_client()
        try:
            with anyio.fail_after(self.timeout):
                try:
                    response = await self._post(client, payload)
                except httpx.TransportError as exc:
                    if isinstance(exc, httpx.TimeoutException):
                        raise
                    # A pooled keep-alive connection the service closed fails once;
                    # routing is idempotent, so one retry within the same deadline.
                    response = await self._post(client, payload)
        except (TimeoutError, httpx.TimeoutException):
            raise self._error(request, f"no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise self._error(request, f"{type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise self._error(request, f"HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
            raise self._error(request, f"reply is not JSON ({exc})") from None
        try:
            return RouteDecision.from_json(data)
        except PayloadError as exc:
            raise self._error(request, f"bad reply: {exc}") from None

    async def _post(self, client: httpx.AsyncClient, payload: object) -> httpx.Response:
        return await client.post(
            self.url, json=payload, headers=self.headers, timeout=httpx.Timeout(self.timeout)
        )

    def _error(self, request: RouteRequest, problem: str) -> RouterError:
        message = f"HTTP router {self.url}: call {request.call_id}: {problem}"
        logger.warning("%s", message)
        return RouterError(message)

    def __repr__(self) -> str:
        return f"HttpRouter({self.url!r}, timeout={self.timeout!r})"


def http_router_from_config(
    cfg: HttpRouterConfig,
    static: Router | None = None,
    *,
    client: httpx.AsyncClient | None = None,
) -> HttpRouter | FallbackRouter:
    """The router ``[proxy.http_router]`` describes, in front of the ``static`` routes.

    ``not_handled`` always goes on to ``static``; a failure of the service goes
    there too only with ``fallback_to_static = true``, else it propagates as
    :class:`~sdpbx.routing.RouterError` (the proxy answers 503).
    """
    router = HttpRouter(cfg.url, timeout=cfg.timeout_ms / 1000, headers=cfg.headers, client=client)
    if static is None:
        return router
    return FallbackRouter(router, static, fallback_on_error=cfg.fallback_to_static)
