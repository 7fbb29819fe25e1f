"""The two one-time enrollment secrets, SEC-A and SEC-B.

SEC-A becomes the appliance's password and the SRP password; SEC-B is a second secret only the
real appliance holds, proved inside TLS. Both are 160 bits written in a copy-paste safe
alphabet: lowercase Crockford base32 (no i, l, o, u), four groups of eight joined by '-':

    7kq2m9xd-4hv0rtza-pe61wc3b-yn8gfs5j

Secrets supplied by an operator instead are accepted when they are 20..256 printable ASCII
characters with no whitespace; the SRP password is the secret's exact ASCII bytes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

from .errors import InvalidSecret

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
SECRET_BITS = 160  # >= 128 bits each (issue requirement); 160 fills 32 symbols exactly
GROUP_LENGTH = 8
MIN_SECRET_LENGTH = 20  # 20 symbols of the generated alphabet are 100 bits; below that, refuse
MAX_SECRET_LENGTH = 256
_SECRET_RE = re.compile(r"[\x21-\x7e]+")

RandomBytes = Callable[[int], bytes]


def generate_secret(random: RandomBytes = os.urandom) -> str:
    """A fresh 160-bit secret in the grouped base32 form."""
    number = int.from_bytes(random(SECRET_BITS // 8), "big")
    symbols = []
    for _ in range(SECRET_BITS // 5):
        symbols.append(ALPHABET[number & 31])
        number >>= 5
    text = "".join(reversed(symbols))
    return "-".join(text[i:i + GROUP_LENGTH] for i in range(0, len(text), GROUP_LENGTH))


def validate_secret(value: object, name: str) -> str:
    """Return `value` if it is a usable secret.

    Raises:
        InvalidSecret: not a string, too short or long, or with whitespace/control/non-ASCII
            characters. The message names the secret (`name`), never its value.
    """
    if not isinstance(value, str):
        raise InvalidSecret(f"{name} must be a string")
    if not MIN_SECRET_LENGTH <= len(value) <= MAX_SECRET_LENGTH:
        raise InvalidSecret(f"{name} must be {MIN_SECRET_LENGTH}..{MAX_SECRET_LENGTH} characters long")
    if not _SECRET_RE.fullmatch(value):
        raise InvalidSecret(f"{name} must be printable ASCII without whitespace")
    return value


@dataclass(frozen=True)
class EnrollmentSecrets:
    """SEC-A and SEC-B for one appliance. repr() never shows them."""

    sec_a: str
    sec_b: str

    def __post_init__(self) -> None:
        validate_secret(self.sec_a, "SEC-A")
        validate_secret(self.sec_b, "SEC-B")
        if self.sec_a == self.sec_b:
            raise InvalidSecret("SEC-A and SEC-B must differ")

    def __repr__(self) -> str:
        return "EnrollmentSecrets(sec_a=<hidden>, sec_b=<hidden>)"

    @classmethod
    def generate(cls, random: RandomBytes = os.urandom) -> "EnrollmentSecrets":
        return cls(generate_secret(random), generate_secret(random))
