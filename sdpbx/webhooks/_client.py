"""The httpx client a webhook uses: shared when given, owned (and closed) when not."""

from __future__ import annotations

from typing import Self

import httpx

__all__ = ["WebhookClient"]


class WebhookClient:
    """Base of the webhook callers: one :class:`httpx.AsyncClient`, opened lazily.

    A client passed in belongs to the caller (the reference server shares one
    connection pool between every webhook) and is never closed here; one this
    object opened itself is closed by :meth:`aclose`.
    """

    def __init__(self, client: httpx.AsyncClient | None) -> None:
        self._client = client
        self._owns_client = client is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client this object opened itself (a shared one is left alone)."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient()
        return self._client
