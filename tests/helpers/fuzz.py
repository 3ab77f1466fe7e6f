"""A deterministic mutation engine for SIP messages, seeded from real traffic.

Seeds are the RFC 4475 / RFC 5118 torture corpus and messages captured from
SIPp and baresip talking to ``examples/full_pbx.py`` (``tests/data/fuzz-seeds``,
see its README). Mid-dialog seeds are templates whose ``${NAME}`` markers the
live driver fills from a call it set up through the PBX, so their mutations
reach dialogs and transactions that exist.

Message ``index`` of a run with ``seed`` is built by ``random.Random`` seeded
from ``f"{seed}:{index}"`` alone, so any one message can be rebuilt without
replaying the run before it (``Mutator.build``). Everything stays in bytes: a
mutation never needs to decode what it breaks.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence

from attrs import frozen

from helpers.torture import DATA, RFC4475, RFC5118, load

SEEDS = DATA / "fuzz-seeds"

#: No UDP datagram can be larger; TCP gets the same cap so both see the same messages.
MAX_MESSAGE = 65_000


@frozen
class Seed:
    """One message to mutate; ``dialog`` seeds hold ``${NAME}`` markers to fill."""

    name: str
    data: bytes
    dialog: bool = False


def load_seeds(pbx_port: int) -> list[Seed]:
    """The torture corpus plus the captured and SIPp-style out-of-dialog messages."""
    seeds = [Seed(f"rfc4475/{name}", load(DATA, "rfc4475", name)) for name in sorted(RFC4475)]
    seeds += [Seed(f"rfc5118/{name}", load(DATA, "rfc5118", name)) for name in sorted(RFC5118)]
    port = str(pbx_port).encode()
    for path in sorted(SEEDS.glob("*.sip")):
        seeds.append(Seed(path.name, path.read_bytes().replace(b"${PBX_PORT}", port)))
    return seeds


def load_dialog_seeds() -> list[Seed]:
    """Mid-dialog request templates (``fill`` them with a live call's identifiers)."""
    return [
        Seed(f"dialog/{path.name}", path.read_bytes(), dialog=True)
        for path in sorted((SEEDS / "dialog").glob("*.sip"))
    ]


_MARKER = re.compile(rb"\$\{([A-Z_]+)\}")


def fill(template: bytes, values: Mapping[str, str]) -> bytes:
    """Replace each ``${NAME}`` by ``values[NAME]`` (unknown markers stay as they are)."""

    def one(match: re.Match[bytes]) -> bytes:
        value = values.get(match.group(1).decode())
        return match.group(0) if value is None else value.encode()

    return _MARKER.sub(one, template)


# -- hostile material ---------------------------------------------------------------------

HOSTILE: tuple[bytes, ...] = (
    b"",
    b"0",
    b"-1",
    b"-0",
    b"+1",
    b"00000000000000000000001",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"9" * 400,
    b"1e9",
    b"0x10",
    b"1.5",
    "²".encode(),
    "١٢٣".encode(),  # Arabic-Indic digits: int() takes them, the ABNF does not
    "１２３".encode(),  # fullwidth digits
    "ⅷ".encode(),
    b"\x00",
    b"a\x00b",
    b"\xff\xfe",
    b"\x80",
    b"\xc3\x28",
    b"\xed\xa0\x80",  # a UTF-8 encoded surrogate
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b";tag=",
    b"tag=",
    b";tag",
    b";branch=",
    b";branch=z9hG4bK",
    b";lr;lr;lr",
    b";=;=;=",
    b"<",
    b"<sip:",
    b"<sip:a@b",
    b">",
    b"<>",
    b"<<<<<<<<<<",
    b'"',
    b'"\\',
    b'"unterminated <sip:a@b>',
    b"\\",
    b"sip:",
    b"sips:",
    b"tel:",
    b"sip:@",
    b"sip:a@",
    b"sip:[::1",
    b"sip:[::1]:99999",
    b"sip:127.0.0.1:0",
    b"sip:127.0.0.1:65536",
    b"sip:255.255.255.255",
    b"sip:a@b;transport=",
    b"sip:a@b?",
    b"sip:a@b?Route=%3Csip:x%3E",
    b"nobodyKnowsThisScheme:x",
    b"[",
    b"]",
    b":",
    b"::::",
    b"@",
    b"@@@@",
    b"%",
    b"%00",
    b"%zz",
    b"%%%%",
    b"=",
    b"a=b=c",
    b"\t",
    b" ",
    b"   ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n ",
    b"\r\n\r\n",
    b"Digest",
    b'Digest realm="',
    b"Digest nonce=,,,,",
    b'Digest username="1001", realm="127.0.0.1", nonce="x", uri="sip:x", response="0"',
    b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
    b"SIP/2.0/UDP",
    b"SIP/2.0/XYZ 127.0.0.1",
    b"SIP/2.0/UDP [::1",
    b"SIP/2.0/UDP 127.0.0.1:0;rport=99999;received=300.1.1.1",
    b"1 INVITE",
    b"4294967296 INVITE",
    b"1 BYE",
    b"1",
    b"INVITE",
    b"application/sdp",
    b"multipart/mixed;boundary=",
    b"A" * 256,
    b"A" * 5000,
    b"x" * 65536,
    b"," * 1000,
    b";" * 500,
    b";a" * 400,
    b"<sip:a@b>," * 300,
    b'"' * 100,
    b"\xc2\xa0",  # no-break space
)

METHODS: tuple[bytes, ...] = (
    b"INVITE",
    b"ACK",
    b"BYE",
    b"CANCEL",
    b"OPTIONS",
    b"REGISTER",
    b"INFO",
    b"UPDATE",
    b"PRACK",
    b"REFER",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"MESSAGE",
    b"PUBLISH",
    b"invite",
    b"INVITE ",
    b"IN VITE",
    b"\xffINVITE",
    b"X" * 300,
    b"",
    b"SIP/2.0",
)

INTERESTING_BYTES = b"\x00\xff\x80\x7f:;,<>\"' \t\r\n%@=?[]\\/"

#: Long name <-> compact form (RFC 3261 §7.3.3 and the extensions that have one).
COMPACT: tuple[tuple[bytes, bytes], ...] = (
    (b"Via", b"v"),
    (b"From", b"f"),
    (b"To", b"t"),
    (b"Call-ID", b"i"),
    (b"Contact", b"m"),
    (b"Content-Length", b"l"),
    (b"Content-Type", b"c"),
    (b"Content-Encoding", b"e"),
    (b"Supported", b"k"),
    (b"Subject", b"s"),
    (b"Event", b"o"),
    (b"Refer-To", b"r"),
    (b"Referred-By", b"b"),
    (b"Allow-Events", b"u"),
)

HEADER_NAMES: tuple[bytes, ...] = (
    b"Via",
    b"From",
    b"To",
    b"Call-ID",
    b"CSeq",
    b"Contact",
    b"Content-Length",
    b"Content-Type",
    b"Max-Forwards",
    b"Route",
    b"Record-Route",
    b"Expires",
    b"Authorization",
    b"Proxy-Authorization",
    b"Require",
    b"Proxy-Require",
    b"Supported",
    b"Min-SE",
    b"Session-Expires",
    b"RAck",
    b"RSeq",
    b"Event",
    b"Refer-To",
    b"Replaces",
    b"Retry-After",
)


def _split(data: bytes) -> tuple[list[bytes], bytes, bytes]:
    """Head lines, the separator found, and the body (line ends are kept out)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = data.partition(sep)
        if found:
            eol = sep[: len(sep) // 2]
            return head.split(eol), sep, body
    return data.split(b"\r\n"), b"", b""


def _join(lines: Sequence[bytes], sep: bytes, body: bytes) -> bytes:
    eol = sep[: len(sep) // 2] or b"\r\n"
    return eol.join(lines) + sep + body


# -- mutation operators -------------------------------------------------------------------
# Each takes the generator and a message and returns the mutated message; each is
# total (any input, even empty, gives an output) so stacking them never fails.


def _hostile(rng: random.Random) -> bytes:
    return rng.choice(HOSTILE)


def flip_bits(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_bytes(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.choice(INTERESTING_BYTES)
    return bytes(out)


def insert_bytes(rng: random.Random, data: bytes) -> bytes:
    at = rng.randint(0, len(data))
    if rng.random() < 0.5:
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    else:
        chunk = _hostile(rng)
    return data[:at] + chunk + data[at:]


def delete_bytes(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 64) :]


def duplicate_bytes(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.randint(1, 128)]
    at = rng.randint(0, len(data))
    return data[:at] + chunk * rng.choice((1, 2, 10, 200)) + data[at:]


def header_lines(rng: random.Random, data: bytes) -> bytes:
    """Duplicate (up to hundreds of times), delete, swap or move a head line."""
    lines, sep, body = _split(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    j = rng.randrange(0, len(lines))
    op = rng.randrange(4)
    if op == 0:
        lines[i:i] = [lines[i]] * rng.choice((1, 1, 2, 50, 500))
    elif op == 1:
        del lines[i]
    elif op == 2:
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines.insert(j, lines.pop(i))
    return _join(lines, sep, body)


def replace_value(rng: random.Random, data: bytes) -> bytes:
    """A header's whole value, one token of it, or a parameter value becomes hostile."""
    lines, sep, body = _split(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    name, colon, value = lines[i].partition(b":")
    if not colon:
        lines[i] = _hostile(rng)
        return _join(lines, sep, body)
    op = rng.randrange(4)
    if op == 0:
        value = b" " + _hostile(rng)
    elif op == 1:
        tokens = re.split(rb"([\s;,=<>:@\"]+)", value)
        k = rng.randrange(len(tokens))
        tokens[k] = _hostile(rng)
        value = b"".join(tokens)
    elif op == 2:
        numbers = list(re.finditer(rb"\d+", value))
        if numbers:
            m = rng.choice(numbers)
            value = value[: m.start()] + _hostile(rng) + value[m.end() :]
        else:
            value += _hostile(rng)
    else:
        value += rng.choice((b";", b",", b";tag=", b";branch=", b";")) + _hostile(rng)
    lines[i] = name + colon + value
    return _join(lines, sep, body)


def start_line(rng: random.Random, data: bytes) -> bytes:
    """Method, Request-URI, version, status code or reason of the first line."""
    lines, sep, body = _split(data)
    parts = lines[0].split(b" ", 2)
    k = rng.randrange(len(parts))
    if k == 0:
        options = (*METHODS, b"SIP/2.0", b"SIP/2.1", b"SIP/1.0", b"sip/2.0", b"SIP/7.0")
    elif k == 1 and parts[0].startswith(b"SIP/"):
        options = (b"100", b"180", b"200", b"407", b"99", b"700", b"2000", b"-200", b"4294967496")
    else:
        options = (b"SIP/2.0", b"SIP/2.0 ", b"SIP/3.0", b"SIP/2.0\x00", b"<sip:a@b>", b"sip:x")
    parts[k] = rng.choice(options) if rng.random() < 0.6 else _hostile(rng)
    lines[0] = b" ".join(parts) if rng.random() < 0.9 else b"  ".join(parts)
    return _join(lines, sep, body)


def line_ends(rng: random.Random, data: bytes) -> bytes:
    """CRLF to LF (all or some), bare CR, folded lines, trailing blanks."""
    op = rng.randrange(5)
    if op == 0:
        return data.replace(b"\r\n", b"\n")
    if op == 1:
        return data.replace(b"\r\n", b"\r")
    if op == 2:
        lines, sep, body = _split(data)
        i = rng.randrange(len(lines))
        lines[i] = lines[i].replace(b" ", b"\r\n ", 1)  # line folding
        return _join(lines, sep, body)
    if op == 3:
        return data.replace(b"\r\n", b" \r\n", rng.randint(1, 5))
    return b"\r\n" * rng.randint(1, 10) + data  # keep-alive CRLFs before the message


def body_length(rng: random.Random, data: bytes) -> bytes:
    """Truncated body, a wrong, missing, doubled or hostile Content-Length."""
    lines, sep, body = _split(data)
    cl = [i for i, line in enumerate(lines) if re.match(rb"(?i)(content-length|l)\s*:", line)]
    op = rng.randrange(5)
    if op == 0 and body:
        body = body[: rng.randrange(len(body))]
    elif op == 1 and cl:
        value = rng.choice((len(body) + 1, len(body) - 1, 0, 9999, 65536, 2**31))
        lines[cl[0]] = b"Content-Length: " + str(value).encode()
    elif op == 2 and cl:
        del lines[cl[0]]
    elif op == 3:
        lines.append(b"Content-Length: " + rng.choice((b"0", b"5", str(len(body)).encode())))
    else:
        target = cl[0] if cl else len(lines)
        lines[target:target] = [b"Content-Length: " + _hostile(rng)]
        if cl:
            del lines[target + 1]
    return _join(lines, sep, body)


def header_names(rng: random.Random, data: bytes) -> bytes:
    """Compact forms both ways, odd casing, space before the colon, another name."""
    lines, sep, body = _split(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    name, colon, value = lines[i].partition(b":")
    op = rng.randrange(4)
    if op == 0:
        for long, short in COMPACT:
            if name.strip().lower() == long.lower():
                name = short
                break
            if name.strip().lower() == short.lower():
                name = long
                break
    elif op == 1:
        name = bytes(c ^ 0x20 if 65 <= c <= 90 or 97 <= c <= 122 else c for c in name)
    elif op == 2:
        name = name + rng.choice((b" ", b"\t", b"  \t "))
    else:
        name = rng.choice(HEADER_NAMES)
    lines[i] = name + colon + value
    return _join(lines, sep, body)


SDP_VALUES: tuple[bytes, ...] = (
    b"m=audio 0 RTP/AVP 0",
    b"m=audio 65536 RTP/AVP 0",
    b"m=audio -1 RTP/AVP",
    b"m=video 5000 RTP/SAVPF 96 97 98",
    b"m=audio 5000/2 RTP/AVP 0",
    b"m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    b"m=audio 5000 RTP/AVP " + b"0 " * 300,
    b"c=IN IP4 0.0.0.0",
    b"c=IN IP6 ::1",
    b"c=IN IP4 999.1.1.1",
    b"c=IN IP4 224.2.1.1/127/3",
    b"c=",
    b"a=sendonly",
    b"a=inactive",
    b"a=recvonly",
    b"a=rtpmap:0",
    b"a=rtpmap:96 opus/48000/2",
    b"a=rtpmap:4294967296 X/0",
    b"a=fmtp:101 0-15",
    b"a=rtcp:0",
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + b"A" * 40,
    b"a=ice-ufrag:" + b"x" * 300,
    b"o=- 1 1 IN IP4",
    b"o=",
    b"v=1",
    b"s=",
    b"t=0",
    b"b=AS:-1",
    b"x",
)


def sdp_lines(rng: random.Random, data: bytes) -> bytes:
    """Break one line of the body (SDP, mostly) and keep Content-Length right, so the
    message passes the parser and reaches what reads the body (media, the B2BUA)."""
    lines, sep, body = _split(data)
    eol = b"\r\n" if b"\r\n" in body else b"\n"
    parts = body.split(eol) if body else [b""]
    i = rng.randrange(len(parts))
    op = rng.randrange(4)
    if op == 0:
        parts[i] = rng.choice(SDP_VALUES)
    elif op == 1:
        parts.insert(i, rng.choice(SDP_VALUES))
    elif op == 2:
        del parts[i]
    else:
        key, _, value = parts[i].partition(b"=")
        words = value.split(b" ")
        words[rng.randrange(len(words))] = _hostile(rng)
        parts[i] = key + b"=" + b" ".join(words)
    body = eol.join(parts)
    lines = [
        b"Content-Length: " + str(len(body)).encode()
        if re.match(rb"(?i)(content-length|l)\s*:", line)
        else line
        for line in lines
    ]
    return _join(lines, sep, body)


Operator = Callable[[random.Random, bytes], bytes]

OPERATORS: tuple[tuple[Operator, int], ...] = (
    (flip_bits, 8),
    (set_bytes, 6),
    (insert_bytes, 6),
    (delete_bytes, 6),
    (duplicate_bytes, 4),
    (header_lines, 10),
    (replace_value, 20),
    (start_line, 8),
    (line_ends, 5),
    (body_length, 8),
    (header_names, 8),
    (sdp_lines, 6),
)


@frozen
class Mutant:
    """One generated message and how it was made (for the findings file)."""

    index: int
    seed_name: str
    operators: tuple[str, ...]
    data: bytes


class Mutator:
    """Builds message ``index`` of run ``seed`` from the seeds, deterministically.

    Out-of-dialog seeds, mid-dialog templates and ``live`` seeds (messages that
    answer requests the PBX just sent, built by the driver) are drawn with fixed
    shares; the draw depends on ``seed`` and ``index`` only.
    """

    def __init__(self, seed: int, seeds: Sequence[Seed], dialog: Sequence[Seed] = ()) -> None:
        if not seeds:
            raise ValueError("no seeds")
        self.seed = seed
        self.seeds = list(seeds)
        self.dialog = list(dialog)
        self._ops = [op for op, _ in OPERATORS]
        self._weights = [weight for _, weight in OPERATORS]

    def rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{index}")

    def mutate(self, rng: random.Random, data: bytes) -> tuple[bytes, tuple[str, ...]]:
        """Stack one to four operators (one most of the time: keep messages near valid)."""
        names = []
        count = rng.choices((1, 2, 3, 4), weights=(60, 25, 10, 5))[0]
        for op in rng.choices(self._ops, weights=self._weights, k=count):
            data = op(rng, data)[:MAX_MESSAGE]
            names.append(op.__name__)
        if rng.random() < 0.03:  # splice: the head of this one, the tail of another
            other = rng.choice(self.seeds).data
            data = data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)) :]
            names.append("splice")
        return data[:MAX_MESSAGE], tuple(names)

    def build(
        self, index: int, values: Mapping[str, str] | None = None, live: Sequence[Seed] = ()
    ) -> Mutant:
        """Message ``index``: a seed (a template filled from ``values``), mutated."""
        rng = self.rng(index)
        draw = rng.random()
        if live and draw < 0.1:
            seed = rng.choice(live)
        elif self.dialog and values is not None and draw < 0.4:
            seed = rng.choice(self.dialog)
        else:
            seed = rng.choice(self.seeds)
        data = fill(seed.data, values) if seed.dialog and values is not None else seed.data
        if rng.random() < 0.02:  # now and then the seed itself, unmutated
            return Mutant(index, seed.name, (), data)
        if seed.dialog and rng.random() < 0.4:
            # Keep the head whole so the mutant reaches the dialog it names.
            data = sdp_lines(rng, data)
            return Mutant(index, seed.name, ("sdp_lines",), data)
        data, names = self.mutate(rng, data)
        return Mutant(index, seed.name, names, data)
