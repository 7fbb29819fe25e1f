"""Where a deployment lands: datacenter, VM folder, resource pool, host, datastore, network. No IO.

    inventory = Inventory(entities)                      # one read of the inventory (vsphere.py)
    placement = choose_placement(inventory, PlacementRequest(pool="prod/cluster-a", network="appliances"))
    placement.pool, placement.host, placement.datastore  # the entities to pass to the API
    placement.notes                                      # each automatic choice, printed before anything is made

The rules, each from the vSphere API reference:
- ResourcePool.ImportVApp, `host`: "This must specify a host that is a member of the
  ComputeResource indirectly specified by the pool. For a stand-alone host or a cluster with DRS,
  it can be omitted, and the system selects a default." VirtualMachineRelocateSpec.host (clones):
  "if resource pool is specified, and the target pool represents a cluster without DRS enabled,
  an InvalidArgument exception be thrown". So a host is passed for a standalone host (always, it
  costs nothing) and for a cluster without DRS (the one asked for, else the first usable host,
  said in a note); a cluster with DRS gets one only when asked.
- DatastoreSummary.accessible ("The connectivity status of this datastore. If this is set to
  false, meaning the datastore is not accessible, this datastore's capacity and freespace
  properties cannot be validated.") and maintenanceMode ("normal", "enteringMaintenance",
  "inMaintenance"): a datastore that is not accessible, or not "normal", is never chosen, and one
  named on the command line is refused.
- Paths are the inventory's own: folders within folders, below the datacenter's VM folder
  (--folder) and host folder (--pool, then child resource pools; a "Resources" component, the
  name vSphere shows for a compute resource's root pool, may be written or left out). A name
  without "/" that is not a child of the top level is looked for in the whole datacenter; it
  must then name one thing.
A path that does not resolve fails with one line naming what exists at the level it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from .deployplan import InvalidDeployPlan

FOLDER, DATACENTER = "Folder", "Datacenter"
CLUSTER, COMPUTE, HOST, POOL = "ClusterComputeResource", "ComputeResource", "HostSystem", "ResourcePool"
VAPP, DATASTORE, NETWORK, PORTGROUP = "VirtualApp", "Datastore", "Network", "DistributedVirtualPortgroup"
COMPUTE_KINDS = (CLUSTER, COMPUTE)
POOL_KINDS = (POOL, VAPP)
NETWORK_KINDS = (NETWORK, PORTGROUP)
ROOT_POOL_NAME = "Resources"
# How many names a "there:" list shows before "and N more".
MAX_LISTED = 12


class PlacementError(InvalidDeployPlan):
    """A placement option names nothing usable; the message says what exists there."""

    code = "placement"


@dataclass(eq=False)
class Entity:
    """One inventory object. `ref` is the API's object (opaque here); `children` in the
    server's order (childEntity, host, resourcePool), filled by Inventory."""

    ref: object
    kind: str
    name: str
    moid: str
    parent: str | None = None
    # Datacenter: vm_folder, host_folder. ComputeResource: hosts, datastores, networks, root_pool,
    # drs (clusters). HostSystem: connected, maintenance, datastores. Datastore: accessible,
    # maintenance_mode, free_space. ResourcePool: owner (the compute resource's moid).
    props: dict = field(default_factory=dict)
    children: list["Entity"] = field(default_factory=list)


@dataclass(frozen=True)
class PlacementRequest:
    datacenter: str | None = None
    folder: str | None = None
    pool: str | None = None
    host: str | None = None
    datastore: str | None = None
    network: str | None = None

    @property
    def explicit_compute(self) -> bool:
        return self.pool is not None or self.host is not None


@dataclass(frozen=True)
class Placement:
    datacenter: Entity
    folder: Entity
    compute: Entity
    pool: Entity
    host: Entity | None
    datastore: Entity
    network: Entity | None
    notes: tuple[str, ...] = ()


class Inventory:
    """The inventory as one read returned it: entities by managed object ID, with parent links."""

    def __init__(self, entities: Iterable[Entity]) -> None:
        self.by_moid: dict[str, Entity] = {e.moid: e for e in entities}
        for entity in self.by_moid.values():
            entity.children = []
        for entity in self.by_moid.values():
            order = entity.props.get("child_order")
            if order:
                entity.children = [self.by_moid[m] for m in order if m in self.by_moid]
        for entity in self.by_moid.values():
            parent = self.by_moid.get(entity.parent or "")
            if parent is not None and entity not in parent.children:
                parent.children.append(entity)

    def get(self, moid: str | None) -> Entity | None:
        return self.by_moid.get(moid or "")

    def roots(self) -> list[Entity]:
        return [e for e in self.by_moid.values() if e.parent is None or e.parent not in self.by_moid]

    def datacenters(self) -> list[Entity]:
        return [e for root in self.roots() for e in walk(root) if e.kind == DATACENTER]

    def path(self, entity: Entity, below: Entity | None = None) -> str:
        parts = []
        while entity is not None and entity is not below:
            parts.append(entity.name)
            entity = self.get(entity.parent)
        return "/".join(reversed(parts))


def walk(entity: Entity) -> Iterator[Entity]:
    """Depth first, in the server's child order."""
    yield entity
    for child in entity.children:
        yield from walk(child)


def choose_placement(inventory: Inventory, request: PlacementRequest) -> Placement:
    """Resolve `request` against `inventory`; every choice the request leaves open is made and said.

    Raises:
        PlacementError: a path that does not resolve, an ambiguous name, a host outside the pool's
            compute resource, a datastore that is missing, inaccessible or in maintenance, no
            usable datastore or host at all.
    """
    notes: list[str] = []
    datacenter = _datacenter(inventory, request.datacenter, notes)
    folder = _folder(inventory, datacenter, request.folder)
    compute, pool = _compute_and_pool(inventory, datacenter, request, notes)
    host = _host(inventory, datacenter, compute, request.host)
    datastore = _datastore(inventory, compute, host, request.datastore, notes)
    if host is None and (compute.kind == COMPUTE or not compute.props.get("drs", True)):
        host = _pick_host(inventory, compute, datastore, notes)
    network = _network(inventory, datacenter, compute, request.network)
    return Placement(datacenter=datacenter, folder=folder, compute=compute, pool=pool, host=host,
                     datastore=datastore, network=network, notes=tuple(notes))


def _there(entities: Sequence[Entity]) -> str:
    names = sorted(e.name for e in entities)
    if not names:
        return "there is nothing there"
    listed = ", ".join(names[:MAX_LISTED])
    return f"there: {listed}" + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _components(path: str, what: str) -> list[str]:
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise PlacementError(f"the {what} path {path[:80]!r} names nothing")
    return parts


def _datacenter(inventory: Inventory, wanted: str | None, notes: list[str]) -> Entity:
    datacenters = inventory.datacenters()
    if not datacenters:
        raise PlacementError("the inventory has no datacenter")
    if wanted is None:
        chosen = datacenters[0]
        if len(datacenters) > 1:
            notes.append(f"datacenter {inventory.path(chosen)} (the first of {len(datacenters)}; --datacenter to choose)")
        return chosen
    parts = _components(wanted, "datacenter")
    matches = [dc for dc in datacenters if inventory.path(dc).split("/")[-len(parts):] == parts]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise PlacementError(f"no datacenter {wanted[:80]!r}; {_there(datacenters)}")
    raise PlacementError(f"datacenter {wanted[:80]!r} is ambiguous: "
                         f"{', '.join(inventory.path(dc) for dc in matches)}; give its folder path")


def _descend(inventory: Inventory, start: Entity, parts: list[str], kinds: tuple[str, ...], what: str,
             shown: str) -> Entity:
    """Follow `parts` from `start` through children of `kinds`; one line naming what exists where it stops."""
    current, trail = start, shown
    for part in parts:
        children = [c for c in current.children if c.kind in kinds]
        found = [c for c in children if c.name == part]
        if not found:
            raise PlacementError(f"no {what} {part[:80]!r} in {trail}; {_there(children)}")
        current, trail = found[0], f"{trail}/{part}"
    return current


def _folder(inventory: Inventory, datacenter: Entity, wanted: str | None) -> Entity:
    vm_folder = inventory.get(datacenter.props.get("vm_folder"))
    if vm_folder is None:
        raise PlacementError(f"datacenter {datacenter.name!r} has no VM folder")
    if wanted is None:
        return vm_folder
    return _descend(inventory, vm_folder, _components(wanted, "folder"), (FOLDER,), "folder", f"{datacenter.name}/vm")


def _compute_resources(inventory: Inventory, datacenter: Entity) -> list[Entity]:
    host_folder = inventory.get(datacenter.props.get("host_folder"))
    if host_folder is None:
        return []
    return [e for e in walk(host_folder) if e.kind in COMPUTE_KINDS]


def _compute_of(inventory: Inventory, entity: Entity) -> Entity | None:
    while entity is not None and entity.kind not in COMPUTE_KINDS:
        entity = inventory.get(entity.parent)
    return entity


def _compute_and_pool(inventory: Inventory, datacenter: Entity, request: PlacementRequest,
                      notes: list[str]) -> tuple[Entity, Entity]:
    if request.pool is not None:
        pool_or_compute = _resolve_pool(inventory, datacenter, request.pool)
        compute = _compute_of(inventory, pool_or_compute)
        if compute is None:
            raise PlacementError(f"{request.pool[:80]!r} is not in a host or cluster")
        pool = pool_or_compute if pool_or_compute.kind in POOL_KINDS else _root_pool(inventory, compute)
        return compute, pool
    if request.host is not None:
        host = _find_host(inventory, datacenter, request.host)
        compute = _compute_of(inventory, host)
        return compute, _root_pool(inventory, compute)
    candidates = _compute_resources(inventory, datacenter)
    if not candidates:
        raise PlacementError(f"datacenter {datacenter.name!r} has no host or cluster")
    compute = candidates[0]
    if len(candidates) > 1:
        notes.append(f"pool {_host_path(inventory, datacenter, compute)} (the first of {len(candidates)} hosts "
                     f"and clusters; --pool or --host to choose)")
    return compute, _root_pool(inventory, compute)


def _host_path(inventory: Inventory, datacenter: Entity, entity: Entity) -> str:
    host_folder = inventory.get(datacenter.props.get("host_folder"))
    return inventory.path(entity, below=host_folder)


def _root_pool(inventory: Inventory, compute: Entity) -> Entity:
    pool = inventory.get(compute.props.get("root_pool"))
    if pool is None:
        raise PlacementError(f"{compute.name!r} has no resource pool")
    return pool


def _resolve_pool(inventory: Inventory, datacenter: Entity, wanted: str) -> Entity:
    host_folder = inventory.get(datacenter.props.get("host_folder"))
    if host_folder is None:
        raise PlacementError(f"datacenter {datacenter.name!r} has no host folder")
    parts = _components(wanted, "pool")
    if len(parts) == 1 and not any(c.name == parts[0] for c in host_folder.children):
        found = [e for e in walk(host_folder) if e.name == parts[0]
                 and (e.kind in COMPUTE_KINDS or (e.kind in POOL_KINDS and e.name != ROOT_POOL_NAME))]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise PlacementError(f"pool {wanted[:80]!r} is ambiguous: "
                                 f"{', '.join(_host_path(inventory, datacenter, e) for e in found)}; give its path")
    current, trail = host_folder, f"{datacenter.name}/host"
    for index, part in enumerate(parts):
        if current.kind in COMPUTE_KINDS:
            current = _root_pool(inventory, current)
            if part == ROOT_POOL_NAME:
                trail += f"/{part}"
                continue
        kinds = (FOLDER, *COMPUTE_KINDS) if current.kind == FOLDER else POOL_KINDS
        children = [c for c in current.children if c.kind in kinds]
        found = [c for c in children if c.name == part]
        if not found:
            what = "folder, host or cluster" if current.kind == FOLDER else "resource pool"
            raise PlacementError(f"no {what} {part[:80]!r} in {trail}; {_there(children)}")
        current, trail = found[0], f"{trail}/{part}"
    if current.kind == FOLDER:
        raise PlacementError(f"{wanted[:80]!r} is a folder, not a host, cluster or resource pool; "
                             f"{_there([c for c in current.children if c.kind != FOLDER] or current.children)}")
    return current


def _find_host(inventory: Inventory, datacenter: Entity, wanted: str) -> Entity:
    hosts = [e for c in _compute_resources(inventory, datacenter) for e in c.children if e.kind == HOST]
    found = [h for h in hosts if h.name == wanted]
    if not found:
        raise PlacementError(f"no host {wanted[:80]!r} in datacenter {datacenter.name!r}; {_there(hosts)}")
    return found[0]


def _host(inventory: Inventory, datacenter: Entity, compute: Entity, wanted: str | None) -> Entity | None:
    if wanted is None:
        return None
    host = _find_host(inventory, datacenter, wanted)
    if _compute_of(inventory, host) is not compute:
        raise PlacementError(f"host {wanted[:80]!r} is not in {compute.name!r} (the pool's "
                             f"{'cluster' if compute.kind == CLUSTER else 'host'})")
    if not host.props.get("connected", True) or host.props.get("maintenance", False):
        raise PlacementError(f"host {wanted[:80]!r} is {_host_state(host)}")
    return host


def _host_state(host: Entity) -> str:
    if not host.props.get("connected", True):
        return "not connected"
    return "in maintenance mode" if host.props.get("maintenance") else "usable"


def _usable_datastore(datastore: Entity) -> str | None:
    """None if usable, else why not."""
    if not datastore.props.get("accessible", True):
        return "not accessible"
    mode = datastore.props.get("maintenance_mode") or "normal"
    if mode != "normal":
        return f"in maintenance ({mode})"
    return None


def _datastore(inventory: Inventory, compute: Entity, host: Entity | None, wanted: str | None,
               notes: list[str]) -> Entity:
    owner = host or compute
    candidates = [d for d in (inventory.get(m) for m in owner.props.get("datastores", ())) if d is not None]
    if wanted is not None:
        found = [d for d in candidates if d.name == wanted]
        if not found:
            raise PlacementError(f"no datastore {wanted[:80]!r} on {owner.name!r}; {_there(candidates)}")
        why = _usable_datastore(found[0])
        if why:
            raise PlacementError(f"datastore {wanted[:80]!r} is {why}")
        return found[0]
    usable = [d for d in candidates if _usable_datastore(d) is None]
    if not usable:
        refused = "; ".join(f"{d.name} {_usable_datastore(d)}" for d in candidates) or "none attached"
        raise PlacementError(f"no usable datastore on {owner.name!r} ({refused})")
    chosen = max(usable, key=lambda d: d.props.get("free_space") or 0)
    skipped = len(candidates) - len(usable)
    notes.append(f"datastore {chosen.name} (the most free space of {len(usable)} usable on {owner.name}"
                 + (f"; {skipped} inaccessible or in maintenance skipped" if skipped else "") + "; --datastore to choose)")
    return chosen


def _pick_host(inventory: Inventory, compute: Entity, datastore: Entity, notes: list[str]) -> Entity:
    hosts = [h for h in compute.children if h.kind == HOST]
    usable = [h for h in hosts if h.props.get("connected", True) and not h.props.get("maintenance", False)
              and datastore.moid in h.props.get("datastores", (datastore.moid,))]
    if not usable:
        raise PlacementError(f"no connected host outside maintenance in {compute.name!r} sees datastore "
                             f"{datastore.name!r}; {_there(hosts)}")
    chosen = usable[0]
    if compute.kind == CLUSTER:
        notes.append(f"host {chosen.name} (cluster {compute.name} has no DRS, so vCenter needs a host; "
                     f"the first usable of {len(usable)}; --host to choose)")
    return chosen


def _network(inventory: Inventory, datacenter: Entity, compute: Entity, wanted: str | None) -> Entity | None:
    if wanted is None:
        return None
    candidates = [n for n in (inventory.get(m) for m in compute.props.get("networks", ())) if n is not None]
    found = [n for n in candidates if n.name == wanted]
    if not found:
        raise PlacementError(f"no network {wanted[:80]!r} on {compute.name!r}; {_there(candidates)}")
    if len(found) > 1:
        raise PlacementError(f"network {wanted[:80]!r} names {len(found)} port groups on {compute.name!r}")
    return found[0]
