"""An OVA file as `firsttrust deploy --ova` reads it: checked before any VM exists, then streamed.

    ova = check_ova("firsttrust-appliance.ova")     # InvalidDeployPlan (exit 2) if unusable
    ova.descriptor                                  # the .ovf text, for OvfManager.CreateImportSpec
    with open_member(ova.path, "firsttrust-appliance-disk1.vmdk") as (size, stream): ...

An OVA is an uncompressed tar whose first member is the OVF descriptor (DSP0243 5.3); the other
members are read straight from the file as they are uploaded, never buffered whole. No pyVmomi
here (requester/vsphere.py does the calls).
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from firsttrust.errors import FirsttrustError

from .deployplan import InvalidDeployPlan

MAX_DESCRIPTOR_BYTES = 1 << 20  # firsttrust's is ~10 KiB; vCenter's wizard refuses far smaller ones than this
MIN_OVA_BYTES = 1024  # a tar header and a descriptor at least


class OvaReadError(FirsttrustError):
    """The OVA could not be read while it was being uploaded (it changed, or lacks a file its
    descriptor names): that appliance's import fails and its lease is aborted."""

    code = "ova_read"


@dataclass(frozen=True)
class DescriptorFacts:
    """What the deployer needs from an OVF descriptor: its networks (to map --network), the
    environment transports and firmware it asks for, and its ProductSection's property ids with
    their ovf:password flag (DSP0243 9.5: an id is [class.]key[.instance])."""

    networks: tuple[str, ...]
    transports: tuple[str, ...]
    firmware: str
    properties: dict[str, bool]


@dataclass(frozen=True)
class OvaFile:
    path: str
    descriptor: str
    members: dict[str, int]  # name -> size, in tar order
    size: int

    def facts(self) -> DescriptorFacts:
        """Raises: InvalidDeployPlan if the descriptor is not an OVF envelope."""
        return descriptor_facts(self.descriptor, self.path)


OVF_NS = "{http://schemas.dmtf.org/ovf/envelope/1}"
VMW_NS = "{http://www.vmware.com/schema/ovf}"


def descriptor_facts(descriptor: str, path: str = "the OVA") -> DescriptorFacts:
    """Parsed with defusedxml (no entities, no external references): an OVA may come from anywhere."""
    import defusedxml.ElementTree
    from defusedxml import DefusedXmlException
    from xml.etree.ElementTree import ParseError

    try:
        root = defusedxml.ElementTree.fromstring(descriptor)
    except (ParseError, DefusedXmlException, ValueError):
        raise InvalidDeployPlan(f"OVA {path}: the descriptor is not well-formed XML without entities") from None
    if root.tag != f"{OVF_NS}Envelope":
        raise InvalidDeployPlan(f"OVA {path}: the descriptor is not an OVF envelope")
    networks = tuple(n.get(f"{OVF_NS}name", "") for n in root.iter(f"{OVF_NS}Network"))
    hardware = next(root.iter(f"{OVF_NS}VirtualHardwareSection"), None)
    transports = tuple((hardware.get(f"{OVF_NS}transport", "") if hardware is not None else "").split())
    firmware = ""
    for config in (hardware.iter(f"{VMW_NS}Config") if hardware is not None else ()):
        if config.get(f"{VMW_NS}key") == "firmware":
            firmware = config.get(f"{VMW_NS}value", "")
    properties = {}
    for section in root.iter(f"{OVF_NS}ProductSection"):
        prefix = section.get(f"{OVF_NS}class")
        suffix = section.get(f"{OVF_NS}instance")
        for prop in section.iter(f"{OVF_NS}Property"):
            key = ".".join(p for p in (prefix, prop.get(f"{OVF_NS}key", ""), suffix) if p)
            properties[key] = prop.get(f"{OVF_NS}password", "false") == "true"
    return DescriptorFacts(networks=networks, transports=transports, firmware=firmware, properties=properties)


def check_ova(path: str) -> OvaFile:
    """Readable, an uncompressed tar, first member an .ovf of sane size that decodes as UTF-8.

    Raises:
        InvalidDeployPlan: anything else, in one line naming the file.
    """
    try:
        size = os.stat(path).st_size
        if not os.path.isfile(path):
            raise InvalidDeployPlan(f"OVA {path}: not a regular file")
        if size < MIN_OVA_BYTES:
            raise InvalidDeployPlan(f"OVA {path}: {size} bytes is too small to be an OVA")
        with tarfile.open(path, mode="r:") as tar:
            members = tar.getmembers()
            if not members or not members[0].isfile() or not members[0].name.endswith(".ovf"):
                raise InvalidDeployPlan(f"OVA {path}: the first member is not an .ovf descriptor")
            first = members[0]
            if not 0 < first.size <= MAX_DESCRIPTOR_BYTES:
                raise InvalidDeployPlan(f"OVA {path}: the descriptor is {first.size} bytes "
                                        f"(at most {MAX_DESCRIPTOR_BYTES})")
            with tar.extractfile(first) as handle:
                descriptor = handle.read(MAX_DESCRIPTOR_BYTES).decode("utf-8")
            listed = {m.name: m.size for m in members if m.isfile()}
    except InvalidDeployPlan:
        raise
    except OSError as exc:
        raise InvalidDeployPlan(f"cannot read OVA {path}: {exc.strerror or exc}") from None
    except tarfile.TarError:
        raise InvalidDeployPlan(f"OVA {path}: not an uncompressed tar archive") from None
    except UnicodeDecodeError:
        raise InvalidDeployPlan(f"OVA {path}: the descriptor is not UTF-8") from None
    return OvaFile(path=path, descriptor=descriptor, members=listed, size=size)


@contextlib.contextmanager
def open_member(path: str, name: str) -> Iterator[tuple[int, BinaryIO]]:
    """(size, a stream of the member read from disk as it is consumed).

    Raises:
        OvaReadError: no such member, or the file is gone or unreadable (not what the stream
            raises once yielded: read_chunk handles that).
    """
    try:
        tar = tarfile.open(path, mode="r:")
    except (OSError, tarfile.TarError) as exc:
        raise OvaReadError(f"reading {path}: {getattr(exc, 'strerror', None) or exc}") from None
    with tar:
        try:
            member = tar.getmember(name)
            stream = tar.extractfile(member)
        except (KeyError, OSError, tarfile.TarError):
            raise OvaReadError(f"reading {path}: it has no file {name!r}") from None
        with stream:
            yield member.size, stream


def read_chunk(stream: BinaryIO, size: int, path: str) -> bytes:
    """Up to `size` bytes of a member, never none.

    Raises:
        OvaReadError: the read failed, or the member ended early.
    """
    try:
        chunk = stream.read(size)
    except (OSError, tarfile.TarError) as exc:
        raise OvaReadError(f"reading {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not chunk:
        raise OvaReadError(f"reading {path}: the file ended early (changed since it was checked?)")
    return chunk
