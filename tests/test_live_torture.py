"""The RFC 4475 / RFC 5118 torture corpus sent to the running reference server.

``examples/full_pbx.py`` runs as a user runs it (a process, a config file) and
receives every torture message over UDP, TCP and WebSocket, one message per
datagram, connection or WebSocket message. What must hold, from outside:

- every strictly invalid request is answered 400 (505 for ``badvers``);
- no valid or merely unusual request is answered 400;
- responses (``scalarlg``, ``bigcode``) are dropped, never answered;
- afterwards the server still answers OPTIONS and is still running.

The parser's own view of the same messages is ``test_torture.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from helpers.pbx_process import PbxProcess, pbx_toml, running_pbx, status_of, udp_exchange
from helpers.sipp import free_port
from helpers.sipwire import status_of_line, tcp_send, udp_send, ws_send
from helpers.torture import DATA, RFC4475, RFC5118, load

CORPUS = [("rfc4475", name, expected) for name, expected in sorted(RFC4475.items())] + [
    ("rfc5118", name, expected) for name, expected in sorted(RFC5118.items())
]

#: Over a stream, Content-Length frames the message (RFC 3261 §18.3): a length
#: beyond the bytes sent leaves the server waiting for the rest, so ``clerr``
#: gets no answer on TCP (the message deadline closes the connection).
_STREAM_WAITS = {"clerr"}
#: Conflicting Content-Length values leave no way to find where the next
#: message starts on a stream: the connection is closed unanswered.
_STREAM_UNFRAMEABLE = {"mcl01", "ncl"}
#: Well-formed, and the application's answer is 400: a registrar needs a SIP To.
_APPLICATION_400 = {"unksm2"}


def _incomplete_on_a_stream(data: bytes) -> bool:
    """No blank line ends the header block (``baddn.dat`` stops after ``l: 0``):
    a datagram or WebSocket message is whole anyway; a TCP stream waits for more."""
    return b"\r\n\r\n" not in data and b"\n\n" not in data


@pytest.fixture
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PbxProcess, int]]:
    """One server per transport: the corpus reuses branches, and a request that
    matches a live transaction from another transport is (rightly) a retransmission."""
    cwd = tmp_path_factory.mktemp("live-torture")
    port = free_port(socket.SOCK_DGRAM)
    ws_port = free_port(socket.SOCK_STREAM)
    with running_pbx(cwd, port, pbx_toml(port, proxy=f"ws_port = {ws_port}")) as process:
        yield process, ws_port
    # running_pbx asserts the clean exit on SIGTERM


def _expect(corpus: str, name: str, expected: object, status: int | None, stream: bool) -> None:
    data = load(DATA, corpus, name)
    is_response = data.lstrip(b"\r\n").startswith(b"SIP/")
    where = f"{corpus}/{name}"
    if is_response:
        assert status is None, f"{where}: a response was answered with {status}"
    elif isinstance(expected, tuple):
        waits = name in _STREAM_WAITS | _STREAM_UNFRAMEABLE or _incomplete_on_a_stream(data)
        if stream and waits:
            assert status is None, f"{where}: answered {status} before the body arrived"
        else:
            assert status == expected[1], f"{where}: expected {expected[1]}, got {status}"
    elif name in _APPLICATION_400:
        assert status == 400, f"{where}: the registrar should refuse it with 400, got {status}"
    else:
        assert status != 400, f"{where} is a valid message but was answered 400"


def _send_all(send: Callable[[bytes], str | None]) -> dict[str, int | None]:
    return {
        f"{corpus}/{name}": status_of_line(send(load(DATA, corpus, name)))
        for corpus, name, _ in CORPUS
    }


def _check_alive(process: PbxProcess) -> None:
    assert process.proc.poll() is None, f"full_pbx died:\n{process.log()}"
    assert status_of(udp_exchange(process.sip_port)) == 200


@pytest.mark.parametrize("transport", ["udp", "tcp", "ws"])
def test_torture_corpus_live(pbx: tuple[PbxProcess, int], transport: str) -> None:
    process, ws_port = pbx
    port = process.sip_port
    senders: dict[str, Callable[[bytes], str | None]] = {
        "udp": lambda data: udp_send(port, data),
        "tcp": lambda data: tcp_send(port, data),
        "ws": lambda data: ws_send(ws_port, data),
    }
    results = _send_all(senders[transport])
    _check_alive(process)
    for corpus, name, expected in CORPUS:
        _expect(corpus, name, expected, results[f"{corpus}/{name}"], transport == "tcp")
