"""The public API: `from sdpbx import ...` names are complete, sorted and importable."""

from __future__ import annotations

import importlib

import sdpbx

#: Modules whose whole ``__all__`` belongs to the top-level API.
TOP_LEVEL_MODULES = ["sdpbx.proxy", "sdpbx.registrar", "sdpbx.b2bua.events"]
#: Names from elsewhere that must be re-exported.
REQUIRED = {
    "Proxy",
    "Pbx",
    "SipStack",
    "Registrar",
    "Authenticator",
    "Router",
    "RouteDecision",
    "RouteRequest",
    "StaticRouter",
    "HttpRouter",
    "FallbackRouter",
    "UserBackend",
    "SipUser",
    "Locator",
    "MemoryLocator",
    "SqliteLocator",
    "MediaBackend",
    "load_config",
    "Config",
    "SdpbxError",
    "ConfigError",
    "PayloadError",
    "TransactionClosed",
    "TransactionTimedOut",
    "LocatorWebhookStats",
}


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions (ruff's RUF022 order)."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def _is_sorted(names: list[str]) -> bool:
    return names == sorted(names) or names == sorted(names, key=_isort_key)


def test_all_is_sorted_and_importable() -> None:
    names = sdpbx.__all__
    assert _is_sorted(names)
    for name in names:
        assert getattr(sdpbx, name) is not None


def test_all_is_complete() -> None:
    exported = set(sdpbx.__all__)
    missing = REQUIRED - exported
    for module_name in TOP_LEVEL_MODULES:
        module = importlib.import_module(module_name)
        missing |= {n for n in module.__all__ if n not in exported and not n.endswith("Stats")}
    assert not missing, f"not exported from sdpbx: {sorted(missing)}"


def test_subpackage_all_sorted() -> None:
    for name in ["sdpbx.sip", "sdpbx.transport", "sdpbx.routing", "sdpbx.webhooks", "sdpbx.store"]:
        module = importlib.import_module(name)
        assert _is_sorted(list(module.__all__)), name
        for exported in module.__all__:
            assert hasattr(module, exported), f"{name}.{exported}"


def test_one_exception_tree() -> None:
    """Everything sdpbx raises on purpose is an SdpbxError, each defined once."""
    from sdpbx.errors import SdpbxError
    from sdpbx.sip.errors import LocalProtocolError, SipParseError
    from sdpbx.store.database import StoreError
    from sdpbx.testing.phone import CallFailed

    for error in (
        sdpbx.ConfigError,
        sdpbx.PayloadError,
        sdpbx.TransactionClosed,
        sdpbx.TransactionTimedOut,
        sdpbx.RouterError,
        sdpbx.UserBackendError,
        sdpbx.UserRejected,
        SipParseError,
        LocalProtocolError,
        StoreError,
        CallFailed,
    ):
        assert issubclass(error, SdpbxError), error
    assert issubclass(sdpbx.TransactionTimedOut, sdpbx.TransactionClosed)
    assert sdpbx.PayloadError.__module__ == sdpbx.ConfigError.__module__ == "sdpbx.errors"
