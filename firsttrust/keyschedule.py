"""Everything derived from the SRP session key K, and the SEC-B proof.

    PRK-based keys:  k_<label> = HKDF-SHA512(IKM = K, salt = "firsttrust/v1", info = label, L = 32)
    commitment     = HMAC-SHA256(k_commit_<side>, SHA-256(certificate DER))
    confirm        = HMAC-SHA256(k_confirm_<side>, TH | SHA-256(appliance cert) | SHA-256(requester cert))
    sec_b_proof    = HMAC-SHA256(HKDF-SHA512(IKM = SEC-B, salt = K, info = LABEL_SEC_B, L = 32),
                                 TH | SHA-256(appliance cert))

TH is SHA-256 over the four plaintext frames exactly as they crossed the wire (length prefix
included). One label per purpose (RFC 5869 section 3.2: "info" separates contexts), so no
key is ever used for two jobs. docs/protocol.md, "Key schedule", is the normative text.
"""

from __future__ import annotations

import hashlib
import hmac

HKDF_SALT = b"firsttrust/v1"
KEY_BYTES = 32

LABEL_COMMIT_REQUESTER = b"firsttrust/v1 commit requester"
LABEL_COMMIT_APPLIANCE = b"firsttrust/v1 commit appliance"
LABEL_CONFIRM_REQUESTER = b"firsttrust/v1 confirm requester"
LABEL_CONFIRM_APPLIANCE = b"firsttrust/v1 confirm appliance"
LABEL_SEC_B = b"firsttrust/v1 sec-b proof"

LABELS = (LABEL_COMMIT_REQUESTER, LABEL_COMMIT_APPLIANCE, LABEL_CONFIRM_REQUESTER,
          LABEL_CONFIRM_APPLIANCE, LABEL_SEC_B)


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA512 (RFC 5869 section 2), with the standard library's HMAC: the same bytes as
    cryptography's HKDF (the vectors check it), without loading cryptography's OpenSSL bindings
    into the agent for four 32-byte keys."""
    return _expand(_extract(salt, ikm), info, length)


def _extract(salt: bytes, ikm: bytes) -> bytes:  # RFC 5869 section 2.2
    return hmac.digest(salt or bytes(hashlib.sha512().digest_size), ikm, "sha512")


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 section 2.3: T(i) = HMAC(PRK, T(i-1) | info | i)."""
    if length > 255 * hashlib.sha512().digest_size:
        raise ValueError("HKDF-SHA512 output is at most 255 * 64 bytes")
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha512")
        okm += block
        counter += 1
    return okm[:length]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.digest(key, b"".join(parts), "sha256")  # one-shot, in C


class KeySchedule:
    """The per-purpose keys of one enrollment, derived from the SRP session key K."""

    def __init__(self, session_key: bytes) -> None:
        self._K = session_key
        prk = _extract(HKDF_SALT, session_key)  # the same for the four keys: extracted once
        self.commit_requester = _expand(prk, LABEL_COMMIT_REQUESTER, KEY_BYTES)
        self.commit_appliance = _expand(prk, LABEL_COMMIT_APPLIANCE, KEY_BYTES)
        self.confirm_requester = _expand(prk, LABEL_CONFIRM_REQUESTER, KEY_BYTES)
        self.confirm_appliance = _expand(prk, LABEL_CONFIRM_APPLIANCE, KEY_BYTES)

    @staticmethod
    def commitment(key: bytes, certificate_der: bytes) -> bytes:
        return mac(key, sha256(certificate_der))

    @staticmethod
    def confirmation(key: bytes, transcript_hash: bytes, appliance_der: bytes, requester_der: bytes) -> bytes:
        return mac(key, transcript_hash, sha256(appliance_der), sha256(requester_der))

    def sec_b_proof(self, sec_b: bytes, transcript_hash: bytes, appliance_der: bytes) -> bytes:
        return mac(hkdf(sec_b, self._K, LABEL_SEC_B), transcript_hash, sha256(appliance_der))


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison for every MAC and proof."""
    return hmac.compare_digest(a, b)
