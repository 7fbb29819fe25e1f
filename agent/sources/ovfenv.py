"""The OVF environment document (DMTF DSP0243 clause 11): parse it and scrub it.

vCenter hands a deployed VM its vApp properties as one XML document, the OVF environment,
either in `guestinfo.ovfEnv` or as `ovf-env.xml` on a CD-ROM labelled "OVF ENV". The
document is supplied by whoever can deploy or reconfigure the VM, so it is parsed as
hostile: size-capped before the parser sees it, no DTD, no entities, no external
references (defusedxml), and namespace-strict, so a look-alike document is refused rather
than half-read. The writer, with the names and limits both sides share, is in
`firsttrust.ovfenv` (the requester writes documents too); serialize_ovf_env here wraps it.

The document's shape as vCenter delivers it is shown in `firsttrust.ovfenv`.
"""

from __future__ import annotations

import re
import xml.parsers.expat
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree

from firsttrust import ovfenv as _writer
# One definition of the names, limits and checks for writer and parser; the caps and
# PlatformInfo are also re-exported for this module's users.
from firsttrust.ovfenv import (  # noqa: F401
    MAX_DOCUMENT_BYTES,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    OVFENV_NS,
    VMWARE_OVFENV_NS,
    OvfEnvValueError,
    PlatformInfo,
    check_key,
    check_value_size,
    show_key,
)

from ..errors import OvfEnvError

_ENVIRONMENT = f"{{{OVFENV_NS}}}Environment"
_PLATFORM_SECTION = f"{{{OVFENV_NS}}}PlatformSection"
_PROPERTY_SECTION = f"{{{OVFENV_NS}}}PropertySection"
_PROPERTY = f"{{{OVFENV_NS}}}Property"
_KEY = f"{{{OVFENV_NS}}}key"
_VALUE = f"{{{OVFENV_NS}}}value"
_ID = f"{{{OVFENV_NS}}}id"
_VCENTER_ID = f"{{{VMWARE_OVFENV_NS}}}vCenterId"
_ESX_ID = f"{{{VMWARE_OVFENV_NS}}}esxId"

# The XML declaration's encoding pseudo-attribute (XML 1.0 section 4.3.3).
_DECLARED_ENCODING = re.compile(rb"\A<\?xml[^>]*?\bencoding\s*=\s*([\"'])([A-Za-z0-9._-]*)\1")


@dataclass(frozen=True)
class OvfEnvironment:
    """What this VM was given at deployment.

    `properties` holds this VM's own properties only (not those of sibling VMs in a vApp), in
    document order. `environment_id` is `oe:id` ("" from vCenter for a lone VM, None when
    absent); `vcenter_id` is VMware's `ve:vCenterId` (the VM's managed object id, `vm-42`).
    """

    properties: dict[str, str]
    environment_id: str | None = None
    vcenter_id: str | None = None
    esx_id: str | None = None
    platform: PlatformInfo = field(default_factory=PlatformInfo)


def parse_ovf_env(data: bytes) -> OvfEnvironment:
    """Parse an OVF environment document as vCenter delivers it.

    Args:
        data: the raw document (the `guestinfo.ovfEnv` value or the ISO's `ovf-env.xml`).

    Returns:
        The environment: properties of this VM in document order, ids and platform info.

    Raises:
        OvfEnvError: the document is larger than MAX_DOCUMENT_BYTES, not UTF-8, not
            well-formed, carries a DTD, an entity declaration or an external reference, is
            not a DSP0243 Environment, has a Property without `oe:key`/`oe:value` or with an
            unqualified `key`/`value` attribute, repeats a key, or has a key or value over
            its cap. The message names keys and sizes, never a value.
    """
    root = _parse_document(data)
    return OvfEnvironment(
        properties=_own_properties(root),
        environment_id=root.get(_ID),
        vcenter_id=root.get(_VCENTER_ID),
        esx_id=root.get(_ESX_ID),
        platform=_platform(root),
    )


def serialize_ovf_env(
    properties: dict[str, str],
    environment_id: str = "",
    *,
    vcenter_id: str | None = "vm-1",
    platform: PlatformInfo | None = None,
) -> bytes:
    """firsttrust.ovfenv.serialize_ovf_env (same arguments and output), raising OvfEnvError.

    The writer lives in the core so the requester can use it; this name keeps every error of
    this module an OvfEnvError (a ConfigSourceError) for the agent's tests and the lab.

    Raises:
        OvfEnvError: whatever the core refuses (see firsttrust.ovfenv.serialize_ovf_env).
    """
    try:
        return _writer.serialize_ovf_env(properties, environment_id, vcenter_id=vcenter_id, platform=platform)
    except OvfEnvValueError as exc:
        raise OvfEnvError(str(exc)) from None


def remove_properties(data: bytes, prefix: str) -> bytes:
    """Return the same document without the Property elements whose key starts with prefix.

    Used to scrub secrets from `guestinfo.ovfEnv`. Everything else is kept byte for byte
    (declaration, namespaces, PlatformSection, VMware sections, comments, other properties);
    each removed element takes its own line's indentation with it. Matching properties in
    `Entity` sections (sibling VMs of a vApp) are removed too: a scrubber errs on the side of
    removing a secret, whoever it was meant for.

    Args:
        data: a document parse_ovf_env accepts.
        prefix: the key prefix to remove, e.g. "firsttrust.". Must not be empty.

    Returns:
        The scrubbed document (unchanged bytes if nothing matched).

    Raises:
        OvfEnvError: data is not a document parse_ovf_env accepts.
        ValueError: prefix is empty (that would remove every property: a caller bug).
    """
    if not prefix:
        raise ValueError("remove_properties needs a non-empty prefix")
    _parse_document(data)  # every check of parse_ovf_env, and the proof there is no DTD
    spans = _property_spans(data, prefix)
    out = bytearray()
    cursor = 0
    for start, end in spans:
        out += data[cursor:_line_start(data, start, cursor)]
        cursor = end
    out += data[cursor:]
    return bytes(out)


# --- parsing ---------------------------------------------------------------------------------


def _parse_document(data: bytes) -> Element:
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("OVF environment must be bytes")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise OvfEnvError(f"OVF environment is {len(data)} bytes, over the {MAX_DOCUMENT_BYTES}-byte cap")
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OvfEnvError(f"OVF environment is not UTF-8 (invalid byte at offset {exc.start})") from None
    declared = _DECLARED_ENCODING.match(bytes(data).removeprefix(b"\xef\xbb\xbf"))
    if declared and declared.group(2).lower() not in (b"utf-8", b"utf8"):
        # The bytes are valid UTF-8, but expat would decode them as declared: refuse instead.
        raise OvfEnvError("OVF environment declares an encoding other than UTF-8")
    try:
        root = defusedxml.ElementTree.fromstring(
            bytes(data), forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DTDForbidden:
        raise OvfEnvError("OVF environment contains a DTD, which is forbidden") from None
    except defusedxml.EntitiesForbidden:
        raise OvfEnvError("OVF environment declares an entity, which is forbidden") from None
    except defusedxml.ExternalReferenceForbidden:
        raise OvfEnvError("OVF environment references an external resource, which is forbidden") from None
    except defusedxml.DefusedXmlException:
        raise OvfEnvError("OVF environment uses a forbidden XML construct") from None
    except ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise OvfEnvError(f"OVF environment is not well-formed XML (line {line}, column {column})") from None
    if root.tag != _ENVIRONMENT:
        raise OvfEnvError(f"OVF environment root is {show_key(root.tag)}, not {_ENVIRONMENT} (DSP0243 clause 11)")
    return root


def _own_properties(root: Element) -> dict[str, str]:
    properties: dict[str, str] = {}
    # Only PropertySections that are direct children of Environment belong to this VM. A vApp's
    # environment also carries one `Entity` per sibling VM, each with its own PropertySection
    # (DSP0243 clause 11); those are the siblings' properties and are deliberately not read.
    for section in root:
        if not isinstance(section.tag, str):
            continue  # comment or processing instruction
        if _local_name(section.tag) == "PropertySection" and section.tag != _PROPERTY_SECTION:
            raise OvfEnvError(f"PropertySection is in namespace {show_key(_namespace(section.tag))}, not {OVFENV_NS}")
        if section.tag != _PROPERTY_SECTION:
            continue
        for element in section:
            if not isinstance(element.tag, str):
                continue
            if element.tag != _PROPERTY:
                if _local_name(element.tag) == "Property":
                    raise OvfEnvError(f"Property is in namespace {show_key(_namespace(element.tag))}, not {OVFENV_NS}")
                continue  # DSP0243 lets sections carry elements of other namespaces
            key, value = _key_value(element)
            if key in properties:
                raise OvfEnvError(f"OVF environment repeats property key {show_key(key)}")
            properties[key] = value
    return properties


def _key_value(element: Element) -> tuple[str, str]:
    # DSP0243's schema qualifies Property's attributes (oe:key, oe:value). An unqualified `key`
    # is in no namespace at all: refusing it keeps a look-alike document from being half-read.
    for unqualified in ("key", "value"):
        if unqualified in element.attrib:
            raise OvfEnvError(
                f"Property has an unqualified {unqualified!r} attribute; DSP0243 requires oe:{unqualified}"
            )
    key = element.get(_KEY)
    if key is None:
        raise OvfEnvError("Property has no oe:key attribute")
    check_key(key, OvfEnvError)
    value = element.get(_VALUE)
    if value is None:
        raise OvfEnvError(f"Property {show_key(key)} has no oe:value attribute")
    check_value_size(key, value, OvfEnvError)
    return key, value


def _platform(root: Element) -> PlatformInfo:
    section = root.find(_PLATFORM_SECTION)
    if section is None:
        return PlatformInfo()

    def text(tag: str) -> str | None:
        element = section.find(f"{{{OVFENV_NS}}}{tag}")
        return None if element is None else (element.text or "").strip()

    return PlatformInfo(kind=text("Kind"), version=text("Version"), vendor=text("Vendor"), locale=text("Locale"))


# --- scrubbing -------------------------------------------------------------------------------


def _property_spans(data: bytes, prefix: str) -> list[tuple[int, int]]:
    """Byte spans [start, end) of the outermost Property elements whose key starts with prefix.

    The caller has already parsed `data` with defusedxml, so it has no DTD; the plain expat
    parser here only reports positions. Handlers for DTD constructs refuse anyway.
    """
    parser = xml.parsers.expat.ParserCreate(namespace_separator="}")
    spans: list[tuple[int, int]] = []
    depth = 0  # >0 while inside a Property being removed
    start = 0
    empty_end = 0  # for an empty-element tag `<Property .../>`, the index just past it

    def refuse(*_args: object) -> None:
        raise OvfEnvError("OVF environment contains a DTD, which is forbidden")

    def start_element(name: str, attributes: dict[str, str]) -> None:
        nonlocal depth, start, empty_end
        if depth:
            depth += 1
        elif "{" + name == _PROPERTY and attributes.get(OVFENV_NS + "}key", "").startswith(prefix):
            depth = 1
            start = parser.CurrentByteIndex  # the "<" of the start tag
            tag_end = _tag_end(data, start)
            empty_end = tag_end if data[tag_end - 2 : tag_end] == b"/>" else 0

    def end_element(_name: str) -> None:
        nonlocal depth
        if depth:
            depth -= 1
            if not depth:
                # After an empty-element tag expat points just past it, which may be anything;
                # at a real end tag it points at its "</".
                spans.append((start, empty_end or _tag_end(data, parser.CurrentByteIndex)))

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start_element
    parser.EndElementHandler = end_element
    try:
        parser.Parse(bytes(data), True)
    except xml.parsers.expat.ExpatError as exc:  # cannot happen after _parse_document; be safe
        raise OvfEnvError(f"OVF environment is not well-formed XML (line {exc.lineno})") from None
    return spans


def _tag_end(data: bytes, index: int) -> int:
    """Index just past the `>` closing the tag that starts at index (quoted `>` skipped)."""
    quote = 0
    for position in range(index, len(data)):
        byte = data[position]
        if quote:
            if byte == quote:
                quote = 0
        elif byte in b"\"'":
            quote = byte
        elif byte == ord(">"):
            return position + 1
    raise OvfEnvError("OVF environment ends inside a tag")


def _line_start(data: bytes, start: int, floor: int) -> int:
    """Extend a removal back over its indentation and the line break before it."""
    position = start
    while position > floor and data[position - 1] in b" \t":
        position -= 1
    if position > floor and data[position - 1] == ord("\n"):
        position -= 1
        if position > floor and data[position - 1] == ord("\r"):
            position -= 1
        return position
    return start  # something else shares the line: remove the element only


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def _namespace(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""
