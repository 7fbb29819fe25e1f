"""The OVA itself: its disk boots through its own EFI boot loader with the root file system on the
controller the descriptor declares (VMware paravirtual SCSI), the release variant carries no test
access, and the test variant imports into vcsim through the vSphere API like the small one in
tests/integration/test_ova_import.py.

The other VM tests boot the same disk from NVMe (OVMF 2022.11 has no PVSCSI driver, so it cannot
load a boot loader from pvscsi); here the firmware loads the boot loader from a copy of the ESP on
NVMe and the kernel finds LABEL=root on the pvscsi disk, as it will under VMware.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import build_image

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.vm
def test_the_kernel_finds_its_root_on_pvscsi_with_efi_and_a_vmxnet3_nic(boot, appliance_image):
    vm = boot(boot_from="pvscsi")  # no OVF environment: provisioning fails, the test's ssh works
    vm.wait_for_ssh()

    root = vm.ssh("findmnt -no SOURCE /").stdout.strip()
    assert root.startswith("/dev/sd"), root
    disk = root.removeprefix("/dev/").rstrip("0123456789")
    host = vm.ssh(f"basename $(readlink -f /sys/block/{disk}/device/../..)").stdout.strip()
    assert vm.ssh(f"cat /sys/class/scsi_host/{host}/proc_name").stdout.strip() == "vmw_pvscsi"
    assert vm.ssh("lsblk -no LABEL " + root).stdout.strip() == "root"
    # Booted by the firmware through the OVA's boot loader, with the OVA's command line.
    assert vm.ssh("test -d /sys/firmware/efi && echo efi").stdout.strip() == "efi"
    cmdline = vm.ssh("cat /proc/cmdline").stdout.split()
    assert [arg for arg in cmdline if not arg.startswith("initrd=")] == appliance_image.info["kernel_cmdline"].split()
    assert [arg for arg in cmdline if arg.startswith("console=")][-1] == "console=ttyS0"
    drivers = vm.ssh("for n in /sys/class/net/*/device/driver; do basename $(readlink $n); done").stdout.split()
    assert drivers == ["vmxnet3"]
    assert vm.shutdown(), "the guest did not power off on the ACPI power button"


def _mtype(esp_image: Path, offset: int, path: str) -> str:
    return subprocess.run(["mtype", "-i", f"{esp_image}@@{offset}", path], check=True, capture_output=True,
                          text=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout


def _debugfs(disk: Path, offset: int, command: str, work: Path) -> str:
    # debugfs reads a file system image, not a disk: the root partition alone, as a sparse copy.
    partition = work / "root.img"
    if not partition.exists():
        subprocess.run(["dd", f"if={disk}", f"of={partition}", "bs=1M", f"skip={offset // (1024 * 1024)}",
                        "conv=sparse", "status=none"], check=True)
    return subprocess.run(["debugfs", "-R", command, str(partition)], check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.vm
def test_the_release_ova_has_no_serial_console_and_no_test_access(tmp_path):
    release = build_image(variant="release")
    info = release.info
    assert release.ova.name == "firsttrust-appliance.ova" and info["variant"] == "release"
    esp_offset = info["esp_start_sector"] * 512
    entry = _mtype(release.disk, esp_offset, "::/loader/entries/firsttrust.conf")
    options = next(line for line in entry.splitlines() if line.startswith("options ")).split()[1:]
    assert options == info["kernel_cmdline"].split()
    assert "root=LABEL=root" in options
    assert not [arg for arg in options if arg.startswith(("console=ttyS", "systemd.journald"))]
    loader = _mtype(release.disk, esp_offset, "::/loader/loader.conf")
    assert "editor no" in loader.splitlines()  # nobody edits the command line at the boot menu

    root_offset = info["root_start_sector"] * 512
    wanted = _debugfs(release.disk, root_offset, "ls -l /etc/systemd/system/multi-user.target.wants", tmp_path)
    assert "ssh.service" in wanted and "test-ssh-access" not in wanted  # the listing is real, and clean
    assert "test-ssh-access" not in _debugfs(release.disk, root_offset, "ls -l /etc/systemd/system", tmp_path)
    assert "qemu-fw-cfg" not in _debugfs(release.disk, root_offset, "ls -l /etc/modules-load.d", tmp_path)
    assert "ssh_host_" not in _debugfs(release.disk, root_offset, "ls -l /etc/ssh", tmp_path)


@pytest.mark.vm
def test_the_appliance_ova_imports_into_vcsim_with_its_property_mapping(appliance_image, requester_identity):
    sys.path.insert(0, str(REPO / "tests/integration"))
    pytest.importorskip("pyVmomi", reason="firsttrust[vsphere] (pyvmomi) is not installed")
    from test_ova_import import check_import

    from firsttrust.lab.vcsim import Vcsim

    server = Vcsim.start()
    try:
        check_import(server, appliance_image.ova, "appliance-ova-import", requester_identity)
    finally:
        server.stop()
