"""`firsttrust deploy`'s placement options against the lab's vCenter (clusters honour DRS, datastores
can be made inaccessible or put in maintenance): a cluster without DRS takes an import and a clone
because the deployer passes a host, a host whose compute resource sits in nested folders, datastores
that are never chosen, an OVF network and a template's NIC mapped to a port group, and a wrong path
refused in one line before anything exists. Its own simulator: the tests change the inventory."""

from __future__ import annotations

import subprocess
import tempfile

import pytest
from test_ova_import import small_ova  # noqa: F401 - the fixture
from test_vsphere_deploy import FIRSTTRUST, ROOT, environment

from vcsim_fixture import task_result

from firsttrust.lab.vcsim import Vcsim
from firsttrust.requester.deployer import VcenterAccess, deploy
from firsttrust.requester.deployplan import plan_deployment
from firsttrust.requester.placement import PlacementError, PlacementRequest
from firsttrust.requester.vcenter_tls import pinned_context
from firsttrust.requester.vsphere import connect

TEMPLATE = "DC0_H0_VM0"


@pytest.fixture(scope="module")
def lab():
    pytest.importorskip("pyVmomi")
    server = Vcsim.start()
    vc = connect(server.url, server.user, server.password, pinned_context(server.thumbprint_sha256))
    vim = vc.vim
    datacenter = vc.content.rootFolder.childEntity[0]
    # A second datastore on the standalone host, and that host's compute resource moved into
    # host/nested/deeper: the inventory is searched through folders within folders.
    standalone = next(e.ref for e in vc.inventory().by_moid.values() if e.kind == "ComputeResource")
    standalone.host[0].configManager.datastoreSystem.CreateLocalDatastore(name="Second", path=tempfile.mkdtemp())
    deeper = datacenter.hostFolder.CreateFolder("nested").CreateFolder("deeper")
    task_result(deeper.MoveIntoFolder_Task([standalone]))
    datacenter.vmFolder.CreateFolder("bringup")
    # The VPX inventory's cluster without DRS (vSphere Standard has none).
    cluster = next(e.ref for e in vc.inventory().by_moid.values() if e.kind == "ClusterComputeResource")
    task_result(cluster.ReconfigureComputeResource_Task(
        spec=vim.cluster.ConfigSpecEx(drsConfig=vim.cluster.DrsConfigInfo(enabled=False)), modify=True))
    yield server, vc
    vc.close()
    server.stop()



def run_deploy(server, tmp_path, names, **kwargs):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    template = kwargs.pop("template", TEMPLATE)
    ova = kwargs.pop("ova", None)
    plan = plan_deployment(server.url, None if ova else template, names, ova=ova, enroll=False)
    access = VcenterAccess.load(server.url, pinned_context(server.thumbprint_sha1), environ=server.credentials_env())
    notes = []
    reports = deploy(plan, access, secrets_dir, progress=lambda name, event: notes.append((name, event)), **kwargs)
    failed = [(r.name, r.failed_step, str(r.error)) for r in reports if not r.ok]
    assert not failed, failed
    return reports, [event for name, event in notes if name == "placement"]


def vm_named(vc, name):
    return vc.virtual_machines()[name]


def test_an_import_into_a_cluster_without_drs_succeeds_by_passing_a_host(lab, small_ova, tmp_path):
    server, vc = lab
    reports, notes = run_deploy(server, tmp_path, ["nodrs-01", "nodrs-02"], ova=str(small_ova),
                                placement=PlacementRequest(pool="DC0_C0"))
    (host_note,) = [n for n in notes if n.startswith("host ")]
    assert "has no DRS" in host_note
    chosen = host_note.split()[1]
    for report in reports:  # the import and the clone of it, both on the host the note names
        vm = vm_named(vc, report.name)
        assert vm.runtime.host.name == chosen and vm.resourcePool.parent.name == "DC0_C0"


def test_a_clone_into_a_cluster_without_drs_gets_the_host_asked_for(lab, tmp_path):
    server, vc = lab
    (report,), notes = run_deploy(server, tmp_path, ["nodrs-clone"], placement=PlacementRequest(
        pool="DC0_C0", host="DC0_C0_H2", folder="bringup"))
    vm = vm_named(vc, report.name)
    assert vm.runtime.host.name == "DC0_C0_H2" and vm.parent.name == "bringup"
    assert not [n for n in notes if n.startswith("host ")]  # asked for, not chosen


def test_a_clone_beside_a_template_in_a_cluster_without_drs_lands_on_the_templates_host(lab, tmp_path):
    """No placement option: the clone goes beside its template. In a cluster without DRS,
    vCenter refuses a pool without a host (VirtualMachineRelocateSpec.host: InvalidArgument), so
    the deployer passes the template's host."""
    server, vc = lab
    template = vm_named(vc, "DC0_C0_RP0_VM0")
    assert template.resourcePool.owner.name == "DC0_C0"
    (report,), _ = run_deploy(server, tmp_path, ["nodrs-beside"], template="DC0_C0_RP0_VM0")
    vm = vm_named(vc, report.name)
    assert vm.runtime.host.name == template.runtime.host.name
    assert vm.resourcePool.owner.name == "DC0_C0"


def test_a_host_in_nested_folders_is_found_by_name_and_by_path(lab, tmp_path):
    server, vc = lab
    (by_name,), _ = run_deploy(server, tmp_path, ["nested-1"], placement=PlacementRequest(host="DC0_H0"))
    (by_path,), _ = run_deploy(server, tmp_path, ["nested-2"],
                               placement=PlacementRequest(pool="nested/deeper/DC0_H0/Resources"))
    for report in (by_name, by_path):
        vm = vm_named(vc, report.name)
        assert vm.runtime.host.name == "DC0_H0" and vm.resourcePool.parent.name == "DC0_H0"


def test_a_datastore_that_is_inaccessible_or_in_maintenance_is_never_chosen(lab, tmp_path):
    server, vc = lab
    try:
        for state in ({"accessible": False}, {"maintenance": True}):
            server.lab.set_datastore("Second", **state)
            (report,), notes = run_deploy(server, tmp_path, [f"ds-{len(state)}-{sorted(state)[0]}"],
                                          placement=PlacementRequest(host="DC0_H0"))
            assert [ds.name for ds in vm_named(vc, report.name).datastore] == ["LocalDS_0"]
            assert any("1 inaccessible or in maintenance skipped" in note for note in notes)
            with pytest.raises(PlacementError, match="datastore 'Second' is (not accessible|in maintenance)"):
                run_deploy(server, tmp_path, ["never"], placement=PlacementRequest(host="DC0_H0", datastore="Second"))
            server.lab.set_datastore("Second", accessible=True, maintenance=False)
        # usable again, and with the most free space: chosen
        (report,), _ = run_deploy(server, tmp_path, ["ds-back"], placement=PlacementRequest(host="DC0_H0"))
        assert [ds.name for ds in vm_named(vc, report.name).datastore] == ["Second"]
    finally:
        server.lab.set_datastore("Second", accessible=True, maintenance=False)
    assert "never" not in vc.virtual_machines()


def nic_portgroup(vm, vim):
    (nic,) = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    backing = nic.backing
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        return backing.port.portgroupKey
    return backing.deviceName


def test_the_ovf_network_and_a_templates_nic_are_mapped_to_the_port_group_named(lab, small_ova, tmp_path):
    """The OVA's NIC is on "VM Network" unless mapped; the template's on the distributed port group
    DC0_DVPG0 unless edited: each is moved to the other, and left alone without --network."""
    server, vc = lab
    vim = vc.vim
    portgroup = next(e for e in vc.inventory().by_moid.values() if e.name == "DC0_DVPG0")
    imported, _ = run_deploy(server, tmp_path, ["net-ova-1", "net-ova-2"], ova=str(small_ova),
                             placement=PlacementRequest(host="DC0_H0", network="DC0_DVPG0"))
    (cloned,), _ = run_deploy(server, tmp_path, ["net-clone"], placement=PlacementRequest(host="DC0_H0",
                                                                                        network="VM Network"))
    for report in imported:  # the import and its clone
        assert nic_portgroup(vm_named(vc, report.name), vim) == portgroup.moid, report.name
    assert nic_portgroup(vm_named(vc, cloned.name), vim) == "VM Network"
    (plain_ova,), _ = run_deploy(server, tmp_path, ["net-plain-ova"], ova=str(small_ova),
                                 placement=PlacementRequest(host="DC0_H0"))
    (plain_clone,), _ = run_deploy(server, tmp_path, ["net-plain"], placement=PlacementRequest(host="DC0_H0"))
    assert nic_portgroup(vm_named(vc, plain_ova.name), vim) == "VM Network"
    assert nic_portgroup(vm_named(vc, plain_clone.name), vim) == portgroup.moid


def test_a_wrong_path_is_one_line_naming_what_exists_and_nothing_is_created(lab, tmp_path):
    server, vc = lab
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    command = [*FIRSTTRUST, "deploy", "--vcenter", server.url, "--thumbprint", server.thumbprint_sha1,
               "--template", TEMPLATE, "--name", "wrong-path", "--secrets-dir", str(secrets_dir), "--no-enroll",
               "--pool", "nested/elsewhere/DC0_H0"]
    result = subprocess.run(command, env=environment(server, tmp_path / "home"), capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "no folder, host or cluster 'elsewhere' in DC0/host/nested; there: deeper" in line
    assert "wrong-path" not in vc.virtual_machines() and not list(secrets_dir.iterdir())
