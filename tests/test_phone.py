"""sdpbx.testing.Phone against real peers: SIPp's UAS, and a PBX with digest auth."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from helpers.sipp import free_port, run_sipp

from sdpbx.authn import Authenticator
from sdpbx.locator import MemoryLocator
from sdpbx.proxy import Proxy
from sdpbx.registrar import Registrar
from sdpbx.routing import StaticRouter
from sdpbx.sip.auth import NonceManager
from sdpbx.stack import SipStack
from sdpbx.testing import CallFailed, Phone
from sdpbx.transport import Peer, TcpTransport, UdpTransport
from sdpbx.users import MemoryUserBackend, SipUser

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_phone_calls_sipp_uas(sipp: str, tmp_path: Path, transport: str) -> None:
    """The phone's INVITE/ACK/BYE satisfy SIPp's built-in UAS, over UDP and TCP."""
    uas_port = free_port()
    stack = SipStack([UdpTransport("127.0.0.1", 0), TcpTransport("127.0.0.1", 0)])
    phone = Phone(stack, "sip:alice@127.0.0.1", server=Peer(transport, "127.0.0.1", uas_port))
    mode = ["-t", "t1"] if transport == "TCP" else []
    results = []

    async def uas() -> None:
        results.append(
            await run_sipp(
                sipp,
                ["-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1", *mode],
                cwd=tmp_path,
            )
        )

    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        tg.start_soon(uas)
        await anyio.sleep(0.5)  # SIPp binds its port; nothing to wait on from outside
        call = await phone.call(f"sip:service@127.0.0.1:{uas_port}")
        assert call.remote_sdp.startswith(b"v=0")
        bye = await call.hang_up()
        assert bye.status == 200
        with anyio.fail_after(10):
            while not results:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert results[0].returncode == 0, results[0].output[-2000:]
    assert results[0].successful == 1


async def test_two_phones_register_and_call_through_the_proxy() -> None:
    """alice and bob register with digest; alice calls bob through the B2BUA, bob hangs up."""
    nonces = NonceManager(b"k" * 32)
    users = MemoryUserBackend(
        [SipUser("alice", password="secret"), SipUser("bob", password="secret")]
    )
    auth = Authenticator(users, realm_for="127.0.0.1", nonces=nonces, algorithms=("MD5",))
    locator = MemoryLocator()
    pbx_port = free_port()
    pbx_stack = SipStack([UdpTransport("127.0.0.1", pbx_port)])
    proxy = Proxy(
        pbx_stack,
        StaticRouter((), {}, locator=locator, local_realms=("127.0.0.1",)),
        registrar=Registrar(locator, auth, realms=("127.0.0.1",)),
        authenticator=auth,
    )
    server = Peer("UDP", "127.0.0.1", pbx_port)
    alice = Phone(
        SipStack([UdpTransport("127.0.0.1", 0)]), "sip:alice@127.0.0.1",
        server=server, password="secret",
    )  # fmt: skip
    bob = Phone(
        SipStack([UdpTransport("127.0.0.1", 0)]), "sip:bob@127.0.0.1",
        server=server, password="secret",
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        await tg.start(alice.stack.serve)
        await tg.start(bob.stack.serve)
        assert (await bob.register()).status == 200
        assert (await alice.register()).status == 200
        bindings = await locator.lookup("bob@127.0.0.1", time.time())
        assert [b.port for b in bindings] == [bob.stack.transports[0].local_port]
        call = await alice.call("sip:bob@127.0.0.1")
        assert call.remote_sdp.startswith(b"v=0")
        with anyio.fail_after(5):
            while not bob.incoming_calls:
                await anyio.sleep(0.01)
        incoming = bob.incoming_calls[0]
        bye = await incoming.hang_up()
        assert bye.status == 200
        with anyio.fail_after(5):
            await call.ended.wait()
        assert call.ended_by == "them"
        with anyio.fail_after(5):
            while len(proxy.calls):
                await anyio.sleep(0.01)
        # An unknown user is refused, and the failure is a CallFailed with its status.
        with pytest.raises(CallFailed) as failed:
            await alice.call("sip:carol@127.0.0.1")
        assert failed.value.status == 480
        tg.cancel_scope.cancel()
