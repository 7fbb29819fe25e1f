"""Deploy specs: every format carries exactly the secrets and certificate the agent will read."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from xml.etree import ElementTree

import defusedxml.ElementTree
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firsttrust.agent.sources.encodings import decode_properties, decode_value
from firsttrust.agent.sources.ovfenv import parse_ovf_env
from firsttrust import deployment
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import ENROLL_WINDOW, REQUESTER_CERT, SEC_A, SEC_B, PropertyEncodingError, encode_value
from firsttrust.errors import FirsttrustError, InvalidCertificate, InvalidSecret
from firsttrust.identity import certificate_der
from firsttrust.ovfenv import OvfEnvValueError, serialize_ovf_env
from firsttrust.requester.deployspec import (
    FORMATS,
    HARDENING_VMX_SETTINGS,
    OVF_ENVELOPE_NS,
    InvalidDeploySpec,
    deployment_properties,
    render,
    secrets_from_json,
    secrets_to_json,
    vmx_line,
)

OVF = f"{{{OVF_ENVELOPE_NS}}}"
# An operator-supplied pair with every character the VMX and XML writers must escape.
AWKWARD = EnrollmentSecrets('quote"pipe|hash#amp&lt<gt>', "apos'back\\slash|7C|22-percent%")


@pytest.fixture
def full(secrets, requester_identity):
    properties = deployment_properties(secrets, requester_cert=requester_identity.cert_pem, enroll_window=" 90m ")
    return secrets, requester_identity.cert_pem.decode("ascii"), properties


# --- a reference reader for .vmx lines: open-vm-tools lib/dict/dictll.c and lib/misc/escape.c ---


def escape_undo(text: str) -> str:
    """Escape_Undo('|'): '|' + two hex digits is a byte; anything else is literal."""
    out, i = [], 0
    while i < len(text):
        hex_digits = text[i + 1 : i + 3]
        if text[i] == "|" and len(hex_digits) == 2 and all(c in "0123456789abcdefABCDEF" for c in hex_digits):
            out.append(chr(int(hex_digits, 16)))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def vmx_settings(text: str) -> dict[str, str]:
    """DictLL_UnmarshalLine for each line: `name = "quoted-value"`, or a comment.

    Lines end at LF only, as in dictll.c (str.splitlines would also split at U+0085 and U+2028).
    """
    settings_ = {}
    for line in text.removesuffix("\n").split("\n"):
        if line.lstrip(" \t").startswith("#"):
            continue
        name, equals, rest = line.partition("=")
        rest = rest.strip(" \t")
        assert equals and name.strip(" \t") and rest[0] == rest[-1] == '"' and '"' not in rest[1:-1], line
        settings_[name.strip(" \t")] = escape_undo(rest[1:-1])
    return settings_


# --- the properties ---------------------------------------------------------------------------------


def test_properties_name_the_keys_the_agent_reads(full):
    secrets, pem, properties = full
    assert properties == {
        SEC_A: secrets.sec_a,
        SEC_B: secrets.sec_b,
        REQUESTER_CERT: base64.b64encode(pem.encode()).decode(),
        REQUESTER_CERT + ".encoding": "base64",
        ENROLL_WINDOW: "90m",
    }


def test_minimal_properties_are_the_two_secrets(secrets):
    assert deployment_properties(secrets) == {SEC_A: secrets.sec_a, SEC_B: secrets.sec_b}


def test_a_der_certificate_is_injected_as_pem(secrets, requester_identity):
    properties = deployment_properties(secrets, requester_cert=certificate_der(requester_identity.cert_pem))
    assert decode_properties(properties)[REQUESTER_CERT] == requester_identity.cert_pem.decode()


@pytest.mark.parametrize("cert", [b"", b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", b"\x30\x03"])
def test_an_invalid_certificate_is_refused(secrets, cert):
    with pytest.raises(InvalidCertificate):
        deployment_properties(secrets, requester_cert=cert)


@pytest.mark.parametrize("window", ["", "0", "-5", "1y", "366d", "24 h"])
def test_an_invalid_enrollment_window_is_refused(secrets, window):
    with pytest.raises(InvalidDeploySpec, match="enrollment window"):
        deployment_properties(secrets, enroll_window=window)


# --- ovf-env --------------------------------------------------------------------------------------


def test_ovf_env_gives_the_agent_exactly_the_secrets_and_certificate(full):
    secrets, pem, properties = full
    env = parse_ovf_env(render(properties, "ovf-env"))
    assert decode_properties(env.properties) == {
        SEC_A: secrets.sec_a, SEC_B: secrets.sec_b, REQUESTER_CERT: pem, ENROLL_WINDOW: "90m",
    }


def test_ovf_env_carries_awkward_operator_secrets():
    env = parse_ovf_env(render(deployment_properties(AWKWARD), "ovf-env"))
    assert decode_properties(env.properties) == {SEC_A: AWKWARD.sec_a, SEC_B: AWKWARD.sec_b}


def test_every_format_is_deterministic(full):
    *_, properties = full
    for spec_format in FORMATS:
        assert render(properties, spec_format) == render(dict(properties), spec_format)


def test_unknown_format_is_refused(secrets):
    with pytest.raises(InvalidDeploySpec, match="unknown format"):
        render(deployment_properties(secrets), "yaml")


# --- ovf-properties -------------------------------------------------------------------------------


def test_ovf_properties_is_a_well_formed_product_section(full):
    secrets, pem, properties = full
    section = defusedxml.ElementTree.fromstring(render(properties, "ovf-properties"))
    assert section.tag == OVF + "ProductSection"
    # Without ovf:class / ovf:instance the environment keys are exactly ours (DSP0243 9.5).
    assert section.get(OVF + "class") is None and section.get(OVF + "instance") is None
    assert section[0].tag == OVF + "Info"  # Section_Type: Info comes first
    found = {}
    for element in section.findall(OVF + "Property"):
        key = element.get(OVF + "key")
        found[key] = element.get(OVF + "value")
        assert element.get(OVF + "type") == "string"
        assert element.find(OVF + "Label").text and element.find(OVF + "Description").text
        assert element.get(OVF + "password") == ("true" if key in (SEC_A, SEC_B) else None), key
    assert found == properties
    assert decode_properties(found)[REQUESTER_CERT] == pem


def test_ovf_properties_values_survive_xml_escaping():
    properties = deployment_properties(AWKWARD)
    section = ElementTree.fromstring(render(properties, "ovf-properties"))
    values = {e.get(OVF + "key"): e.get(OVF + "value") for e in section.iter(OVF + "Property")}
    assert values == properties


# --- extraconfig ----------------------------------------------------------------------------------


def test_extraconfig_holds_the_guestinfo_twins_and_the_hardening_settings(full):
    secrets, pem, properties = full
    settings_ = vmx_settings(render(properties, "extraconfig").decode())
    twins = {name: value for name, value in settings_.items() if name.startswith("guestinfo.")}
    assert twins == {deployment.guestinfo_key(key): value for key, value in properties.items()}
    assert decode_properties({k.removeprefix("guestinfo."): v for k, v in twins.items()})[REQUESTER_CERT] == pem
    assert {name: settings_[name] for name, _ in HARDENING_VMX_SETTINGS} == dict(HARDENING_VMX_SETTINGS)


def test_vmx_escaping_matches_dictll():
    assert vmx_line("k", 'a"b|c\nd\te\x7f#é') == 'k = "a|22b|7Cc|0Ad\te|7F#é"'
    assert vmx_line("k", "") == 'k = ""'


def test_extraconfig_carries_awkward_operator_secrets():
    settings_ = vmx_settings(render(deployment_properties(AWKWARD), "extraconfig").decode())
    assert settings_["guestinfo.firsttrust.sec-a"] == AWKWARD.sec_a
    assert settings_["guestinfo.firsttrust.sec-b"] == AWKWARD.sec_b


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_vmx_escaping_round_trip(value):
    line = vmx_line("guestinfo.k", value)
    assert "\n" not in line
    assert vmx_settings(line) == {"guestinfo.k": value}


def test_vmx_refuses_nul_and_does_not_echo_the_value():
    with pytest.raises(InvalidDeploySpec) as info:
        vmx_line("guestinfo.k", "s3cret\x00")
    assert "s3cret" not in str(info.value) and "guestinfo.k" in str(info.value)


# --- the secrets file -------------------------------------------------------------------------------


def test_secrets_file_round_trip(secrets):
    data = secrets_to_json(secrets)
    assert json.loads(data) == {"sec_a": secrets.sec_a, "sec_b": secrets.sec_b}
    assert secrets_from_json(data) == secrets


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", InvalidDeploySpec),
        (b"\xff", InvalidDeploySpec),
        (b"[1]", InvalidDeploySpec),
        (b'{"sec_a": "VALUE-ONE-0123456789abcdef"}', InvalidDeploySpec),
        (b'{"sec_a": "VALUE-ONE-0123456789abcdef", "sec_b": "VALUE-TWO-0123456789abcdef", "x": 1}', InvalidDeploySpec),
        (b'{"sec_a": "VALUE-ONE-0123456789abcdef", "sec_a": "VALUE-TWO-0123456789abcdef"}', InvalidDeploySpec),
        (b'{"VALUE-ONE-0123456789abcdef": 1, "sec_b": "VALUE-TWO-0123456789abcdef"}', InvalidDeploySpec),
        (b'{"sec_a": "VALUE-ONE", "sec_b": "VALUE-TWO-0123456789abcdef"}', InvalidSecret),
        (b'{"sec_a": "VALUE-ONE-0123456789abcdef", "sec_b": "VALUE-ONE-0123456789abcdef"}', InvalidSecret),
        (b'{"sec_a": "VALUE ONE 0123456789abcdef", "sec_b": "VALUE-TWO-0123456789abcdef"}', InvalidSecret),
        (b'{"sec_a": 12345678901234567890123, "sec_b": "VALUE-TWO-0123456789abcdef"}', InvalidSecret),
    ],
)
def test_bad_secrets_files_are_refused_without_echoing_a_value(data, error):
    with pytest.raises(error) as info:
        secrets_from_json(data)
    assert "VALUE" not in str(info.value) and "\n" not in str(info.value)


# --- the shared writer and encoder in the core -----------------------------------------------------


def test_core_writer_errors_are_firsttrust_errors():
    with pytest.raises(OvfEnvValueError) as info:
        serialize_ovf_env({"k": "s3cret\x00"})
    assert isinstance(info.value, FirsttrustError) and info.value.code == "ovf_env"
    assert "s3cret" not in str(info.value)


def test_core_encoder_is_deterministic_and_the_agent_decodes_it(secrets):
    for encoding in deployment.ENCODINGS:
        text = encode_value(secrets.sec_a, encoding)
        assert text == encode_value(secrets.sec_a, encoding)
        assert decode_value(text, encoding) == secrets.sec_a


def test_core_encoder_errors_are_firsttrust_errors():
    with pytest.raises(PropertyEncodingError) as info:
        encode_value("s3cret", "rot13")
    assert isinstance(info.value, FirsttrustError) and "s3cret" not in str(info.value)


# --- docs/deployment.md shows what the code writes --------------------------------------------------


DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
DOC_EXAMPLE = EnrollmentSecrets("EXAMPLE-sec-a-never-use-this-value", "EXAMPLE-sec-b-never-use-this-value")


@pytest.mark.parametrize("spec_format", ["ovf-properties", "extraconfig"])
def test_the_operator_guide_examples_are_generated_output(spec_format):
    text = DOC.read_text()
    marker = f"<!-- generated: EXAMPLE secrets, --enroll-window 24h, --format {spec_format} -->\n"
    block = text[text.index(marker) + len(marker):]
    block = block[block.index("\n") + 1 : block.index("```\n", block.index("\n"))]
    assert block.encode() == render(deployment_properties(DOC_EXAMPLE, enroll_window="24h"), spec_format)


def test_govc_options_carry_the_secrets_and_the_documented_command_keeps_them_out_of_argv(tmp_path):
    import re
    import shutil
    import subprocess

    from firsttrust.credentials import EnrollmentSecrets
    from firsttrust.requester.deployspec import deployment_properties, render

    secrets = EnrollmentSecrets("Odd'Quote\"Secret$(x)-123", EnrollmentSecrets.generate().sec_b)
    options = json.loads(render(deployment_properties(secrets), "govc"))
    assert {m["Key"]: m["Value"] for m in options["PropertyMapping"]} == {
        "firsttrust.sec-a": secrets.sec_a, "firsttrust.sec-b": secrets.sec_b}
    (tmp_path / "app-01.govc.json").write_text(json.dumps(options))
    # The command docs/deployment.md tells the user to run, against a govc that records its argv.
    doc = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
    command = re.search(r"^(govc import\.ova -options=\S+ .*)$", doc, flags=re.M).group(1)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "govc").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$GOVC_ARGS"\n')
    (fake_bin / "govc").chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "GOVC_ARGS": str(tmp_path / "args")}
    result = subprocess.run([shutil.which("sh"), "-c", command.replace("app-01.govc.json", "app-01.govc.json")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "args").read_text()
    assert args.startswith("import.ova\n-options=")
    assert secrets.sec_a not in args and secrets.sec_b not in args and secrets.sec_b[:12] not in args


def test_govc_options_never_map_a_property_the_ova_fixes(requester_identity):
    """vCenter refuses a value for an ovf:userConfigurable="false" property
    (NotUserConfigurableProperty): the encoding sibling stays the OVA's default."""
    from firsttrust.requester.deployspec import deployment_properties, render

    properties = deployment_properties(EnrollmentSecrets.generate(), requester_cert=requester_identity.cert_pem)
    assert REQUESTER_CERT + ".encoding" in properties
    options = json.loads(render(properties, "govc"))
    assert [m["Key"] for m in options["PropertyMapping"]] == [SEC_A, SEC_B, REQUESTER_CERT]
