"""OVF environment (DSP0243): parse as vCenter delivers it, refuse hostile XML, write, scrub."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firsttrust.agent.errors import OvfEnvError
from firsttrust.agent.sources.ovfenv import (
    MAX_DOCUMENT_BYTES,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    OvfEnvironment,
    PlatformInfo,
    parse_ovf_env,
    remove_properties,
    serialize_ovf_env,
)

SECRET = "S3cr3t-never-in-a-message"

# Mirrors what vCenter puts in guestinfo.ovfEnv (layout and namespaces as in open-vm-tools'
# and cloud-init's test data; values are ours).
VCENTER_DOC = f"""<?xml version="1.0" encoding="UTF-8"?>
<Environment
     xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv"
     oe:id=""
     ve:vCenterId="vm-1137">
   <PlatformSection>
      <Kind>VMware ESXi</Kind>
      <Version>8.0.3</Version>
      <Vendor>VMware, Inc.</Vendor>
      <Locale>en_US</Locale>
   </PlatformSection>
   <PropertySection>
         <Property oe:key="vami.hostname" oe:value="appliance-7"/>
         <Property oe:key="firsttrust.sec_a" oe:value="{SECRET}"/>
         <Property oe:key="firsttrust.sec_b.encoding" oe:value="base64"/>
         <Property oe:key="guestinfo.specialchars" oe:value="&amp; &lt; &gt; &apos; &quot;"/>
         <Property oe:key="firsttrust.sec_b" oe:value="c2VjLWI="/>
   </PropertySection>
   <ve:EthernetAdapterSection>
      <ve:Adapter ve:mac="00:50:56:00:00:01" ve:network="VM Network" ve:unitNumber="7"/>
   </ve:EthernetAdapterSection>
</Environment>
""".encode()

# A VM inside a vApp: its own properties at top level, each sibling's under an Entity
# (DSP0243 clause 11).
VAPP_DOC = b"""<?xml version="1.0" encoding="UTF-8"?>
<oe:Environment xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="web-1">
  <oe:PropertySection>
    <oe:Property oe:key="role" oe:value="web"/>
  </oe:PropertySection>
  <oe:Entity oe:id="db-1">
    <oe:PropertySection>
      <oe:Property oe:key="role" oe:value="db"/>
      <oe:Property oe:key="firsttrust.sec_a" oe:value="sibling-secret"/>
    </oe:PropertySection>
  </oe:Entity>
</oe:Environment>
"""


def env_with(properties_xml: str, root_attrs: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" '
        f'xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" {root_attrs}>\n'
        f"<PropertySection>{properties_xml}</PropertySection>\n</Environment>\n"
    ).encode()


def refused(data: bytes) -> OvfEnvError:
    with pytest.raises(OvfEnvError) as info:
        parse_ovf_env(data)
    error = info.value
    assert error.code == "ovf_env"
    assert SECRET not in str(error)
    assert "\n" not in str(error)
    return error


# --- the document vCenter delivers -----------------------------------------------------------


def test_vcenter_document_properties_in_document_order():
    env = parse_ovf_env(VCENTER_DOC)
    assert list(env.properties.items()) == [
        ("vami.hostname", "appliance-7"),
        ("firsttrust.sec_a", SECRET),
        ("firsttrust.sec_b.encoding", "base64"),
        ("guestinfo.specialchars", "& < > ' \""),
        ("firsttrust.sec_b", "c2VjLWI="),
    ]


def test_vcenter_document_ids_and_platform():
    env = parse_ovf_env(VCENTER_DOC)
    assert env.environment_id == ""
    assert env.vcenter_id == "vm-1137"
    assert env.platform == PlatformInfo("VMware ESXi", "8.0.3", "VMware, Inc.", "en_US")


def test_environment_is_frozen():
    env = parse_ovf_env(VCENTER_DOC)
    with pytest.raises(AttributeError):
        env.environment_id = "x"  # type: ignore[misc]


def test_missing_oe_id_is_none_and_prefixed_elements_are_accepted():
    env = parse_ovf_env(VAPP_DOC)
    assert env.environment_id == "web-1"
    assert parse_ovf_env(env_with("")).environment_id is None


def test_entity_properties_belong_to_siblings_and_are_ignored():
    env = parse_ovf_env(VAPP_DOC)
    assert env.properties == {"role": "web"}


def test_empty_property_section_and_no_platform():
    env = parse_ovf_env(env_with(""))
    assert env == OvfEnvironment(properties={})


def test_unknown_sections_and_foreign_elements_are_ignored():
    doc = env_with(
        '<x:Hint xmlns:x="urn:example"/><Property oe:key="k" oe:value="v"/>',
        root_attrs="",
    ).replace(
        b"</Environment>",
        b'<x:Other xmlns:x="urn:example"><Property oe:key="no" oe:value="no"/></x:Other></Environment>',
    )
    assert parse_ovf_env(doc).properties == {"k": "v"}


def test_value_newlines_survive_as_character_references():
    doc = env_with('<Property oe:key="pem" oe:value="line1&#10;line2&#13;&#10;"/>')
    assert parse_ovf_env(doc).properties["pem"] == "line1\nline2\r\n"


def test_utf8_bom_is_accepted():
    assert parse_ovf_env(b"\xef\xbb\xbf" + VCENTER_DOC).vcenter_id == "vm-1137"


# --- hostile XML -------------------------------------------------------------------------------


def test_xxe_external_entity_is_refused():
    doc = (
        b'<?xml version="1.0"?>\n<!DOCTYPE Environment [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        + env_with('<Property oe:key="k" oe:value="&x;"/>').split(b"\n", 1)[1]
    )
    error = refused(doc)
    assert "root:" not in str(error)


def test_external_dtd_is_refused():
    doctype = b'<!DOCTYPE Environment SYSTEM "http://attacker.invalid/x.dtd">\n'
    doc = b'<?xml version="1.0"?>\n' + doctype + env_with("").split(b"\n", 1)[1]
    refused(doc)


def test_billion_laughs_is_refused():
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    )
    doc = f'<?xml version="1.0"?>\n<!DOCTYPE Environment [{entities}]>\n'.encode() + env_with(
        '<Property oe:key="k" oe:value="&lol9;"/>'
    ).split(b"\n", 1)[1]
    assert "DTD" in str(refused(doc))


def test_any_dtd_is_refused_even_a_harmless_one():
    doc = b'<?xml version="1.0"?>\n<!DOCTYPE Environment>\n' + env_with("").split(b"\n", 1)[1]
    assert "DTD" in str(refused(doc))


def test_malformed_xml_is_refused_with_position():
    error = refused(env_with('<Property oe:key="k" oe:value="v">'))
    assert "line" in str(error)


@pytest.mark.parametrize("data", [b"", b"   ", b"<", b"not xml at all", b"<Environment"])
def test_not_xml_is_refused(data):
    refused(data)


# --- size caps -------------------------------------------------------------------------------------


def padded_to(size: int) -> bytes:
    base = env_with('<Property oe:key="k" oe:value="v"/>')
    return base[:-1] + b" " * (size - len(base)) + b"\n"


def test_document_at_the_cap_parses():
    doc = padded_to(MAX_DOCUMENT_BYTES)
    assert len(doc) == MAX_DOCUMENT_BYTES
    assert parse_ovf_env(doc).properties == {"k": "v"}


def test_document_over_the_cap_is_refused_before_parsing():
    # Not well-formed either: the size check must come first to produce this message.
    error = refused(b"<" * (MAX_DOCUMENT_BYTES + 1))
    assert "cap" in str(error)
    assert "cap" in str(refused(padded_to(MAX_DOCUMENT_BYTES + 1)))


def test_value_at_the_cap_parses_and_one_byte_more_is_refused():
    ok = env_with(f'<Property oe:key="k" oe:value="{"é" * (MAX_VALUE_BYTES // 2)}"/>')
    assert len(parse_ovf_env(ok).properties["k"].encode()) == MAX_VALUE_BYTES
    big = SECRET + "x" * (MAX_VALUE_BYTES + 1 - len(SECRET))
    error = refused(env_with(f'<Property oe:key="firsttrust.sec_a" oe:value="{big}"/>'))
    assert "firsttrust.sec_a" in str(error) and "cap" in str(error)


def test_key_over_the_cap_is_refused():
    refused(env_with(f'<Property oe:key="{"k" * (MAX_KEY_BYTES + 1)}" oe:value="v"/>'))


# --- DSP0243 strictness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "namespace",
    ["http://schemas.dmtf.org/ovf/envelope/1", "http://schemas.dmtf.org/ovf/environment/2", ""],
)
def test_wrong_root_namespace_is_refused(namespace):
    doc = VCENTER_DOC.replace(
        b'xmlns="http://schemas.dmtf.org/ovf/environment/1"', f'xmlns="{namespace}"'.encode()
    )
    assert doc != VCENTER_DOC
    assert "root" in str(refused(doc))


def test_wrong_root_element_is_refused():
    refused(b'<Envelope xmlns="http://schemas.dmtf.org/ovf/environment/1"/>')


def test_unqualified_key_attribute_is_refused():
    error = refused(env_with(f'<Property key="firsttrust.sec_a" oe:value="{SECRET}"/>'))
    assert "unqualified" in str(error)


def test_unqualified_value_attribute_is_refused():
    refused(env_with(f'<Property oe:key="k" oe:value="v" value="{SECRET}"/>'))


def test_property_in_no_namespace_is_refused():
    doc = env_with('<Property xmlns="" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:key="k" oe:value="v"/>')
    assert "namespace" in str(refused(doc))


def test_property_section_in_another_namespace_is_refused():
    doc = VCENTER_DOC.replace(b"<PropertySection>", b'<PropertySection xmlns="urn:wrong">')
    assert "namespace" in str(refused(doc))


def test_key_in_another_namespace_is_not_a_key():
    refused(env_with('<Property xmlns:x="urn:x" x:key="k" oe:value="v"/>'))


@pytest.mark.parametrize(
    "prop",
    ['<Property oe:value="v"/>', '<Property oe:key="k"/>', '<Property oe:key="" oe:value="v"/>'],
)
def test_missing_key_or_value_is_refused(prop):
    refused(env_with(prop))


def test_duplicate_key_is_refused():
    doc = env_with(
        f'<Property oe:key="firsttrust.sec_a" oe:value="{SECRET}"/>'
        '<Property oe:key="firsttrust.sec_a" oe:value="other"/>'
    )
    assert "firsttrust.sec_a" in str(refused(doc))


def test_duplicate_key_across_two_property_sections_is_refused():
    doc = env_with('<Property oe:key="k" oe:value="1"/>').replace(
        b"</Environment>", b'<PropertySection><Property oe:key="k" oe:value="2"/></PropertySection></Environment>'
    )
    refused(doc)


# --- encodings -------------------------------------------------------------------------------------


def test_non_utf8_bytes_are_refused():
    doc = env_with('<Property oe:key="k" oe:value="caf\xe9"/>').replace("é".encode(), b"\xe9")
    assert b"\xe9" in doc
    assert "UTF-8" in str(refused(doc))


def test_utf16_document_is_refused():
    refused(VCENTER_DOC.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"))


def test_declared_latin1_is_refused_even_when_bytes_are_ascii():
    refused(VCENTER_DOC.replace(b'encoding="UTF-8"', b"encoding='ISO-8859-1'"))


# --- writing ---------------------------------------------------------------------------------------


def test_serialize_mirrors_vcenter_layout():
    doc = serialize_ovf_env({"a": "1"}, vcenter_id="vm-9").decode()
    assert doc.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Environment\n')
    for declaration in (
        'xmlns="http://schemas.dmtf.org/ovf/environment/1"',
        'xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"',
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"',
        'xmlns:ve="http://www.vmware.com/schema/ovfenv"',
        'oe:id=""',
        've:vCenterId="vm-9"',
        "<Kind>VMware ESXi</Kind>",
        "<Locale>en</Locale>",
        '<Property oe:key="a" oe:value="1"/>',
    ):
        assert declaration in doc
    assert doc.index("<PlatformSection>") < doc.index("<PropertySection>")


def test_serialize_parse_round_trip_with_ids_and_platform():
    platform = PlatformInfo("VMware ESXi", "7.0.3", "VMware, Inc.", "de_DE")
    props = {"firsttrust.cert": "-----BEGIN\nAAA\r\n-----END\n", "x": "\t<&>\"'", "empty": ""}
    env = parse_ovf_env(serialize_ovf_env(props, "vm-a", vcenter_id=None, platform=platform))
    assert env == OvfEnvironment(props, "vm-a", None, None, platform)
    assert list(env.properties) == list(props)


xml_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff").filter(
        lambda c: c in "\t\n\r" or ord(c) >= 0x20
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(xml_text.filter(bool), xml_text, max_size=8), xml_text)
def test_serialize_parse_round_trip_property(properties, environment_id):
    env = parse_ovf_env(serialize_ovf_env(properties, environment_id))
    assert env.properties == properties
    assert list(env.properties) == list(properties)
    assert env.environment_id == environment_id


@pytest.mark.parametrize(
    "properties",
    [{"": "v"}, {"k": "nul\x00"}, {"k": "bell\x07"}, {"k": "lone\ud800"}, {"k": "x" * (MAX_VALUE_BYTES + 1)}],
)
def test_serialize_refuses_what_xml_or_the_parser_cannot_carry(properties):
    with pytest.raises(OvfEnvError):
        serialize_ovf_env(properties)


def test_serialize_refuses_a_document_over_the_cap():
    many = {f"k{i}": "v" * MAX_VALUE_BYTES for i in range(MAX_DOCUMENT_BYTES // MAX_VALUE_BYTES + 1)}
    with pytest.raises(OvfEnvError, match="cap"):
        serialize_ovf_env(many)


# --- scrubbing -------------------------------------------------------------------------------------


def test_remove_properties_drops_ours_and_keeps_everything_else_byte_for_byte():
    scrubbed = remove_properties(VCENTER_DOC, "firsttrust.")
    expected = b"".join(
        line for line in VCENTER_DOC.splitlines(keepends=True) if b'oe:key="firsttrust.' not in line
    )
    assert scrubbed == expected
    assert SECRET.encode() not in scrubbed
    assert parse_ovf_env(scrubbed).properties == {
        "vami.hostname": "appliance-7",
        "guestinfo.specialchars": "& < > ' \"",
    }


def test_remove_properties_without_match_returns_the_same_bytes():
    assert remove_properties(VCENTER_DOC, "nothing.") == VCENTER_DOC


def test_remove_properties_also_scrubs_entity_sections():
    scrubbed = remove_properties(VAPP_DOC, "firsttrust.")
    assert b"sibling-secret" not in scrubbed
    assert scrubbed.count(b"<oe:Property ") == 2
    assert parse_ovf_env(scrubbed).properties == {"role": "web"}


def test_remove_properties_handles_end_tags_quoted_gt_and_shared_lines():
    doc = env_with(
        '<Property oe:key="keep" oe:value="a>b"/>'
        '<Property oe:key="firsttrust.x" oe:value="x>y"><!-- c --></Property>'
        '<Property oe:key="firsttrust.y" oe:value="q"/><Property oe:key="keep2" oe:value="k"/>'
    )
    scrubbed = remove_properties(doc, "firsttrust.")
    assert b"firsttrust" not in scrubbed
    assert parse_ovf_env(scrubbed).properties == {"keep": "a>b", "keep2": "k"}
    assert b'<Property oe:key="keep" oe:value="a>b"/><Property oe:key="keep2" oe:value="k"/>' in scrubbed


def test_remove_properties_validates_first():
    with pytest.raises(OvfEnvError):
        remove_properties(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x/>', "firsttrust.")
    with pytest.raises(ValueError):
        remove_properties(VCENTER_DOC, "")


# --- robustness -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_ovf_env_error(data):
    try:
        env = parse_ovf_env(data)
    except OvfEnvError:
        return
    assert isinstance(env.properties, dict)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VCENTER_DOC) - 1), st.binary(min_size=1, max_size=8))
def test_corrupted_vcenter_document_only_ever_raises_ovf_env_error(offset, junk):
    data = VCENTER_DOC[:offset] + junk + VCENTER_DOC[offset + len(junk) :]
    try:
        parse_ovf_env(data)
        remove_properties(data, "firsttrust.")
    except OvfEnvError:
        pass
