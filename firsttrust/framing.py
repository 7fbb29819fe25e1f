"""Frames: the unit both sides exchange before and right after the TLS upgrade.

Wire format (docs/protocol.md, "Framing"):

    frame  = length body
    length = 4 bytes, unsigned big-endian, the number of bytes in body, 1..MAX_FRAME_BODY
    body   = canonical JSON object, UTF-8 (ASCII in practice: non-ASCII is \\u-escaped),
             always with "v" (protocol version, integer) and "type" (string)

A decoder never buffers more than one frame's worth of bytes: the length is checked before
the body is awaited, so a peer announcing 4 GiB is refused after 4 bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

from .errors import (
    FirsttrustError,
    FrameTooLarge,
    MalformedFrame,
    TruncatedFrame,
    UnknownFrameType,
    UnsupportedVersion,
)
from .limits import MAX_FRAME_BODY, MAX_RETRY_AFTER

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")

FRAME_TYPES = (
    "hello",
    "challenge",
    "client_proof",
    "server_proof",
    "appliance_proof",
    "finish",
    "enrolled",
    "error",
)


class Frame(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    """One decoded frame. `raw` is the exact bytes on the wire (header included)."""

    type: str
    fields: dict[str, Any]
    raw: bytes

    def __repr__(self) -> str:  # without `raw`
        return f"Frame(type={self.type!r}, fields={self.fields!r})"


def canonical_json(obj: dict[str, Any]) -> bytes:
    """The one encoding senders use: sorted keys, no spaces, ASCII only."""
    return _ENCODER.encode(obj).encode("ascii")


# Made once: json.dumps and json.loads with any option build a new encoder or decoder per call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_frame(frame_type: str, fields: dict[str, Any]) -> bytes:
    """Build a frame's bytes. `fields` must not contain "v" or "type"."""
    if frame_type not in FRAME_TYPES:
        raise ValueError(f"unknown frame type {frame_type!r}")
    if "v" in fields or "type" in fields:
        raise ValueError("'v' and 'type' are set by encode_frame")
    body = canonical_json({"v": PROTOCOL_VERSION, "type": frame_type, **fields})
    if len(body) > MAX_FRAME_BODY:
        raise ValueError(f"frame body of {len(body)} bytes exceeds {MAX_FRAME_BODY}")
    return HEADER.pack(len(body)) + body


def encode_error(code: str, message: str, retry_after: int | None = None) -> bytes:
    """An error frame: the last frame a side sends before closing. The message is reduced to
    its first line, control characters replaced, capped at 512 characters. `retry_after`
    (whole seconds, 0..86400), when given, tells the peer when a retry may succeed; without it
    the frame is byte-for-byte what it always was."""
    lines = message.splitlines()
    first = "".join(c if c.isprintable() else " " for c in (lines[0] if lines else code))
    fields: dict[str, Any] = {"code": code, "message": first[:512]}
    if retry_after is not None:
        if type(retry_after) is not int or not 0 <= retry_after <= MAX_RETRY_AFTER:
            raise ValueError(f"retry_after must be an integer in 0..{MAX_RETRY_AFTER}")
        fields["retry_after"] = retry_after
    return encode_frame("error", fields)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedFrame(f"duplicate JSON key {key[:40]!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> None:
    raise MalformedFrame(f"JSON constant {name} is not allowed")


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def decode_body(body: bytes) -> tuple[str, dict[str, Any]]:
    """Parse one frame body into (type, fields without v/type).

    Raises:
        MalformedFrame: not UTF-8, not JSON, not an object, duplicate keys, NaN/Infinity.
        UnsupportedVersion: "v" missing or not PROTOCOL_VERSION (checked before "type", so a
            future version's new frame types are reported as a version problem).
        UnknownFrameType: "type" missing, not a string, or not one of FRAME_TYPES.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedFrame("frame body is not valid UTF-8") from None
    try:
        obj = _DECODER.decode(text)
    except MalformedFrame:
        raise
    except (ValueError, RecursionError):
        raise MalformedFrame("frame body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise MalformedFrame("frame body is not a JSON object")
    version = obj.pop("v", None)
    if type(version) is not int or version != PROTOCOL_VERSION:
        shown = version if type(version) is int else type(version).__name__
        raise UnsupportedVersion(f"protocol version {shown} is not supported (this side speaks {PROTOCOL_VERSION})")
    frame_type = obj.pop("type", None)
    if not isinstance(frame_type, str) or frame_type not in FRAME_TYPES:
        shown = repr(frame_type[:40]) if isinstance(frame_type, str) else type(frame_type).__name__
        raise UnknownFrameType(f"unknown frame type {shown}")
    return frame_type, obj


class FrameDecoder:
    """Turns a byte stream into frames, one at a time, with bounded memory.

    Feed bytes with `feed`, take frames with `next_frame` until it returns None. Once it has
    raised, it raises the same error again: a stream with one bad frame is not resynchronised.
    """

    def __init__(self, max_body: int = MAX_FRAME_BODY) -> None:
        self._buffer = bytearray()
        self._max_body = max_body
        self._error: Exception | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        if self._error:
            raise self._error
        self._buffer += data
        # Refuse an oversized announcement as soon as its header is in, before the body.
        self._check_header()

    def _check_header(self) -> int | None:
        if len(self._buffer) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buffer)
        if length == 0:
            self._error = MalformedFrame("frame with an empty body")
            raise self._error
        if length > self._max_body:
            self._error = FrameTooLarge(f"frame of {length} bytes exceeds the {self._max_body}-byte limit")
            raise self._error
        return length

    def frame_ready(self) -> bool:
        """Whether `next_frame` would return a frame or raise: a whole frame is buffered, or the
        stream has already failed (an empty or oversized length, refused by `feed`)."""
        if self._error:
            return True
        # The header checked here too, not only in `feed`: a frame taken out of the buffer may
        # leave the next one's header, fed in the same read (hello and an oversized length).
        try:
            length = self._check_header()
        except FirsttrustError:
            return True
        return length is not None and len(self._buffer) >= HEADER.size + length

    def next_frame(self) -> Frame | None:
        if self._error:
            raise self._error
        length = self._check_header()
        if length is None or len(self._buffer) < HEADER.size + length:
            return None
        raw = bytes(self._buffer[: HEADER.size + length])
        del self._buffer[: HEADER.size + length]
        try:
            frame_type, fields = decode_body(raw[HEADER.size:])
        except Exception as exc:
            self._error = exc
            raise
        return Frame(frame_type, fields, raw)

    def close(self) -> None:
        """The peer closed the stream: bytes left over mean a truncated frame."""
        if self._buffer and not self._error:
            self._error = TruncatedFrame(f"stream ended inside a frame ({len(self._buffer)} bytes left over)")
            raise self._error
