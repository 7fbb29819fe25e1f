"""The OVA imports into vCenter through the API: govmomi's vcsim takes the descriptor in
OvfManager.CreateImportSpec with the firsttrust properties as the PropertyMapping, ImportVApp makes
the VM with the declared hardware, and the disk goes up through the HttpNfcLease.

The OVA here comes from the pipeline's own packaging step (packaging/ova/package.sh: VMDK,
descriptor, manifest, tar) around a small disk, so the test runs in `make test` in seconds; the
appliance's 2 GiB disk is the same step's input in `make ova`, and tests/vm imports that OVA too.
vcsim ignores the transport and the firmware: tests/packaging/test_ova_descriptor.py checks those.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ova_import import import_ova, read_ova
from vcsim_fixture import vcenter_session, vcsim  # noqa: F401 - the fixture

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.requester.deployspec import FIXED_VALUES, PROPERTY_INFO, deployment_properties, user_configurable
from firsttrust.requester.vsphere import VsphereError

REPO = Path(__file__).resolve().parents[2]


def package(disk: Path, out: Path) -> Path:
    done = subprocess.run([str(REPO / "packaging/ova/package.sh"), "--disk", str(disk), "--out", str(out),
                           "--version", "0.1.0", "--python", sys.executable], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def small_ova(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ova")
    disk = work / "disk.raw"
    with open(disk, "wb") as handle:
        handle.truncate(8 * 1024 * 1024)
        handle.seek(1024 * 1024)
        handle.write(b"firsttrust test disk\n" * 100)  # something for the VMDK's grains to hold
    return package(disk, work / "firsttrust-appliance.ova")


def test_the_ova_is_a_tar_with_the_descriptor_first_and_a_manifest_that_matches(small_ova):
    contents = read_ova(small_ova)
    assert contents.members == ["firsttrust-appliance.ovf", "firsttrust-appliance.mf",
                                "firsttrust-appliance-disk1.vmdk"]
    assert contents.manifest == {name: contents.digests[name] for name in contents.members if name.endswith(
        (".ovf", ".vmdk"))}


def ova_member_size(ova: Path, name: str) -> int:
    import tarfile

    with tarfile.open(ova) as tar:
        return tar.getmember(name).size


def check_import(server, ova: Path, name: str, requester_identity) -> None:
    properties = deployment_properties(EnrollmentSecrets.generate(), requester_cert=requester_identity.cert_pem,
                                       enroll_window="2d")
    assert set(properties) == set(PROPERTY_INFO)  # every declared property has a value
    # ... and every one the person deploying may set is mapped (as deployplan plans it); the
    # fixed ones carry their value as the descriptor's default.
    properties = {key: value for key, value in properties.items() if user_configurable(key)}
    assert set(properties) == set(PROPERTY_INFO) - set(FIXED_VALUES)
    vc = vcenter_session(server)
    try:
        vm, uploaded = import_ova(vc, ova, name, properties)
        vim = vc.vim
        assert uploaded == {"firsttrust-appliance-disk1.vmdk": ova_member_size(ova, "firsttrust-appliance-disk1.vmdk")}

        assert vm.name == name
        config = vm.config
        assert (config.guestId, config.hardware.numCPU, config.hardware.memoryMB) == ("debian11_64Guest", 2, 1024)
        devices = config.hardware.device
        by_key = {device.key: device for device in devices}
        (disk,) = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
        assert isinstance(by_key[disk.controllerKey], vim.vm.device.ParaVirtualSCSIController)
        (cdrom,) = [d for d in devices if isinstance(d, vim.vm.device.VirtualCdrom)]
        assert isinstance(by_key[cdrom.controllerKey], vim.vm.device.VirtualIDEController)
        nics = [d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        assert [type(nic) for nic in nics] == [vim.vm.device.VirtualVmxnet3]
        assert not [d for d in devices if isinstance(d, (vim.vm.device.VirtualLsiLogicController,
                                                         vim.vm.device.VirtualAHCIController))]

        # The property mapping reached the VM as vApp properties (the lab's vCenter keeps them as
        # vCenter does), never as extraConfig; the secrets are password-typed, so they read back
        # "" (write-only) and the others with their values; the firmware is the OVA's, EFI.
        held = {p.id: p for p in config.vAppConfig.property}
        assert set(held) == set(properties) | set(FIXED_VALUES)
        for key, value in FIXED_VALUES.items():
            assert held[key].value == value and not held[key].userConfigurable, key
        for key, value in properties.items():
            secret = PROPERTY_INFO[key][2]
            assert (held[key].type == "password") == secret, key
            assert (held[key].value or "") == ("" if secret else value), key
        assert not {option.key for option in config.extraConfig or []} & set(properties)
        assert config.firmware == "efi"
        assert set(config.vAppConfig.ovfEnvironmentTransport) == {"com.vmware.guestInfo", "iso"}
    finally:
        vc.close()


def test_the_ova_imports_into_vcsim_with_its_property_mapping(vcsim, small_ova, requester_identity):
    check_import(vcsim, small_ova, "ova-import-1", requester_identity)


def test_a_value_for_a_property_the_ova_fixes_is_refused_at_import_and_at_reconfiguration(vcsim, small_ova,
                                                                                         requester_identity):
    """NotUserConfigurableProperty ("The property value cannot be changed since it is not user
    configurable"): the lab refuses what vCenter refuses, so a deployer that sets the OVA's fixed
    encoding property fails here, not first on a real vCenter."""
    properties = deployment_properties(EnrollmentSecrets.generate(), requester_cert=requester_identity.cert_pem)
    (fixed,) = FIXED_VALUES
    vc = vcenter_session(vcsim)
    try:
        with pytest.raises(VsphereError, match="NotUserConfigurableProperty"):
            import_ova(vc, small_ova, "ova-fixed-mapped", properties)
        assert "ova-fixed-mapped" not in vc.virtual_machines()
        settable = {key: value for key, value in properties.items() if user_configurable(key)}
        vm, _ = import_ova(vc, small_ova, "ova-fixed-edited", settable)
        keys = {p.id: p.key for p in vm.config.vAppConfig.property}
        with pytest.raises(VsphereError, match="NotUserConfigurableProperty"):
            vc.reconfigure(vm, vc.vim.vm.ConfigSpec(vAppConfig=vc.vapp_edit_spec([(keys[fixed], "base64")])))
        vc.reconfigure(vm, vc.vim.vm.ConfigSpec(vAppConfig=vc.vapp_edit_spec([(keys["firsttrust.enroll-window"],
                                                                               "1h")])))
        held = {p.id: p.value for p in vm.config.vAppConfig.property}
        assert held["firsttrust.enroll-window"] == "1h" and held[fixed] == FIXED_VALUES[fixed]
    finally:
        vc.close()
