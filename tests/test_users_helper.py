"""MemoryUserBackend.from_passwords: users from a dict, the one-line start of a small PBX."""

from __future__ import annotations

import anyio
import pytest

from sdpbx import Authenticator, MemoryLocator, MemoryUserBackend, Proxy, Registrar, SipUser
from sdpbx.routing import StaticRouter
from sdpbx.sip.auth import NonceManager
from sdpbx.stack import SipStack
from sdpbx.testing import Phone
from sdpbx.transport import Peer, UdpTransport

pytestmark = pytest.mark.anyio


async def test_from_passwords_answers_in_every_realm() -> None:
    users = MemoryUserBackend.from_passwords({"1001": "secret", "1002": "hunter2"})
    assert len(users) == 2
    assert await users.get_user("1001", "pbx.example.com") == SipUser("1001", "secret")
    assert await users.get_user("1002", "other.example") == SipUser("1002", "hunter2")
    assert await users.get_user("1003", "pbx.example.com") is None


async def test_from_passwords_with_a_realm_answers_only_there() -> None:
    users = MemoryUserBackend.from_passwords({"1001": "secret"}, realm="PBX.example.com")
    assert await users.get_user("1001", "pbx.example.com") == SipUser(
        "1001", "secret", realm="PBX.example.com"
    )
    assert await users.get_user("1001", "other.example") is None


async def test_from_passwords_is_a_live_backend() -> None:
    """What it returns is the ordinary backend: users can be added and removed later."""
    users = MemoryUserBackend.from_passwords({})
    assert len(users) == 0
    users.add(SipUser("1001", "secret"))
    assert await users.get_user("1001", "x") == SipUser("1001", "secret")


async def test_users_from_a_dict_register_through_a_proxy() -> None:
    """The dict's users authenticate for real: a Phone registers with digest over UDP."""
    users = MemoryUserBackend.from_passwords({"1001": "secret"})
    auth = Authenticator(users, realm_for="127.0.0.1", nonces=NonceManager(b"k" * 32))
    locator = MemoryLocator()
    proxy = Proxy.from_parts(
        SipStack([UdpTransport("127.0.0.1", 0)]),
        router=StaticRouter((), {}, locator=locator),
        registrar=Registrar(locator, auth),
        authenticator=auth,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        server = Peer("UDP", "127.0.0.1", proxy.stack.transports[0].local_port)

        def phone(password: str) -> Phone:
            stack = SipStack([UdpTransport("127.0.0.1", 0)])
            return Phone(stack, "sip:1001@127.0.0.1", server=server, password=password)

        good, bad = phone("secret"), phone("wrong")
        await tg.start(good.stack.serve)
        await tg.start(bad.stack.serve)
        assert (await good.register()).status == 200
        assert (await bad.register()).status == 401  # challenged again: wrong password
        assert len(await locator.lookup("1001@127.0.0.1", proxy.clock())) == 1
        tg.cancel_scope.cancel()
