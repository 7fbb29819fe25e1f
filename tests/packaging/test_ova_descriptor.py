"""The OVA's descriptor (packaging/ova/descriptor.py) against DSP0243 / DSP8023 and VMware's forms.

vcsim ignores the transport and the firmware (tests/integration/test_ova_import.py imports the
OVA there), so these are checked here, on the parsed document: what DSP0243 and its schema
DSP8023 require, and the forms VMware's own tools write and read.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.requester.deployspec import PROPERTY_INFO, deployment_properties

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ova_descriptor", REPO / "packaging/ova/descriptor.py")
descriptor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(descriptor)

OVF, RASD, VSSD, VMW = descriptor.OVF, descriptor.RASD, descriptor.VSSD, descriptor.VMW
CAPACITY = 2178 * 1024 * 1024


def q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


@pytest.fixture(scope="module")
def envelope():
    document = descriptor.serialize(descriptor.build_envelope(
        name="firsttrust-appliance", vmdk_name="firsttrust-appliance-disk1.vmdk", vmdk_size=12345,
        capacity=CAPACITY, version="0.1.0"))
    assert document.startswith(b'<?xml version=\'1.0\' encoding=\'UTF-8\'?>')
    return SafeET.fromstring(document)


def system(envelope):
    return envelope.find(q(OVF, "VirtualSystem"))


def hardware(envelope):
    return system(envelope).find(q(OVF, "VirtualHardwareSection"))


def items(envelope) -> list[dict[str, str]]:
    found = []
    for item in hardware(envelope).findall(q(OVF, "Item")):
        found.append({child.tag.split("}")[1]: child.text for child in item})
    return found


def test_the_envelope_references_one_stream_optimized_disk_the_hardware_attaches(envelope):
    assert envelope.tag == q(OVF, "Envelope")
    files = envelope.findall(f"{q(OVF, 'References')}/{q(OVF, 'File')}")
    assert [(f.get(q(OVF, "id")), f.get(q(OVF, "href")), f.get(q(OVF, "size"))) for f in files] == [
        ("file1", "firsttrust-appliance-disk1.vmdk", "12345")]
    (disk,) = envelope.findall(f"{q(OVF, 'DiskSection')}/{q(OVF, 'Disk')}")
    assert disk.get(q(OVF, "fileRef")) == "file1"
    assert disk.get(q(OVF, "capacity")) == str(CAPACITY)
    assert disk.get(q(OVF, "capacityAllocationUnits")) == "byte"
    assert disk.get(q(OVF, "format")) == "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
    # DSP0243 8.3: a disk is referenced as ovf:/disk/<diskId>
    (hard_disk,) = [item for item in items(envelope) if item["ResourceType"] == "17"]
    assert hard_disk["HostResource"] == f"ovf:/disk/{disk.get(q(OVF, 'diskId'))}"
    # Sections come before the VirtualSystem (DSP8023: Envelope's Section* then Content).
    tags = [child.tag.split("}")[1] for child in envelope]
    assert tags == ["References", "DiskSection", "NetworkSection", "VirtualSystem"]
    network_names = {n.get(q(OVF, "name")) for n in envelope.iter(q(OVF, "Network"))}
    nic = next(item for item in items(envelope) if item["ResourceType"] == "10")
    assert nic["Connection"] in network_names


def test_the_operating_system_section_has_a_cim_id_and_vmware_guest_id(envelope):
    section = system(envelope).find(q(OVF, "OperatingSystemSection"))
    assert re.fullmatch(r"[0-9]+", section.get(q(OVF, "id")))  # xs:unsignedShort, CIM OsType
    assert section.get(q(OVF, "id")) == "96"  # Debian 64-Bit
    assert section.get(q(VMW, "osType")) == "debian11_64Guest"
    assert section.find(q(OVF, "Info")) is not None  # every Section has Info first


def test_the_transport_is_guestinfo_and_iso_as_a_qualified_uri_list(envelope):
    section = hardware(envelope)
    # DSP8023: transport is an ovf:-qualified attribute holding a space-separated list of URIs;
    # DSP0243 11.1 names "iso" and VMware names "com.vmware.guestInfo".
    transport = section.get(q(OVF, "transport"))
    assert transport is not None and section.get("transport") is None
    assert transport.split() == ["com.vmware.guestInfo", "iso"]


def test_the_firmware_is_efi_in_vmwares_config_form_after_the_items(envelope):
    section = hardware(envelope)
    configs = section.findall(q(VMW, "Config"))
    firmware = [c for c in configs if c.get(q(VMW, "key")) == "firmware"]
    assert len(firmware) == 1
    assert firmware[0].get(q(VMW, "value")) == "efi"
    assert firmware[0].get(q(OVF, "required")) == "false"
    # xs:any extensions come after Info, System and the Items (DSP8023 VirtualHardwareSection_Type).
    tags = [child.tag for child in section]
    assert tags[:2] == [q(OVF, "Info"), q(OVF, "System")]
    last_item = max(i for i, tag in enumerate(tags) if tag == q(OVF, "Item"))
    assert all(i > last_item for i, tag in enumerate(tags) if tag == q(VMW, "Config"))
    assert section.find(f"{q(OVF, 'System')}/{q(VSSD, 'VirtualSystemType')}").text == "vmx-14"


def test_every_item_lists_its_rasd_elements_in_schema_order_with_unique_ids_and_real_parents(envelope):
    for item in hardware(envelope).findall(q(OVF, "Item")):
        names = [child.tag.split("}")[1] for child in item]
        assert all(child.tag.startswith(f"{{{RASD}}}") for child in item)
        assert names == sorted(names), names  # the CIM schema's xs:sequence is alphabetical
        assert "InstanceID" in names and "ResourceType" in names and "ElementName" in names
    found = items(envelope)
    ids = [item["InstanceID"] for item in found]
    assert len(ids) == len(set(ids))
    for item in found:
        if "Parent" in item:
            assert item["Parent"] in ids


def test_the_hardware_is_what_the_cloud_kernel_drives(envelope):
    found = items(envelope)
    by_id = {item["InstanceID"]: item for item in found}
    kinds = [(item["ResourceType"], item.get("ResourceSubType")) for item in found]
    disk = next(item for item in found if item["ResourceType"] == "17")
    cdrom = next(item for item in found if item["ResourceType"] == "15")
    nic = next(item for item in found if item["ResourceType"] == "10")
    assert (by_id[disk["Parent"]]["ResourceType"], by_id[disk["Parent"]]["ResourceSubType"]) == ("6", "VirtualSCSI")
    assert by_id[cdrom["Parent"]]["ResourceType"] == "5"  # IDE: ata_piix
    assert nic["ResourceSubType"] == "VmxNet3"
    # Never LSI Logic (no CONFIG_FUSION), SATA (no AHCI; vcsim refuses it), or e1000.
    subtypes = {(subtype or "").lower() for _, subtype in kinds}
    assert not subtypes & {"lsilogic", "lsilogicsas", "buslogic", "e1000", "e1000e"}
    assert "20" not in {kind for kind, _ in kinds}  # ResourceType 20: SATA/other storage controller


def test_the_product_section_declares_every_deployment_property_and_nothing_secret(envelope):
    section = system(envelope).find(q(OVF, "ProductSection"))
    assert section.get(q(OVF, "class")) is None and section.get(q(OVF, "instance")) is None
    tags = [child.tag.split("}")[1] for child in section]
    # DSP8023 ProductSection_Type: Info, Product, Vendor, Version, FullVersion, then Category/Property.
    assert tags[:5] == ["Info", "Product", "Vendor", "Version", "FullVersion"]
    assert set(tags[5:]) == {"Category", "Property"}
    properties = {p.get(q(OVF, "key")): p for p in section.findall(q(OVF, "Property"))}
    assert list(properties) == list(PROPERTY_INFO)
    for key, prop in properties.items():
        label, description, password = PROPERTY_INFO[key]
        assert prop.findtext(q(OVF, "Label")) == label
        assert prop.findtext(q(OVF, "Description")) == description
        assert prop.get(q(OVF, "type")) == "string"
        assert prop.get(q(OVF, "userConfigurable")) in ("true", "false")  # xs:boolean as VMware writes it
        if password:
            assert prop.get(q(OVF, "password")) == "true"
            assert prop.get(q(OVF, "value")) == ""  # no secret in the OVA
            assert prop.get(q(OVF, "userConfigurable")) == "true"
    assert properties["firsttrust.sec-a"].get(q(OVF, "password")) == "true"
    assert properties["firsttrust.sec-b"].get(q(OVF, "password")) == "true"
    encoding = properties["firsttrust.requester-cert.encoding"]
    assert (encoding.get(q(OVF, "value")), encoding.get(q(OVF, "userConfigurable"))) == ("base64", "false")


def test_deploy_spec_writes_no_property_the_ova_does_not_declare(envelope, requester_identity):
    declared = {p.get(q(OVF, "key")) for p in system(envelope).iter(q(OVF, "Property"))}
    secrets = EnrollmentSecrets.generate()
    everything = deployment_properties(secrets, requester_cert=requester_identity.cert_pem, enroll_window="2d")
    assert set(everything) == declared


def test_the_command_writes_the_descriptor_and_says_one_line_on_a_missing_disk(tmp_path):
    import subprocess
    import sys

    vmdk = tmp_path / "x-disk1.vmdk"
    vmdk.write_bytes(b"\0" * 512)
    out = tmp_path / "x.ovf"
    script = str(REPO / "packaging/ova/descriptor.py")
    done = subprocess.run([sys.executable, script, "--vmdk", str(vmdk), "--capacity", "1048576", "--name", "x",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert SafeET.fromstring(out.read_bytes()).find(f"{q(OVF, 'References')}/{q(OVF, 'File')}").get(
        q(OVF, "size")) == "512"
    missing = subprocess.run([sys.executable, script, "--vmdk", str(tmp_path / "none.vmdk"), "--capacity", "1",
                              "--name", "x", "--out", str(out)], capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
