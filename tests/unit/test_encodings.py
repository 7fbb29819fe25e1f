"""Property value encodings: plain, base64, gzip+base64; strict, capped, never echoing values."""

from __future__ import annotations

import base64
import gzip
import time
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firsttrust.agent.errors import EncodingError
from firsttrust.agent.sources.encodings import (
    ENCODINGS,
    MAX_DECODED_BYTES,
    MAX_ENCODED_CHARS,
    decode_properties,
    decode_value,
    encode_value,
)

SECRET = "S3cr3t-never-in-a-message"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gz64(data: bytes) -> str:
    return b64(gzip.compress(data, mtime=0))


def refused(raw: dict[str, str]) -> EncodingError:
    with pytest.raises(EncodingError) as info:
        decode_properties(raw)
    error = info.value
    assert error.code == "encoding"
    for value in raw.values():
        if len(value) > 8:
            assert value not in str(error)
    assert SECRET not in str(error)
    return error


# --- what is returned --------------------------------------------------------------------------------


def test_absent_encoding_is_plain_and_order_is_kept():
    raw = {"firsttrust.b": "2", "firsttrust.a": "1"}
    assert list(decode_properties(raw).items()) == [("firsttrust.b", "2"), ("firsttrust.a", "1")]


@pytest.mark.parametrize("name", ["plain", "", "PLAIN"])
def test_plain_and_empty_encoding_keep_the_value(name):
    raw = {"firsttrust.k": "  as is==  ", "firsttrust.k.encoding": name}
    assert decode_properties(raw) == {"firsttrust.k": "  as is==  "}


def test_encoding_keys_are_removed_and_foreign_keys_are_not_returned():
    raw = {
        "vami.hostname": "h",
        "other.k.encoding": "rot13",  # not ours: not interpreted, not an error
        "firsttrust.k": b64(SECRET.encode()),
        "firsttrust.k.encoding": "base64",
    }
    assert decode_properties(raw) == {"firsttrust.k": SECRET}


def test_custom_prefix():
    raw = {"acme.k": b64(b"v"), "acme.k.encoding": "base64", "firsttrust.k": "x"}
    assert decode_properties(raw, prefix="acme.") == {"acme.k": "v"}


# --- base64 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base64", "Base64", "BASE64"])
def test_base64_decodes_case_insensitively(name):
    raw = {"firsttrust.k": b64("héllo".encode()), "firsttrust.k.encoding": name}
    assert decode_properties(raw) == {"firsttrust.k": "héllo"}


def test_wrapped_base64_with_ascii_whitespace_is_accepted():
    text = b64(SECRET.encode() * 4)
    wrapped = " \t" + "\r\n".join(text[i : i + 16] for i in range(0, len(text), 16)) + "\n\f\v"
    assert decode_value(wrapped, "base64") == SECRET * 4


@pytest.mark.parametrize(
    "value",
    [
        b64(SECRET.encode())[:-1],  # padding missing
        b64(SECRET.encode()) + "!",  # outside the alphabet
        base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 8).decode(),  # base64url alphabet
        b64(SECRET.encode()) + "\u00a0",  # non-ASCII whitespace
        "é" + b64(SECRET.encode()),  # non-ASCII
        "=" + b64(SECRET.encode()),
    ],
)
def test_bad_base64_is_refused(value):
    raw = {"firsttrust.k": value, "firsttrust.k.encoding": "base64"}
    assert "base64" in str(refused(raw))


def test_base64_decoding_over_the_cap_is_refused():
    at_cap = b64(b"a" * MAX_DECODED_BYTES)
    assert decode_value(at_cap, "base64") == "a" * MAX_DECODED_BYTES
    with pytest.raises(EncodingError, match="cap"):
        decode_value(b64(b"a" * (MAX_DECODED_BYTES + 1)), "base64")


def test_huge_base64_text_is_refused_before_decoding():
    # Mostly whitespace: it would decode to one byte, so only the check on the raw text stops it.
    assert decode_value("QQ==" + " " * (MAX_ENCODED_CHARS - 4), "base64") == "A"
    with pytest.raises(EncodingError, match="characters"):
        decode_value("QQ==" + " " * (MAX_ENCODED_CHARS - 3), "base64")


def test_base64_of_non_utf8_is_refused():
    raw = {"firsttrust.k": b64(b"\xff\xfe" + SECRET.encode()), "firsttrust.k.encoding": "base64"}
    assert "UTF-8" in str(refused(raw))


# --- gzip+base64 -------------------------------------------------------------------------------------


def test_gzip_base64_decodes():
    raw = {"firsttrust.cert": gz64(b"-----BEGIN-----\n" * 50), "firsttrust.cert.encoding": "gzip+base64"}
    assert decode_properties(raw) == {"firsttrust.cert": "-----BEGIN-----\n" * 50}


def test_gzip_exactly_at_the_cap_decodes():
    assert len(decode_value(gz64(b"a" * MAX_DECODED_BYTES), "gzip+base64")) == MAX_DECODED_BYTES


def test_gzip_one_byte_over_the_cap_is_refused():
    with pytest.raises(EncodingError, match="more than"):
        decode_value(gz64(b"a" * (MAX_DECODED_BYTES + 1)), "gzip+base64")


@pytest.fixture(scope="module")
def bomb() -> str:
    text = gz64(b"\x00" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KiB of gzip
    assert len(text) < MAX_ENCODED_CHARS  # passes the size check on the encoded text
    return text


def test_gzip_bomb_is_refused_quickly(bomb):
    started = time.perf_counter()
    with pytest.raises(EncodingError, match="more than"):
        decode_value(bomb, "gzip+base64")
    assert time.perf_counter() - started < 0.5


def test_gzip_bomb_costs_little_memory(bomb):
    # Output is requested in pieces no bigger than the remaining budget, so the peak stays near
    # MAX_DECODED_BYTES however far the stream would inflate (one 4 KiB input chunk alone can
    # inflate to 4 MiB).
    tracemalloc.start()
    try:
        with pytest.raises(EncodingError):
            decode_value(bomb, "gzip+base64")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_DECODED_BYTES + len(bomb)


@pytest.mark.parametrize(
    "data",
    [
        SECRET.encode(),  # not gzip at all
        zlib.compress(SECRET.encode()),  # zlib wrapper, not gzip
        gzip.compress(SECRET.encode(), mtime=0)[:-4],  # trailer cut: truncated
        gzip.compress(SECRET.encode(), mtime=0)[:12],  # header only
        b"",
        gzip.compress(SECRET.encode(), mtime=0) + b"junk",  # trailing data
        gzip.compress(b"a", mtime=0) + gzip.compress(b"b", mtime=0),  # a second member
    ],
    ids=["plain", "zlib", "no-trailer", "header-only", "empty", "trailing", "two-members"],
)
def test_bad_gzip_is_refused(data):
    refused({"firsttrust.k": b64(data), "firsttrust.k.encoding": "gzip+base64"})


def test_gzip_with_bad_crc_is_refused():
    good = bytearray(gzip.compress(SECRET.encode(), mtime=0))
    good[-8] ^= 0xFF  # CRC-32 (RFC 1952 section 2.3.1)
    refused({"firsttrust.k": b64(bytes(good)), "firsttrust.k.encoding": "gzip+base64"})


def test_gzip_of_non_utf8_is_refused():
    raw = {"firsttrust.k": gz64(b"\xc3\x28"), "firsttrust.k.encoding": "gzip+base64"}
    assert "UTF-8" in str(refused(raw))


# --- the .encoding keys themselves ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rot13", "gzip", "base32", " base64", "base64 ", SECRET])
def test_unknown_encoding_is_refused_without_echoing_it(name):
    error = refused({"firsttrust.k": "v", "firsttrust.k.encoding": name})
    assert "firsttrust.k" in str(error)
    assert repr(name) not in str(error)


def test_encoding_key_without_its_base_key_is_refused():
    error = refused({"firsttrust.k.encoding": "base64"})
    assert "firsttrust.k" in str(error)


def test_encoding_of_an_encoding_key_is_refused():
    refused({"firsttrust.k": "v", "firsttrust.k.encoding": "plain", "firsttrust.k.encoding.encoding": "plain"})


def test_bare_prefix_encoding_key_is_refused():
    refused({"firsttrust.encoding": "base64"})


# --- the requester's side ------------------------------------------------------------------------------


def test_encode_value_known_outputs():
    assert encode_value("v", "plain") == "v"
    assert encode_value("héllo", "base64") == b64("héllo".encode())
    assert gzip.decompress(base64.b64decode(encode_value("v", "gzip+base64"))) == b"v"


def test_gzip_encoding_is_deterministic():
    assert encode_value(SECRET, "gzip+base64") == encode_value(SECRET, "GZIP+BASE64")


@pytest.mark.parametrize("name", ["rot13", "gzip"])
def test_encode_unknown_encoding_is_refused(name):
    with pytest.raises(EncodingError):
        encode_value("v", name)


def test_encode_refuses_what_the_agent_would_refuse():
    with pytest.raises(EncodingError, match="cap"):
        encode_value("a" * (MAX_DECODED_BYTES + 1), "gzip+base64")
    with pytest.raises(EncodingError):
        encode_value("lone \ud800", "base64")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.sampled_from(ENCODINGS))
def test_encode_decode_round_trip(value, name):
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates: covered above
    assert decode_value(encode_value(value, name), name) == value
    raw = {"firsttrust.k": encode_value(value, name), "firsttrust.k.encoding": name}
    assert decode_properties(raw) == {"firsttrust.k": value}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["base64", "gzip+base64"]))
def test_arbitrary_values_only_ever_raise_encoding_error(value, name):
    try:
        decoded = decode_value(value, name)
    except EncodingError:
        return
    assert isinstance(decoded, str)
