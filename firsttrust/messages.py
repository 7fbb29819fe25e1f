"""What each frame type carries, as data: one schema row per type, and one frozen dataclass
per type that the state machines receive (`parse`).

The state machines never read a field that was not validated here; every violation is an
InvalidField with the field's name (never its value, which may be secret-derived).

The dataclasses are written out, not generated: each names its frame type (`TYPE`) and has
exactly the fields of its SCHEMAS row, optional ones defaulting to None
(tests/unit/test_messages.py checks that the two agree).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Union

from .errors import InvalidField
from .framing import Frame
from .limits import (MAX_CERTIFICATE_DER, MAX_ERROR_MESSAGE, MAX_NAME, MAX_RETRY_AFTER, MAX_SSH_HOST_KEYS,
                     MAX_SSH_KEY_LINE)

# RFC 5054 3072-bit group: public values travel left-padded to the byte length of N.
SRP_VALUE_BYTES = 384
SALT_BYTES = 32
SRP_PROOF_BYTES = 64  # SHA-512
MAC_BYTES = 32  # HMAC-SHA256 tags


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Base64:
    """Standard base64 with padding, canonical (re-encoding gives the same text)."""

    exact: int | None = None
    minimum: int = 1
    maximum: int | None = None

    def __call__(self, name: str, value: Any) -> bytes:
        if not isinstance(value, str):
            raise InvalidField(f"field {name!r} must be a base64 string")
        limit = self.exact or self.maximum
        if limit is not None and len(value) > 4 * (limit // 3 + 1):
            raise InvalidField(f"field {name!r} is too long")
        try:
            data = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise InvalidField(f"field {name!r} is not valid base64") from None
        if b64encode(data) != value:
            raise InvalidField(f"field {name!r} is not canonical base64")
        if self.exact is not None and len(data) != self.exact:
            raise InvalidField(f"field {name!r} must be {self.exact} bytes, got {len(data)}")
        if len(data) < self.minimum or (self.maximum is not None and len(data) > self.maximum):
            raise InvalidField(f"field {name!r} has a bad length ({len(data)} bytes)")
        return data


@dataclass(frozen=True)
class Text:
    pattern: str
    maximum: int

    def __call__(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidField(f"field {name!r} must be a string")
        if len(value) > self.maximum:
            raise InvalidField(f"field {name!r} is longer than {self.maximum} characters")
        if not re.fullmatch(self.pattern, value):
            raise InvalidField(f"field {name!r} has an invalid format")
        return value


@dataclass(frozen=True)
class Integer:
    minimum: int
    maximum: int

    def __call__(self, name: str, value: Any) -> int:
        if type(value) is not int or not self.minimum <= value <= self.maximum:
            raise InvalidField(f"field {name!r} must be an integer in {self.minimum}..{self.maximum}")
        return value


@dataclass(frozen=True)
class ListOf:
    item: Callable[[str, Any], Any]
    maximum: int

    def __call__(self, name: str, value: Any) -> list[Any]:
        if not isinstance(value, list) or len(value) > self.maximum:
            raise InvalidField(f"field {name!r} must be a list of at most {self.maximum} items")
        return [self.item(f"{name}[{i}]", v) for i, v in enumerate(value)]


# An OpenSSH public key line: type, base64 blob, optional comment (printable ASCII).
SSH_KEY_PATTERN = r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,2}( [\x21-\x7e][\x20-\x7e]*)?"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
PIN_PATTERN = r"sha256:[0-9a-f]{64}"
CODE_PATTERN = r"[a-z][a-z0-9_]*"

Validator = Callable[[str, Any], Any]

# type -> {field: (validator, required)}
SCHEMAS: dict[str, dict[str, tuple[Validator, bool]]] = {
    "hello": {"A": (Base64(exact=SRP_VALUE_BYTES), True)},
    "challenge": {
        "salt": (Base64(exact=SALT_BYTES), True),
        "B": (Base64(exact=SRP_VALUE_BYTES), True),
    },
    "client_proof": {
        "M1": (Base64(exact=SRP_PROOF_BYTES), True),
        "certificate": (Base64(maximum=MAX_CERTIFICATE_DER), True),
        "commitment": (Base64(exact=MAC_BYTES), True),
    },
    "server_proof": {
        "M2": (Base64(exact=SRP_PROOF_BYTES), True),
        "certificate": (Base64(maximum=MAX_CERTIFICATE_DER), True),
        "commitment": (Base64(exact=MAC_BYTES), True),
    },
    "appliance_proof": {
        "sec_b_proof": (Base64(exact=MAC_BYTES), True),
        "confirm": (Base64(exact=MAC_BYTES), True),
        # Before `finish`, so a requester that never sees `enrolled` knows where to confirm the
        # commit over the pinned API (docs/protocol.md section 10, recovery).
        "api_port": (Integer(1, 65535), True),
    },
    "finish": {
        "confirm": (Base64(exact=MAC_BYTES), True),
        "name": (Text(NAME_PATTERN, MAX_NAME), True),
        "ssh_key": (Text(SSH_KEY_PATTERN, MAX_SSH_KEY_LINE), False),
    },
    "enrolled": {
        "pin": (Text(PIN_PATTERN, 71), True),
        "ssh_host_keys": (ListOf(Text(SSH_KEY_PATTERN, MAX_SSH_KEY_LINE), MAX_SSH_HOST_KEYS), True),
        "api_port": (Integer(1, 65535), True),
    },
    "error": {
        "code": (Text(CODE_PATTERN, 64), True),
        "message": (Text(r"[^\x00-\x1f\x7f]*", MAX_ERROR_MESSAGE), True),
        # Optional: whole seconds after which a retry may succeed (the agent sends it with
        # backing_off). Frames without it encode exactly as before.
        "retry_after": (Integer(0, MAX_RETRY_AFTER), False),
    },
}


def validate(frame: Frame) -> dict[str, Any]:
    """Check a frame's fields against its schema and return them decoded.

    Raises:
        InvalidField: a required field is missing, an unknown field is present, or a value
            has the wrong JSON type, encoding or length.
    """
    schema = SCHEMAS[frame.type]
    extra = sorted(set(frame.fields) - set(schema))
    if extra:
        raise InvalidField(f"{frame.type} frame has unknown field {extra[0][:40]!r}")
    decoded: dict[str, Any] = {}
    for name, (validator, required) in schema.items():
        if name not in frame.fields:
            if required:
                raise InvalidField(f"{frame.type} frame lacks field {name!r}")
            continue
        decoded[name] = validator(name, frame.fields[name])
    return decoded


# --- typed messages: one per frame type, the fields of its SCHEMAS row, decoded -------------


@dataclass(frozen=True)
class HelloMessage:
    TYPE: ClassVar[str] = "hello"
    A: bytes


@dataclass(frozen=True)
class ChallengeMessage:
    TYPE: ClassVar[str] = "challenge"
    salt: bytes
    B: bytes


@dataclass(frozen=True)
class ClientProofMessage:
    TYPE: ClassVar[str] = "client_proof"
    M1: bytes
    certificate: bytes
    commitment: bytes


@dataclass(frozen=True)
class ServerProofMessage:
    TYPE: ClassVar[str] = "server_proof"
    M2: bytes
    certificate: bytes
    commitment: bytes


@dataclass(frozen=True)
class ApplianceProofMessage:
    TYPE: ClassVar[str] = "appliance_proof"
    sec_b_proof: bytes
    confirm: bytes
    api_port: int


@dataclass(frozen=True)
class FinishMessage:
    TYPE: ClassVar[str] = "finish"
    confirm: bytes
    name: str
    ssh_key: str | None = None


@dataclass(frozen=True)
class EnrolledMessage:
    TYPE: ClassVar[str] = "enrolled"
    pin: str
    ssh_host_keys: list[str]
    api_port: int


@dataclass(frozen=True)
class ErrorMessage:
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    retry_after: int | None = None


Message = Union[HelloMessage, ChallengeMessage, ClientProofMessage, ServerProofMessage, ApplianceProofMessage,
                FinishMessage, EnrolledMessage, ErrorMessage]
MESSAGES: dict[str, type] = {cls.TYPE: cls for cls in (
    HelloMessage, ChallengeMessage, ClientProofMessage, ServerProofMessage, ApplianceProofMessage,
    FinishMessage, EnrolledMessage, ErrorMessage)}


def parse(frame: Frame) -> Message:
    """`validate`, as the frame type's dataclass.

    Raises:
        InvalidField: as `validate`.
    """
    return MESSAGES[frame.type](**validate(frame))
