"""firsttrust.keyschedule.hkdf is written with the standard library's HMAC (so the idle agent does
not load cryptography's OpenSSL bindings). It must give exactly what cryptography's HKDF gives."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from firsttrust.keyschedule import hkdf


def reference(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA512(), length=length, salt=salt or None, info=info).derive(ikm)


@settings(max_examples=300, deadline=None)
@given(ikm=st.binary(max_size=600), salt=st.binary(max_size=200), info=st.binary(max_size=200),
       length=st.integers(min_value=1, max_value=300))
def test_hkdf_equals_cryptographys_hkdf_sha512_for_any_input(ikm, salt, info, length):
    assert hkdf(ikm, salt, info, length) == reference(ikm, salt, info, length)


def test_hkdf_refuses_more_than_255_blocks():
    with pytest.raises(ValueError):
        hkdf(b"k", b"s", b"i", 255 * 64 + 1)
