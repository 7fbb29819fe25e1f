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


def test_one_typed_message_per_frame_type_with_exactly_its_schema_fields():
    """The dataclasses the state machines receive agree with SCHEMAS: one per frame type, the
    same fields, required ones without a default, optional ones defaulting to None, frozen."""
    import dataclasses

    from firsttrust.framing import FRAME_TYPES
    from firsttrust.messages import MESSAGES, SCHEMAS

    assert set(MESSAGES) == set(SCHEMAS) == set(FRAME_TYPES)
    for frame_type, cls in MESSAGES.items():
        assert cls.TYPE == frame_type and cls.__dataclass_params__.frozen
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert list(fields) == list(SCHEMAS[frame_type]), frame_type
        for name, (_, required) in SCHEMAS[frame_type].items():
            has_default = fields[name].default is not dataclasses.MISSING
            assert has_default is not required, (frame_type, name)
            assert not has_default or fields[name].default is None


def test_parse_gives_the_typed_message():
    from firsttrust.messages import FinishMessage, parse

    ok = {"confirm": b64encode(b"\x01" * 32), "name": "bringup-01"}
    assert parse(frame("finish", **ok)) == FinishMessage(confirm=b"\x01" * 32, name="bringup-01", ssh_key=None)
    with pytest.raises(InvalidField):
        parse(frame("finish", confirm=ok["confirm"]))
