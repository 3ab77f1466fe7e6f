"""HttpUserBackend against a real HTTP server (stdlib, in a thread) on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from helpers.webhook_server import Received, Reply, WebhookServer, running_server
from helpers.webhook_server import start_server as _start_server

from sdpbx.config import HttpUserBackendConfig
from sdpbx.sip.auth import compute_ha1
from sdpbx.users import (
    SipUser,
    UserBackendError,
    UserRejected,
    user_backend_from_config,
)
from sdpbx.webhooks import HttpUserBackend

pytestmark = pytest.mark.anyio


# -- a recording HTTP server -------------------------------------------------------------


def start_server(port: int = 0) -> WebhookServer:
    return _start_server("/users", port=port)


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    with running_server("/users") as srv:
        yield srv


@pytest.fixture
async def client() -> Any:
    async with httpx.AsyncClient() as c:
        yield c


def answer(status: int = 200, body: Any = None, **kw: Any) -> Callable[[Received], Reply]:
    return lambda _: Reply(status, body, **kw)


GOOD = {
    "id": 7,
    "username": "1001",
    "password": "secret",
    "display_name": "Alice",
    "email": "alice@example.com",
    "allow_guest_calls": True,
    "enabled": True,
    "department": "sales",  # unknown fields are ignored
}


# -- the success path ----------------------------------------------------------------------


async def test_good_user_get(server: WebhookServer, client: httpx.AsyncClient) -> None:
    server.respond = answer(200, GOOD)
    backend = HttpUserBackend(server.url, headers={"Authorization": "Bearer t0k"}, client=client)
    user = await backend.get_user("1001", "pbx.com")
    assert user == SipUser(
        username="1001",
        password="secret",
        realm="pbx.com",
        display_name="Alice",
        email="alice@example.com",
        allow_guest_calls=True,
        id=7,
    )
    (request,) = server.received
    assert request.method == "GET"
    assert request.path == "/users"
    assert request.query == {"username": ["1001"], "realm": ["pbx.com"]}
    assert request.headers["authorization"] == "Bearer t0k"
    assert request.body == b""


async def test_minimal_reply_uses_requested_username(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    server.respond = answer(200, {"password": "pw", "id": "u-1", "email": None})
    user = await HttpUserBackend(server.url, client=client).get_user("1002", "pbx.com")
    assert user is not None
    assert (user.username, user.password, user.id, user.email) == ("1002", "pw", "u-1", None)
    assert user.enabled and not user.allow_guest_calls


async def test_post_form_with_custom_field_names(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    server.respond = answer(200, GOOD)
    backend = HttpUserBackend(
        server.url,
        method="POST",
        username_field="user",
        realm_field="domain",
        headers={"X-Api-Key": "k1"},
        client=client,
    )
    user = await backend.get_user("1001", "pbx.com")
    assert user is not None and user.password == "secret"
    (request,) = server.received
    assert request.method == "POST"
    assert request.query == {}
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form == {"user": ["1001"], "domain": ["pbx.com"]}
    assert request.headers["x-api-key"] == "k1"


# -- HA1 instead of a password (beyond RustPBX) ---------------------------------------------


async def test_password_ha1_field(server: WebhookServer, client: httpx.AsyncClient) -> None:
    ha1 = compute_ha1("1001", "pbx.com", "secret", "MD5")
    server.respond = answer(200, {"username": "1001", "password_ha1": ha1.upper()})
    user = await HttpUserBackend(server.url, client=client).get_user("1001", "pbx.com")
    assert user is not None
    assert user.password is None
    assert user.ha1 == (("MD5", ha1),)
    secret = user.secret()
    assert secret.ha1_for("1001", "pbx.com", "MD5") == ha1
    assert secret.algorithms() == ("MD5", "MD5-sess")


async def test_ha1_flag_sha256(server: WebhookServer, client: httpx.AsyncClient) -> None:
    ha1 = compute_ha1("1001", "pbx.com", "secret", "SHA-256")
    server.respond = answer(200, {"username": "1001", "password": ha1, "ha1": True})
    user = await HttpUserBackend(server.url, client=client).get_user("1001", "pbx.com")
    assert user is not None
    assert user.password is None
    assert user.secret().ha1_for("1001", "pbx.com", "SHA-256") == ha1
    assert user.secret().ha1_for("1001", "pbx.com", "MD5") is None


async def test_both_ha1_markers_give_both_algorithms(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    md5 = compute_ha1("1001", "pbx.com", "secret", "MD5")
    sha = compute_ha1("1001", "pbx.com", "secret", "SHA-256")
    server.respond = answer(200, {"password": sha, "ha1": True, "password_ha1": md5})
    user = await HttpUserBackend(server.url, client=client).get_user("1001", "pbx.com")
    assert user is not None
    assert dict(user.ha1) == {"MD5": md5, "SHA-256": sha}


async def test_hex_password_without_marker_is_plaintext(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    hexlike = "0123456789abcdef0123456789abcdef"
    server.respond = answer(200, {"password": hexlike})
    user = await HttpUserBackend(server.url, client=client).get_user("1001", "pbx.com")
    assert user is not None and user.password == hexlike and user.ha1 == ()


@pytest.mark.parametrize(
    "body",
    [
        {"password": "not-hex-at-all", "ha1": True},
        {"password": "abcd", "ha1": True},
        {"password_ha1": "z" * 32},
    ],
)
async def test_malformed_ha1_is_backend_error(
    server: WebhookServer, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    server.respond = answer(200, body)
    with pytest.raises(UserBackendError, match="HA1"):
        await HttpUserBackend(server.url, client=client).get_user("1001", "pbx.com")


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, None),
        (404, b"<html>not found</html>"),
        (404, {"reason": "not_found", "message": "no such user"}),
        (403, {"reason": "not_found"}),
    ],
)
async def test_unknown_user_is_none(
    server: WebhookServer, client: httpx.AsyncClient, status: int, body: Any
) -> None:
    server.respond = answer(status, body)
    assert await HttpUserBackend(server.url, client=client).get_user("9", "pbx.com") is None


async def test_403_invalid_is_rejected(server: WebhookServer, client: httpx.AsyncClient) -> None:
    server.respond = answer(403, {"reason": "invalid", "message": "bad account"})
    with pytest.raises(UserRejected) as info:
        await HttpUserBackend(server.url, client=client).get_user("1001", "pbx.com")
    assert (info.value.reason, info.value.message, info.value.spam) == (
        "invalid",
        "bad account",
        False,
    )


async def test_403_without_body_is_rejected_as_invalid(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    server.respond = answer(403, b"Forbidden")
    with pytest.raises(UserRejected) as info:
        await HttpUserBackend(server.url, client=client).get_user("1001", "pbx.com")
    assert info.value.reason == "invalid"


async def test_spam(server: WebhookServer, client: httpx.AsyncClient) -> None:
    server.respond = answer(403, {"reason": "spam", "message": "scanner"})
    with pytest.raises(UserRejected) as info:
        await HttpUserBackend(server.url, client=client).get_user("admin", "pbx.com")
    assert info.value.spam
    assert info.value.reason == "spam"


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, {**GOOD, "enabled": False}), (403, {"reason": "disabled", "message": "unpaid"})],
)
async def test_disabled(
    server: WebhookServer, client: httpx.AsyncClient, status: int, body: Any
) -> None:
    server.respond = answer(status, body)
    with pytest.raises(UserRejected) as info:
        await HttpUserBackend(server.url, client=client).get_user("1001", "pbx.com")
    assert info.value.reason == "disabled"


# -- failures ---------------------------------------------------------------------------------


async def test_timeout_is_backend_error(
    server: WebhookServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.respond = answer(hold=True)
    backend = HttpUserBackend(server.url, timeout=0.3, client=client)
    with anyio.fail_after(10), pytest.raises(UserBackendError, match=r"no answer within 0\.3 s"):
        await backend.get_user("1001", "pbx.com")
    assert "1001" in caplog.text


async def test_trickling_server_cannot_outlast_the_deadline(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    # Each byte arrives well within httpx's read timeout; only the overall guard stops it.
    server.respond = answer(200, trickle=True)
    backend = HttpUserBackend(server.url, timeout=0.3, client=client)
    with anyio.fail_after(10), pytest.raises(UserBackendError, match="no answer"):
        await backend.get_user("1001", "pbx.com")


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (500, {"error": "boom"}, "HTTP 500"),
        (502, None, "HTTP 502"),
        (400, None, "HTTP 400"),
        (200, b"<html>", "not JSON"),
        (200, [1, 2], "bad reply"),
        (200, {"password": "pw", "enabled": "yes"}, r"bad reply: enabled: expected a boolean"),
        (200, {"username": "1001"}, "no password"),
    ],
)
async def test_bad_answers_are_backend_errors(
    server: WebhookServer,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: Any,
    match: str,
) -> None:
    server.respond = answer(status, body)
    with (
        caplog.at_level(logging.WARNING, "sdpbx.webhooks.user_backend"),
        pytest.raises(UserBackendError, match=match),
    ):
        await HttpUserBackend(server.url, client=client).get_user("1001", "pbx.com")
    assert server.url in caplog.text


async def test_connection_refused_is_backend_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = HttpUserBackend(f"http://127.0.0.1:{port}/users", client=client)
    with pytest.raises(UserBackendError, match="ConnectError"):
        await backend.get_user("1001", "pbx.com")


# -- client ownership and config ---------------------------------------------------------------


async def test_own_client_is_closed_shared_one_is_not(
    server: WebhookServer, client: httpx.AsyncClient
) -> None:
    server.respond = answer(200, GOOD)
    async with HttpUserBackend(server.url) as own:
        assert await own.get_user("1001", "pbx.com") is not None
    assert own._client is None
    shared = HttpUserBackend(server.url, client=client)
    assert await shared.get_user("1001", "pbx.com") is not None
    await shared.aclose()
    assert not client.is_closed
    assert await shared.get_user("1001", "pbx.com") is not None


async def test_from_config(server: WebhookServer, client: httpx.AsyncClient) -> None:
    server.respond = answer(200, GOOD)
    cfg = HttpUserBackendConfig(
        url=server.url,
        method="POST",
        username_field="u",
        realm_field="r",
        headers={"X-Token": "abc"},
        timeout_ms=1500,
    )
    backend = user_backend_from_config(cfg, http_client=client)
    assert isinstance(backend, HttpUserBackend)
    assert backend.timeout == 1.5
    user = await backend.get_user("1001", "pbx.com")
    assert user is not None and user.display_name == "Alice"
    (request,) = server.received
    assert request.form == {"u": ["1001"], "r": ["pbx.com"]}
    assert request.headers["x-token"] == "abc"


def test_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="GET or POST"):
        HttpUserBackend("http://127.0.0.1/", method="PUT")  # type: ignore[arg-type]
