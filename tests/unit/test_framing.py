"""Framing: length prefix, cap, version and type, canonical JSON, bounded buffering."""

import json
import struct

import pytest

from firsttrust.errors import (
    FrameTooLarge,
    MalformedFrame,
    TruncatedFrame,
    UnknownFrameType,
    UnsupportedVersion,
)
from firsttrust.framing import MAX_FRAME_BODY, FrameDecoder, decode_body, encode_error, encode_frame


def raw(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_encode_is_length_prefixed_canonical_json():
    data = encode_frame("hello", {"A": "QQ=="})
    assert data == raw(b'{"A":"QQ==","type":"hello","v":1}')


def test_round_trip_and_exact_raw_bytes():
    data = encode_frame("error", {"code": "auth_failed", "message": "nope"})
    dec = FrameDecoder()
    dec.feed(data)
    frame = dec.next_frame()
    assert (frame.type, frame.fields, frame.raw) == ("error", {"code": "auth_failed", "message": "nope"}, data)
    assert dec.next_frame() is None


def test_byte_at_a_time_and_two_frames_in_one_chunk():
    a, b = encode_frame("hello", {"A": "QQ=="}), encode_error("busy", "later")
    dec = FrameDecoder()
    got = []
    for byte in a:
        dec.feed(bytes([byte]))
        if (f := dec.next_frame()) is not None:
            got.append(f.type)
    dec.feed(b + a)
    while (f := dec.next_frame()) is not None:
        got.append(f.type)
    assert got == ["hello", "error", "hello"]


def test_oversized_frame_is_refused_from_the_header_alone():
    dec = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        dec.feed(struct.pack(">I", MAX_FRAME_BODY + 1))
    assert dec.buffered == 4  # nothing beyond the header was ever needed


def test_largest_frame_is_accepted():
    body = json.dumps({"v": 1, "type": "error", "code": "x", "message": "m"}, separators=(",", ":")).encode()
    body += b" " * (MAX_FRAME_BODY - len(body))  # JSON allows trailing whitespace
    assert len(body) == MAX_FRAME_BODY
    dec = FrameDecoder()
    dec.feed(raw(body))
    assert dec.next_frame().type == "error"


def test_encoder_refuses_to_build_an_oversized_frame():
    with pytest.raises(ValueError):
        encode_frame("error", {"code": "x", "message": "m" * MAX_FRAME_BODY})


def test_empty_body_is_malformed():
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(b"\0\0\0\0")


def test_errors_are_sticky():
    dec = FrameDecoder()
    with pytest.raises(MalformedFrame):
        dec.feed(raw(b"not json"))
        dec.next_frame()
    with pytest.raises(MalformedFrame):
        dec.feed(encode_error("busy", "x"))
    with pytest.raises(MalformedFrame):
        dec.next_frame()


def test_truncated_stream():
    dec = FrameDecoder()
    dec.feed(encode_frame("hello", {"A": "QQ=="})[:-3])
    assert dec.next_frame() is None
    with pytest.raises(TruncatedFrame):
        dec.close()


def test_clean_close_between_frames():
    dec = FrameDecoder()
    dec.feed(encode_error("busy", "x"))
    assert dec.next_frame().type == "error"
    assert dec.buffered == 0
    dec.close()  # between frames: a clean end, no TruncatedFrame
    assert dec.next_frame() is None


@pytest.mark.parametrize("body, error", [
    (b"\xff\xfe", MalformedFrame),
    (b"{", MalformedFrame),
    (b"[1,2]", MalformedFrame),
    (b'"text"', MalformedFrame),
    (b'{"v":1,"type":"hello","A":NaN}', MalformedFrame),
    (b'{"v":1,"v":1,"type":"hello"}', MalformedFrame),
    (b"[" * 100000, MalformedFrame),
    (b'{"type":"hello"}', UnsupportedVersion),
    (b'{"v":2,"type":"hello"}', UnsupportedVersion),
    (b'{"v":"1","type":"hello"}', UnsupportedVersion),
    (b'{"v":true,"type":"hello"}', UnsupportedVersion),
    (b'{"v":1.0,"type":"hello"}', UnsupportedVersion),
    (b'{"v":1}', UnknownFrameType),
    (b'{"v":1,"type":"helo"}', UnknownFrameType),
    (b'{"v":1,"type":7}', UnknownFrameType),
])
def test_bad_bodies_raise_typed_errors(body, error):
    with pytest.raises(error) as info:
        decode_body(body)
    assert len(str(info.value).splitlines()) == 1


def test_version_is_checked_before_type():
    with pytest.raises(UnsupportedVersion):
        decode_body(b'{"v":2,"type":"frame-of-the-future"}')


def test_error_frame_message_is_one_line_and_capped():
    frame = encode_error("internal", "first line\nsecond line" + "x" * 2000)
    fields = json.loads(frame[4:])
    assert fields["message"] == "first line"
    assert len(json.loads(encode_error("internal", "y" * 2000)[4:])["message"]) == 512


def test_error_frame_from_an_empty_or_odd_message_is_still_valid():
    from firsttrust.framing import FrameDecoder
    from firsttrust.messages import validate
    for message in ("", "tab\there", "\x00nul"):
        dec = FrameDecoder()
        dec.feed(encode_error("internal", message))
        assert validate(dec.next_frame())["code"] == "internal"


def test_an_oversized_length_right_behind_a_frame_in_the_same_read_is_refused_at_once():
    """feed() checked only the first header in the buffer: the hello's. An oversized length
    behind it, in the same read, waited for a body that never comes, until the phase timeout."""
    from firsttrust.framing import FrameDecoder, FrameTooLarge, encode_frame

    decoder = FrameDecoder()
    decoder.feed(encode_frame("hello", {"A": "AA=="}) + b"\xff\xff\xff\xff")
    assert decoder.next_frame().type == "hello"
    assert decoder.frame_ready()  # not "waiting for 4 GiB"
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
