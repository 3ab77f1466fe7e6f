"""A recording HTTP server on 127.0.0.1 (stdlib, in a thread) that plays a webhook service.

Tests set ``server.respond`` to decide each answer; every request is recorded in
``server.received``. A :class:`Reply` can also hold the request until the test
ends (a service that never answers) or trickle its body one byte at a time (a
service whose deadline only an overall timeout can enforce).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs


@attrs.define
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())


@attrs.define
class Reply:
    status: int = 200
    body: Any = None  # bytes are sent raw, None as nothing, anything else as JSON
    hold: bool = False  # answer only when the test ends
    trickle: bool = False  # send the body one byte at a time until the test ends


class WebhookServer(ThreadingHTTPServer):
    # Join handler threads on close, so nothing outlives the test.
    daemon_threads = False
    block_on_close = True

    def __init__(self, path: str, *, port: int = 0, protocol: str = "HTTP/1.0") -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.path = path
        self.protocol = protocol
        self.received: list[Received] = []
        self.respond: Callable[[Received], Reply] = lambda _: Reply(404)
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{self.path}"


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer

    @property  # type: ignore[override]
    def protocol_version(self) -> str:
        return self.server.protocol

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        parts = urlsplit(self.path)
        request = Received(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length),
        )
        self.server.received.append(request)
        reply = self.server.respond(request)
        if reply.hold:
            self.server.release.wait(30)
            self.close_connection = True
            return
        if reply.body is None:
            body = b""
        elif isinstance(reply.body, bytes):
            body = reply.body
        else:
            body = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(1000 if reply.trickle else len(body)))
        self.end_headers()
        if reply.trickle:
            try:
                while not self.server.release.wait(0.05):
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except OSError:
                pass  # the client gave up, as it should
            self.close_connection = True
            return
        self.wfile.write(body)

    do_GET = _handle
    do_POST = _handle


def start_server(path: str, *, port: int = 0, protocol: str = "HTTP/1.0") -> WebhookServer:
    srv = WebhookServer(path, port=port, protocol=protocol)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


def stop_server(srv: WebhookServer) -> None:
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@contextmanager
def running_server(path: str, *, protocol: str = "HTTP/1.0") -> Iterator[WebhookServer]:
    srv = start_server(path, protocol=protocol)
    try:
        yield srv
    finally:
        stop_server(srv)
