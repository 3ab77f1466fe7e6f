"""HTTP serving for sdpbx's web APIs: a small ASGI server on h11 and anyio."""

from .server import ASGIApp, HttpServer, Message, Receive, Scope, Send

__all__ = ["ASGIApp", "HttpServer", "Message", "Receive", "Scope", "Send"]
