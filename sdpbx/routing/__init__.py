"""Deciding where each new call goes.

A :class:`Router` answers a :class:`RouteRequest` with a :class:`RouteDecision`;
the static routes of the config file (:class:`StaticRouter`), a Python
function (:func:`as_router`) and the HTTP router webhook
(:class:`sdpbx.webhooks.http_router.HttpRouter`) are all routers, and
:class:`FallbackRouter` chains them.
"""

from .base import (
    Direction,
    FallbackRouter,
    MediaProxy,
    RewriteInfo,
    RouteAction,
    RouteDecision,
    Router,
    RouteRequest,
    RouterError,
    RouterFunction,
    Strategy,
    as_router,
)
from .static import StaticRouter, is_regex
from .trunks import (
    Trunk,
    TrunkLimiter,
    TrunkSelector,
    detect_direction,
    direction_after_route,
    trunks_from_config,
)

__all__ = [
    "Direction",
    "FallbackRouter",
    "MediaProxy",
    "RewriteInfo",
    "RouteAction",
    "RouteDecision",
    "RouteRequest",
    "Router",
    "RouterError",
    "RouterFunction",
    "StaticRouter",
    "Strategy",
    "Trunk",
    "TrunkLimiter",
    "TrunkSelector",
    "as_router",
    "detect_direction",
    "direction_after_route",
    "is_regex",
    "trunks_from_config",
]
