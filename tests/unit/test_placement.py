"""Where a deployment lands (requester/placement.py), decided on a made-up inventory without a server:
nested folders, a cluster with DRS and one without, a standalone host, datastores that are not
usable, networks, and the one-line errors that name what exists where a path stopped."""

from __future__ import annotations

import pytest

from firsttrust.requester.placement import (
    CLUSTER, COMPUTE, DATACENTER, DATASTORE, FOLDER, HOST, NETWORK, POOL, Entity, Inventory, PlacementError,
    PlacementRequest, choose_placement,
)


def inventory(*, drs: bool = True, ds_state: dict | None = None) -> Inventory:
    """root/DC0 with vm/{bringup/appliances}, host/{H0 (standalone), prod/{C0 (cluster: h1, h2)}}."""
    ds_state = ds_state or {}
    entities = []

    def add(kind, name, moid, parent, **props):
        entities.append(Entity(ref=moid, kind=kind, name=name, moid=moid, parent=parent, props=props))

    add(FOLDER, "Datacenters", "root", None, child_order=["dc0"])
    add(DATACENTER, "DC0", "dc0", "root", vm_folder="vmf", host_folder="hostf")
    add(FOLDER, "vm", "vmf", "dc0", child_order=["bringup"])
    add(FOLDER, "bringup", "bringup", "vmf", child_order=["apps"])
    add(FOLDER, "appliances", "apps", "bringup")
    add(FOLDER, "host", "hostf", "dc0", child_order=["cr-h0", "prod"])
    add(COMPUTE, "H0", "cr-h0", "hostf", datastores=["ds-local"], networks=["net-vm"], root_pool="rp-h0",
        child_order=["host-0", "rp-h0"])
    add(HOST, "H0", "host-0", "cr-h0", datastores=["ds-local"], connected=True, maintenance=False)
    add(POOL, "Resources", "rp-h0", "cr-h0")
    add(FOLDER, "prod", "prod", "hostf", child_order=["c0"])
    add(CLUSTER, "C0", "c0", "prod", datastores=["ds-a", "ds-b", "ds-c"], networks=["net-vm", "net-apps"],
        root_pool="rp-c0", drs=drs, child_order=["host-1", "host-2", "rp-c0"])
    add(HOST, "h1", "host-1", "c0", datastores=["ds-a"], connected=True, maintenance=True)
    add(HOST, "h2", "host-2", "c0", datastores=["ds-a", "ds-b", "ds-c"], connected=True, maintenance=False)
    add(POOL, "Resources", "rp-c0", "c0", child_order=["pool-1"])
    add(POOL, "bringup", "pool-1", "rp-c0")
    for moid, free in (("ds-local", 10), ("ds-a", 50), ("ds-b", 40), ("ds-c", 90)):
        accessible, mode = ds_state.get(moid, (True, "normal"))
        add(DATASTORE, moid.upper(), moid, "dsf", accessible=accessible, maintenance_mode=mode, free_space=free)
    add(NETWORK, "VM Network", "net-vm", "netf")
    add(NETWORK, "appliances", "net-apps", "netf")
    return Inventory(entities)


def test_by_default_the_first_compute_resource_its_host_and_its_emptiest_usable_datastore():
    placement = choose_placement(inventory(), PlacementRequest())
    assert (placement.datacenter.moid, placement.folder.moid) == ("dc0", "vmf")
    assert (placement.compute.moid, placement.pool.moid) == ("cr-h0", "rp-h0")
    # a standalone host is always passed: ImportVApp and the clone spec then name it explicitly
    assert placement.host.moid == "host-0" and placement.datastore.moid == "ds-local"
    assert placement.network is None
    assert any(note.startswith("pool H0 (the first of 2") for note in placement.notes)
    assert any(note.startswith("datastore DS-LOCAL") for note in placement.notes)


def test_a_cluster_in_a_nested_folder_is_found_by_path_or_by_name():
    by_path = choose_placement(inventory(), PlacementRequest(pool="prod/C0"))
    by_name = choose_placement(inventory(), PlacementRequest(pool="C0"))
    assert by_path.pool.moid == by_name.pool.moid == "rp-c0"
    deeper = choose_placement(inventory(), PlacementRequest(pool="prod/C0/Resources/bringup"))
    assert deeper.pool.moid == "pool-1" and deeper.compute.moid == "c0"
    assert choose_placement(inventory(), PlacementRequest(pool="bringup")).pool.moid == "pool-1"


def test_a_cluster_with_drs_gets_no_host_unless_asked():
    placement = choose_placement(inventory(drs=True), PlacementRequest(pool="C0"))
    assert placement.host is None
    asked = choose_placement(inventory(drs=True), PlacementRequest(pool="C0", host="h2"))
    assert asked.host.moid == "host-2"


def test_a_cluster_without_drs_gets_the_first_usable_host_that_sees_the_datastore_and_says_so():
    placement = choose_placement(inventory(drs=False), PlacementRequest(pool="C0"))
    # h1 is in maintenance: h2 is chosen, and the note says why a host is needed at all
    assert placement.host.moid == "host-2" and placement.datastore.moid == "ds-c"
    assert any("has no DRS" in note and note.startswith("host h2") for note in placement.notes)


def test_a_host_alone_selects_its_compute_resource_and_its_datastores():
    placement = choose_placement(inventory(), PlacementRequest(host="h2"))
    assert (placement.compute.moid, placement.pool.moid, placement.host.moid) == ("c0", "rp-c0", "host-2")


def test_a_host_outside_the_pools_cluster_or_in_maintenance_is_refused():
    with pytest.raises(PlacementError, match="'H0' is not in 'C0'"):
        choose_placement(inventory(), PlacementRequest(pool="C0", host="H0"))
    with pytest.raises(PlacementError, match="in maintenance mode"):
        choose_placement(inventory(), PlacementRequest(pool="C0", host="h1"))


def test_datastores_that_are_not_accessible_or_in_maintenance_are_never_chosen():
    placement = choose_placement(inventory(ds_state={"ds-c": (False, "normal"), "ds-a": (True, "inMaintenance")}),
                                 PlacementRequest(pool="C0"))
    assert placement.datastore.moid == "ds-b"
    assert any("2 inaccessible or in maintenance skipped" in note for note in placement.notes)


def test_a_named_datastore_that_is_not_usable_is_refused_in_one_line():
    with pytest.raises(PlacementError) as caught:
        choose_placement(inventory(ds_state={"ds-c": (False, "normal")}), PlacementRequest(pool="C0", datastore="DS-C"))
    assert str(caught.value) == "datastore 'DS-C' is not accessible"
    with pytest.raises(PlacementError, match="in maintenance"):
        choose_placement(inventory(ds_state={"ds-c": (True, "enteringMaintenance")}),
                         PlacementRequest(pool="C0", datastore="DS-C"))


def test_no_usable_datastore_at_all_says_why_each_was_skipped():
    with pytest.raises(PlacementError) as caught:
        choose_placement(inventory(ds_state={"ds-local": (False, "normal")}), PlacementRequest())
    assert str(caught.value) == "no usable datastore on 'H0' (DS-LOCAL not accessible)"


def test_a_wrong_path_names_what_exists_at_that_level():
    with pytest.raises(PlacementError) as caught:
        choose_placement(inventory(), PlacementRequest(folder="bringup/nope"))
    assert str(caught.value) == "no folder 'nope' in DC0/vm/bringup; there: appliances"
    with pytest.raises(PlacementError) as caught:
        choose_placement(inventory(), PlacementRequest(pool="prod/C9"))
    assert str(caught.value) == "no folder, host or cluster 'C9' in DC0/host/prod; there: C0"
    with pytest.raises(PlacementError) as caught:
        choose_placement(inventory(), PlacementRequest(pool="prod/C0/Resources/none"))
    assert str(caught.value) == "no resource pool 'none' in DC0/host/prod/C0/Resources; there: bringup"
    with pytest.raises(PlacementError) as caught:
        choose_placement(inventory(), PlacementRequest(datacenter="DC9"))
    assert str(caught.value) == "no datacenter 'DC9'; there: DC0"
    with pytest.raises(PlacementError) as caught:
        choose_placement(inventory(), PlacementRequest(host="h9"))
    assert str(caught.value) == "no host 'h9' in datacenter 'DC0'; there: H0, h1, h2"


def test_a_folder_path_is_resolved_folder_by_folder():
    placement = choose_placement(inventory(), PlacementRequest(folder="bringup/appliances"))
    assert placement.folder.moid == "apps"


def test_a_network_is_looked_up_on_the_compute_resource():
    placement = choose_placement(inventory(), PlacementRequest(pool="C0", network="appliances"))
    assert placement.network.moid == "net-apps"
    with pytest.raises(PlacementError) as caught:
        choose_placement(inventory(), PlacementRequest(network="appliances"))  # H0 has only VM Network
    assert str(caught.value) == "no network 'appliances' on 'H0'; there: VM Network"
