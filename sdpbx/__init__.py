"""sdpbx: a Python SDK for building programmable PBXs.

The names here are the public API that most programs need; the sans-IO SIP
core lives in :mod:`sdpbx.sip`, transports in :mod:`sdpbx.transport`, the
test kit in :mod:`sdpbx.testing`.
"""

from ._version import __version__
from .authn import Authenticator
from .b2bua.call import Call
from .b2bua.events import (
    CallAnswered,
    CallEnded,
    CallEvent,
    CallRinging,
    CallStarted,
    CallState,
    HangupReason,
)
from .b2bua.registry import CallRegistry
from .config import Config, config_from_dict, config_warnings, load_config, parse_config
from .errors import (
    ConfigError,
    PayloadError,
    SdpbxError,
    TransactionClosed,
    TransactionTimedOut,
)
from .locator import Binding, Locator, LocatorEvent, MemoryLocator, SqliteLocator
from .media import MediaBackend, PassthroughMedia
from .pbx import Pbx, default_config
from .proxy import Proxy
from .registrar import Registrar
from .routing import (
    FallbackRouter,
    RouteDecision,
    Router,
    RouteRequest,
    RouterError,
    StaticRouter,
    as_router,
)
from .stack import ClientRequest, IncomingRequest, RequestHandler, SipStack
from .trunk_registration import TrunkRegistration
from .users import (
    ChainUserBackend,
    MemoryUserBackend,
    PlainUserBackend,
    SipUser,
    UserBackend,
    UserBackendError,
    UserRejected,
)
from .webhooks import HttpRouter, HttpUserBackend, LocatorWebhook, LocatorWebhookStats

__all__ = [
    "Authenticator",
    "Binding",
    "Call",
    "CallAnswered",
    "CallEnded",
    "CallEvent",
    "CallRegistry",
    "CallRinging",
    "CallStarted",
    "CallState",
    "ChainUserBackend",
    "ClientRequest",
    "Config",
    "ConfigError",
    "FallbackRouter",
    "HangupReason",
    "HttpRouter",
    "HttpUserBackend",
    "IncomingRequest",
    "Locator",
    "LocatorEvent",
    "LocatorWebhook",
    "LocatorWebhookStats",
    "MediaBackend",
    "MemoryLocator",
    "MemoryUserBackend",
    "PassthroughMedia",
    "PayloadError",
    "Pbx",
    "PlainUserBackend",
    "Proxy",
    "Registrar",
    "RequestHandler",
    "RouteDecision",
    "RouteRequest",
    "Router",
    "RouterError",
    "SdpbxError",
    "SipStack",
    "SipUser",
    "SqliteLocator",
    "StaticRouter",
    "TransactionClosed",
    "TransactionTimedOut",
    "TrunkRegistration",
    "UserBackend",
    "UserBackendError",
    "UserRejected",
    "__version__",
    "as_router",
    "config_from_dict",
    "config_warnings",
    "default_config",
    "load_config",
    "parse_config",
]
