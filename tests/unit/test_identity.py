"""Identities and pins."""

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from firsttrust.errors import InvalidCertificate, InvalidPin
from firsttrust.identity import (
    certificate_der,
    certificate_pem,
    create_identity,
    load_certificate,
    normalize_pin,
    parse_pin,
    pin_matches,
    pin_of_certificate,
    pin_to_curl,
)


def test_identity_is_p256_self_signed_with_sans(appliance_identity):
    cert = appliance_identity.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.issuer == cert.subject
    cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["appliance.example"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_pin_is_sha256_of_spki(appliance_identity):
    spki = appliance_identity.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert appliance_identity.pin == "sha256:" + hashlib.sha256(spki).hexdigest()
    # the same key in a new certificate has the same pin
    again = create_identity("renamed", private_key=appliance_identity.private_key)
    assert again.pin == appliance_identity.pin and again.cert_der != appliance_identity.cert_der


def test_curl_form_round_trip(appliance_identity):
    pin = appliance_identity.pin
    curl = pin_to_curl(pin)
    assert curl == "sha256//" + base64.b64encode(bytes.fromhex(pin[7:])).decode()
    assert normalize_pin(curl) == pin
    assert parse_pin(curl) == parse_pin(pin)


@pytest.mark.parametrize("bad", ["", "sha256:", "sha256:" + "AB" * 32, "sha1:" + "ab" * 20, "sha256:" + "ab" * 31,
                                 "sha256//" + "A" * 43, "sha256//!!!", None, 12])
def test_bad_pins(bad):
    with pytest.raises(InvalidPin):
        parse_pin(bad)


def test_pin_matches(appliance_identity, stranger_identity):
    assert pin_matches(appliance_identity.pin, appliance_identity.cert_der)
    assert not pin_matches(appliance_identity.pin, stranger_identity.certificate)


def test_pem_and_der_both_load(appliance_identity):
    assert certificate_der(appliance_identity.cert_pem) == appliance_identity.cert_der
    assert certificate_pem(appliance_identity.cert_der) == appliance_identity.cert_pem
    assert pin_of_certificate(appliance_identity.cert_pem) == appliance_identity.pin


def test_pem_text_loads_as_its_bytes_do_and_what_is_no_certificate_is_a_typed_error(appliance_identity):
    """A library caller hands over the PEM it read as text (PinnedSession, pin_certificate): the
    same certificate, never a bare TypeError; text that is not ASCII or no buffer at all is an
    InvalidCertificate."""
    text = appliance_identity.cert_pem.decode("ascii")
    assert certificate_pem(text) == appliance_identity.cert_pem
    assert pin_of_certificate(text) == appliance_identity.pin
    for bad in (text.replace("A", "\u00c4", 1), 42, None):
        with pytest.raises(InvalidCertificate):
            load_certificate(bad)


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                  b"\x30\x82\x01\x00" + b"\0" * 10])
def test_invalid_certificates(data):
    with pytest.raises(InvalidCertificate):
        load_certificate(data)


def test_non_p256_keys_are_refused():
    import datetime

    from cryptography.hazmat.primitives import hashes
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "rsa")])
    now = datetime.datetime(2024, 1, 1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    with pytest.raises(InvalidCertificate):
        load_certificate(cert.public_bytes(serialization.Encoding.PEM))


def test_injected_clock_sets_validity():
    import datetime

    cert = create_identity("t", clock=lambda: 1700000000).certificate
    start = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
    assert start == datetime.datetime(2023, 11, 13, 22, 13, 20, tzinfo=datetime.timezone.utc)  # one day early


def test_a_certificate_with_an_unknown_curve_oid_is_an_invalid_certificate(appliance_identity):
    """Found by the structure-aware fuzzing: one flipped bit in the P-256 curve OID made
    cryptography raise UnsupportedAlgorithm, which escaped the state machines untyped."""
    p256 = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7
    der = appliance_identity.cert_der
    assert der.count(p256) == 1
    broken = der.replace(p256, bytes.fromhex("06082a8648ce3d030106"))  # ...3.1.6, not a curve we know
    with pytest.raises(InvalidCertificate):
        load_certificate(broken)


def test_the_certificate_cache_gives_each_content_its_own_certificate_and_pin(appliance_identity,
                                                                            stranger_identity):
    """load_certificate and the pins are cached by content: a second parse of the same bytes
    (bytes or bytearray) is the same certificate, other bytes are never served a cached one, and
    bad bytes are refused every time (a failure is not cached as anything)."""
    first = load_certificate(appliance_identity.cert_der)
    assert load_certificate(appliance_identity.cert_der) == first
    assert load_certificate(bytearray(appliance_identity.cert_der)) == first
    other = load_certificate(stranger_identity.cert_der)
    assert other != first
    assert other.public_bytes(serialization.Encoding.DER) == stranger_identity.cert_der
    assert pin_of_certificate(appliance_identity.cert_der) == appliance_identity.pin
    assert pin_of_certificate(stranger_identity.cert_der) == stranger_identity.pin != appliance_identity.pin
    broken = appliance_identity.cert_der[:-1]
    for _ in range(2):
        with pytest.raises(InvalidCertificate):
            load_certificate(broken)


def _reference_p256_pin(der: bytes) -> str | None:
    """What cryptography's own key loading says: the pin of an ECDSA P-256 key given as an
    uncompressed point, None for any certificate it does not parse or whose key is not that."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        cert = x509.load_der_x509_certificate(der)
        key = cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return None
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if spki not in der:  # re-encoded: the certificate carries another form of the point
        return None
    return "sha256:" + hashlib.sha256(spki).hexdigest()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_key_check_read_from_the_der_agrees_with_cryptographys_key_loading(appliance_identity, data):
    """load_certificate and the pins read the public key from the DER (no OpenSSL backend):
    for certificates with bytes of their key changed (curve, algorithm, point, lengths), they
    accept exactly the ones cryptography loads as an uncompressed P-256 key, with its pin."""
    der = bytearray(appliance_identity.cert_der)
    spki = der.index(bytes.fromhex("301306072a8648ce3d0201"))  # the SPKI's algorithm identifier
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(spki - 2, spki + 90))
        der[at] = data.draw(st.integers(0, 255))
    der = bytes(der)
    expected = _reference_p256_pin(der)
    try:
        got = pin_of_certificate(load_certificate(der))
    except InvalidCertificate:
        got = None
    assert got == expected


def test_a_point_off_the_curve_is_an_invalid_certificate(appliance_identity):
    der = appliance_identity.cert_der
    point = der.index(bytes.fromhex("03420004")) + 4
    off_curve = der[:point + 63] + bytes([der[point + 63] ^ 1]) + der[point + 64:]  # last byte of y
    with pytest.raises(InvalidCertificate, match="not on the curve"):
        load_certificate(off_curve)
    assert _reference_p256_pin(off_curve) is None  # cryptography refuses it too


def test_a_certificate_with_an_unknown_version_is_an_invalid_certificate(appliance_identity):
    """Found by the structure-aware fuzzing: cryptography raises InvalidVersion, not a
    ValueError, for a version field that is neither v1 nor v3; it escaped untyped."""
    v3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (v3)
    der = appliance_identity.cert_der
    assert der.count(v3) == 1
    with pytest.raises(InvalidCertificate):
        load_certificate(der.replace(v3, bytes.fromhex("a003020112")))  # version 18
