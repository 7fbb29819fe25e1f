"""Identity rotation proofs: the appliance's old key vouches for its new certificate.

When the appliance re-keys (POST /v1/identity/rotate), the requester must move its pin from the
old key to the new one without trusting the channel's word for it. The appliance signs, with
the OLD key, a statement naming both pins and the exact new certificate; the requester checks it
against the certificate it has pinned, and only then stores the new one.

The signed message is exactly these bytes (ASCII, `\\n` is one 0x0A byte, no trailing newline):

    firsttrust/v1 rotate\\n<old pin>\\n<new pin>\\n<sha256 of the new certificate's DER, 64 lowercase hex>

where both pins are in kubeadm form (`sha256:<64 lowercase hex>` over the DER
SubjectPublicKeyInfo, see identity.py). The signature is ECDSA P-256 with SHA-256 (FIPS 186-4),
DER-encoded (the `Ecdsa-Sig-Value` of RFC 3279 section 2.2.3). The domain label keeps the
signature from being usable as anything else the key ever signs (TLS 1.3 CertificateVerify has its
own, RFC 8446 section 4.4.3); the certificate hash commits to the exact certificate, the pin to
its key.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import FirsttrustError, InvalidCertificate, InvalidPin
from .identity import Identity, certificate_der, load_certificate, normalize_pin, pin_of_certificate

ROTATION_LABEL = b"firsttrust/v1 rotate\n"


class RotationError(FirsttrustError):
    """A rotation proof does not verify: wrong key, altered certificate or signature, bad format."""

    code = "rotation_invalid"


def rotation_message(old_pin: str, new_cert_der: bytes) -> bytes:
    """The exact bytes the old key signs (see the module docstring).

    Args:
        old_pin: the pin being retired, kubeadm or curl form (normalized to kubeadm form).
        new_cert_der: the new certificate, DER (PEM is accepted; the hash is always over DER).
    Returns:
        the message.
    Raises:
        InvalidPin: `old_pin` is not a pin.
        InvalidCertificate: the new certificate is not a P-256 certificate.
    """
    der = certificate_der(new_cert_der)
    return b"%s%s\n%s\n%s" % (ROTATION_LABEL, normalize_pin(old_pin).encode("ascii"),
                              pin_of_certificate(der).encode("ascii"),
                              hashlib.sha256(der).hexdigest().encode("ascii"))


def sign_rotation(old_identity: Identity, new_cert_der: bytes) -> bytes:
    """Sign the rotation from `old_identity` to the certificate `new_cert_der` with the old key.

    Returns:
        the DER-encoded ECDSA P-256 / SHA-256 signature.
    Raises:
        InvalidCertificate: the new certificate is not a P-256 certificate.
    """
    message = rotation_message(old_identity.pin, new_cert_der)
    return old_identity.private_key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify_rotation(pinned_cert: bytes, new_cert: bytes, signature: bytes) -> str:
    """Check that the holder of the pinned key vouched for `new_cert`.

    Args:
        pinned_cert: the certificate the caller has pinned (PEM or DER); the caller's own data.
        new_cert: the certificate the peer says replaces it (PEM or DER), untrusted.
        signature: the peer's DER signature over rotation_message(old pin, new_cert).
    Returns:
        the new pin (`sha256:<hex>`), to be stored together with `new_cert`.
    Raises:
        RotationError: `new_cert` is not a P-256 certificate, or the signature does not verify with
            the pinned certificate's key.
        InvalidCertificate: `pinned_cert` itself is not a P-256 certificate (a caller bug).
    """
    pinned = load_certificate(pinned_cert)
    try:
        message = rotation_message(pin_of_certificate(pinned), new_cert)
    except (InvalidCertificate, InvalidPin):
        raise RotationError("the new certificate is not a valid ECDSA P-256 certificate") from None
    if not isinstance(signature, bytes):
        raise RotationError("the rotation signature must be bytes")
    try:
        pinned.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise RotationError("the rotation signature does not verify with the pinned key") from None
    return pin_of_certificate(new_cert)
