"""Writing the OVF environment document (DMTF DSP0243 clause 11), shared by both sides.

The requester writes the document a deployment would deliver (deploy specs, the lab's emulated
vCenter); the agent parses it (`firsttrust.agent.sources.ovfenv`, which imports the names, limits and checks
below so that writer and parser cannot drift apart). Pure string work: no files, no parser.

The shape vCenter delivers (seen in open-vm-tools' and cloud-init's test data)::

    <?xml version="1.0" encoding="UTF-8"?>
    <Environment
         xmlns="http://schemas.dmtf.org/ovf/environment/1"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
         xmlns:ve="http://www.vmware.com/schema/ovfenv"
         oe:id=""
         ve:vCenterId="vm-42">
       <PlatformSection>
          <Kind>VMware ESXi</Kind> <Version>8.0.3</Version>
          <Vendor>VMware, Inc.</Vendor> <Locale>en</Locale>
       </PlatformSection>
       <PropertySection>
             <Property oe:key="firsttrust.sec-a" oe:value="..."/>
       </PropertySection>
       <ve:EthernetAdapterSection>...</ve:EthernetAdapterSection>
    </Environment>
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FirsttrustError

# DSP0243 clause 11 and its schema (DSP8027): one namespace for the elements and for the
# qualified attributes (oe:key, oe:value, oe:id).
OVFENV_NS = "http://schemas.dmtf.org/ovf/environment/1"
VMWARE_OVFENV_NS = "http://www.vmware.com/schema/ovfenv"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

# A vCenter document for a few dozen properties is a few KiB; the largest value we expect is
# a PEM certificate chain (a few KiB). 1 MiB bounds what expat and ElementTree hold in memory
# while leaving two orders of magnitude of headroom. Checked on the raw bytes, before parsing.
MAX_DOCUMENT_BYTES = 1024 * 1024
# Per property value, in UTF-8 bytes: a gzip+base64 value decodes to at most
# deployment.MAX_DECODED_BYTES (64 KiB), and no value of ours needs more than that.
MAX_VALUE_BYTES = 64 * 1024
# Keys are identifiers (`firsttrust.sec-a`); anything this long is not one, and keys do
# appear in error messages.
MAX_KEY_BYTES = 1024

# Default platform for serialize_ovf_env: what an ESXi 8 host behind vCenter writes.
DEFAULT_KIND = "VMware ESXi"
DEFAULT_VERSION = "8.0.3"
DEFAULT_VENDOR = "VMware, Inc."
DEFAULT_LOCALE = "en"

# Characters XML 1.0 cannot carry at all, not even as character references (section 2.2).
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class OvfEnvValueError(FirsttrustError):
    """A key, value or document cannot be written as (or read from) an OVF environment."""

    code = "ovf_env"


@dataclass(frozen=True)
class PlatformInfo:
    """The PlatformSection (DSP0243 clause 11): who is running the VM. Informational only."""

    kind: str | None = None
    version: str | None = None
    vendor: str | None = None
    locale: str | None = None


def serialize_ovf_env(
    properties: dict[str, str],
    environment_id: str = "",
    *,
    vcenter_id: str | None = "vm-1",
    platform: PlatformInfo | None = None,
) -> bytes:
    """Write a complete OVF environment document the way vCenter delivers it.

    Values are escaped so that they survive attribute-value normalization (XML 1.0 section
    3.3.3): tab, CR and LF become character references, so a PEM value keeps its newlines.

    Args:
        properties: key -> value, written in this order.
        environment_id: the `oe:id` attribute; vCenter writes "" for a VM outside a vApp.
        vcenter_id: the `ve:vCenterId` attribute, or None to leave it out.
        platform: the PlatformSection; defaults to an ESXi 8 host.

    Returns:
        The UTF-8 document, accepted by agent.sources.ovfenv.parse_ovf_env.

    Raises:
        OvfEnvValueError: a key is empty, a key or value holds a character XML cannot carry
            (NUL, most C0 controls, lone surrogates), or a key, value or the whole document
            is over its cap.
    """
    platform = platform or PlatformInfo(DEFAULT_KIND, DEFAULT_VERSION, DEFAULT_VENDOR, DEFAULT_LOCALE)
    root_attributes = [
        'xmlns="' + OVFENV_NS + '"',
        'xmlns:xsi="' + XSI_NS + '"',
        'xmlns:oe="' + OVFENV_NS + '"',
        'xmlns:ve="' + VMWARE_OVFENV_NS + '"',
        "oe:id=" + xml_attribute(environment_id, "oe:id"),
    ]
    if vcenter_id is not None:
        root_attributes.append("ve:vCenterId=" + xml_attribute(vcenter_id, "ve:vCenterId"))
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<Environment"]
    lines += ["     " + attribute for attribute in root_attributes[:-1]]
    lines += ["     " + root_attributes[-1] + ">", "   <PlatformSection>"]
    for tag, text in (
        ("Kind", platform.kind),
        ("Version", platform.version),
        ("Vendor", platform.vendor),
        ("Locale", platform.locale),
    ):
        if text is not None:
            lines.append(f"      <{tag}>{xml_text(text, tag)}</{tag}>")
    lines += ["   </PlatformSection>", "   <PropertySection>"]
    for key, value in properties.items():
        check_key(key)
        check_value_size(key, value)
        key_text = xml_attribute(key, "a key")
        value_text = xml_attribute(value, f"the value of {show_key(key)}")
        lines.append(f"         <Property oe:key={key_text} oe:value={value_text}/>")
    lines += ["   </PropertySection>", "</Environment>", ""]
    document = "\n".join(lines).encode("utf-8")
    if len(document) > MAX_DOCUMENT_BYTES:
        raise OvfEnvValueError(
            f"OVF environment would be {len(document)} bytes, over the {MAX_DOCUMENT_BYTES}-byte cap"
        )
    return document


# --- escaping (also used for OVF descriptor fragments) --------------------------------------------


def xml_attribute(value: str, what: str) -> str:
    """`value` as a double-quoted XML attribute that parses back to exactly `value`.

    Tab, CR and LF are written as character references: written literally, attribute-value
    normalization (XML 1.0 section 3.3.3) would turn each into a space.

    Raises:
        OvfEnvValueError: value holds a character XML 1.0 cannot carry; `what` names it.
    """
    _check_xml_chars(value, what)
    escaped = (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )
    return f'"{escaped}"'


def xml_text(value: str, what: str) -> str:
    """`value` as element content. CR is a reference: parsers turn a literal CR into LF (2.11).

    Raises:
        OvfEnvValueError: value holds a character XML 1.0 cannot carry; `what` names it.
    """
    _check_xml_chars(value, what)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _check_xml_chars(value: str, what: str) -> None:
    bad = _NOT_XML_CHAR.search(value)
    if bad:
        raise OvfEnvValueError(f"{what} contains a character XML 1.0 cannot carry (U+{ord(bad.group()):04X})")


# --- checks shared with the parser ------------------------------------------------------------------


def check_key(key: str, error: type[FirsttrustError] = OvfEnvValueError) -> None:
    """Refuse an empty key or one over MAX_KEY_BYTES.

    Args:
        key: the property key.
        error: what to raise; the agent's parser passes its own OvfEnvError.
    """
    if not key:
        raise error("Property has an empty oe:key")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise error(f"a property key is over the {MAX_KEY_BYTES}-byte cap")


def check_value_size(key: str, value: str, error: type[FirsttrustError] = OvfEnvValueError) -> None:
    """Refuse a value over MAX_VALUE_BYTES (UTF-8). The message names the key, not the value."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise error(f"value of {show_key(key)} is {size} bytes, over the {MAX_VALUE_BYTES}-byte cap")


def show_key(name: str, limit: int = 80) -> str:
    """A key or tag for an error message: quoted, one line, bounded. Never used for values."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
