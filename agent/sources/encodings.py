"""Property value encodings: how a requester fits binary or bulky values into vApp properties.

A property `K` may have a sibling `K.encoding` saying how its value is written:

    plain (or "", or no sibling)  the value as is
    base64                        RFC 4648 section 4 base64 of the UTF-8 bytes
    gzip+base64                   base64 of a gzip (RFC 1952) member holding the UTF-8 bytes

Encoding names are matched case-insensitively ("Base64" is base64): people type them into
the vSphere client. An empty `.encoding` means plain, because an OVF descriptor that declares
the `.encoding` property gives it an empty default when the requester does not set it.

Base64 is decoded strictly (standard alphabet, correct padding, nothing else) after removing
ASCII whitespace: a long value pasted into an XML attribute or a vSphere form may be wrapped,
and whitespace carries no meaning in base64 (RFC 4648 section 3.3 lets a specification allow
it). A gzip value must be exactly one complete member with a valid CRC; its output is capped
while it is produced, so a decompression bomb costs at most MAX_DECODED_BYTES of memory.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib

# The names and the cap are shared with the requester's encoder, which lives in the core.
from firsttrust import deployment
from firsttrust.deployment import (  # noqa: F401  (re-exported)
    BASE64,
    ENCODING_SUFFIX,
    ENCODINGS,
    GZIP_BASE64,
    MAX_DECODED_BYTES,
    PLAIN,
    PropertyEncodingError,
)

from ..errors import EncodingError

# Base64 text for MAX_DECODED_BYTES bytes, plus generous room for wrapping whitespace. Checked
# before decoding, so a huge value costs nothing.
MAX_ENCODED_CHARS = 2 * (4 * (MAX_DECODED_BYTES + 2) // 3)

# RFC 1952 with zlib: wbits 16 + MAX_WBITS accepts exactly a gzip wrapper (not zlib, not raw
# deflate) and checks the CRC-32 and ISIZE trailer.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# Input handed to zlib per step, so output is produced (and counted) in small pieces.
_INFLATE_CHUNK = 4096
_ASCII_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")


def decode_properties(raw: dict[str, str], prefix: str = "firsttrust.") -> dict[str, str]:
    """Decode our properties according to their `.encoding` siblings.

    Args:
        raw: properties as read from the OVF environment or guestinfo (key -> value).
        prefix: which keys are ours. Keys without it belong to other software and are neither
            returned nor interpreted (their `.encoding` keys may mean something else there).

    Returns:
        key -> decoded value for every key starting with prefix, in input order, with the
        `.encoding` keys removed.

    Raises:
        EncodingError: an `.encoding` key names an unknown encoding, has no base key, or is the
            encoding of another `.encoding` key; a value is not valid base64, not one complete
            gzip member, decodes to more than MAX_DECODED_BYTES, or is not UTF-8. The message
            names the key, never the value.
    """
    ours = {key: value for key, value in raw.items() if key.startswith(prefix)}
    encodings: dict[str, str] = {}
    for key, value in ours.items():
        if not key.endswith(ENCODING_SUFFIX):
            continue
        base = key[: -len(ENCODING_SUFFIX)]
        if base not in ours:
            raise EncodingError(f"{_show(key)} has no property {_show(base)} to describe")
        if base.endswith(ENCODING_SUFFIX):
            raise EncodingError(f"{_show(key)} describes another encoding key")
        encodings[base] = value
    return {
        key: decode_value(value, encodings.get(key, PLAIN), key=key)
        for key, value in ours.items()
        if not key.endswith(ENCODING_SUFFIX)
    }


def decode_value(value: str, encoding: str, *, key: str = "a property") -> str:
    """Decode one property value.

    Args:
        value: the value as written in the property.
        encoding: one of ENCODINGS (case-insensitive), or "" for plain.
        key: the property's key, for error messages only.

    Returns:
        The decoded text.

    Raises:
        EncodingError: unknown encoding, bad base64, bad or oversized gzip, not UTF-8.
    """
    name = _normalize(encoding, key)
    if name == PLAIN:
        return value
    data = _strict_base64(value, key)
    if name == GZIP_BASE64:
        data = _gunzip_capped(data, key)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EncodingError(f"{_show(key)} does not decode to UTF-8 text") from None


def encode_value(value: str, encoding: str) -> str:
    """firsttrust.deployment.encode_value (the requester's encoder), raising EncodingError.

    The encoder lives in the core so the requester can use it without importing the agent; this
    name keeps every error of this module an EncodingError for the agent's tests and the lab.

    Raises:
        EncodingError: whatever the core refuses (see firsttrust.deployment.encode_value).
    """
    try:
        return deployment.encode_value(value, encoding)
    except PropertyEncodingError as exc:
        raise EncodingError(str(exc)) from None


def _normalize(encoding: str, key: str) -> str:
    name = encoding.lower() or PLAIN
    if name not in ENCODINGS:
        # The encoding's text is itself a property value: not echoed, like every value.
        raise EncodingError(f"{_show(key)} has an unknown encoding; expected one of {', '.join(ENCODINGS)}")
    return name


def _strict_base64(value: str, key: str) -> bytes:
    if len(value) > MAX_ENCODED_CHARS:
        raise EncodingError(f"{_show(key)} is {len(value)} characters of base64, over the {MAX_ENCODED_CHARS} cap")
    compact = _ASCII_WHITESPACE.sub("", value)
    try:
        data = base64.b64decode(compact.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise EncodingError(f"{_show(key)} is not valid base64") from None
    if len(data) > MAX_DECODED_BYTES:
        raise EncodingError(f"{_show(key)} decodes to {len(data)} bytes, over the {MAX_DECODED_BYTES}-byte cap")
    return data


def _gunzip_capped(data: bytes, key: str) -> bytes:
    inflater = zlib.decompressobj(_GZIP_WBITS)
    output = bytearray()
    pending = data
    try:
        while pending and not inflater.eof:
            chunk, pending = pending[:_INFLATE_CHUNK], pending[_INFLATE_CHUNK:]
            while chunk:
                # Ask for one byte more than the budget left: getting it proves the cap is passed.
                output += inflater.decompress(chunk, MAX_DECODED_BYTES - len(output) + 1)
                if len(output) > MAX_DECODED_BYTES:
                    raise EncodingError(f"{_show(key)} inflates to more than {MAX_DECODED_BYTES} bytes")
                chunk = inflater.unconsumed_tail
                if inflater.eof:
                    break
    except zlib.error:
        raise EncodingError(f"{_show(key)} is not valid gzip data") from None
    if not inflater.eof:
        raise EncodingError(f"{_show(key)} is a truncated gzip stream")
    if inflater.unused_data or pending:
        raise EncodingError(f"{_show(key)} has data after its gzip member")
    return bytes(output)


def _show(name: str, limit: int = 80) -> str:
    """A key for an error message: quoted, one line, bounded. Never a value."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
