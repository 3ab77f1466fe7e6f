"""HttpServer against real sockets: httpx as the client, a tiny ASGI app as the server."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from sdpbx.http import HttpServer, Receive, Scope, Send

pytestmark = pytest.mark.anyio


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise OSError("client went away")
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body", False):
            return body


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo app: each path exercises one behaviour of the server."""
    assert scope["type"] == "http"
    path = scope["path"]
    if path == "/echo":
        body = await _read_body(receive)
        reply = {
            "method": scope["method"],
            "path": path,
            "query_string": scope["query_string"].decode(),
            "client": list(scope["client"]),
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "body": body.decode(),
            "body_json": json.loads(body) if body.startswith(b"{") else None,
        }
        await _respond(send, 200, json.dumps(reply).encode(), b"application/json")
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(5):
            await send(
                {"type": "http.response.body", "body": f"part{i}\n".encode(), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})
    elif path == "/boom":
        raise RuntimeError("the app is broken on purpose")
    else:
        await _respond(send, 404, b"not found", b"text/plain")


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    srv = HttpServer(app, "127.0.0.1", 0, max_body_size=1024)
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        yield srv
        tg.cancel_scope.cancel()


def _url(srv: HttpServer, path: str, host: str = "127.0.0.1") -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{srv.port}{path}"


async def test_port_zero_reports_bound_port(server: HttpServer) -> None:
    assert server.port > 0


async def test_get_and_post_json(server: HttpServer) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.get(_url(server, "/echo?a=1&b=two"))
        assert r.status_code == 200
        got = r.json()
        assert got["method"] == "GET"
        assert got["query_string"] == "a=1&b=two"
        assert got["client"][0] == "127.0.0.1"
        assert got["headers"]["host"] == f"127.0.0.1:{server.port}"
        assert r.headers["content-length"] == str(len(r.content))

        r = await client.post(_url(server, "/echo"), json={"caller": "1001", "n": 3})
        assert r.status_code == 200
        assert r.json()["body_json"] == {"caller": "1001", "n": 3}
        assert r.json()["method"] == "POST"


async def test_keep_alive_reuses_one_connection(server: HttpServer) -> None:
    ports: list[int] = []

    async def on_response(response: httpx.Response) -> None:
        stream = response.extensions["network_stream"]
        ports.append(stream.get_extra_info("client_addr")[1])

    async with httpx.AsyncClient(event_hooks={"response": [on_response]}) as client:
        first = await client.get(_url(server, "/echo"))
        second = await client.post(_url(server, "/echo"), content=b"again")
    assert first.json()["client"] == second.json()["client"]
    assert len(ports) == 2
    assert ports[0] == ports[1]
    assert second.json()["body"] == "again"


async def test_chunked_upload(server: HttpServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"alpha-", b"beta-", b"gamma"):
            yield part

    async with httpx.AsyncClient() as client:
        r = await client.post(_url(server, "/echo"), content=chunks())
    assert r.status_code == 200
    got = r.json()
    assert got["headers"]["transfer-encoding"] == "chunked"
    assert got["body"] == "alpha-beta-gamma"


async def test_streaming_response(server: HttpServer) -> None:
    async with (
        httpx.AsyncClient() as client,
        client.stream("GET", _url(server, "/stream")) as r,
    ):
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        lines = [line async for line in r.aiter_lines()]
    assert lines == [f"part{i}" for i in range(5)]


async def test_404_from_app(server: HttpServer) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.get(_url(server, "/nowhere"))
    assert r.status_code == 404
    assert r.text == "not found"


async def test_body_the_app_ignores_does_not_break_keep_alive(server: HttpServer) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(_url(server, "/nowhere"), content=b"z" * 800)
        assert r.status_code == 404
        r2 = await client.post(_url(server, "/echo"), content=b"next")
    assert r2.json()["body"] == "next"


async def test_app_exception_is_500_and_server_keeps_serving(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="sdpbx.http.server"):
        async with httpx.AsyncClient() as client:
            r = await client.get(_url(server, "/boom"))
            assert r.status_code == 500
            # Same client, possibly the same connection: still served.
            r2 = await client.get(_url(server, "/echo"))
            assert r2.status_code == 200
    assert any("the app is broken on purpose" in (rec.exc_text or "") for rec in caplog.records)


async def _raw_exchange(port: int, request: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        reply = b""
        with anyio.fail_after(10):
            while True:
                try:
                    reply += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return reply


async def test_malformed_request_is_400_and_closed(server: HttpServer) -> None:
    reply = await _raw_exchange(server.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in reply.lower()


async def test_bad_chunked_body_is_400(server: HttpServer) -> None:
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz-not-hex\r\nhello\r\n0\r\n\r\n"
    )
    reply = await _raw_exchange(server.port, request)
    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_oversized_body_is_413(server: HttpServer) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.post(_url(server, "/echo"), content=b"x" * 10_000)
        assert r.status_code == 413
        # The limit is on the body, not the connection pool: small bodies still work.
        ok = await client.post(_url(server, "/echo"), content=b"small")
        assert ok.json()["body"] == "small"


async def test_oversized_chunked_body_is_413(server: HttpServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 500

    async with httpx.AsyncClient() as client:
        r = await client.post(_url(server, "/echo"), content=chunks())
    assert r.status_code == 413


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
async def test_ipv6_loopback() -> None:
    srv = HttpServer(app, "::1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        async with httpx.AsyncClient() as client:
            r = await client.get(_url(srv, "/echo", host="::1"))
        tg.cancel_scope.cancel()
    assert r.status_code == 200
    assert r.json()["client"][0] == "::1"


async def test_cancel_closes_listener() -> None:
    srv = HttpServer(app, "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        port = srv.port
        tg.cancel_scope.cancel()
    with pytest.raises(OSError, match="connection attempts failed"):
        await anyio.connect_tcp("127.0.0.1", port)


async def test_http_disconnect_reaches_a_streaming_app() -> None:
    """An endless stream (SSE-like) learns that the client left via http.disconnect."""
    gone = anyio.Event()

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            tg.cancel_scope.cancel()

        await send({"type": "http.response.start", "status": 200, "headers": []})
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                while True:
                    await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                    await anyio.sleep(0.01)
            except OSError:
                # The write noticed first; receive() must agree the client is gone.
                assert (await receive())["type"] == "http.disconnect"
                gone.set()
                tg.cancel_scope.cancel()

    srv = HttpServer(endless, "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        # A plain socket, not httpx: an abandoned aiter_lines() is an async generator that
        # trio reports when it is collected unexhausted; leaving is what this test is about.
        async with await anyio.connect_tcp("127.0.0.1", srv.port) as client:
            await client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            received = b""
            with anyio.fail_after(10):
                while b"tick\n" not in received:
                    received += await client.receive()
            assert received.startswith(b"HTTP/1.1 200 ")
        with anyio.fail_after(10):
            await gone.wait()
        tg.cancel_scope.cancel()
