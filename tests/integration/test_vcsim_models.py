"""The lab's vCenter is a model, not a mock: each behaviour lab/go/vcsim adds to stock vcsim 0.24,
shown against the same binary run with `-stock` (every model off), so a model that silently
stopped applying fails here. Raw pyVmomi through requester.vsphere.connect, as a client of vCenter
would call it. One strict and one stock simulator for the module; each test makes its own VMs.

The reference sentence each model follows is quoted beside it in lab/go/vcsim/*.go.
"""

from __future__ import annotations

import itertools
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from firsttrust.agent.sources.ovfenv import parse_ovf_env
from firsttrust.lab.vcsim import LabControl, LabControlError, Vcsim
from firsttrust.requester.vcenter_tls import pinned_context
from firsttrust.requester.vsphere import VsphereError, connect

pytest.importorskip("pyVmomi", reason="firsttrust[vsphere] (pyvmomi) is not installed")

TEMPLATE = "DC0_H0_VM0"  # a VM of the VPX inventory, in both simulators
SECRET = "s3cret-Value_<&>\"'"  # XML-special characters: the OVF environment must escape them
PLAIN_SECRET = "planted-9f3Kq2xY"
TIMEOUT = 30.0
names = (f"models-{n}" for n in itertools.count())

DESCRIPTOR = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References/>
  <VirtualSystem ovf:id="appliance">
    <Info>A virtual machine</Info>
    <Name>appliance</Name>
    <ProductSection>
      <Info>Deployment properties</Info>
      <Product>firsttrust appliance</Product>
      <Vendor>firsttrust</Vendor>
      <Version>1.0</Version>
      <Property ovf:key="firsttrust.sec-a" ovf:type="string" ovf:password="true" ovf:userConfigurable="true" ovf:value=""/>
      <Property ovf:key="firsttrust.name" ovf:type="string" ovf:userConfigurable="true" ovf:value="the-default"/>
    </ProductSection>
    <VirtualHardwareSection ovf:transport="com.vmware.guestInfo iso">
      <Info>Virtual hardware</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>1 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>64MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>64</rasd:VirtualQuantity>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


@pytest.fixture(scope="module")
def strict():
    server = Vcsim.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stock():
    server = Vcsim.start(stock=True)
    yield server
    server.stop()


def session(server: Vcsim):
    return connect(server.url, server.user, server.password, pinned_context(server.thumbprint_sha256))


@pytest.fixture(scope="module")
def vc(strict):
    vcenter = session(strict)
    yield vcenter
    vcenter.close()


@pytest.fixture(scope="module")
def vc_stock(stock):
    vcenter = session(stock)
    yield vcenter
    vcenter.close()


def wait(vc, task):
    """The task's result, read from task.info until it ends: not the deployer's PropertyCollector
    waiter, which relies on the collector model (collector.go) that -stock turns off."""
    import time

    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        info = task.info
        if info.state == "success":
            return info.result
        if info.state == "error":
            raise VsphereError(f"a test's task: {type(info.error).__name__}", code="vsphere")
        time.sleep(0.05)
    raise VsphereError("a test's task did not end", code="task_timeout")


def task_fault(vc, task):
    """The fault a task ended with (None: it succeeded)."""
    try:
        wait(vc, task)
    except Exception:  # noqa: BLE001 - requester.vsphere reports it as a VsphereError
        return task.info.error
    return None


def options(vc, entries):
    return [vc.vim.option.OptionValue(key=k, value=v) for k, v in entries]


def extra_config(vm):
    return [(o.key, o.value) for o in (vm.config.extraConfig or []) if o.key != "govcsim"]


def clone(vc, name=None, **config):
    template = vc.find_vm(TEMPLATE)
    spec = vc.vim.vm.CloneSpec(location=vc.vim.vm.RelocateSpec(), powerOn=False,
                               config=vc.vim.vm.ConfigSpec(**config) if config else None)
    name = name or next(names)
    wait(vc, template.CloneVM_Task(folder=template.parent, name=name, spec=spec))
    return vc.find_vm(name)


def import_target(vc):
    """(datacenter's VM folder, a host's resource pool, a datastore, the host) of the VPX inventory."""
    datacenter = vc.content.rootFolder.childEntity[0]
    host = vc.find_vm(TEMPLATE).runtime.host
    return datacenter.vmFolder, host.parent.resourcePool, host.datastore[0], host


def import_spec(vc, name, mapping=None, pool=None, datastore=None):
    folder, default_pool, default_datastore, _ = import_target(vc)
    datastore = datastore or default_datastore
    params = vc.vim.OvfManager.CreateImportSpecParams(
        entityName=name, propertyMapping=[vc.vim.KeyValue(key=k, value=v) for k, v in (mapping or {}).items()])
    result = vc.content.ovfManager.CreateImportSpec(DESCRIPTOR, pool or default_pool, datastore, params)
    assert not result.error, result.error
    return result.importSpec


def import_vm(vc, mapping, pool=None, host=None, datastore=None):
    """ImportVApp of DESCRIPTOR (no disk to upload: the lease is completed at once); the new VM."""
    name = next(names)
    folder, default_pool, _, _ = import_target(vc)
    pool = pool or default_pool
    lease = pool.ImportVApp(spec=import_spec(vc, name, mapping, pool, datastore), folder=folder, host=host)
    entity = lease.info.entity
    lease.HttpNfcLeaseComplete()
    return entity


def strings(obj):
    """Every string in a pyVmomi answer, however deep (data objects, arrays; not managed objects)."""
    from pyVmomi import VmomiSupport

    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from strings(item)
    elif isinstance(obj, VmomiSupport.DataObject):
        for prop in obj._GetPropertyList():
            yield from strings(getattr(obj, prop.name, None))


def shown(obj, secret):
    """Whether `secret` is in any string of a pyVmomi answer."""
    return any(secret in text for text in strings(obj))


def properties(vm):
    vapp = vm.config.vAppConfig
    return {p.id: p for p in (vapp.property if vapp else [])}


# -- 1. vApp properties kept on import and reconfigure ------------------------------------------------


def test_create_import_spec_puts_product_properties_in_vapp_config_not_extra_config(vc, vc_stock):
    spec = import_spec(vc, "spec-only", {"firsttrust.sec-a": SECRET}).configSpec
    vapp = spec.vAppConfig
    props = {p.info.id: p for p in vapp.property}
    assert {p.operation for p in vapp.property} == {"add"}
    assert sorted(p.info.key for p in vapp.property) == [0, 1]
    assert props["firsttrust.sec-a"].info.type == "password" and props["firsttrust.sec-a"].info.value == SECRET
    assert props["firsttrust.name"].info.type == "string" and props["firsttrust.name"].info.value == "the-default"
    assert props["firsttrust.name"].info.userConfigurable is True
    assert vapp.product[0].info.name == "firsttrust appliance"
    assert list(vapp.ovfEnvironmentTransport) == ["com.vmware.guestInfo", "iso"]
    assert not [o for o in (spec.extraConfig or []) if o.key.startswith("firsttrust.")]

    stock_spec = import_spec(vc_stock, "spec-only", {"firsttrust.sec-a": SECRET}).configSpec
    assert stock_spec.vAppConfig is None
    assert [(o.key, o.value) for o in stock_spec.extraConfig] == [("firsttrust.sec-a", SECRET)]


def test_vapp_properties_are_kept_on_import_reconfigure_and_clone(vc, vc_stock):
    vm = import_vm(vc, {"firsttrust.name": "app-01"})
    assert properties(vm)["firsttrust.name"].value == "app-01"
    assert list(vm.config.vAppConfig.ovfEnvironmentTransport) == ["com.vmware.guestInfo", "iso"]

    key = properties(vm)["firsttrust.name"].key
    vim = vc.vim
    edit = vim.vApp.PropertySpec(operation="edit", info=vim.vApp.PropertyInfo(key=key, value="renamed"))
    added = vim.vApp.PropertySpec(operation="add", info=vim.vApp.PropertyInfo(key=7, id="extra", type="string",
                                                                              value="x"))
    wait(vc, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(vAppConfig=vim.vApp.VmConfigSpec(
        property=[edit, added], ovfEnvironmentTransport=["com.vmware.guestInfo"]))))
    assert properties(vm)["firsttrust.name"].value == "renamed" and properties(vm)["extra"].value == "x"
    assert list(vm.config.vAppConfig.ovfEnvironmentTransport) == ["com.vmware.guestInfo"]

    # A clone carries its source's vApp configuration (and password values: see the next test).
    copy = vm.CloneVM_Task(folder=vm.parent, name=next(names), spec=vim.vm.CloneSpec(location=vim.vm.RelocateSpec()))
    copy = wait(vc, copy)
    assert properties(copy)["firsttrust.name"].value == "renamed"

    # The transport is removed with a single "" (an empty list is not even sent by pyVmomi).
    wait(vc, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(vAppConfig=vim.vApp.VmConfigSpec(
        property=[vim.vApp.PropertySpec(operation="remove", removeKey=7)], ovfEnvironmentTransport=[""]))))
    assert "extra" not in properties(vm) and not vm.config.vAppConfig.ovfEnvironmentTransport
    wait(vc, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(vAppConfigRemoved=True)))
    assert vm.config.vAppConfig is None

    stock_vm = import_vm(vc_stock, {"firsttrust.name": "app-01"})
    assert stock_vm.config.vAppConfig is None
    wait(vc_stock, stock_vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(vAppConfig=vim.vApp.VmConfigSpec(
        property=[added]))))
    assert stock_vm.config.vAppConfig is None


# -- 2. password properties are write-only ------------------------------------------------------------


def test_password_property_values_read_back_empty_through_every_api_read(vc, vc_stock, strict):
    vm = import_vm(vc, {"firsttrust.sec-a": PLAIN_SECRET})
    secret = properties(vm)["firsttrust.sec-a"]
    # vCenter sends "": vcsim's encoder omits an empty string (omitempty), so pyVmomi reads None.
    assert secret.type == "password" and not secret.value and not secret.defaultValue
    # The PropertyCollector, asked for the whole configuration, and the events of the import.
    collector = vc.vmodl.query.PropertyCollector
    content = vc.content.propertyCollector.RetrieveContents([collector.FilterSpec(
        objectSet=[collector.ObjectSpec(obj=vm)],
        propSet=[collector.PropertySpec(type=vc.vim.VirtualMachine, all=True)])])
    assert not shown(content, PLAIN_SECRET)
    events = vc.content.eventManager.QueryEvents(vc.vim.event.EventFilterSpec(
        entity=vc.vim.event.EventFilterSpec.ByEntity(entity=vm, recursion="self")))
    assert events and not shown(events, PLAIN_SECRET)
    # Editing the value keeps it write-only; the guest gets it (see the OVF environment test).
    vim = vc.vim
    wait(vc, vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(vAppConfig=vim.vApp.VmConfigSpec(property=[
        vim.vApp.PropertySpec(operation="edit", info=vim.vApp.PropertyInfo(key=secret.key, value="other"))]))))
    assert not properties(vm)["firsttrust.sec-a"].value

    # The OVF environment carries the value (the guest is who it is for).
    wait(vc, vm.PowerOnVM_Task())
    assert 'oe:value="other"' in strict.lab.guestinfo_get(vm._moId, "guestinfo.ovfEnv")

    stock_vm = import_vm(vc_stock, {"firsttrust.sec-a": PLAIN_SECRET})
    assert stock_vm.config.vAppConfig is None  # stock keeps no property: the value sits in extraConfig
    assert ("firsttrust.sec-a", PLAIN_SECRET) in extra_config(stock_vm)


# -- 3. extraConfig: "" removes, a key set again is replaced ------------------------------------------


def test_extra_config_key_set_again_is_replaced_and_set_to_empty_is_removed(vc, vc_stock):
    for server_vc, strict_model in ((vc, True), (vc_stock, False)):
        vm = clone(server_vc, extraConfig=options(server_vc, [("guestinfo.a", "1"), ("guestinfo.a", "2"),
                                                              ("guestinfo.gone", "x"), ("guestinfo.gone", "")]))
        created = extra_config(vm)
        wait(server_vc, vm.ReconfigVM_Task(spec=server_vc.vim.vm.ConfigSpec(
            extraConfig=options(server_vc, [("guestinfo.b", "1")]))))
        wait(server_vc, vm.ReconfigVM_Task(spec=server_vc.vim.vm.ConfigSpec(
            extraConfig=options(server_vc, [("guestinfo.b", "2"), ("guestinfo.a", "")]))))
        if strict_model:
            assert created == [("guestinfo.a", "2")]
            assert extra_config(vm) == [("guestinfo.b", "2")]
        else:
            assert created == [("guestinfo.a", "1"), ("guestinfo.a", "2"), ("guestinfo.gone", "x"),
                               ("guestinfo.gone", "")]
            assert extra_config(vm)[-3:] == [("guestinfo.b", "1"), ("guestinfo.b", "2"), ("guestinfo.a", "")]


def test_create_vm_keeps_vapp_config_and_sets_extra_config_per_key(vc, vc_stock):
    for server_vc, strict_model in ((vc, True), (vc_stock, False)):
        vim = server_vc.vim
        folder, pool, datastore, host = import_target(server_vc)
        name = next(names)
        config = vim.vm.ConfigSpec(
            name=name, files=vim.vm.FileInfo(vmPathName=f"[{datastore.name}]"), guestId="otherGuest",
            extraConfig=options(server_vc, [("guestinfo.a", "1"), ("guestinfo.a", "2"), ("guestinfo.b", "")]),
            vAppConfig=vim.vApp.VmConfigSpec(property=[vim.vApp.PropertySpec(operation="add", info=vim.vApp.PropertyInfo(
                key=0, id="firsttrust.sec-a", type="password", value=PLAIN_SECRET))]))
        vm = wait(server_vc, folder.CreateVM_Task(config=config, pool=pool, host=host))
        if strict_model:
            assert extra_config(vm) == [("guestinfo.a", "2")]
            assert properties(vm)["firsttrust.sec-a"].type == "password" and not properties(vm)["firsttrust.sec-a"].value
        else:
            assert extra_config(vm) == [("guestinfo.a", "1"), ("guestinfo.a", "2"), ("guestinfo.b", "")]
            assert vm.config.vAppConfig is None


# -- 4. the OVF environment at power-on, for the guest only ------------------------------------------


def test_power_on_builds_the_ovf_environment_the_guest_alone_reads(vc, vc_stock, strict, stock):
    vm = import_vm(vc, {"firsttrust.sec-a": SECRET, "firsttrust.name": "app-01"})
    moid = vm._moId
    assert strict.lab.guestinfo_get(moid, "guestinfo.ovfEnv") is None  # built at power-on
    wait(vc, vm.PowerOnVM_Task())
    document = strict.lab.guestinfo_get(moid, "guestinfo.ovfEnv")
    environment = parse_ovf_env(document.encode())
    assert environment.properties == {"firsttrust.sec-a": SECRET, "firsttrust.name": "app-01"}
    assert environment.vcenter_id == moid and environment.environment_id == ""
    assert environment.platform.kind == "VMware ESXi"
    # Never through the API: not in extraConfig, not anywhere in the VM's properties.
    assert not [k for k, _ in extra_config(vm) if k == "guestinfo.ovfEnv"]
    collector = vc.vmodl.query.PropertyCollector
    content = vc.content.propertyCollector.RetrieveContents([collector.FilterSpec(
        objectSet=[collector.ObjectSpec(obj=vm)], propSet=[collector.PropertySpec(type=vc.vim.VirtualMachine, all=True)])]
    )
    assert not shown(content, "ovfEnv") and not shown(content, "schemas.dmtf.org/ovf/environment")
    assert not shown(content, "s3cret-Value")
    # Without the guestInfo transport, the next power-on hands the guest no environment.
    wait(vc, vm.PowerOffVM_Task())
    wait(vc, vm.ReconfigVM_Task(spec=vc.vim.vm.ConfigSpec(vAppConfig=vc.vim.vApp.VmConfigSpec(
        ovfEnvironmentTransport=[""]))))
    wait(vc, vm.PowerOnVM_Task())
    assert strict.lab.guestinfo_get(moid, "guestinfo.ovfEnv") is None

    stock_vm = import_vm(vc_stock, {"firsttrust.sec-a": SECRET})
    wait(vc_stock, stock_vm.PowerOnVM_Task())
    assert stock.lab.guestinfo_get(stock_vm._moId, "guestinfo.ovfEnv") is None


# -- 5. vmw:Config firmware ---------------------------------------------------------------------------


def test_vmw_config_firmware_is_honoured_by_create_import_spec(vc, vc_stock):
    assert import_spec(vc, "fw").configSpec.firmware == "efi"
    assert import_vm(vc, {}).config.firmware == "efi"
    assert import_spec(vc_stock, "fw").configSpec.firmware in (None, "", "bios")
    assert import_vm(vc_stock, {}).config.firmware == "bios"


# -- 6. clusters honour drsConfig.enabled -------------------------------------------------------------


def cluster_without_drs(vc, directory):
    """A new cluster (DRS off, as asked) with one host and a datastore of its own (a directory of
    this machine: vcsim's datastores are directories); the cluster, its resource pool, host and datastore."""
    vim = vc.vim
    datacenter = vc.content.rootFolder.childEntity[0]
    cluster = datacenter.hostFolder.CreateClusterEx(name=next(names), spec=vim.cluster.ConfigSpecEx(
        drsConfig=vim.cluster.DrsConfigInfo(enabled=False)))
    host = wait(vc, cluster.AddHost_Task(spec=vim.host.ConnectSpec(hostName=next(names)), asConnected=True))
    directory.mkdir()
    datastore = host.configManager.datastoreSystem.CreateLocalDatastore(name=next(names), path=str(directory))
    return cluster, cluster.resourcePool, host, datastore


def test_clusters_honour_drs_enabled_and_refuse_placement_without_a_host(vc, vc_stock, tmp_path):
    vim = vc.vim
    cluster, pool, host, datastore = cluster_without_drs(vc, tmp_path / "strict")
    assert cluster.configurationEx.drsConfig.enabled is False
    folder = import_target(vc)[0]
    name = next(names)
    with pytest.raises(vc.vmodl.fault.InvalidArgument) as refused:
        pool.ImportVApp(spec=import_spec(vc, name, pool=pool, datastore=datastore), folder=folder)
    assert refused.value.invalidProperty == "host"
    # With a host it is accepted.
    imported = import_vm(vc, {}, pool=pool, host=host, datastore=datastore)
    assert imported.runtime.host == host
    # Clones of it (it has no NIC on the VPX inventory's distributed switch, which the new host
    # is not a member of): into the pool without a host refused, with one placed on it.
    fault = task_fault(vc, imported.CloneVM_Task(folder=imported.parent, name=next(names), spec=vim.vm.CloneSpec(
        location=vim.vm.RelocateSpec(pool=pool))))
    assert isinstance(fault, vc.vmodl.fault.InvalidArgument) and fault.invalidProperty == "spec.location.host"
    placed = wait(vc, imported.CloneVM_Task(folder=imported.parent, name=next(names), spec=vim.vm.CloneSpec(
        location=vim.vm.RelocateSpec(pool=pool, host=host))))
    assert placed.runtime.host == host and placed.resourcePool == pool
    moved = clone(vc)
    fault = task_fault(vc, moved.RelocateVM_Task(spec=vim.vm.RelocateSpec(pool=pool)))
    assert isinstance(fault, vc.vmodl.fault.InvalidArgument) and fault.invalidProperty == "spec.host"
    # ReconfigureComputeResource_Task, modify=True, merges: DRS on, and placement without a host works.
    wait(vc, cluster.ReconfigureComputeResource_Task(spec=vim.cluster.ConfigSpecEx(
        drsConfig=vim.cluster.DrsConfigInfo(enabled=True)), modify=True))
    assert cluster.configurationEx.drsConfig.enabled is True
    assert import_vm(vc, {}, pool=pool, datastore=datastore).runtime.host == host
    # The VPX inventory's own clusters keep DRS on.
    assert all(c.configurationEx.drsConfig.enabled for c in vc.content.rootFolder.childEntity[0].hostFolder.childEntity
               if isinstance(c, vim.ClusterComputeResource) and c.name.startswith("DC0_C"))

    stock_cluster, stock_pool, _, stock_datastore = cluster_without_drs(vc_stock, tmp_path / "stock")
    assert stock_cluster.configurationEx.drsConfig.enabled is True  # stock enables DRS everywhere
    assert import_vm(vc_stock, {}, pool=stock_pool, datastore=stock_datastore) is not None
    stock_source = import_vm(vc_stock, {}, pool=stock_pool, datastore=stock_datastore)
    assert task_fault(vc_stock, stock_source.CloneVM_Task(folder=stock_source.parent, name=next(names), spec=(
        vc_stock.vim.vm.CloneSpec(location=vc_stock.vim.vm.RelocateSpec(pool=stock_pool))))) is None


# -- 7. the datastore switch ---------------------------------------------------------------------------


def test_datastore_switch_is_seen_by_the_property_collector(vc, strict, stock):
    vim, collector = vc.vim, vc.vmodl.query.PropertyCollector
    datastore = import_target(vc)[2]
    pc = vc.content.propertyCollector.CreatePropertyCollector()
    try:
        pc.CreateFilter(collector.FilterSpec(objectSet=[collector.ObjectSpec(obj=datastore)], propSet=[
            collector.PropertySpec(type=vim.Datastore, pathSet=["summary.accessible", "summary.maintenanceMode"])]),
            partialUpdates=False)
        options_ = collector.WaitOptions(maxWaitSeconds=1)
        first = pc.WaitForUpdatesEx("", options_)
        seen = {c.name: c.val for f in first.filterSet for o in f.objectSet for c in o.changeSet}
        assert seen == {"summary.accessible": True, "summary.maintenanceMode": "normal"}
        strict.lab.set_datastore(datastore.name, accessible=False, maintenance=True)
        update = pc.WaitForUpdatesEx(first.version, options_)
        assert update is not None, "no PropertyCollector update after the switch"
        seen = {c.name: c.val for f in update.filterSet for o in f.objectSet for c in o.changeSet}
        assert seen == {"summary.accessible": False, "summary.maintenanceMode": "inMaintenance"}
    finally:
        pc.Destroy()
    assert datastore.summary.accessible is False and datastore.summary.maintenanceMode == "inMaintenance"
    strict.lab.set_datastore(datastore.name)
    assert datastore.summary.accessible is True and datastore.summary.maintenanceMode == "normal"

    with pytest.raises(LabControlError, match="-stock"):
        stock.lab.set_datastore("LocalDS_0", accessible=False)


# -- 8. the request count ------------------------------------------------------------------------------


def test_requests_are_counted_by_session_and_method(strict, stock):
    before = strict.lab.requests()
    counted = session(strict)
    try:
        key = counted.content.sessionManager.currentSession.key
        for _ in range(3):
            counted.content.rootFolder.childEntity  # pyVmomi reads a property with one Fetch
        after = strict.lab.requests()
    finally:
        counted.close()
    mine = after["sessions"][key]
    assert mine["user"] == strict.user
    # currentSession, then childEntity three times: one Fetch each (pyVmomi 7 and later), one
    # RetrievePropertiesEx each with Debian 12's pyVmomi 6.7.1 (`make test-debian-versions`)
    methods = mine["methods"]
    assert methods.get("Fetch", 0) + methods.get("RetrievePropertiesEx", 0) == 4, methods
    assert key not in before["sessions"]
    grew = {m: n - before["unauthenticated"].get(m, 0) for m, n in after["unauthenticated"].items()}
    assert grew.get("Login") == 1 and grew.get("RetrieveServiceContent", 0) >= 1
    assert "Logout" in strict.lab.requests()["sessions"][key]["methods"]
    assert strict.password not in json.dumps(after)

    with pytest.raises(LabControlError, match="-stock"):
        stock.lab.requests()


# -- the lab's control endpoints ----------------------------------------------------------------------


def test_control_endpoints_refuse_a_missing_or_wrong_token(strict):
    with pytest.raises(LabControlError, match="403"):
        LabControl(strict.url, strict.ca_file, "wrong").requests()
    context = ssl.create_default_context(cafile=str(strict.ca_file))
    request = urllib.request.Request(strict.url.replace("/sdk", "/firsttrust-lab/requests"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=TIMEOUT)
    assert refused.value.code == 403


def test_report_guest_ip_is_seen_by_wait_for_updates(vc, strict):
    vm = clone(vc)
    collector = vc.vmodl.query.PropertyCollector
    pc = vc.content.propertyCollector.CreatePropertyCollector()
    try:
        pc.CreateFilter(collector.FilterSpec(objectSet=[collector.ObjectSpec(obj=vm)], propSet=[
            collector.PropertySpec(type=vc.vim.VirtualMachine, pathSet=["guest.ipAddress"])]), partialUpdates=False)
        first = pc.WaitForUpdatesEx("", collector.WaitOptions(maxWaitSeconds=1))
        strict.lab.report_guest_ip(vm._moId, "127.0.0.9")
        update = pc.WaitForUpdatesEx(first.version, collector.WaitOptions(maxWaitSeconds=1))
        assert update is not None
        assert [c.val for f in update.filterSet for o in f.objectSet for c in o.changeSet] == ["127.0.0.9"]
    finally:
        pc.Destroy()
    assert vm.guest.toolsRunningStatus == "guestToolsRunning" and vm.guest.net[0].ipAddress == ["127.0.0.9"]


def test_guestinfo_set_is_extra_config_by_default_and_private_with_the_switch(vc, strict):
    vm = clone(vc)
    strict.lab.guestinfo_set(vm._moId, "guestinfo.cert", "v1")
    strict.lab.guestinfo_set(vm._moId, "guestinfo.cert", "v2")
    assert extra_config(vm) == [("guestinfo.cert", "v2")] and strict.lab.guestinfo_get(vm._moId, "guestinfo.cert") == "v2"
    strict.lab.guestinfo_set(vm._moId, "guestinfo.cert", "")
    assert extra_config(vm) == [] and strict.lab.guestinfo_get(vm._moId, "guestinfo.cert") is None
    with pytest.raises(LabControlError, match="guestinfo"):
        strict.lab.guestinfo_get(vm._moId, "govcsim")

    with Vcsim.start(guestinfo_set_private=True) as private:
        pvc = session(private)
        try:
            pvm = clone(pvc, extraConfig=options(pvc, [("guestinfo.cert", "from-api")]))
            private.lab.guestinfo_set(pvm._moId, "guestinfo.cert", "from-guest")
            assert private.lab.guestinfo_get(pvm._moId, "guestinfo.cert") == "from-guest"
            assert extra_config(pvm) == [("guestinfo.cert", "from-api")]  # the API never sees it
            wait(pvc, pvm.ReconfigVM_Task(spec=pvc.vim.vm.ConfigSpec(extraConfig=options(pvc, [("guestinfo.cert", "")]))))
            assert private.lab.guestinfo_get(pvm._moId, "guestinfo.cert") is None  # the API's write reaches the guest
        finally:
            pvc.close()


def test_the_simulators_argv_holds_no_secret_and_the_stock_switch_is_a_flag(strict, stock):
    for server in (strict, stock):
        argv = (Path("/proc") / str(server.pid) / "cmdline").read_bytes().split(b"\0")
        assert server.password.encode() not in b" ".join(argv) and server.lab_token.encode() not in b" ".join(argv)
        assert (b"-stock" in argv) is server.stock
    assert repr(strict.lab_token) not in repr(strict) and strict.lab_token not in repr(strict.lab)
