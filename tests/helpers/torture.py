"""The RFC 4475 / RFC 5118 torture corpus and the outcome the RFCs ask for.

Shared by the parser's unit tests (``test_torture.py``) and the live tests that
send the corpus to the running PBX (``test_live_torture.py``). The outcomes are
taken from the RFCs' text (see ``tests/data/sip-torture/README.md``), not from
what our parser happens to do:

- ``VALID``: parse, ``validate()`` cleanly, survive a round trip unchanged.
- ``REJECT(status)``: rejected with that status (a request is answered with it).
- ``WELL_FORMED``: syntactically fine; the *application* answers it (416 for an
  unknown scheme, 420, 415, 483, ...).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

DATA = Path(__file__).resolve().parents[1] / "data"

VALID = "valid"
WELL_FORMED = "well-formed"


def REJECT(status: int = 400) -> tuple[str, int]:
    return ("reject", status)


RFC4475: dict[str, object] = {
    # 3.1.1 valid messages
    "wsinv": VALID,
    "intmeth": VALID,
    "esc01": VALID,
    "escnull": VALID,
    "esc02": VALID,
    "lwsdisp": VALID,
    "longreq": VALID,
    "dblreq": VALID,
    "semiuri": VALID,
    "transports": VALID,
    "mpart01": VALID,
    "unreason": VALID,
    "noreason": VALID,
    # 3.1.2 invalid messages
    "badinv01": REJECT(400),  # empty Via / Contact elements
    "clerr": REJECT(400),  # Content-Length beyond the datagram
    "ncl": REJECT(400),  # negative Content-Length
    "scalar02": REJECT(400),  # CSeq above 2**31-1
    "scalarlg": REJECT(400),  # response: discarded (the stack drops responses)
    "quotbal": REJECT(400),  # unterminated quoted display name
    "ltgtruri": REJECT(400),  # <> around the Request-URI
    "lwsruri": REJECT(400),  # LWS inside the Request-URI
    # lwsstart / trws: "may reject or ignore the extra SP"; we tolerate it and
    # never send it on (we re-serialise the start line with single spaces).
    "lwsstart": VALID,
    "trws": VALID,
    # escruri: "400 acceptable, or ignore the escaped headers"; the parser
    # keeps them as URI headers and a proxy never turns them into headers.
    "escruri": VALID,
    # baddate: "should not reject unless Date matters"; we don't read Date.
    "baddate": VALID,
    "regbadct": REJECT(400),  # addr-spec with ? must be in <>
    "badaspec": REJECT(400),  # spaces inside <addr-spec>
    "baddn": REJECT(400),  # non-token display name unquoted
    "badvers": REJECT(505),
    "mismatch01": REJECT(400),
    "mismatch02": REJECT(400),  # 501 preferred for unknown methods, 400 acceptable
    "bigcode": REJECT(400),  # response: dropped, never wrapped to a valid code
    # 3.2 transaction layer: parses; the transaction layer falls back to RFC 2543 matching.
    "badbranch": VALID,
    # 3.3 application layer
    "insuf": REJECT(400),  # no Call-ID / From / To
    "unkscm": WELL_FORMED,  # 416 from the application
    "novelsc": WELL_FORMED,  # 416 from the application
    "unksm2": WELL_FORMED,  # a registrar answers 400 (To must be SIP)
    "bext01": WELL_FORMED,  # 420 Bad Extension
    "invut": WELL_FORMED,  # 415 from a UAS
    "regaut01": WELL_FORMED,  # unknown auth scheme: re-challenge
    "multi01": REJECT(400),  # several values in single-value headers
    "mcl01": REJECT(400),  # conflicting Content-Length
    "bcast": WELL_FORMED,  # never forward to 255.255.255.255 (policy)
    "zeromf": WELL_FORMED,  # 483 from a proxy, 200 from an endpoint
    "cparam01": WELL_FORMED,
    "cparam02": WELL_FORMED,
    "regescrt": WELL_FORMED,
    "sdp01": WELL_FORMED,  # 406 from a UAS
    # 3.4 backward compatibility
    "inv2543": VALID,
}

RFC5118: dict[str, object] = {
    "ipv6-good": VALID,
    "ipv6-bad": REJECT(400),
    "port-ambiguous": VALID,
    "port-unambiguous": VALID,
    "via-received-param-with-delim": VALID,
    "via-received-param-no-delim": VALID,
    "ipv6-in-sdp": VALID,
    "mult-ip-in-header": VALID,
    "mult-ip-in-sdp": VALID,
    "ipv4-mapped-ipv6": VALID,
    "ipv6-bug-abnf-3-colons": VALID,
    "ipv6-correct-abnf-2-colons": VALID,
}


@cache
def _send_torture(shared: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "send_torture", shared / "sip-tools" / "send_torture.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(shared: Path, corpus: str, name: str) -> bytes:
    """One message as it travels on the wire (RFC 5118 files converted)."""
    data = (shared / "sip-torture" / corpus / f"{name}.dat").read_bytes()
    if corpus == "rfc5118":
        # Archived with LF line ends and two broken lengths: turn into wire form.
        data = _send_torture(shared).wire(data)
    assert isinstance(data, bytes)
    return data
