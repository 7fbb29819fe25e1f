"""The deploy-time contract between requester and agent: which properties carry what.

The requester produces these properties (vApp/OVF properties, or guestinfo extraConfig keys);
the agent reads them at first boot. docs/deployment.md is the operator's view of this module.
"""

from __future__ import annotations

import base64
import re

from .errors import FirsttrustError

PREFIX = "firsttrust."
GUESTINFO_PREFIX = "guestinfo."

SEC_A = "firsttrust.sec-a"
SEC_B = "firsttrust.sec-b"
REQUESTER_CERT = "firsttrust.requester-cert"  # base64 of the requester certificate's PEM
ENROLL_WINDOW = "firsttrust.enroll-window"  # "24h", "90m", "2d" or seconds
# The guest account's password for guest operations (issue 27): a secret like SEC-A.
GUEST_PASSWORD = "firsttrust.guest-password"
# The unprivileged guest account that password is for (its only privileged path: authorize).
GUEST_ACCOUNT = "firsttrust-guest"

KNOWN_KEYS = (SEC_A, SEC_B, REQUESTER_CERT, ENROLL_WINDOW, GUEST_PASSWORD)
ENCODING_SUFFIX = ".encoding"

# Where the agent publishes its certificate for the manager to read (injected-certificate mode).
APPLIANCE_CERT_GUESTINFO = "guestinfo.firsttrust.appliance-cert"

# The enrollment window: how long after provisioning SRP enrollment stays open.
DEFAULT_ENROLL_WINDOW = 24 * 3600
MAX_ENROLL_WINDOW = 365 * 24 * 3600

_DURATION_PATTERN = r"([1-9][0-9]{0,9})([smhd]?)"  # compiled by re at first use
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidDuration(ValueError):
    pass


def parse_duration(text: str) -> int:
    """Seconds in "3600", "90m", "24h", "2d". At least 1 s, at most a year.

    Raises:
        InvalidDuration: anything else.
    """
    match = re.fullmatch(_DURATION_PATTERN, text.strip()) if isinstance(text, str) else None
    if not match:
        raise InvalidDuration("a duration is a positive whole number with an optional unit s, m, h or d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_ENROLL_WINDOW:
        raise InvalidDuration("a duration may not exceed 365 days")
    return seconds


def guestinfo_key(property_key: str) -> str:
    """The extraConfig twin of an OVF property: firsttrust.sec-a -> guestinfo.firsttrust.sec-a."""
    return GUESTINFO_PREFIX + property_key


# --- property value encodings (the requester's side; agent.sources.encodings decodes) ---------
#
# A property K may have a sibling K.encoding saying how its value is written. Certificates are
# base64: a PEM's newlines would not survive an XML attribute written by a tool that does not
# escape them (XML 1.0 section 3.3.3 normalizes them to spaces), nor a single-line form field.

PLAIN = "plain"
BASE64 = "base64"
GZIP_BASE64 = "gzip+base64"
ENCODINGS = (PLAIN, BASE64, GZIP_BASE64)

# A decoded value (secret, certificate chain, JSON document) is at most a few KiB. 64 KiB is the
# cap per value the OVF environment applies (ovfenv.MAX_VALUE_BYTES), so a value that is too big
# decoded would be too big plain as well.
MAX_DECODED_BYTES = 64 * 1024


class PropertyEncodingError(FirsttrustError):
    """A property value cannot be written in the requested encoding."""

    code = "encoding"


def encode_value(value: str, encoding: str) -> str:
    """Encode a value for a property, the requester's side of the agent's decode_value.

    gzip output is deterministic (mtime 0, no file name), so the same value always yields the
    same property text and deploy specs are reproducible.

    Args:
        value: the text to carry.
        encoding: one of ENCODINGS (case-insensitive), or "" for plain.

    Returns:
        The property text; decode_value(result, encoding) == value.

    Raises:
        PropertyEncodingError: unknown encoding, a value that is not encodable as UTF-8 (lone
            surrogates), or one whose UTF-8 form is over MAX_DECODED_BYTES (the agent would
            refuse it). Messages never contain the value.
    """
    name = encoding.lower() or PLAIN
    if name not in ENCODINGS:
        raise PropertyEncodingError(f"unknown encoding; expected one of {', '.join(ENCODINGS)}")
    if name == PLAIN:
        return value
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise PropertyEncodingError("the value is not encodable as UTF-8") from None
    if len(data) > MAX_DECODED_BYTES:
        raise PropertyEncodingError(f"the value is {len(data)} bytes, over the {MAX_DECODED_BYTES}-byte cap")
    if name == GZIP_BASE64:
        import gzip  # only the requester encodes; the agent's start-up does not need it

        data = gzip.compress(data, compresslevel=9, mtime=0)
    return base64.b64encode(data).decode("ascii")

# Where the agent listens (docs/operations.md). Two ports, not one: the enrollment port speaks the
# SRP preamble to anyone and can be firewalled off after first boot; the API port speaks only
# mutually authenticated TLS to pinned keys, with no unauthenticated protocol in front of it.
DEFAULT_ENROLL_PORT = 8790
DEFAULT_API_PORT = 8791
