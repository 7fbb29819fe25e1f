"""Signed records of the fleet store (docs/fleet.md section 3): canonical JSON signed with a
P-256 key (ECDSA, SHA-256), checked against a certificate the verifier already trusts."""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from firsttrust.errors import FirsttrustError
from firsttrust.identity import Identity, load_certificate

# Domain separation: a signature over one kind of record never verifies as another kind.
CONTEXT = b"firsttrust fleet record v1\x00"


def canonical(payload: dict[str, Any]) -> str:
    """The exact text that is signed and stored (the database keeps it as text, not jsonb, so the
    bytes verified are the bytes signed)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def seal(identity: Identity, payload: dict[str, Any]) -> tuple[str, bytes]:
    """(the payload's canonical text, its signature by `identity`)."""
    text = canonical(payload)
    return text, identity.private_key.sign(CONTEXT + text.encode("ascii"), ec.ECDSA(hashes.SHA256()))


def opened(certificate_pem: str, text: str, signature: bytes) -> dict[str, Any] | None:
    """The payload if `signature` over `text` verifies under the certificate's key, else None
    (also for a `text` the database gave as NULL: too long to be read, store.pgstore.MAX_PAYLOAD)."""
    if not isinstance(text, str) or signature is None:
        return None
    try:
        key = load_certificate(certificate_pem.encode()).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return None
        key.verify(bytes(signature), CONTEXT + text.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        payload = json.loads(text)
    except (InvalidSignature, ValueError, RecursionError, TypeError, UnicodeError, FirsttrustError):
        return None
    return payload if isinstance(payload, dict) else None
