"""sdpbx: a Python SDK for building programmable PBXs."""

from .errors import ConfigError, SdpbxError

__version__ = "0.1.0"

__all__ = ["ConfigError", "SdpbxError", "__version__"]
