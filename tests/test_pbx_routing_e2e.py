"""The HTTP router webhook end to end: SIPp -> Pbx -> a real web service -> SIPp.

The PBX is the reference server built from a config dict (``Pbx(config_from_dict(...))``),
the router is a stdlib HTTP server on 127.0.0.1 run by the test (it records every
request JSON and answers what the test says), callers and callees are SIPp
processes. What each caller and callee saw is read back from SIPp's message
logs (``-trace_msg``), so assertions name exact statuses and headers.

No user backend is configured, so INVITEs are not challenged.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from helpers.sipp import SippResult, free_port, run_sipp

from sdpbx.b2bua.call import Call
from sdpbx.b2bua.events import CallEnded, CallEvent, CallStarted
from sdpbx.config import config_from_dict
from sdpbx.pbx import Pbx

pytestmark = [pytest.mark.anyio, pytest.mark.sipp]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # live SIPp peers: asyncio only, to keep CI in its time budget


SCENARIOS = Path(__file__).resolve().parent / "scenarios_routing"

# -- the router web service ----------------------------------------------------------------

#: (HTTP status, JSON body or raw bytes, seconds to stall before answering)
Reply = tuple[int, Any, float]


class RouterService:
    """A real HTTP router on 127.0.0.1; ``reply`` decides each answer.

    Every request is kept as ``(headers, json)``. A stalled answer waits on
    :attr:`release`, set at teardown so no thread outlives the test.
    """

    def __init__(self, reply: Callable[[dict[str, Any]], Reply]) -> None:
        self.reply = reply
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.release = threading.Event()
        self.url = ""

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, body in self.requests]


@contextmanager
def router_service(reply: Callable[[dict[str, Any]], Reply]) -> Iterator[RouterService]:
    service = RouterService(reply)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            data = json.loads(self.rfile.read(length))
            service.requests.append(({k.lower(): v for k, v in self.headers.items()}, data))
            status, body, stall = service.reply(data)
            if stall:
                service.release.wait(stall)
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the PBX gave up waiting (the timeout tests)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    service.url = f"http://127.0.0.1:{server.server_address[1]}/route"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the PBX -------------------------------------------------------------------------------


class RunningPbx:
    """A served Pbx, its SIP port and every call it started (by Call-ID)."""

    def __init__(self, pbx: Pbx, port: int) -> None:
        self.pbx = pbx
        self.port = port
        self.events: list[CallEvent] = []
        self.calls: dict[str, Call] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listen(self, event: CallEvent) -> None:
        self.events.append(event)
        proxy = self.pbx.proxy
        if isinstance(event, CallStarted) and proxy is not None:
            call = proxy.calls.get(event.call_id)
            if call is not None:
                self.calls[event.call_id] = call

    def ended(self) -> list[CallEnded]:
        return [e for e in self.events if isinstance(e, CallEnded)]

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until every call has been cleaned up."""
        proxy = self.pbx.proxy
        assert proxy is not None
        with anyio.fail_after(timeout):
            while len(proxy.calls):
                await anyio.sleep(0.02)


@asynccontextmanager
async def running_pbx(tmp_path: Path, proxy: Mapping[str, Any]) -> AsyncIterator[RunningPbx]:
    port = free_port()
    config = config_from_dict(
        {
            "database_url": f"sqlite://{tmp_path}/db.sqlite3",
            "proxy": {"addr": "127.0.0.1", "udp_port": port, **proxy},
        }
    )
    pbx = Pbx(config)
    running = RunningPbx(pbx, port)
    async with anyio.create_task_group() as tg:
        await tg.start(pbx.serve)
        assert pbx.proxy is not None
        pbx.proxy.calls.subscribe(running.listen)
        yield running
        tg.cancel_scope.cancel()


# -- SIPp peers ----------------------------------------------------------------------------


class SippPeer:
    """One SIPp process run in the background; :attr:`result` once it exits."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.result: SippResult | None = None
        self.done = anyio.Event()

    async def wait(self, timeout: float = 20.0) -> SippResult:
        with anyio.fail_after(timeout):
            await self.done.wait()
        assert self.result is not None
        return self.result


async def wait_bound(port: int, peer: SippPeer) -> None:
    """Until the SIPp just started holds UDP ``port`` on 127.0.0.1 (or has exited)."""
    with anyio.fail_after(10):
        while not peer.done.is_set():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    return
            await anyio.sleep(0.02)
    result = peer.result
    raise AssertionError(f"SIPp exited at start: {result.output[-2000:] if result else ''}")


async def start_uas(
    tg: TaskGroup,
    sipp: str,
    tmp_path: Path,
    name: str,
    *,
    scenario: str | None = None,
    calls: int = 1,
) -> tuple[SippPeer, str]:
    """A SIPp callee (built-in ``uas`` unless ``scenario``); returns it and its SIP URI."""
    port = free_port()
    log = tmp_path / f"{name}.log"
    which = ["-sf", str(SCENARIOS / scenario)] if scenario else ["-sn", "uas"]
    args = [*which, "-i", "127.0.0.1", "-p", str(port), "-m", str(calls), "-timeout", "20s"]
    args += ["-trace_msg", "-message_file", str(log)]
    peer = SippPeer(log)

    async def run() -> None:
        try:
            peer.result = await run_sipp(sipp, args, cwd=tmp_path, timeout=30)
        finally:
            peer.done.set()

    tg.start_soon(run)
    await wait_bound(port, peer)
    return peer, f"sip:{name}@127.0.0.1:{port}"


async def call(
    sipp: str,
    tmp_path: Path,
    pbx: RunningPbx,
    *,
    scenario: Path,
    name: str = "uac",
    service: str = "service",
    source: str = "127.0.0.1",
    extra: tuple[str, ...] = (),
) -> tuple[SippResult, Path, int]:
    """Place one call from SIPp through the PBX; the result, message log and caller port.

    SIPp's error log goes to ``<name>.err`` beside the message log.
    """
    port = free_port(host=source)
    log = tmp_path / f"{name}.log"
    errors = tmp_path / f"{name}.err"
    result = await run_sipp(
        sipp,
        ["-sf", str(scenario), pbx.address, "-rsa", pbx.address, "-s", service,
         "-i", source, "-p", str(port), "-m", "1", "-recv_timeout", "10000",
         "-trace_msg", "-message_file", str(log), "-trace_err", "-error_file", str(errors),
         *extra],
        cwd=tmp_path,
        timeout=30,
    )  # fmt: skip
    return result, log, port


_BLOCK = re.compile(
    r"^\S+ message (received|sent) (?:\[\d+\] bytes :|\(\d+ bytes\):)\n\n(.*?)(?=^-{20,}|\Z)",
    re.M | re.S,
)


def messages(log: Path, direction: str = "received") -> list[str]:
    """The SIP messages in a SIPp ``-trace_msg`` log, in order."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [m.group(2).strip() for m in _BLOCK.finditer(text) if m.group(1) == direction]


def status_of(message: str) -> int | None:
    found = re.match(r"SIP/2\.0 (\d{3}) ", message)
    return int(found.group(1)) if found else None


def header(message: str, name: str) -> str | None:
    found = re.search(rf"^{re.escape(name)}\s*:\s*(.*?)\r?$", message, re.M | re.I)
    return found.group(1) if found else None


def finals(log: Path) -> list[str]:
    """Final responses a SIPp caller received (any method)."""
    return [m for m in messages(log) if (status_of(m) or 0) >= 200]


def requests_received(log: Path, method: str) -> list[str]:
    return [m for m in messages(log) if m.startswith(f"{method} ")]


def forward(*targets: str, **more: Any) -> Reply:
    return 200, {"action": "forward", "targets": list(targets), **more}, 0.0


UAC_CALL = Path("sip-tools") / "scenarios" / "uac_call.xml"
EXPECT_FAILURE = SCENARIOS / "uac_expect_failure.xml"
EXPECT_SILENCE = SCENARIOS / "uac_expect_silence.xml"


# -- forward ---------------------------------------------------------------------------------


async def test_forward_request_json_and_single_target(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """The webhook gets the documented JSON (and its configured headers); forward works."""
    target: list[str] = []
    with router_service(lambda _: forward(*target)) as service:
        router = {"url": service.url, "timeout_ms": 3000, "headers": {"X-Api-Key": "k-123"}}
        async with running_pbx(tmp_path, {"http_router": router}) as pbx:
            async with anyio.create_task_group() as tg:
                uas, uri = await start_uas(tg, sipp, tmp_path, "callee")
                target.append(uri)
                result, log, port = await call(sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL)
                uas_result = await uas.wait()
            await pbx.idle()
    assert result.successful == 1 and result.failed == 0, result.output[-2000:]
    assert uas_result.successful == 1, uas_result.output[-2000:]

    assert len(service.requests) == 1
    http_headers, body = service.requests[0]
    assert http_headers["content-type"] == "application/json"
    assert http_headers["x-api-key"] == "k-123"
    assert set(body) == {
        "call_id", "from", "to", "source_addr", "direction", "method", "uri", "headers", "body",
    }  # fmt: skip
    invite = next(m for m in messages(log, "sent") if m.startswith("INVITE "))
    assert body["call_id"] == header(invite, "Call-ID")
    assert body["from"] == f"sip:uac@127.0.0.1:{port}"
    assert body["to"] == f"sip:service@{pbx.address}"
    assert body["uri"] == f"sip:service@{pbx.address}"
    assert body["source_addr"] == f"127.0.0.1:{port}"
    assert body["direction"] == "internal"  # no trunk, no user backend: one of ours
    assert body["method"] == "INVITE"
    assert body["headers"]["Call-ID"] == body["call_id"]
    assert body["headers"]["Subject"] == "sdpbx load test"
    assert body["headers"]["CSeq"] == "1 INVITE"
    assert body["body"].startswith("v=0") and "m=audio" in body["body"]
    # The B leg went to the target the service named, as a new dialog.
    b_invites = requests_received(uas.log, "INVITE")
    assert len(b_invites) == 1
    assert b_invites[0].startswith(f"INVITE {uri} SIP/2.0")
    assert header(b_invites[0], "Call-ID") != body["call_id"]
    ended = pbx.ended()
    assert [(e.reason, e.status) for e in ended] == [("byCaller", 200)]


async def test_forward_parallel_first_answer_wins(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """parallel: both targets ring; the one that answers wins, the other is CANCELled."""
    targets: list[str] = []
    with router_service(lambda _: forward(*targets, strategy="parallel")) as service:
        async with running_pbx(tmp_path, {"http_router": {"url": service.url}}) as pbx:
            async with anyio.create_task_group() as tg:
                ringer, ring_uri = await start_uas(
                    tg, sipp, tmp_path, "ringer", scenario="uas_ring_cancel.xml"
                )
                answerer, answer_uri = await start_uas(tg, sipp, tmp_path, "answerer")
                targets += [ring_uri, answer_uri]
                result, _, _ = await call(sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL)
                ring_result = await ringer.wait()
                answer_result = await answerer.wait()
            await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    assert answer_result.successful == 1, answer_result.output[-2000:]
    assert ring_result.successful == 1, ring_result.output[-2000:]
    assert len(requests_received(ringer.log, "CANCEL")) == 1
    (started,) = pbx.calls.values()
    assert started.winner is not None and started.winner.target == answer_uri
    assert len(started.callee_legs) == 2


async def test_forward_sequential_next_target_on_failure(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """sequential: the first target refuses (486), the second answers."""
    targets: list[str] = []
    with router_service(lambda _: forward(*targets, strategy="sequential")) as service:
        async with running_pbx(tmp_path, {"http_router": {"url": service.url}}) as pbx:
            async with anyio.create_task_group() as tg:
                busy, busy_uri = await start_uas(
                    tg, sipp, tmp_path, "busy", scenario="uas_busy.xml"
                )
                answerer, answer_uri = await start_uas(tg, sipp, tmp_path, "answerer")
                targets += [busy_uri, answer_uri]
                result, _, _ = await call(sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL)
                busy_result = await busy.wait()
                answer_result = await answerer.wait()
            await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    assert busy_result.successful == 1, busy_result.output[-2000:]  # it got its ACK
    assert answer_result.successful == 1, answer_result.output[-2000:]
    (started,) = pbx.calls.values()
    assert [m.code for m in started.hangup_messages] == [486]
    assert started.winner is not None and started.winner.target == answer_uri


async def test_forward_sequential_next_target_on_ring_timeout(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """sequential with ``timeout``: a target that only rings is CANCELled, the next answers."""
    targets: list[str] = []
    with router_service(lambda _: forward(*targets, timeout=1)) as service:
        async with running_pbx(tmp_path, {"http_router": {"url": service.url}}) as pbx:
            async with anyio.create_task_group() as tg:
                ringer, ring_uri = await start_uas(
                    tg, sipp, tmp_path, "ringer", scenario="uas_ring_cancel.xml"
                )
                answerer, answer_uri = await start_uas(tg, sipp, tmp_path, "answerer")
                targets += [ring_uri, answer_uri]
                result, _, _ = await call(sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL)
                ring_result = await ringer.wait()
                answer_result = await answerer.wait()
            await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    assert ring_result.successful == 1, ring_result.output[-2000:]
    assert answer_result.successful == 1, answer_result.output[-2000:]
    (started,) = pbx.calls.values()
    assert [(m.code, m.target) for m in started.hangup_messages] == [(408, ring_uri)]


async def test_forward_injected_headers_reach_b_leg(
    sipp: str, shared_dir: Path, tmp_path: Path
) -> None:
    """``headers`` of a forward decision are written into the INVITE sent to the callee."""
    targets: list[str] = []
    extra = {"X-Route-Tag": "route-42", "X-Customer": "acme"}
    with router_service(lambda _: forward(*targets, headers=extra)) as service:
        async with running_pbx(tmp_path, {"http_router": {"url": service.url}}) as pbx:
            async with anyio.create_task_group() as tg:
                uas, uri = await start_uas(
                    tg, sipp, tmp_path, "callee", scenario="uas_check_header.xml"
                )
                targets.append(uri)
                result, _, _ = await call(sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL)
                uas_result = await uas.wait()
            await pbx.idle()
    assert uas_result.successful == 1, uas_result.output[-2000:]  # the ereg check passed
    assert result.successful == 1, result.output[-2000:]
    (invite,) = requests_received(uas.log, "INVITE")
    assert header(invite, "X-Route-Tag") == "route-42"
    assert header(invite, "X-Customer") == "acme"


# -- reject, abort, spam ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "status", "reason"),
    [("reject", 486, "Busy Now"), ("abort", 503, "Out Of Service"), ("reject", None, None)],
)
async def test_reject_and_abort(
    sipp: str, tmp_path: Path, action: str, status: int | None, reason: str | None
) -> None:
    """reject/abort: the caller gets ``status`` (403 by default) with a Reason header."""
    answer: dict[str, Any] = {"action": action}
    if status is not None:
        answer.update(status=status, reason=reason)
    with router_service(lambda _: (200, answer, 0.0)) as service:
        async with running_pbx(tmp_path, {"http_router": {"url": service.url}}) as pbx:
            result, log, _ = await call(sipp, tmp_path, pbx, scenario=EXPECT_FAILURE)
            await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    (final,) = finals(log)
    expected = status or 403
    assert status_of(final) == expected
    if reason is not None:
        assert final.splitlines()[0] == f"SIP/2.0 {expected} {reason}"
        assert header(final, "Reason") == f'SIP;cause={expected};text="{reason}"'
    assert [(e.reason, e.status) for e in pbx.ended()] == [("rejected", expected)]
    assert len(service.requests) == 1


async def test_reject_without_reason_still_has_reason_header(sipp: str, tmp_path: Path) -> None:
    """rustpbx-compat.md: reject/abort -> final ``status`` with a Reason header, always."""
    with router_service(lambda _: (200, {"action": "reject", "status": 486}, 0.0)) as service:
        async with running_pbx(tmp_path, {"http_router": {"url": service.url}}) as pbx:
            result, log, _ = await call(sipp, tmp_path, pbx, scenario=EXPECT_FAILURE)
            await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    (final,) = finals(log)
    assert status_of(final) == 486
    assert header(final, "Reason") == 'SIP;cause=486;text="Busy Here"'


async def test_spam_gets_no_response(sipp: str, tmp_path: Path) -> None:
    """spam: no final response ever reaches the caller; the PBX records the dropped call.

    The SIPp caller waits 3 s for a response and fails on that receive
    timeout; only the 100 Trying (sent before the router is asked) came back
    for its INVITE. (SIPp then CANCELs the INVITE it gave up on; the answer to
    that CANCEL is left out here, see the report on spam and CANCEL.)
    """
    with router_service(lambda _: (200, {"action": "spam"}, 0.0)) as service:
        async with running_pbx(tmp_path, {"http_router": {"url": service.url}}) as pbx:
            result, log, _ = await call(sipp, tmp_path, pbx, scenario=EXPECT_SILENCE)
            await pbx.idle()
            proxy = pbx.pbx.proxy
            assert proxy is not None
            total, failed = proxy.calls.total_calls, proxy.calls.failed_calls
    assert (result.successful, result.failed) == (0, 1), result.output[-2000:]
    assert "receive timeout" in (tmp_path / "uac.err").read_text()
    invite_responses = [m for m in messages(log) if header(m, "CSeq") == "1 INVITE"]
    assert [status_of(m) for m in invite_responses] in ([], [100])
    assert len(service.requests) == 1
    assert [(e.reason, e.status) for e in pbx.ended()] == [("rejected", 0)]
    assert (total, failed) == (1, 0)


async def test_spam_is_counted(sipp: str, tmp_path: Path) -> None:
    """rustpbx-compat.md: spam -> "no response at all (logged, counted)"."""
    with router_service(lambda _: (200, {"action": "spam"}, 0.0)) as service:
        async with running_pbx(tmp_path, {"http_router": {"url": service.url}}) as pbx:
            result, _, _ = await call(sipp, tmp_path, pbx, scenario=EXPECT_SILENCE)
            await pbx.idle()
            proxy = pbx.pbx.proxy
            assert proxy is not None
            spam = getattr(proxy.calls, "spam_calls", None)
    assert result.failed == 1, result.output[-2000:]
    assert spam == 1


# -- not_handled and failures: the static routes ------------------------------------------------


def static_to(uri: str) -> dict[str, Any]:
    """Proxy config: one trunk ``callee`` at ``uri``'s host:port and a catch-all route to it."""
    hostport = uri.split("@", 1)[1]
    return {
        "trunks": {"callee": {"dest": hostport}},
        "routes": [{"name": "static-fallback", "dest": "callee"}],
    }


async def test_not_handled_uses_static_routes(sipp: str, shared_dir: Path, tmp_path: Path) -> None:
    """not_handled goes to the static routes even with fallback_to_static false."""
    with router_service(lambda _: (200, {"action": "not_handled"}, 0.0)) as service:
        async with anyio.create_task_group() as tg:
            uas, uri = await start_uas(tg, sipp, tmp_path, "callee")
            proxy = {"http_router": {"url": service.url}, **static_to(uri)}
            async with running_pbx(tmp_path, proxy) as pbx:
                result, _, _ = await call(sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL)
                uas_result = await uas.wait()
                await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    assert uas_result.successful == 1, uas_result.output[-2000:]
    assert len(service.requests) == 1
    (started,) = pbx.calls.values()
    assert started.route_name == "static-fallback"
    assert started.outbound_trunk == "callee"
    assert started.direction == "outbound"


FAILURES: dict[str, Reply] = {
    "timeout": (200, {"action": "reject", "status": 486}, 3.0),
    "http-500": (500, {"error": "boom"}, 0.0),
    "bad-json": (200, b"<html>not json</html>", 0.0),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
async def test_webhook_failure_falls_back_to_static(
    sipp: str, shared_dir: Path, tmp_path: Path, failure: str
) -> None:
    """fallback_to_static = true: a timeout, HTTP 500 or bad JSON -> static route, call OK."""
    with router_service(lambda _: FAILURES[failure]) as service:
        async with anyio.create_task_group() as tg:
            uas, uri = await start_uas(tg, sipp, tmp_path, "callee")
            router = {"url": service.url, "timeout_ms": 500, "fallback_to_static": True}
            async with running_pbx(tmp_path, {"http_router": router, **static_to(uri)}) as pbx:
                result, _, _ = await call(sipp, tmp_path, pbx, scenario=shared_dir / UAC_CALL)
                uas_result = await uas.wait()
                await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    assert uas_result.successful == 1, uas_result.output[-2000:]
    assert len(service.requests) >= 1
    (started,) = pbx.calls.values()
    assert started.route_name == "static-fallback"


@pytest.mark.parametrize("failure", sorted(FAILURES))
async def test_webhook_failure_without_fallback_is_503(
    sipp: str, tmp_path: Path, failure: str
) -> None:
    """fallback_to_static = false: the caller gets 503, the static route is not used."""
    with router_service(lambda _: FAILURES[failure]) as service:
        router = {"url": service.url, "timeout_ms": 500, "fallback_to_static": False}
        # A static route exists (to a port nobody listens on): it must not be tried.
        proxy = {"http_router": router, **static_to(f"sip:x@127.0.0.1:{free_port()}")}
        async with running_pbx(tmp_path, proxy) as pbx:
            result, log, _ = await call(sipp, tmp_path, pbx, scenario=EXPECT_FAILURE)
            await pbx.idle()
    assert result.successful == 1, result.output[-2000:]
    (final,) = finals(log)
    assert status_of(final) == 503
    assert header(final, "Reason") == 'SIP;cause=503;text="Routing Failed"'
    (started,) = pbx.calls.values()
    assert started.callee_legs == []
    assert started.route_name is None
    assert [(e.reason, e.status) for e in pbx.ended()] == [("failed", 503)]
