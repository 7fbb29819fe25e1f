"""Identity rotation proofs (firsttrust.rotation)."""

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from firsttrust.errors import FirsttrustError, InvalidCertificate
from firsttrust.identity import create_identity, pin_to_curl
from firsttrust.rotation import RotationError, rotation_message, sign_rotation, verify_rotation


@pytest.fixture(scope="module")
def new_identity():
    return create_identity("appliance")


def _rsa_certificate_der() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


def test_message_is_byte_exact(appliance_identity, new_identity):
    expected = (b"firsttrust/v1 rotate\n" + appliance_identity.pin.encode() + b"\n" + new_identity.pin.encode()
                + b"\n" + hashlib.sha256(new_identity.cert_der).hexdigest().encode())
    assert rotation_message(appliance_identity.pin, new_identity.cert_der) == expected
    # PEM input and a curl-form pin give the same bytes: the hash is over DER, pins are normalized.
    assert rotation_message(pin_to_curl(appliance_identity.pin), new_identity.cert_pem) == expected


def test_good_rotation_verifies_and_returns_new_pin(appliance_identity, new_identity):
    signature = sign_rotation(appliance_identity, new_identity.cert_der)
    assert verify_rotation(appliance_identity.cert_pem, new_identity.cert_der, signature) == new_identity.pin
    assert verify_rotation(appliance_identity.cert_der, new_identity.cert_pem, signature) == new_identity.pin


def test_signature_is_ecdsa_sha256_over_the_message(appliance_identity, new_identity):
    signature = sign_rotation(appliance_identity, new_identity.cert_der)
    appliance_identity.certificate.public_key().verify(
        signature, rotation_message(appliance_identity.pin, new_identity.cert_der), ec.ECDSA(hashes.SHA256()))


def test_signature_by_another_key_is_refused(appliance_identity, stranger_identity, new_identity):
    forged = sign_rotation(stranger_identity, new_identity.cert_der)
    with pytest.raises(RotationError) as info:
        verify_rotation(appliance_identity.cert_pem, new_identity.cert_der, forged)
    assert info.value.code == "rotation_invalid"
    assert isinstance(info.value, FirsttrustError)


def test_signature_for_another_certificate_is_refused(appliance_identity, stranger_identity, new_identity):
    signature = sign_rotation(appliance_identity, new_identity.cert_der)
    with pytest.raises(RotationError):
        verify_rotation(appliance_identity.cert_pem, stranger_identity.cert_der, signature)


def test_tampered_certificate_is_refused(appliance_identity, new_identity):
    signature = sign_rotation(appliance_identity, new_identity.cert_der)
    der = new_identity.cert_der
    # The last bytes are the certificate's own signature: still parses, but is another certificate.
    with pytest.raises(RotationError):
        verify_rotation(appliance_identity.cert_pem, _flip(der, len(der) - 3), signature)


@pytest.mark.parametrize("index", [0, 10, -1])
def test_tampered_signature_is_refused(appliance_identity, new_identity, index):
    signature = sign_rotation(appliance_identity, new_identity.cert_der)
    with pytest.raises(RotationError):
        verify_rotation(appliance_identity.cert_pem, new_identity.cert_der, _flip(signature, index % len(signature)))


@pytest.mark.parametrize("new_cert, signature", [
    (b"", b""),
    (b"garbage", b"\x30\x06\x02\x01\x01\x02\x01\x01"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b"x" * 72),
])
def test_garbage_is_refused(appliance_identity, new_cert, signature):
    with pytest.raises(RotationError):
        verify_rotation(appliance_identity.cert_pem, new_cert, signature)


def test_garbage_signature_is_refused(appliance_identity, new_identity):
    for signature in (b"", b"not DER at all", b"\x30" * 200):
        with pytest.raises(RotationError):
            verify_rotation(appliance_identity.cert_pem, new_identity.cert_der, signature)
    with pytest.raises(RotationError):
        verify_rotation(appliance_identity.cert_pem, new_identity.cert_der, "not bytes")  # type: ignore[arg-type]


def test_new_certificate_must_be_p256(appliance_identity):
    rsa_der = _rsa_certificate_der()
    with pytest.raises(RotationError):
        verify_rotation(appliance_identity.cert_pem, rsa_der, b"\x30\x06\x02\x01\x01\x02\x01\x01")
    with pytest.raises(InvalidCertificate):
        sign_rotation(appliance_identity, rsa_der)


def test_unusable_pinned_certificate_is_the_callers_error(new_identity):
    with pytest.raises(InvalidCertificate):
        verify_rotation(b"not a certificate", new_identity.cert_der, b"")
