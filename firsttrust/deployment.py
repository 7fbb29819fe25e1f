"""The deploy-time contract between requester and agent: which properties carry what.

The requester produces these properties (vApp/OVF properties, or guestinfo extraConfig keys);
the agent reads them at first boot. docs/deployment.md is the operator's view of this module.
"""

from __future__ import annotations

import re

PREFIX = "firsttrust."
GUESTINFO_PREFIX = "guestinfo."

SEC_A = "firsttrust.sec-a"
SEC_B = "firsttrust.sec-b"
REQUESTER_CERT = "firsttrust.requester-cert"  # base64 of the requester certificate's PEM
ENROLL_WINDOW = "firsttrust.enroll-window"  # "24h", "90m", "2d" or seconds

KNOWN_KEYS = (SEC_A, SEC_B, REQUESTER_CERT, ENROLL_WINDOW)
ENCODING_SUFFIX = ".encoding"

# Where the agent publishes its certificate for the manager to read (seed FIG. 2).
APPLIANCE_CERT_GUESTINFO = "guestinfo.firsttrust.appliance-cert"

# The enrollment window: how long after provisioning SRP enrollment stays open.
DEFAULT_ENROLL_WINDOW = 24 * 3600
MAX_ENROLL_WINDOW = 365 * 24 * 3600

_DURATION_RE = re.compile(r"([1-9][0-9]{0,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidDuration(ValueError):
    pass


def parse_duration(text: str) -> int:
    """Seconds in "3600", "90m", "24h", "2d". At least 1 s, at most a year.

    Raises:
        InvalidDuration: anything else.
    """
    match = _DURATION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
    if not match:
        raise InvalidDuration("a duration is a positive whole number with an optional unit s, m, h or d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_ENROLL_WINDOW:
        raise InvalidDuration("a duration may not exceed 365 days")
    return seconds


def guestinfo_key(property_key: str) -> str:
    """The extraConfig twin of an OVF property: firsttrust.sec-a -> guestinfo.firsttrust.sec-a."""
    return GUESTINFO_PREFIX + property_key
