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
import threading
from typing import Callable, Iterable

from .errors import InvalidCertificate

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: a pinned self-signed certificate is not made more or less
# trustworthy by the appliance's first-boot clock, which is often wrong.
VERIFY_NO_CHECK_TIME = 0x200000


def apply_policy(context: ssl.SSLContext, trusted_certificates: Iterable[bytes], *,
                 allow_none: bool = False) -> ssl.SSLContext:
    """TLS 1.3 only; require the peer's certificate; trust exactly `trusted_certificates` (DER).

    Args:
        context: a fresh SSLContext (PROTOCOL_TLS_CLIENT or PROTOCOL_TLS_SERVER).
        trusted_certificates: the only certificates a peer may present (self-signed leaves).
        allow_none: an empty `trusted_certificates` is wanted: the context then completes no
            handshake at all (its trust store stays empty; no CA or system store is loaded).
    Returns:
        the same context, for chaining.
    Raises:
        ValueError: no trusted certificate was given and `allow_none` is false (a caller that
            forgot its anchors should fail loudly, not serve a context that refuses everyone).
    """
    trusted = list(trusted_certificates)
    if not trusted and not allow_none:
        raise ValueError("a firsttrust TLS context needs at least one trusted certificate")
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= VERIFY_NO_CHECK_TIME
    # The anchors are self-signed end-entity certificates, and one side's often share a subject
    # (every file-store requester is CN=firsttrust-requester) with no authority key identifier.
    # Without PARTIAL_CHAIN OpenSSL looks a presented self-signed certificate's issuer up by name,
    # takes the first anchor of that name and fails when it is another: of two authorized
    # requesters of one name, only one got into the API. With it, the presented certificate is
    # accepted when it is byte for byte one of the anchors; a certificate one of them issued is
    # still refused (they are not CAs: CA:FALSE, no keyCertSign).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if context.protocol is ssl.PROTOCOL_TLS_SERVER:
        # No session tickets: nothing is ever resumed (section 7.3), and a context shared across
        # connections (SharedContext) must not let one connection resume another's session.
        context.num_tickets = 0
    for der in trusted:
        context.load_verify_locations(cadata=der)
    return context


def load_own_identity(context: ssl.SSLContext, cert_path: object, key_path: object) -> ssl.SSLContext:
    """`context` with this side's certificate and key loaded from their PEM files.

    Raises:
        InvalidCertificate: the files do not load (corrupt, not PEM, or a key that is not the
            certificate's): OpenSSL's own message is "[SSL] PEM lib (_ssl.c:NNNN)".
        OSError: a file cannot be read.
    """
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except ssl.SSLError as exc:
        raise InvalidCertificate(f"the key {key_path} and certificate {cert_path} do not load as a pair "
                                 f"({exc.reason or 'not PEM'})") from None
    return context


def apply_enrollment_client_policy(context: ssl.SSLContext) -> ssl.SSLContext:
    """The requester's context for enrollment (docs/protocol.md section 7.3): TLS 1.3 only and no
    trust anchors at all. OpenSSL builds no chain for the appliance's certificate, but it still
    requires one and verifies the CertificateVerify signature with its key (RFC 8446 section
    4.4.3, whatever the verify mode): the appliance proves it holds the key of the certificate it
    presents. Which certificate that may be is decided by the section 7.4 check right after the
    handshake, before the requester reads or sends anything: it must be byte for byte the one
    committed under K. One such context serves every enrollment of a process (no anchor to add
    per connection, ~0.8 ms of the requester's CPU each).

    Args:
        context: a fresh PROTOCOL_TLS_CLIENT context with the requester's key and certificate.
    """
    if context.protocol is not ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError("the enrollment client policy is for PROTOCOL_TLS_CLIENT contexts")
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# How many peer certificates one shared context trusts before it is replaced by a fresh one: keeps
# OpenSSL's trust store (and its by-name lookups) small when many requesters (or one host serving
# many appliances, as the benchmark's) connect, at the cost of one reload of the own key and
# certificate (~0.8 ms) per this many connections.
MAX_SHARED_ANCHORS = 64


class SharedContext:
    """One TLS context for many connections of the appliance, instead of one per connection
    (docs/protocol.md section 7.3): the own key and certificate are loaded once, and each
    connection adds the certificate its peer committed to under K as one more trust anchor. (The
    requester's context has no anchor at all: `apply_enrollment_client_policy`.)

    Which of the anchors a peer presented is decided after the handshake, by the section 7.4
    check (the presented certificate must be the one committed in this connection's proof
    frame), which every driver runs before trusting anything: a certificate committed on another
    connection passes TLS here but fails that check (`binding_failed`). A certificate nobody
    committed still fails the handshake itself, as with a context per connection.

    Args:
        new_context: builds a fresh context with the own identity loaded (PROTOCOL_TLS_CLIENT or
            PROTOCOL_TLS_SERVER); called once, and again each MAX_SHARED_ANCHORS peers.
        fresh: one such context the caller already built (used first).
    Thread-safe.
    """

    def __init__(self, new_context: Callable[[], ssl.SSLContext], max_anchors: int = MAX_SHARED_ANCHORS, *,
                 fresh: ssl.SSLContext | None = None) -> None:
        self._new_context = new_context
        self._max_anchors = max_anchors
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        # A context from new_context built ahead (`prepare`), its policy applied, no anchor yet.
        self._fresh = self._with_policy(fresh) if fresh is not None else None
        self._anchors: set[bytes] = set()

    def prepare(self) -> None:
        """Load the own identity now (e.g. at start-up), so the first connection does not pay it."""
        with self._lock:
            if self._context is None and self._fresh is None:
                self._fresh = self._with_policy(self._new_context())

    def _with_policy(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """A fresh context with the policy applied and no anchor yet (the first peer adds one).
        Its anchors share a subject, as every requester's does: `apply_policy`'s PARTIAL_CHAIN."""
        return apply_policy(context, (), allow_none=True)

    def for_peer(self, peer_certificate: bytes) -> ssl.SSLContext:
        """The shared context, now also trusting `peer_certificate` (DER)."""
        with self._lock:
            if peer_certificate in self._anchors and self._context is not None:
                return self._context
            if self._context is None or len(self._anchors) >= self._max_anchors:
                self._context = self._fresh or self._with_policy(self._new_context())
                self._fresh, self._anchors = None, set()
            # OpenSSL parses the certificate here (~0.2 ms for P-256 in OpenSSL 3.0, which decodes
            # its key): the one cost per connection a context shared by all cannot spare.
            self._context.load_verify_locations(cadata=peer_certificate)
            self._anchors.add(peer_certificate)
            return self._context
