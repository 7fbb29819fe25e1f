"""The lab's clone model (lab/go/vcsim/vm.go, CloneVMTask): a clone keeps its source's firmware, as
vCenter's CloneVM_Task does; stock vcsim 0.24 gives every clone BIOS firmware (shown with -stock), so
an EFI appliance's clone would not boot. Both take the clone spec's device changes (the deployer's
--network): stock vcsim already does, no model needed."""

from __future__ import annotations


import pytest

from vcsim_fixture import task_result

from firsttrust.lab.vcsim import Vcsim
from firsttrust.requester.vcenter_tls import pinned_context
from firsttrust.requester.vsphere import connect

TEMPLATE = "DC0_H0_VM0"


@pytest.fixture(scope="module", params=["strict", "stock"])
def server(request):
    pytest.importorskip("pyVmomi")
    simulator = Vcsim.start(stock=request.param == "stock")
    vc = connect(simulator.url, simulator.user, simulator.password, pinned_context(simulator.thumbprint_sha256))
    yield request.param, vc
    vc.close()
    simulator.stop()



def test_a_clone_keeps_its_sources_firmware_and_takes_its_specs_device_changes(server):
    kind, vc = server
    vim = vc.vim
    source = vc.find_vm(TEMPLATE)
    task_result(source.ReconfigVM_Task(spec=vim.vm.ConfigSpec(firmware="efi")))
    assert source.config.firmware == "efi"
    (nic,) = [d for d in source.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    assert not isinstance(nic.backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo)  # on DC0_DVPG0
    network = next(n for n in source.runtime.host.network if n.name == "VM Network")
    nic.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(network=network, deviceName="VM Network")
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=source.resourcePool), powerOn=False, config=vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)]))
    clone = task_result(source.CloneVM_Task(folder=source.parent, name=f"clone-{kind}", spec=spec))
    (cloned_nic,) = [d for d in clone.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    on_vm_network = getattr(cloned_nic.backing, "deviceName", None) == "VM Network"
    assert on_vm_network
    assert clone.config.firmware == ("efi" if kind == "strict" else "bios")
