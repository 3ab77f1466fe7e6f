"""Trunks end to end: failover, call limits, carrier digest auth, inbound detection.

The PBX is ``Pbx(config_from_dict(...))`` with static routes to trunks; the
carriers are SIPp callees, except the challenging one, which is an sdpbx
SipStack answering with a :class:`~sdpbx.sip.auth.DigestServer` challenge
first. Helpers (PBX runner, SIPp peers, message-log reading) are shared with
``test_pbx_routing_e2e``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers.sipp import SippResult, free_port
from test_pbx_routing_e2e import (
    EXPECT_FAILURE,
    UAC_CALL,
    RunningPbx,
    call,
    finals,
    header,
    requests_received,
    running_pbx,
    start_uas,
    status_of,
)

from sdpbx.b2bua.events import CallAnswered
from sdpbx.sip import Request
from sdpbx.sip.auth import AuthResult, DigestCredentials, DigestServer, NonceManager, UserSecret
from sdpbx.stack import IncomingRequest, SipStack
from sdpbx.testing import AnsweringUas
from sdpbx.transport import UdpTransport

pytestmark = [pytest.mark.anyio, pytest.mark.sipp]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # live SIPp peers: asyncio only, to keep CI in its time budget


def trunk_at(uri: str, **more: Any) -> dict[str, Any]:
    """A ``[proxy.trunks.<name>]`` table whose dest is ``uri``'s host:port."""
    return {"dest": uri.split("@", 1)[1], **more}


# -- failover ---------------------------------------------------------------------------------


async def test_failover_to_next_trunk_on_503(sipp: str, shared_dir: Path, tmp_path: Path) -> None:
    """dest = ["t1", "t2"]: t1 answers 503, the call goes out through t2."""
    async with anyio.create_task_group() as tg:
        down, down_uri = await start_uas(tg, sipp, tmp_path, "t1", scenario="uas_unavailable.xml")
        up, up_uri = await start_uas(tg, sipp, tmp_path, "t2")
        proxy = {
            "trunks": {"t1": trunk_at(down_uri), "t2": trunk_at(up_uri)},
            "routes": [{"name": "out", "dest": ["t1", "t2"]}],
        }
        async with running_pbx(tmp_path, proxy) as pbx:
            result, _, _ = await call(
                sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL, service="5551234"
            )
            down_result = await down.wait()
            up_result = await up.wait()
            await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    assert down_result.successful == 1, down_result.output[-2000:]  # 503 sent and ACKed
    assert up_result.successful == 1, up_result.output[-2000:]
    (to_t1,) = requests_received(down.log, "INVITE")
    (to_t2,) = requests_received(up.log, "INVITE")
    assert to_t1.startswith(f"INVITE sip:5551234@{down_uri.split('@')[1]} SIP/2.0")
    assert to_t2.startswith(f"INVITE sip:5551234@{up_uri.split('@')[1]} SIP/2.0")
    (started,) = pbx.calls.values()
    assert [(m.code, m.target) for m in started.hangup_messages] == [
        (503, f"sip:5551234@{down_uri.split('@')[1]}")
    ]
    assert started.outbound_trunk == "t2"
    assert started.route_name == "out"
    assert started.direction == "outbound"
    assert [(e.reason, e.status) for e in pbx.ended()] == [("byCaller", 200)]


# -- max_calls --------------------------------------------------------------------------------


async def hold_a_call(
    sipp: str, shared_dir: Path, tmp_path: Path, pbx: RunningPbx, out: list[Any]
) -> None:
    """A call that stays up 3 s after the answer (SIPp ``-d 3000``); its result in ``out``."""
    uac = shared_dir / UAC_CALL
    out.append(await call(sipp, tmp_path, pbx, scenario=uac, name="held", extra=("-d", "3000")))


async def answered(pbx: RunningPbx, count: int) -> None:
    """Until ``count`` calls have been answered."""
    with anyio.fail_after(10):
        while sum(isinstance(e, CallAnswered) for e in pbx.events) < count:
            await anyio.sleep(0.02)


async def test_max_calls_refuses_second_concurrent_call(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """max_calls = 1: while one call is up, a second gets 503; once it ends, a third works."""
    async with anyio.create_task_group() as tg:
        carrier, carrier_uri = await start_uas(tg, sipp, tmp_path, "carrier", calls=2)
        proxy = {
            "trunks": {"t1": trunk_at(carrier_uri, max_calls=1)},
            "routes": [{"name": "out", "dest": "t1"}],
        }
        async with running_pbx(tmp_path, proxy) as pbx:
            assert pbx.pbx.proxy is not None
            limiter = pbx.pbx.proxy.limiter
            assert limiter is not None
            held: list[tuple[SippResult, Path, int]] = []
            async with anyio.create_task_group() as calls:
                calls.start_soon(hold_a_call, sipp, shared_dir, tmp_path, pbx, held)
                await answered(pbx, 1)
                assert limiter.active("t1") == 1
                second, second_log, _ = await call(
                    sipp, tmp_path, pbx, scenario=EXPECT_FAILURE, name="second"
                )
            # The held call has hung up: the trunk is free again.
            await pbx.idle()
            assert limiter.active("t1") == 0
            third, _, _ = await call(
                sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL, name="third"
            )
            carrier_result = await carrier.wait()
            await pbx.idle()
            assert limiter.active("t1") == 0
    (first, _, _) = held[0]
    assert first.successful == 1, first.output[-2000:]
    assert second.successful == 1, second.output[-2000:]
    (final,) = finals(second_log)
    assert status_of(final) == 503
    assert third.successful == 1, third.output[-2000:]
    assert carrier_result.successful == 2, carrier_result.output[-2000:]
    assert len(requests_received(carrier.log, "INVITE")) == 2  # the refused call never left
    refused = [c for c in pbx.calls.values() if c.status_code == 503]
    assert len(refused) == 1
    assert [(m.code, m.reason) for m in refused[0].hangup_messages] == [(503, "Trunk Limit")]


def hash_order(caller: str) -> list[str]:
    """``dest`` for which ``select = "hash"`` tries t1 first for ``caller`` (user@host)."""
    return ["t1", "t2"] if zlib.crc32(caller.encode()) % 2 == 0 else ["t2", "t1"]


async def test_max_calls_full_trunk_fails_over(sipp: str, shared_dir: Path, tmp_path: Path) -> None:
    """A trunk at its max_calls counts as failed: the next trunk of dest takes the call."""
    async with anyio.create_task_group() as tg:
        busy_trunk, busy_uri = await start_uas(tg, sipp, tmp_path, "t1")
        spare, spare_uri = await start_uas(tg, sipp, tmp_path, "t2")
        proxy = {
            "trunks": {"t1": trunk_at(busy_uri, max_calls=1), "t2": trunk_at(spare_uri)},
            # select = "hash": one caller always starts with the same trunk; the
            # order of dest is chosen so that for our caller that trunk is t1.
            "routes": [{"name": "out", "dest": hash_order("uac@127.0.0.1"), "select": "hash"}],
        }
        async with running_pbx(tmp_path, proxy) as pbx:
            held: list[tuple[SippResult, Path, int]] = []
            async with anyio.create_task_group() as calls:
                calls.start_soon(hold_a_call, sipp, shared_dir, tmp_path, pbx, held)
                await answered(pbx, 1)
                second, _, _ = await call(
                    sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL, name="second"
                )
            results = [await busy_trunk.wait(), await spare.wait()]
            await pbx.idle()
    assert held[0][0].successful == 1, held[0][0].output[-2000:]
    assert second.successful == 1, second.output[-2000:]
    assert [r.successful for r in results] == [1, 1]
    first_call, second_call = pbx.calls.values()
    assert first_call.outbound_trunk == "t1"
    assert [(m.code, m.reason) for m in first_call.hangup_messages] == []
    assert second_call.outbound_trunk == "t2"
    assert [(m.code, m.reason) for m in second_call.hangup_messages] == [(503, "Trunk Limit")]


# -- a carrier that wants digest credentials ---------------------------------------------------

CARRIER_REALM = "carrier.example"
CARRIER_USER = "acct-77"
CARRIER_PASSWORD = "s3cret-pw"


class ChallengingCarrier(AnsweringUas):
    """Answers INVITEs only with valid Digest credentials; challenges with ``status`` first."""

    def __init__(self, status: int, contact: str) -> None:
        super().__init__(contact=contact)
        self.status = status
        self.digest = DigestServer(NonceManager(b"carrier-test-secret-0123456789ab"))
        self.invites: list[Request] = []
        self.verdicts: list[AuthResult | None] = []

    async def handle_request(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        if request.method != "INVITE":
            await super().handle_request(incoming)
            return
        self.invites.append(request)
        values = request.authorization if self.status == 401 else request.proxy_authorization
        verdict: AuthResult | None = None
        if values:
            credentials = DigestCredentials.parse(values[0])
            known = credentials.username == CARRIER_USER
            verdict = self.digest.verify(
                credentials,
                method="INVITE",
                secret=UserSecret(password=CARRIER_PASSWORD) if known else None,
                now=time.time(),
                expected_realm=CARRIER_REALM,
            )
        self.verdicts.append(verdict)
        if verdict is AuthResult.OK:
            await super().handle_request(incoming)
            return
        name = "WWW-Authenticate" if self.status == 401 else "Proxy-Authenticate"
        challenges = self.digest.challenges(CARRIER_REALM, time.time())
        incoming.respond(self.status, headers=[(name, c.to_header_value()) for c in challenges])


@asynccontextmanager
async def challenging_carrier(status: int) -> AsyncIterator[tuple[ChallengingCarrier, int]]:
    port = free_port()
    carrier = ChallengingCarrier(status, f"<sip:carrier@127.0.0.1:{port}>")
    stack = SipStack([UdpTransport("127.0.0.1", port)], carrier, user_agent="test-carrier")
    async with anyio.create_task_group() as tg:
        await tg.start(stack.serve)
        yield carrier, port
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("status", [401, 407])
async def test_carrier_challenge_is_answered(
    sipp: str, shared_dir: Path, tmp_path: Path, status: int
) -> None:
    """The carrier challenges (401 or 407); the B2BUA retries with the trunk's credentials."""
    async with challenging_carrier(status) as (carrier, port):
        trunk = {
            "dest": f"127.0.0.1:{port}",
            "username": CARRIER_USER,
            "password": CARRIER_PASSWORD,
        }
        proxy = {"trunks": {"carrier": trunk}, "routes": [{"name": "out", "dest": "carrier"}]}
        async with running_pbx(tmp_path, proxy) as pbx:
            result, _, _ = await call(sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL)
            await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    assert carrier.verdicts == [None, AuthResult.OK]
    first, second = carrier.invites
    assert second.call_id == first.call_id
    assert second.cseq.number == first.cseq.number + 1
    assert second.top_via.branch != first.top_via.branch
    assert (carrier.stats.acks, carrier.stats.byes) == (1, 1)
    (started,) = pbx.calls.values()
    assert started.outbound_trunk == "carrier"
    assert [m.code for m in started.hangup_messages] == []


async def refused_credentials_call(
    sipp: str, tmp_path: Path, status: int
) -> tuple[ChallengingCarrier, RunningPbx, SippResult, Path]:
    """One call out through a trunk whose password the carrier refuses."""
    async with challenging_carrier(status) as (carrier, port):
        trunk = {"dest": f"127.0.0.1:{port}", "username": CARRIER_USER, "password": "wrong"}
        proxy = {"trunks": {"carrier": trunk}, "routes": [{"name": "out", "dest": "carrier"}]}
        async with running_pbx(tmp_path, proxy) as pbx:
            result, log, _ = await call(sipp, tmp_path, pbx, scenario=EXPECT_FAILURE)
            await pbx.idle()
    return carrier, pbx, result, log


@pytest.mark.parametrize("status", [401, 407])
async def test_carrier_refusing_credentials_is_retried_once(
    sipp: str, tmp_path: Path, status: int
) -> None:
    """A wrong trunk password: exactly one retry (no loop), then the call fails."""
    carrier, pbx, _, log = await refused_credentials_call(sipp, tmp_path, status)
    assert carrier.verdicts == [None, AuthResult.BAD_CREDENTIALS]
    (final,) = finals(log)
    assert (status_of(final) or 0) >= 400
    (started,) = pbx.calls.values()
    assert [m.code for m in started.hangup_messages] == [status]  # kept for the CDR
    assert [e.reason for e in pbx.ended()] == ["failed"]


@pytest.mark.parametrize("status", [401, 407])
async def test_carrier_auth_failure_is_not_relayed_as_a_challenge(
    sipp: str, tmp_path: Path, status: int
) -> None:
    """The caller cannot answer a challenge for the trunk's account: it gets 403 instead."""
    _, pbx, result, log = await refused_credentials_call(sipp, tmp_path, status)
    assert result.successful == 1, result.output[-2000:]
    (final,) = finals(log)
    assert status_of(final) == 403
    assert [(e.reason, e.status) for e in pbx.ended()] == [("failed", 403)]


# -- inbound direction detection ----------------------------------------------------------------


async def test_inbound_trunk_calls_skip_authentication(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """A source in a trunk's inbound_hosts is that trunk calling: routed without a challenge.

    A memory user backend is configured, so any other INVITE is challenged
    (407). All of 127.0.0.0/8 is local, so the carrier calls from 127.0.0.2
    (``inbound_hosts = ["127.0.0.2"]``) and the phone from 127.0.0.1; both
    dial the same number, routed to a SIPp callee behind the ``callee`` trunk.
    """
    async with anyio.create_task_group() as tg:
        uas, uas_uri = await start_uas(tg, sipp, tmp_path, "callee")
        proxy = {
            "user_backends": [
                {"type": "memory", "users": [{"username": "1001", "password": "pw"}]}
            ],
            "trunks": {
                "carrier": {"dest": "127.0.0.2:5060", "inbound_hosts": ["127.0.0.2"]},
                "callee": trunk_at(uas_uri),
            },
            "routes": [{"name": "to-callee", "dest": "callee"}],
        }
        async with running_pbx(tmp_path, proxy) as pbx:
            inbound, _, _ = await call(
                sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL, name="from-carrier",
                source="127.0.0.2",
            )  # fmt: skip
            uas_result = await uas.wait()
            local, local_log, _ = await call(
                sipp, tmp_path, pbx, scenario=EXPECT_FAILURE, name="from-phone"
            )
            await pbx.idle()
    assert inbound.successful == 1, inbound.output[-2000:]
    assert uas_result.successful == 1, uas_result.output[-2000:]
    (started,) = pbx.calls.values()  # the challenged INVITE never became a call
    assert started.direction == "inbound"
    assert started.inbound_trunk == "carrier"
    assert started.route_name == "to-callee"
    assert local.successful == 1, local.output[-2000:]
    (final,) = finals(local_log)
    assert status_of(final) == 407
    assert header(final, "Proxy-Authenticate") is not None
