"""Identities (ECDSA P-256 key + self-signed X.509 certificate) and pins.

A pin names a public key, not a certificate: `sha256:<hex>` over the DER SubjectPublicKeyInfo,
the form kubeadm uses for --discovery-token-ca-cert-hash. curl's --pinnedpubkey wants the same
digest as `sha256//<base64>`; both convert losslessly. Certificates are only carriers for the
key: validity dates and issuers are never what trust rests on here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import time
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple

from .errors import InvalidCertificate, InvalidPin

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography (x509 alone is ~4 MB of memory and tens of ms of import on Debian 12) is imported
# by the functions that use it: an armed, idle agent never needs it (agent/server.py OwnIdentity
# checks its identity with the ssl module).

Clock = Callable[[], float]

# Self-signed certificates are pinned, not validated against a CA, so the dates matter only to
# TLS stacks that check them anyway: start a day early (appliance clocks at first boot are often
# off) and run for 20 years (re-keying is POST /v1/identity/rotate, not expiry).
# (datetime and ipaddress are imported where a certificate is made: not on the agent's start path.)
BACKDATE_DAYS = 1
VALIDITY_DAYS = 20 * 365

# Patterns, not compiled ones: re compiles (and caches) them at first use, not at import (agent start-up).
_PIN_PATTERN = r"sha256:([0-9a-f]{64})"
_CURL_PATTERN = r"sha256//([A-Za-z0-9+/]{43}=)"


class Identity(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    """A private key and its self-signed certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except TypeError:  # encrypted: no password is ever configured
            raise ValueError("the private key is encrypted") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("the private key is not an ECDSA P-256 key")
        return key

    @property
    def certificate(self) -> x509.Certificate:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def cert_der(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def pin(self) -> str:
        return pin_of_certificate(self.certificate)

    def __repr__(self) -> str:
        return f"Identity(pin={self.pin})"


def create_identity(common_name: str, *, dns_names: Iterable[str] = (), ip_addresses: Iterable[str] = (),
                    clock: Clock = time.time,
                    private_key: ec.EllipticCurvePrivateKey | None = None) -> Identity:
    """A new P-256 key (unless one is given) and a self-signed certificate for it.

    The certificate carries serverAuth and clientAuth: the appliance and the requester present
    theirs as TLS server and client respectively, and each side pins the other.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = private_key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.fromtimestamp(int(clock()), tz=datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=BACKDATE_DAYS))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Identity(key_pem, cert.public_bytes(serialization.Encoding.PEM))


# Parsed certificates and their pins, by content: both sides parse the same few certificates
# (their own, the peer's) several times per enrollment, and with Debian 12's cryptography 38 one
# parse with its key check costs ~0.4 ms and one pin ~1.2 ms (OpenSSL 3.0 decodes the key each
# time). Certificates are immutable and compared by content, so a hit is exactly a re-parse.
CERTIFICATE_CACHE_SIZE = 64


def load_certificate(data: bytes | str) -> x509.Certificate:
    """Parse a certificate given as PEM or DER (bytes or another buffer), or as PEM text (str).

    Raises:
        InvalidCertificate: not a certificate, or its key is not ECDSA P-256.
    """
    if type(data) is bytes:
        return _load_certificate_cached(data)
    try:
        data = data.encode("ascii") if isinstance(data, str) else bytes(data)
    except (TypeError, ValueError):  # a PEM text is ASCII; an int, None... is no certificate
        raise InvalidCertificate("not a valid X.509 certificate (PEM or DER)") from None
    return _load_certificate_cached(data)


def _load_certificate(data: bytes) -> x509.Certificate:
    from cryptography import x509

    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    # InvalidVersion (a version field other than v1 or v3) is not a ValueError; found by the
    # structure-aware fuzzing when a flipped bit landed on the version.
    except (ValueError, TypeError, x509.InvalidVersion):
        raise InvalidCertificate("not a valid X.509 certificate (PEM or DER)") from None
    _check_p256(subject_public_key_info(cert.tbs_certificate_bytes))
    return cert


_load_certificate_cached = functools.lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)(_load_certificate)


def certificate_der(data: bytes) -> bytes:
    """The DER form of a PEM or DER certificate (validated as by load_certificate)."""
    from cryptography.hazmat.primitives import serialization

    return load_certificate(data).public_bytes(serialization.Encoding.DER)


def certificate_pem(data: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return load_certificate(data).public_bytes(serialization.Encoding.PEM)


@functools.lru_cache(maxsize=CERTIFICATE_CACHE_SIZE)
def spki_sha256(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(subject_public_key_info(cert.tbs_certificate_bytes)).digest()


# -- the public key, read from the DER without cryptography's OpenSSL backend ----------------------
#
# cryptography 38 (Debian 12) builds a key object through its OpenSSL backend for
# `Certificate.public_key()`: loading that backend costs an agent ~2 MB and ~20 ms at its first
# enrollment, and each key ~1 ms (OpenSSL 3.0's decoders). A pin and the P-256 check need only
# the SubjectPublicKeyInfo's bytes, which cryptography's Rust parser has already checked to be
# strict DER; this walks to them.

# AlgorithmIdentifier { id-ecPublicKey (1.2.840.10045.2.1), namedCurve prime256v1 (1.2.840.10045.3.1.7) }
# in DER (RFC 5480 section 2.1.1): the only public key algorithm a firsttrust certificate may carry.
_P256_ALGORITHM = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")
# The curve (SEC 2, section 2.4.2): y^2 = x^3 - 3x + b over GF(p).
_P256_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_SEQUENCE = 0x30


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at `pos`."""
    if pos + 2 > len(der):
        raise InvalidCertificate("not a valid X.509 certificate (PEM or DER)")
    tag, length, pos = der[pos], der[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > len(der):
            raise InvalidCertificate("not a valid X.509 certificate (PEM or DER)")
        length, pos = int.from_bytes(der[pos:pos + count], "big"), pos + count
    if pos + length > len(der):
        raise InvalidCertificate("not a valid X.509 certificate (PEM or DER)")
    return tag, pos, pos + length


def subject_public_key_info(tbs_certificate: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo inside a DER TBSCertificate (RFC 5280 section 4.1): the
    seventh field, after an optional [0] version and serialNumber, signature, issuer, validity
    and subject."""
    tag, pos, end = _tlv(tbs_certificate, 0)
    if tag != _SEQUENCE:
        raise InvalidCertificate("not a valid X.509 certificate (PEM or DER)")
    if _tlv(tbs_certificate, pos)[0] == 0xA0:  # [0] EXPLICIT version
        pos = _tlv(tbs_certificate, pos)[2]
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        pos = _tlv(tbs_certificate, pos)[2]
    tag, start, stop = _tlv(tbs_certificate, pos)
    if tag != _SEQUENCE or stop > end:
        raise InvalidCertificate("not a valid X.509 certificate (PEM or DER)")
    return tbs_certificate[pos:stop]


def _check_p256(spki: bytes) -> None:
    """Raise InvalidCertificate unless `spki` is an ECDSA P-256 key given as an uncompressed
    point (SEC 1 section 2.3.3, RFC 5480 section 2.2) that lies on the curve: what
    cryptography's key loading checks, less the compressed form, which would give one key two
    SPKI encodings and so two pins."""
    _, pos, end = _tlv(spki, 0)
    if spki[pos:pos + len(_P256_ALGORITHM)] != _P256_ALGORITHM:
        raise InvalidCertificate("certificate key must be ECDSA P-256")
    tag, start, stop = _tlv(spki, pos + len(_P256_ALGORITHM))
    point = spki[start:stop]  # the BIT STRING: unused-bits octet 0, then 0x04 || x || y
    if tag != 0x03 or stop != end or len(point) != 66 or point[:2] != b"\0\4":
        raise InvalidCertificate("certificate key must be ECDSA P-256 (an uncompressed point)")
    x, y, p = int.from_bytes(point[2:34], "big"), int.from_bytes(point[34:], "big"), _P256_P
    if x >= p or y >= p or (y * y - (x * x * x - 3 * x + _P256_B)) % p:
        raise InvalidCertificate("certificate key must be ECDSA P-256 (its point is not on the curve)")


def pin_of_certificate(cert: x509.Certificate | bytes | str) -> str:
    """`sha256:<hex>` of the certificate's SubjectPublicKeyInfo (cert object, PEM or DER, PEM text)."""
    if isinstance(cert, (bytes, bytearray, memoryview, str)):
        cert = load_certificate(cert)
    return "sha256:" + spki_sha256(cert).hex()


def parse_pin(pin: str) -> bytes:
    """The 32-byte digest of a pin in kubeadm (`sha256:<hex>`) or curl (`sha256//<b64>`) form.

    Raises:
        InvalidPin: neither form.
    """
    if isinstance(pin, str):
        if match := re.fullmatch(_PIN_PATTERN, pin):
            return bytes.fromhex(match.group(1))
        if match := re.fullmatch(_CURL_PATTERN, pin):
            try:
                digest = base64.b64decode(match.group(1), validate=True)
            except binascii.Error:
                digest = b""
            if len(digest) == 32:
                return digest
    raise InvalidPin("a pin is sha256:<64 lowercase hex digits> or sha256//<base64 of 32 bytes>")


def normalize_pin(pin: str) -> str:
    return "sha256:" + parse_pin(pin).hex()


def pin_to_curl(pin: str) -> str:
    return "sha256//" + base64.b64encode(parse_pin(pin)).decode("ascii")


def pin_matches(pin: str, cert: x509.Certificate | bytes) -> bool:
    """Whether the certificate's key is the pinned one (constant-time compare)."""
    if isinstance(cert, bytes):
        cert = load_certificate(cert)
    return hmac.compare_digest(parse_pin(pin), spki_sha256(cert))


def file_stamp(path: "os.PathLike[str] | str") -> tuple[int, int, int] | None:
    """(inode, mtime ns, size) of an identity file, None if it is missing: what tells a side that
    keeps its identity loaded (agent/server.py OwnIdentity, requester/enroll.py) that the file was
    replaced since (every write of identity files is a rename: a new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
