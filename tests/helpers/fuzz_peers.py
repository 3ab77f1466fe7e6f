"""A real call through the PBX for the fuzzer's mid-dialog messages to aim at.

Two UDP phones in one responder thread: the callee (``1002``) registers with
digest credentials, the caller (``1001``) authenticates an INVITE to it, and
the PBX connects them. The responder answers whatever the PBX sends either
phone (an INVITE with an SDP 200, anything else but ACK with 200), so the
fuzzer's mid-dialog requests that the PBX relays are answered like a phone
would. Everything here reads raw bytes with a few regular expressions: the
fuzzer does not trust the parser it is testing.
"""

from __future__ import annotations

import hashlib
import queue
import re
import select
import socket
import threading
import uuid
from collections.abc import Mapping

USERS = {"1001": "secret", "1002": "secret"}

#: The ``[[proxy.user_backends]]`` table the fuzz config needs for ``USERS``.
BACKENDS = (
    '[[proxy.user_backends]]\ntype = "memory"\nusers = [\n'
    + "".join(f'  {{ username = "{u}", password = "{p}" }},\n' for u, p in USERS.items())
    + "]\n"
)

SDP = (
    b"v=0\r\no=fuzz 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def header(data: bytes, name: str, compact: str = "") -> str | None:
    """The first value of header ``name`` (or its compact form) in ``data``'s head."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    names = name if not compact else f"(?:{name}|{compact})"
    m = re.search(rf"(?im)^{names}[ \t]*:[ \t]*(.*)$", head)
    return m.group(1).strip() if m else None


def headers(data: bytes, name: str) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return [v.strip() for v in re.findall(rf"(?im)^{name}[ \t]*:[ \t]*(.*)$", head)]


def status(data: bytes) -> int | None:
    m = re.match(rb"SIP/2\.0 (\d{3}) ", data)
    return int(m.group(1)) if m else None


def tag(value: str | None) -> str:
    m = re.search(r";\s*tag=([^;>\s]+)", value or "")
    return m.group(1) if m else ""


def uri_of(value: str | None) -> str:
    m = re.search(r"<([^>]*)>", value or "")
    return m.group(1) if m else (value or "").split(";")[0].strip()


def digest(challenge: str, method: str, uri: str, user: str) -> str:
    """An RFC 2617 MD5 answer (qop=auth when offered) to one challenge header value."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    ha1 = hashlib.md5(f"{user}:{realm}:{USERS[user]}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    cnonce, nc = uuid.uuid4().hex[:8], "00000001"
    if "auth" in params.get("qop", ""):
        answer = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        qop = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        answer = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        qop = ""
    opaque = f', opaque="{params["opaque"]}"' if "opaque" in params else ""
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{answer}", algorithm=MD5{qop}{opaque}'
    )


def answer(request: bytes, code: int, reason: str, to_tag: str, body: bytes = b"") -> bytes:
    """A response to ``request`` copying its Vias, From, Call-ID and CSeq."""
    to = header(request, "To", "t") or ""
    if to_tag and not tag(to):
        to += f";tag={to_tag}"
    lines = [f"SIP/2.0 {code} {reason}"]
    lines += [f"Via: {v}" for v in headers(request, "(?:Via|v)")]
    lines += [
        f"From: {header(request, 'From', 'f')}",
        f"To: {to}",
        f"Call-ID: {header(request, 'Call-ID', 'i')}",
        f"CSeq: {header(request, 'CSeq')}",
    ]
    if body:
        lines += ["Contact: <sip:127.0.0.1>", "Content-Type: application/sdp"]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Phone:
    """One UDP endpoint at ``host``; the responder answers requests, ``expect`` waits for
    responses."""

    def __init__(self, host: str, user: str) -> None:
        self.user = user
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.addr = f"{host}:{self.sock.getsockname()[1]}"
        self.tag = uuid.uuid4().hex[:10]
        self.responses: queue.Queue[bytes] = queue.Queue(maxsize=200)
        self.last_request: bytes | None = None
        self.last_invite: bytes | None = None
        self.requests = 0
        self.byes = 0

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    def expect(self, port: int, data: bytes, timeout: float = 5.0) -> bytes | None:
        """Send ``data``; the first final response to it (matched by CSeq) or None."""
        cseq = header(data, "CSeq")
        self.send(data, port)
        while True:
            try:
                reply = self.responses.get(timeout=timeout)
            except queue.Empty:
                return None
            code = status(reply)
            if code is not None and code >= 200 and header(reply, "CSeq") == cseq:
                return reply

    def on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        if data.startswith(b"SIP/2.0 "):
            try:
                self.responses.put_nowait(data)
            except queue.Full:
                pass  # mid-dialog answers nobody waits for
            return
        method = data.split(b" ", 1)[0]
        if method == b"ACK" or not data.strip():
            return
        self.requests += 1
        self.byes += method == b"BYE"
        self.last_request = data
        if method == b"INVITE":
            self.last_invite = data
            reply = answer(data, 200, "OK", self.tag, SDP)
        else:
            reply = answer(data, 200, "OK", self.tag)
        self.sock.sendto(reply, source)


class Responder:
    """The thread serving the phones; ``close()`` stops it and closes their sockets."""

    def __init__(self, *phones: Phone) -> None:
        self.phones = {phone.sock.fileno(): phone for phone in phones}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-phones", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(list(self.phones), [], [], 0.1)
            for fd in ready:
                phone = self.phones[fd]
                try:
                    data, source = phone.sock.recvfrom(65535)
                    phone.on_datagram(data, source)
                except OSError:
                    continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for phone in self.phones.values():
            phone.sock.close()


def _request(method: str, uri: str, phone: Phone, to: str, call_id: str, cseq: int) -> str:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {phone.addr};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
        f"From: <sip:{phone.user}@127.0.0.1>;tag={phone.tag}\r\n"
        f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:{phone.user}@{phone.addr}>\r\nMax-Forwards: 70\r\n"
    )


def register(phone: Phone, port: int) -> bool:
    """Bind ``phone.user`` to the phone's address, answering the digest challenge."""
    uri, call_id = f"sip:127.0.0.1:{port}", uuid.uuid4().hex
    to = f"<sip:{phone.user}@127.0.0.1>"
    base = _request("REGISTER", uri, phone, to, call_id, 1) + "Expires: 600\r\n"
    reply = phone.expect(port, (base + "Content-Length: 0\r\n\r\n").encode())
    if reply is not None and status(reply) == 401:
        auth = digest(header(reply, "WWW-Authenticate") or "", "REGISTER", uri, phone.user)
        again = _request("REGISTER", uri, phone, to, call_id, 2) + "Expires: 600\r\n"
        again += f"Authorization: {auth}\r\nContent-Length: 0\r\n\r\n"
        reply = phone.expect(port, again.encode())
    return reply is not None and status(reply) == 200


class Call:
    """One answered call caller -> PBX -> callee; ``legs`` are the template values."""

    def __init__(self, caller: Phone, callee: Phone, port: int) -> None:
        self.caller, self.callee, self.port = caller, callee, port
        self.call_id = uuid.uuid4().hex
        self.caller.tag = uuid.uuid4().hex[:10]
        self.target = f"sip:1002@127.0.0.1:{port}"
        self.ok: bytes | None = None
        self.legs: list[dict[str, str]] = []
        self._byes = caller.byes + callee.byes

    @property
    def ended(self) -> bool:
        """Whether the PBX passed a BYE on to either phone (a fuzzed BYE got through)."""
        return self.caller.byes + self.callee.byes > self._byes

    def _invite(self, cseq: int, auth: str = "") -> bytes:
        text = _request("INVITE", self.target, self.caller, f"<{self.target}>", self.call_id, cseq)
        text += auth + "Content-Type: application/sdp\r\n"
        return (text + f"Content-Length: {len(SDP)}\r\n\r\n").encode() + SDP

    def _ack(self, response: bytes, cseq: int, uri: str) -> bytes:
        to = header(response, "To", "t")
        text = _request("ACK", uri, self.caller, to or "", self.call_id, cseq)
        return (text + "Content-Length: 0\r\n\r\n").encode()

    def establish(self) -> bool:
        """INVITE, 407, ACK, INVITE with credentials, 200, ACK; False if any step fails."""
        reply = self.caller.expect(self.port, self._invite(1))
        if reply is None or status(reply) != 407:
            return False
        self.caller.send(self._ack(reply, 1, self.target), self.port)
        challenge = header(reply, "Proxy-Authenticate") or ""
        auth = digest(challenge, "INVITE", self.target, "1001")
        reply = self.caller.expect(self.port, self._invite(2, f"Proxy-Authorization: {auth}\r\n"))
        if reply is None or status(reply) != 200:
            return False
        self.ok = reply
        remote_target = uri_of(header(reply, "Contact", "m")) or self.target
        self.caller.send(self._ack(reply, 2, remote_target), self.port)
        self.legs = [
            {
                "TARGET": remote_target,
                "VIA": self.caller.addr,
                "LOCAL_URI": "sip:1001@127.0.0.1",
                "LOCAL_TAG": self.caller.tag,
                "REMOTE_URI": self.target,
                "REMOTE_TAG": tag(header(reply, "To", "t")),
                "CALL_ID": self.call_id,
                "INVITE_CSEQ": "2",
            }
        ]
        invite = self.callee.last_invite
        if invite is not None:
            self.legs.append(
                {
                    "TARGET": uri_of(header(invite, "Contact", "m")),
                    "VIA": self.callee.addr,
                    "LOCAL_URI": uri_of(header(invite, "To", "t")),
                    "LOCAL_TAG": self.callee.tag,
                    "REMOTE_URI": uri_of(header(invite, "From", "f")),
                    "REMOTE_TAG": tag(header(invite, "From", "f")),
                    "CALL_ID": header(invite, "Call-ID", "i") or "",
                    "INVITE_CSEQ": (header(invite, "CSeq") or "1").split()[0],
                }
            )
        return True

    def values(self, index: int) -> Mapping[str, str]:
        """Template values for message ``index``: the legs take turns, CSeq climbs."""
        leg = dict(self.legs[index // 2 % len(self.legs)])
        leg["CSEQ"] = str(10 + index)
        leg["BRANCH"] = f"z9hG4bKfuzz{index:x}"
        return leg

    def hang_up(self) -> None:
        """A clean BYE from the caller (best effort: a fuzzed BYE may have ended it)."""
        if not self.legs:
            return
        leg = self.legs[0]
        text = _request(
            "BYE", leg["TARGET"], self.caller, f"<{self.target}>;tag={leg['REMOTE_TAG']}",
            self.call_id, 1_000_000_000,
        )  # fmt: skip
        self.caller.expect(self.port, (text + "Content-Length: 0\r\n\r\n").encode(), 2.0)
