"""SEC-A / SEC-B generation and validation."""

import re

import pytest

from firsttrust.credentials import ALPHABET, EnrollmentSecrets, generate_secret, validate_secret
from firsttrust.errors import InvalidSecret


def test_format_is_four_groups_of_eight_copy_paste_safe_symbols():
    secret = generate_secret()
    assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{8}(-[0-9a-hjkmnp-tv-z]{8}){3}", secret), secret
    assert not set("ilou") & set(ALPHABET) and len(ALPHABET) == 32


def test_160_bits_map_one_to_one():
    assert generate_secret(lambda n: bytes(n)) == "00000000-00000000-00000000-00000000"
    assert generate_secret(lambda n: b"\xff" * n) == "zzzzzzzz-zzzzzzzz-zzzzzzzz-zzzzzzzz"
    assert generate_secret(lambda n: bytes(n - 1) + b"\x21") == "00000000-00000000-00000000-00000011"


def test_secrets_differ_every_time():
    assert len({generate_secret() for _ in range(200)}) == 200


@pytest.mark.parametrize("bad", ["", "short", "x" * 257, "has space in the middle!", "tab\there-and-long-enough",
                                 "non-ascii-é-long-enough-xx", None, 5])
def test_invalid_secrets_never_echo_the_value(bad):
    with pytest.raises(InvalidSecret) as info:
        validate_secret(bad, "SEC-A")
    assert "SEC-A" in str(info.value)
    if isinstance(bad, str) and bad:
        assert bad not in str(info.value)


def test_operator_supplied_secret_is_accepted():
    assert validate_secret("Correct-Horse-Battery-Staple-42", "SEC-B")


def test_secrets_pair_must_differ_and_hide_in_repr():
    s = EnrollmentSecrets.generate()
    assert s.sec_a != s.sec_b and s.sec_a not in repr(s)
    with pytest.raises(InvalidSecret):
        EnrollmentSecrets(s.sec_a, s.sec_a)
