"""Field validation: every frame's schema, strict base64 and lengths."""

import pytest

from firsttrust.errors import InvalidField
from firsttrust.framing import Frame
from firsttrust.messages import Base64, b64encode, validate


def frame(type_, **fields):
    return Frame(type_, fields, b"")


def test_valid_hello():
    assert validate(frame("hello", A=b64encode(b"\x01" * 384))) == {"A": b"\x01" * 384}


@pytest.mark.parametrize("fields", [
    {},                                             # missing
    {"A": b64encode(b"\x01" * 383)},               # short
    {"A": b64encode(b"\x01" * 385)},               # long (e.g. 2N)
    {"A": 12},                                      # wrong JSON type
    {"A": "not base64!"},                           # bad alphabet
    {"A": b64encode(b"\x01" * 384)[:-1]},         # truncated
    {"A": b64encode(b"\x01" * 384) + "\n"},        # whitespace
    {"A": b64encode(b"\x01" * 384), "B": "x"},     # unknown field
    {"A": "A" * 10_000_000},                        # huge: refused by length before decoding
])
def test_invalid_hello(fields):
    with pytest.raises(InvalidField):
        validate(frame("hello", **fields))


def test_base64_padding_is_required():
    with pytest.raises(InvalidField):
        Base64(exact=32)("x", b64encode(b"\x01" * 32).rstrip("="))


def test_non_canonical_base64_is_refused():
    # "QR==" decodes to the same byte as "QQ==" (unused low bits set): not canonical.
    with pytest.raises(InvalidField):
        Base64(exact=1)("x", "QR==")


def test_finish_optional_ssh_key_and_name_pattern():
    ok = {"confirm": b64encode(b"\0" * 32), "name": "bringup-01"}
    assert validate(frame("finish", **ok))["name"] == "bringup-01"
    assert "ssh_key" not in validate(frame("finish", **ok))
    for bad in ({"name": "-leading-dash"}, {"name": "a" * 65}, {"name": "sp ace"},
                {"ssh_key": "ssh-dss AAAA"}, {"ssh_key": "ssh-ed25519 AAAA\nroot"}):
        with pytest.raises(InvalidField):
            validate(frame("finish", **{**ok, **bad}))


def test_enrolled_fields():
    ok = {"pin": "sha256:" + "ab" * 32, "ssh_host_keys": ["ssh-ed25519 AAAA root@x"], "api_port": 8443}
    assert validate(frame("enrolled", **ok))["api_port"] == 8443
    for bad in ({"pin": "sha256:" + "AB" * 32}, {"api_port": 0}, {"api_port": True}, {"api_port": 70000},
                {"ssh_host_keys": "ssh-ed25519 AAAA"}, {"ssh_host_keys": ["ssh-ed25519 AAAA"] * 17}):
        with pytest.raises(InvalidField):
            validate(frame("enrolled", **{**ok, **bad}))


def test_error_frame_fields():
    assert validate(frame("error", code="auth_failed", message="x"))["code"] == "auth_failed"
    for bad in ({"code": "Auth"}, {"message": "two\nlines"}, {"message": "m" * 513}):
        with pytest.raises(InvalidField):
            validate(frame("error", **{"code": "auth_failed", "message": "x", **bad}))
