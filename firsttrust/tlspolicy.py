"""The TLS policy both sides apply to the contexts they build: TLS 1.3 only, and trust in
exactly the certificates the protocol has vouched for (committed under K, or pinned).

No names, no CAs, no dates: a peer is trusted because its certificate is byte-for-byte the one
the SRP-bound commitment (or the pin) named, never because a CA signed it. OpenSSL still
verifies that the peer holds the certificate's key; the state machines then compare the
certificate with the commitment. This module configures a context it is handed; loading the
own key and certificate (file paths, in stdlib ssl) is the driver's job.
"""

from __future__ import annotations

import ssl
from typing import Iterable

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: a pinned self-signed certificate is not made more or less
# trustworthy by the appliance's first-boot clock, which is often wrong.
VERIFY_NO_CHECK_TIME = 0x200000


def apply_policy(context: ssl.SSLContext, trusted_certificates: Iterable[bytes]) -> ssl.SSLContext:
    """TLS 1.3 only; require the peer's certificate; trust exactly `trusted_certificates` (DER).

    Args:
        context: a fresh SSLContext (PROTOCOL_TLS_CLIENT or PROTOCOL_TLS_SERVER).
        trusted_certificates: the only certificates a peer may present (self-signed leaves).
    Returns:
        the same context, for chaining.
    Raises:
        ValueError: no trusted certificate was given (that would trust nothing or everything).
    """
    trusted = list(trusted_certificates)
    if not trusted:
        raise ValueError("a firsttrust TLS context needs at least one trusted certificate")
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= VERIFY_NO_CHECK_TIME
    for der in trusted:
        context.load_verify_locations(cadata=der)
    return context
