"""Config keys that change what the server does, proved on the server built from them.

Each test builds :class:`~sdpbx.pbx.Pbx` from a config dict, serves it on a
free UDP port of 127.0.0.1 and talks to it with a plain UDP socket, so what is
asserted is what a phone would see on the wire (or find in the locator).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import UDPSocket

from sdpbx.config import config_from_dict
from sdpbx.pbx import Pbx

pytestmark = pytest.mark.anyio

USERS = {"type": "memory", "users": [{"username": "1001", "password": "secret"}]}


@asynccontextmanager
async def serving(tmp_path: Path, proxy: dict[str, Any]) -> AsyncIterator[tuple[Pbx, int]]:
    config = config_from_dict(
        {
            "database_url": f"sqlite://{tmp_path / 'pbx.sqlite3'}",
            "proxy": {"addr": "127.0.0.1", "udp_port": 0, **proxy},
        }
    )
    pbx = Pbx(config)
    async with anyio.create_task_group() as tg:
        await tg.start(pbx.serve)
        assert pbx.stack is not None
        try:
            yield pbx, pbx.stack.transports[0].local_port
        finally:
            tg.cancel_scope.cancel()


def _request(method: str, port: int, client_port: int, *, to: str, contact: str) -> bytes:
    lines = [
        f"{method} sip:{to}@127.0.0.1:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{client_port};branch=z9hG4bK-{method}-{time.time_ns()}",
        "Max-Forwards: 70",
        f"From: <sip:1001@127.0.0.1>;tag=cfg{client_port}",
        f"To: <sip:{to}@127.0.0.1>",
        f"Call-ID: cfg-{method}-{time.time_ns()}@127.0.0.1",
        f"CSeq: 1 {method}",
        f"Contact: <sip:1001@{contact}>",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _final(sock: UDPSocket) -> tuple[list[int], str]:
    """Statuses received up to the first final one, and that final response."""
    seen: list[int] = []
    with anyio.fail_after(5):
        while True:
            data, _ = await sock.receive()
            text = data.decode()
            status = int(text.split(" ", 2)[1])
            seen.append(status)
            if status >= 200:
                return seen, text


async def _exchange(port: int, method: str, *, to: str, contact: str = "") -> tuple[list[int], str]:
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as sock:
        client_port = sock.extra(anyio.abc.SocketAttribute.local_port)
        where = contact or f"127.0.0.1:{client_port}"
        request = _request(method, port, client_port, to=to, contact=where)
        await sock.sendto(request, "127.0.0.1", port)
        return await _final(sock)


# -- ensure_user ---------------------------------------------------------------------------------


async def test_calls_are_challenged_by_default(tmp_path: Path) -> None:
    async with serving(tmp_path, {"user_backends": [USERS]}) as (_, port):
        seen, _ = await _exchange(port, "INVITE", to="1002")
    assert seen == [407]


async def test_ensure_user_false_lets_calls_through_but_not_registrations(tmp_path: Path) -> None:
    """ensure_user = false: an INVITE without credentials is routed (here to a user
    who is not registered: 100 then 480), never challenged; REGISTER still is."""
    proxy = {"user_backends": [USERS], "ensure_user": False}
    async with serving(tmp_path, proxy) as (_, port):
        seen, _ = await _exchange(port, "INVITE", to="1002")
        assert 407 not in seen
        assert seen[0] == 100
        registered, _ = await _exchange(port, "REGISTER", to="1001")
    assert registered == [401]


# -- max_ring_time -------------------------------------------------------------------------------


@pytest.mark.parametrize(("proxy", "seconds"), [({}, 60.0), ({"max_ring_time": 25}, 25.0)])
async def test_max_ring_time_is_the_ring_timeout(
    tmp_path: Path, proxy: dict[str, Any], seconds: float
) -> None:
    async with serving(tmp_path, proxy) as (pbx, _):
        assert pbx.proxy is not None
        assert pbx.proxy._services.ring_timeout == seconds


# -- nat_fix -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("nat_fix", "where"), [(True, "source"), (False, "contact")])
async def test_nat_fix_decides_where_a_udp_binding_is_reached(
    tmp_path: Path, nat_fix: bool, where: str
) -> None:
    """A phone behind NAT registers a private Contact (192.0.2.55:5099, a
    documentation address) from 127.0.0.1:<port>: nat_fix reaches it at the
    source, without nat_fix at its Contact."""
    async with serving(tmp_path, {"nat_fix": nat_fix}) as (pbx, port):
        seen, _ = await _exchange(port, "REGISTER", to="1001", contact="192.0.2.55:5099")
        assert seen == [200]
        [binding] = await pbx.locator.lookup("1001@127.0.0.1", time.time())
    assert binding.contact == "sip:1001@192.0.2.55:5099"
    if where == "source":
        assert binding.host == "127.0.0.1" and binding.port != 5099
    else:
        assert (binding.host, binding.port) == ("192.0.2.55", 5099)


async def test_without_nat_fix_a_contact_name_keeps_the_source(tmp_path: Path) -> None:
    """A host name would need DNS to be reached: the source address is kept."""
    async with serving(tmp_path, {"nat_fix": False}) as (pbx, port):
        seen, _ = await _exchange(port, "REGISTER", to="1001", contact="phone.example:5099")
        assert seen == [200]
        [binding] = await pbx.locator.lookup("1001@127.0.0.1", time.time())
    assert binding.host == "127.0.0.1" and binding.port != 5099


# -- start-up warnings ---------------------------------------------------------------------------


def test_the_server_logs_each_warning_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_from_dict(
        {
            "database_url": f"sqlite://{tmp_path / 'pbx.sqlite3'}",
            "callrecord": {"type": "local"},
            "sipflow": {"enabled": True},
        }
    )
    with caplog.at_level(logging.WARNING, logger="sdpbx.pbx"):
        Pbx(config)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == [
        "[callrecord] is configured but not implemented yet; ignored",
        "[sipflow] is configured but not implemented yet; ignored",
    ]
