"""StreamFramer: stream framing of SIP messages and RFC 5626 keep-alives."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdpbx.sip.errors import SipParseError
from sdpbx.sip.framing import StreamFramer

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"From: <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 14\r\n"
    b"\r\n"
    b"v=0\r\no=x 1 1\r\n"
)
OPTIONS = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
    b"l: 0\r\n"
    b"\r\n"
)
RESPONSE = b"SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\ncontent-LENGTH  :   5\r\n\r\nhello"


def drain(framer: StreamFramer) -> list[bytes]:
    out = []
    while (message := framer.next_message()) is not None:
        out.append(message)
    return out


def frame_chunks(chunks: list[bytes], max_size: int = 65536) -> tuple[list[bytes], int]:
    framer = StreamFramer(max_size)
    messages: list[bytes] = []
    pings = 0
    for chunk in chunks:
        framer.feed(chunk)
        messages += drain(framer)
        pings += framer.take_pings()
    return messages, pings


def test_invite_body_matches_content_length() -> None:
    # Guards the fixture itself: the body must be exactly Content-Length long.
    assert len(INVITE.split(b"\r\n\r\n", 1)[1]) == 14


def test_one_message() -> None:
    assert frame_chunks([INVITE]) == ([INVITE], 0)


def test_many_messages_in_one_chunk() -> None:
    stream = INVITE + OPTIONS + RESPONSE + INVITE
    assert frame_chunks([stream]) == ([INVITE, OPTIONS, RESPONSE, INVITE], 0)


def test_thousand_messages_in_one_chunk() -> None:
    stream = (OPTIONS + RESPONSE) * 500
    messages, _ = frame_chunks([stream])
    assert messages == [OPTIONS, RESPONSE] * 500


@pytest.mark.parametrize("message", [INVITE, OPTIONS, RESPONSE])
def test_split_at_every_position(message: bytes) -> None:
    stream = b"\r\n\r\n" + message + b"\r\n" + message
    for cut in range(len(stream) + 1):
        messages, pings = frame_chunks([stream[:cut], stream[cut:]])
        assert messages == [message, message], cut
        assert pings == 1, cut


def test_split_at_every_pair_of_positions() -> None:
    stream = OPTIONS + RESPONSE
    n = len(stream)
    for a in range(n + 1):
        for b in range(a, n + 1):
            messages, _ = frame_chunks([stream[:a], stream[a:b], stream[b:]])
            assert messages == [OPTIONS, RESPONSE], (a, b)


def test_byte_by_byte() -> None:
    stream = INVITE + b"\r\n\r\n" + RESPONSE
    messages, pings = frame_chunks([stream[i : i + 1] for i in range(len(stream))])
    assert messages == [INVITE, RESPONSE]
    assert pings == 1


@given(st.lists(st.integers(min_value=0, max_value=len(INVITE) * 3), max_size=8))
def test_random_splits(cuts: list[int]) -> None:
    stream = INVITE + OPTIONS + RESPONSE
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    assert frame_chunks(chunks)[0] == [INVITE, OPTIONS, RESPONSE]


def test_ping_counted_pong_ignored() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n")
    assert framer.next_message() is None
    assert framer.take_pings() == 1
    assert framer.take_pings() == 0
    framer.feed(b"\r\n")  # a pong (or half a ping): nothing to answer yet
    assert framer.next_message() is None
    assert framer.take_pings() == 0
    framer.feed(b"\r\n")  # ... and now it was a ping after all
    assert framer.next_message() is None
    assert framer.take_pings() == 1
    assert framer.buffered == 0


def test_several_pings_and_pong_before_message() -> None:
    messages, pings = frame_chunks([b"\r\n\r\n\r\n\r\n\r\n" + OPTIONS])
    assert messages == [OPTIONS]
    assert pings == 2


def test_ping_split_between_cr_and_lf() -> None:
    assert frame_chunks([b"\r", b"\n\r", b"\n"]) == ([], 1)


def test_crlf_inside_a_message_is_not_a_ping() -> None:
    # The blank line ending the headers and CRLFs in the body are message bytes.
    body = b"\r\n\r\n\r\n\r\n"
    message = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 8\r\n\r\n" + body
    assert frame_chunks([message]) == ([message], 0)


def test_keepalive_state_resets_after_a_message() -> None:
    # A lone CRLF before a message and a lone CRLF after it are two pongs, not a ping.
    assert frame_chunks([b"\r\n" + OPTIONS + b"\r\n"]) == ([OPTIONS], 0)


def test_bare_lf_keepalives() -> None:
    assert frame_chunks([b"\n\n" + OPTIONS]) == ([OPTIONS], 1)


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: 5",
        b"content-length:5",
        b"CONTENT-LENGTH\t:\t5  ",
        b"l: 5",
        b"L:5",
        b"Content-Length:\r\n 5",
        b"Content-Length: 5\r\nl: 5",
    ],
)
def test_content_length_forms(header: bytes) -> None:
    message = b"MESSAGE sip:a@b SIP/2.0\r\n" + header + b"\r\nX: y\r\n\r\nhello"
    assert frame_chunks([message + OPTIONS]) == ([message, OPTIONS], 0)


def test_headers_that_merely_look_like_content_length_are_ignored() -> None:
    message = (
        b"MESSAGE sip:a@b SIP/2.0\r\nLx: 99\r\nX-Content-Length: 99\r\n"
        b"Subject: l: 99\r\n folded l: 99\r\nl: 2\r\n\r\nhi"
    )
    assert frame_chunks([message]) == ([message], 0)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Via: x", 400),  # missing
        (b"Content-Length: -1", 400),
        (b"Content-Length: abc", 400),
        (b"Content-Length: ", 400),
        (b"Content-Length: 1 2", 400),
        (b"Content-Length: 0x10", 400),
        (b"Content-Length: 5\r\nl: 6", 400),
        (b"Content-Length: 99999999999999999999", 513),
        (b"Content-Length: 70000", 513),
    ],
)
def test_bad_content_length(headers: bytes, status: int) -> None:
    framer = StreamFramer()
    framer.feed(b"MESSAGE sip:a@b SIP/2.0\r\n" + headers + b"\r\n\r\n")
    with pytest.raises(SipParseError) as info:
        framer.next_message()
    assert info.value.status == status


def test_message_without_headers_is_missing_content_length() -> None:
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n")
    with pytest.raises(SipParseError) as info:
        framer.next_message()
    assert info.value.status == 400


def test_oversized_header_section_refused_without_terminator() -> None:
    framer = StreamFramer(max_message_size=1024)
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n")
    filler = b"X-Filler: " + b"a" * 100 + b"\r\n"
    for _ in range(8):  # 921 bytes: still waiting for the blank line
        framer.feed(filler)
        assert framer.next_message() is None
    framer.feed(filler)  # 1,033 bytes and still no blank line
    with pytest.raises(SipParseError) as info:
        framer.next_message()
    assert info.value.status == 513


def test_oversized_body_refused_before_it_arrives() -> None:
    framer = StreamFramer(max_message_size=1024)
    framer.feed(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 1000\r\n\r\n")
    with pytest.raises(SipParseError) as info:
        framer.next_message()
    assert info.value.status == 513


def test_message_of_exactly_the_maximum_size() -> None:
    head = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 0000\r\n\r\n"
    size = 256
    body = b"x" * (size - len(head))
    message = head.replace(b"0000", b"%04d" % len(body)) + body
    assert len(message) == size
    assert frame_chunks([message], max_size=size) == ([message], 0)
    with pytest.raises(SipParseError):
        frame_chunks([message], max_size=size - 1)


def test_framer_is_unusable_after_an_error() -> None:
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n")
    with pytest.raises(SipParseError):
        framer.next_message()
    with pytest.raises(SipParseError):
        framer.next_message()
    with pytest.raises(SipParseError):
        framer.feed(OPTIONS)
    assert framer.buffered == 0


def test_in_message_and_buffered() -> None:
    framer = StreamFramer()
    assert not framer.in_message
    framer.feed(INVITE[:10])
    assert framer.next_message() is None
    assert framer.in_message
    assert framer.buffered == 10
    framer.feed(INVITE[10:])
    assert framer.next_message() == INVITE
    assert not framer.in_message
    assert framer.buffered == 0


def test_header_terminator_is_searched_incrementally() -> None:
    # Feeding a long header section in small chunks must not rescan from the start:
    # the scan offset always trails the end of the buffer by at most three bytes.
    framer = StreamFramer()
    framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n")
    for _ in range(100):
        framer.feed(b"X-A: b\r\n")
        assert framer.next_message() is None
        assert framer._scan == framer.buffered - 3
    framer.feed(b"l: 0\r\n\r\n")
    assert framer.next_message() is not None


def test_too_small_maximum_is_rejected() -> None:
    with pytest.raises(ValueError, match="too small"):
        StreamFramer(max_message_size=4)
