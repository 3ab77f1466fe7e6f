"""Outbound webhooks: sdpbx calling the operator's web services over HTTP.

Each client has a deadline and a defined outcome when the service is slow,
down or answers nonsense, so no SIP transaction ever waits on it for long.
"""

from .http_router import HttpRouter, http_router_from_config
from .locator import (
    LocatorWebhook,
    LocatorWebhookStats,
    locator_webhook_from_config,
    locator_webhook_payload,
)
from .user_backend import HttpUserBackend

__all__ = [
    "HttpRouter",
    "HttpUserBackend",
    "LocatorWebhook",
    "LocatorWebhookStats",
    "http_router_from_config",
    "locator_webhook_from_config",
    "locator_webhook_payload",
]
