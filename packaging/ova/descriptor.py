"""The appliance's OVF descriptor (DSP0243 1.1, the envelope vCenter, ESXi, ovftool and govc import).

    descriptor.py --vmdk FILE --capacity BYTES --name NAME --out FILE.ovf [--version V]

One VirtualSystem with:
  * an OperatingSystemSection (CIM id 96, "Debian 64-Bit"; vmw:osType for vSphere);
  * a VirtualHardwareSection with ovf:transport="com.vmware.guestInfo iso": vCenter then delivers
    the OVF environment both in guestinfo.ovfEnv and on an "OVF ENV" CD-ROM, the two places the
    agent reads it (agent/sources/). Hardware the image's kernel drives (Debian's cloud kernel:
    vmw_pvscsi, vmxnet3, ata_piix; no AHCI, no LSI Logic, no e1000): the disk on VMware
    paravirtual SCSI, a vmxnet3 NIC, the CD-ROM the ISO transport needs on IDE (never LSI Logic,
    VMware's default when no controller is declared; vcsim refuses SATA). EFI firmware, written
    as VMware writes it (vmw:Config firmware=efi): the disk boots with systemd-boot from its ESP;
  * a ProductSection declaring every firsttrust deployment property with label and description
    (firsttrust.requester.deployspec.PROPERTY_INFO, the same definition `firsttrust deploy-spec`
    writes from), secrets as ovf:password="true", no values (nothing secret in the OVA).

Stdlib and firsttrust only; run with the project's Python (make ova). tests/packaging/
test_ova_descriptor.py checks the forms against DSP0243 / DSP8023 and VMware's.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from firsttrust.requester.deployspec import FIXED_VALUES, PROPERTY_INFO, user_configurable

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW = "http://www.vmware.com/schema/ovf"
NAMESPACES = {"ovf": OVF, "rasd": RASD, "vssd": VSSD, "vmw": VMW}

# DSP0243 clause 11.1: "com.vmware.guestInfo" (guestinfo.ovfEnv) and "iso" (an "OVF ENV" CD-ROM),
# a space-separated list of URIs (DSP8023: VirtualHardwareSection_Type/@transport).
TRANSPORT = "com.vmware.guestInfo iso"
# The disk format URI VMware's importers require for a streamOptimized VMDK.
VMDK_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
# vmx-14 = ESXi 6.7: pvscsi, vmxnet3 and EFI firmware are older than that; vcsim takes it as is.
VIRTUAL_SYSTEM_TYPE = "vmx-14"
# CIM_OperatingSystem.OsType 96 = "Debian 64-Bit". vSphere's guest id: debian12_64Guest exists
# only from vSphere 8; debian11_64Guest is known to 7.0 and 8 alike and selects the same devices.
CIM_OS_ID = "96"
VMW_OS_TYPE = "debian11_64Guest"
CPUS = 2
MEMORY_MB = 1024
NETWORK = "VM Network"

# CIM_ResourceAllocationSettingData.ResourceType values (DSP1041) used here.
RT_CPU, RT_MEMORY, RT_IDE, RT_SCSI, RT_ETHERNET, RT_CDROM, RT_DISK = 3, 4, 5, 6, 10, 15, 17
# rasd: elements are an xs:sequence in alphabetical order (the CIM schema); Item() writes them so.
RASD_ORDER = ("Address", "AddressOnParent", "AllocationUnits", "AutomaticAllocation", "Connection",
              "Description", "ElementName", "HostResource", "InstanceID", "Parent", "ResourceSubType",
              "ResourceType", "VirtualQuantity")


def _q(prefix: str, name: str) -> str:
    return f"{{{NAMESPACES[prefix]}}}{name}"


def _sub(parent: ET.Element, prefix: str, name: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, _q(prefix, name), {_attr(k): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def _attr(name: str) -> str:
    prefix, _, local = name.partition("__")  # ovf__id -> ovf:id
    return _q(prefix, local)


def _item(section: ET.Element, **fields: str | int) -> None:
    item = _sub(section, "ovf", "Item")
    unknown = set(fields) - set(RASD_ORDER)
    if unknown:
        raise ValueError(f"not a rasd element: {sorted(unknown)}")
    for name in RASD_ORDER:
        if name in fields:
            _sub(item, "rasd", name, str(fields[name]))


def build_envelope(*, name: str, vmdk_name: str, vmdk_size: int, capacity: int, version: str) -> ET.Element:
    """The Envelope element. `capacity` is the virtual disk's size in bytes."""
    envelope = ET.Element(_q("ovf", "Envelope"), {_attr("ovf__version"): "1.1"})
    references = _sub(envelope, "ovf", "References")
    _sub(references, "ovf", "File", ovf__id="file1", ovf__href=vmdk_name, ovf__size=str(vmdk_size))

    disks = _sub(envelope, "ovf", "DiskSection")
    _sub(disks, "ovf", "Info", "The appliance's disk: GPT, an EFI system partition and the root file system")
    _sub(disks, "ovf", "Disk", ovf__diskId="vmdisk1", ovf__fileRef="file1", ovf__capacity=str(capacity),
         ovf__capacityAllocationUnits="byte", ovf__format=VMDK_FORMAT)

    networks = _sub(envelope, "ovf", "NetworkSection")
    _sub(networks, "ovf", "Info", "The networks the appliance connects to")
    network = _sub(networks, "ovf", "Network", ovf__name=NETWORK)
    _sub(network, "ovf", "Description", "Where the requester reaches the appliance (enrollment and API)")

    system = _sub(envelope, "ovf", "VirtualSystem", ovf__id=name)
    _sub(system, "ovf", "Info", "The firsttrust appliance")
    _sub(system, "ovf", "Name", name)

    os_section = _sub(system, "ovf", "OperatingSystemSection", ovf__id=CIM_OS_ID, vmw__osType=VMW_OS_TYPE)
    _sub(os_section, "ovf", "Info", "The guest operating system")
    _sub(os_section, "ovf", "Description", "Debian GNU/Linux 12 (bookworm), 64-bit")

    hardware = _sub(system, "ovf", "VirtualHardwareSection", ovf__transport=TRANSPORT)
    _sub(hardware, "ovf", "Info", "Virtual hardware the appliance's kernel drives")
    settings = _sub(hardware, "ovf", "System")
    for field, value in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                         ("VirtualSystemIdentifier", name), ("VirtualSystemType", VIRTUAL_SYSTEM_TYPE)):
        _sub(settings, "vssd", field, value)
    _item(hardware, AllocationUnits="hertz * 10^6", Description="Number of virtual CPUs",
          ElementName=f"{CPUS} virtual CPUs", InstanceID=1, ResourceType=RT_CPU, VirtualQuantity=CPUS)
    _item(hardware, AllocationUnits="byte * 2^20", Description="Memory size", ElementName=f"{MEMORY_MB} MB of memory",
          InstanceID=2, ResourceType=RT_MEMORY, VirtualQuantity=MEMORY_MB)
    _item(hardware, Address=0, Description="SCSI controller", ElementName="SCSI controller 0 (VMware paravirtual)",
          InstanceID=3, ResourceSubType="VirtualSCSI", ResourceType=RT_SCSI)
    _item(hardware, Address=1, Description="IDE controller", ElementName="IDE controller 1", InstanceID=4,
          ResourceType=RT_IDE)
    _item(hardware, AddressOnParent=0, AutomaticAllocation="true", Description="CD-ROM for the OVF environment",
          ElementName="CD/DVD drive 1", InstanceID=5, Parent=4, ResourceType=RT_CDROM)
    _item(hardware, AddressOnParent=0, ElementName="Hard disk 1", HostResource="ovf:/disk/vmdisk1", InstanceID=6,
          Parent=3, ResourceType=RT_DISK)
    _item(hardware, AddressOnParent=7, AutomaticAllocation="true", Connection=NETWORK,
          Description="VMXNET3 ethernet adapter", ElementName="Network adapter 1", InstanceID=7,
          ResourceSubType="VmxNet3", ResourceType=RT_ETHERNET)
    # VMware's form (ovftool writes it so; vSphere reads it on import): EFI, not BIOS.
    _sub(hardware, "vmw", "Config", ovf__required="false", vmw__key="firmware", vmw__value="efi")

    product = _sub(system, "ovf", "ProductSection")
    _sub(product, "ovf", "Info", "firsttrust: one-time secrets for first-boot enrollment")
    _sub(product, "ovf", "Product", "firsttrust appliance")
    _sub(product, "ovf", "Vendor", "firsttrust")
    _sub(product, "ovf", "Version", version)
    _sub(product, "ovf", "FullVersion", version)
    _sub(product, "ovf", "Category", "firsttrust enrollment")
    # No ovf:class or ovf:instance: the environment's keys stay exactly firsttrust.* (DSP0243 9.5).
    for key, (label, description, password) in PROPERTY_INFO.items():
        attrs = {"ovf__key": key, "ovf__type": "string",
                 "ovf__userConfigurable": "true" if user_configurable(key) else "false"}
        if password:
            attrs["ovf__password"] = "true"
        attrs["ovf__value"] = FIXED_VALUES.get(key, "")
        prop = _sub(product, "ovf", "Property", **attrs)
        _sub(prop, "ovf", "Label", label)
        _sub(prop, "ovf", "Description", description)
    return envelope


def serialize(envelope: ET.Element) -> bytes:
    for prefix, uri in NAMESPACES.items():
        ET.register_namespace(prefix, uri)
    ET.indent(envelope, space="  ")
    # Envelope's default namespace is the OVF one in every descriptor VMware writes; ElementTree
    # writes ovf: prefixes instead, which is the same document to a namespace-aware reader.
    return ET.tostring(envelope, encoding="UTF-8", xml_declaration=True) + b"\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="descriptor.py", description=__doc__.splitlines()[0])
    parser.add_argument("--vmdk", required=True, type=Path, help="the streamOptimized VMDK, beside the .ovf")
    parser.add_argument("--capacity", required=True, type=int, help="the virtual disk's size in bytes")
    parser.add_argument("--name", required=True, help="the VirtualSystem's id and name")
    parser.add_argument("--version", default="0", help="the product version")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        size = args.vmdk.stat().st_size
    except OSError as exc:
        print(f"descriptor.py: error: {args.vmdk}: {exc.strerror}", file=sys.stderr)
        return 1
    envelope = build_envelope(name=args.name, vmdk_name=args.vmdk.name, vmdk_size=size, capacity=args.capacity,
                              version=args.version)
    args.out.write_bytes(serialize(envelope))
    return 0


if __name__ == "__main__":
    sys.exit(main())
