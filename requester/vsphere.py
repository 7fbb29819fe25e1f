"""The vSphere API calls the deployer makes, through pyVmomi, and nothing else.

    vc = connect("https://vc.example/sdk", user, password, pinned_context(thumbprint))
    placement = vc.placement(PlacementRequest(pool="cluster-a"))   # one inventory read (placement.py)
    template = vc.find_vm("appliance-template")
    vm = vc.clone(template, "app-01", extra_config, placement)   # CloneVM_Task, extraConfig in the clone spec
    vc.power_on(vm); vc.wait_for_ip(vm, timeout=600)  # one private PropertyCollector (vsphere_wait.py)
    vc.set_extra_config(vm, [(key, "")])              # ReconfigVM_Task; vCenter deletes a key set to ""
    vc.extra_config(vm)                               # read back
    spec = vc.import_spec(ova, "app-01", properties, hardening, placement)   # checked before anything exists
    vm = vc.import_ova(ova, spec, placement)
    vc.vapp_properties(vm); vc.clear_vapp_properties(vm, [int keys])   # --ova's read-back and scrub
    vc.remove_ovf_environment(vm)                     # transport emptied, the environment's CD-ROM disconnected
    vc.close()

What to call is decided in requester/deployplan.py and requester/placement.py; this module only
calls it, and waits on tasks through requester/vsphere_wait.py. Needs pyVmomi 6.7.1 or later:
Debian 12's python3-pyvmomi, or PyPI's (`pip install firsttrust[vsphere]`). Every call here is in
vSphere 6.7's API (CloneVM_Task, ReconfigVM_Task, ImportVApp and HttpNfcLease, RetrievePropertiesEx,
CreatePropertyCollector and WaitForUpdatesEx), and 6.7.1's SmartConnect passes our SSL context to
every connection it makes (the version probe's HTTPSConnection and the SOAP stub's), so the
thumbprint pin holds there too: `make test-debian-versions` runs the deploy tests on 6.7.1. The
agent never imports this.

One module, over 450 lines, because it is the only place pyVmomi is called (`Vcenter`, one method
per vSphere call the deployer makes): keeping every call in one class keeps that boundary one file
to review; the task waits are already requester/vsphere_wait.py.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit
from xml.etree.ElementTree import ParseError
from xml.parsers.expat import ExpatError

from firsttrust.errors import FirsttrustError

from .ovafile import OvaFile, OvaReadError, open_member, read_chunk
from .placement import (
    CLUSTER, COMPUTE, DATACENTER, DATASTORE, FOLDER, HOST, NETWORK, POOL, PORTGROUP, VAPP, Entity, Inventory,
    Placement, PlacementRequest, choose_placement,
)
from . import vcenter_tls
from .vcenter_tls import InvalidThumbprint, ThumbprintMismatch, pinned_context
from .vsphere_wait import UpdateWaiter, WaitInterrupted

MIN_PYVMOMI = (6, 7)  # Debian 12's python3-pyvmomi 6.7.1 (see the module docstring)

TASK_TIMEOUT = 1800.0  # a full clone of a large template on slow storage
LEASE_READY_TIMEOUT = 600.0  # ImportVApp's lease: initializing until vCenter has made the VM's files
LEASE_PROPERTIES = ("state", "error")
# The question a VM asks when a CD-ROM whose door the guest locked is disconnected or removed.
CDROM_LOCK_QUESTION = "msg.cdromdisconnect.locked"


def _is_cdrom_lock_question(question) -> bool:
    ids = [getattr(message, "id", None) for message in (getattr(question, "message", None) or [])]
    if ids:
        return CDROM_LOCK_QUESTION in ids
    text = (question.text or "").lower()
    return "cd-rom" in text and "lock" in text


def _yes_choice(question) -> str | None:
    """The key of the question's "yes" choice, or None."""
    choices = (question.choice.choiceInfo or []) if question.choice else []
    for choice in choices:
        if getattr(choice, "summary", None) == "button.yes":
            return choice.key
    for choice in choices:
        if (choice.label or "").replace("_", "").replace("&", "").strip().lower() == "yes":
            return choice.key
    return None


# An HttpNfcLease times out (vCenter: 5 minutes by default) unless HttpNfcLeaseProgress is called;
# every 10 s leaves a wide margin under the 30 s the deployer promises.
LEASE_PROGRESS_INTERVAL = 10.0
UPLOAD_CHUNK = 1 << 20  # read from the OVA and sent; never the whole disk in memory
UPLOAD_TIMEOUT = 120.0  # per socket operation, not for the whole upload
# Removing the OVF environment's CD-ROM from a running guest that locked its door makes the VM ask
# whether to override the lock; the task waits until the question is answered. Looked for every
# QUESTION_POLL seconds, for QUESTION_TIMEOUT at most.
QUESTION_POLL = 2.0
QUESTION_TIMEOUT = 60.0


class VsphereError(FirsttrustError):
    """The vSphere API refused or failed an operation. The message names the operation."""

    code = "vsphere"


class PyvmomiMissing(VsphereError):
    code = "pyvmomi_missing"


def _pyvmomi():
    try:
        import pyVmomi
        from pyVim import connect as pyvim_connect
    except ImportError:
        raise PyvmomiMissing("firsttrust deploy needs pyVmomi 6.7.1 or later: apt-get install python3-pyvmomi "
                             "(Debian 12), or pip install 'firsttrust[vsphere]' in a virtual environment") from None
    try:
        found = importlib.metadata.version("pyvmomi")
    except importlib.metadata.PackageNotFoundError:
        found = "unknown"
    version = tuple(int(part) for part in found.split(".")[:2] if part.isdigit())
    if version < MIN_PYVMOMI:
        raise PyvmomiMissing(f"firsttrust deploy needs pyVmomi 6.7.1 or later, found {found}: "
                             f"apt-get install python3-pyvmomi (Debian 12), or pip install 'pyvmomi>=6.7.1'")
    _bound_decompression()
    return pyVmomi, pyvim_connect


class _CountingUnzip:
    """A zlib decompressor that refuses to produce more than vcenter_tls.MAX_ANSWER_BYTES."""

    def __init__(self, unzip) -> None:
        self._unzip, self._produced = unzip, 0

    def decompress(self, data: bytes) -> bytes:
        out = self._unzip.decompress(data)  # at most ~1000x its input: 512 bytes in -> ~0.5 MB out
        self._produced += len(out)
        if self._produced > vcenter_tls.MAX_ANSWER_BYTES:
            raise vcenter_tls.AnswerTooLarge(f"vCenter's answer is larger than "
                                             f"{vcenter_tls.MAX_ANSWER_BYTES // (1024 * 1024)} MiB uncompressed")
        return out

    def __getattr__(self, name: str):
        return getattr(self._unzip, name)


def _bound_decompression() -> None:
    """The answer bound (vcenter_tls.MAX_ANSWER_BYTES) for compressed answers too: pyVmomi asks
    for gzip on every call (it has no switch that SmartConnect passes) and inflates whatever
    comes marked gzip or deflate, asked or not, so the bytes on the socket say nothing about
    what an answer costs in memory: 64 MiB of gzip is ~64 GB inflated. pyVmomi 6.7.1 to 9 look
    their GzipReader up in SoapAdapter's globals at each answer; it is replaced once, by a
    subclass whose decompressor counts what it produces."""
    from pyVmomi import SoapAdapter

    base = SoapAdapter.GzipReader
    if getattr(base, "firsttrust_bounded", False):
        return

    class BoundedGzipReader(base):  # type: ignore[misc, valid-type]
        firsttrust_bounded = True

        def _CreateUnzip(self, firstChunk):  # noqa: N802, N803 - pyVmomi's names
            super()._CreateUnzip(firstChunk)
            self.unzip = _CountingUnzip(self.unzip)
            return self.unzip

    SoapAdapter.GzipReader = BoundedGzipReader


@contextlib.contextmanager
def api_call(what: str, timeout: float | None = None) -> Iterator[None]:
    """Turn whatever pyVmomi or the network raises into a VsphereError naming `what` (and, when a
    socket timed out, `timeout`: by default vcenter_tls.TIMEOUT, which every API call's socket has)."""
    pyVmomi, _ = _pyvmomi()
    try:
        yield
    except VsphereError:
        raise
    except pyVmomi.vim.fault.InvalidLogin:
        raise VsphereError(f"{what}: vCenter refused the user name or password", code="vsphere_login") from None
    except pyVmomi.vmodl.MethodFault as exc:  # SmartConnect's first call wraps what the network raised in one
        raise (_unanswered(what, exc.__context__, timeout)
               or VsphereError(f"{what}: {type(exc).__name__.rpartition('.')[2]}: {_first_line(exc.msg)}")) from None
    except ThumbprintMismatch as exc:
        raise VsphereError(f"{what}: {exc.args[0]}; nothing was sent", code="vcenter_thumbprint") from None
    except ssl.SSLError as exc:
        raise VsphereError(f"{what}: TLS: {_first_line(str(exc))}", code="vsphere_tls") from None
    except (OSError, http.client.HTTPException, ParseError, ExpatError) as exc:
        raise (_unanswered(what, exc, timeout)
               or VsphereError(f"{what}: cannot reach vCenter: {_first_line(str(exc)) or type(exc).__name__}",
                               code="vsphere_unreachable")) from None
    except Exception as exc:  # pyVmomi 6.7.1 wraps whatever its XML parser's reads raised in a ParserError
        too_large = _answer_too_large(exc)
        if too_large is None:
            raise
        raise VsphereError(f"{what}: {too_large}", code="vsphere_unreachable") from None


def _answer_too_large(exc: BaseException | None) -> vcenter_tls.AnswerTooLarge | None:
    """The AnswerTooLarge behind `exc`, however deep pyVmomi wrapped it (a ParserError, then a
    HostConnectFault in SmartConnect, on 6.7.1), or None."""
    for _ in range(8):
        if exc is None or isinstance(exc, vcenter_tls.AnswerTooLarge):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _unanswered(what: str, exc: BaseException | None, timeout: float | None) -> VsphereError | None:
    """The error for a vCenter that stalls (a socket timed out), answers more than one answer may
    hold (vcenter_tls.MAX_ANSWER_BYTES), or answers what is not the vSphere API (not HTTP, not
    XML: never echoed, it may be anything); None for any other exception."""
    too_large = _answer_too_large(exc)
    if too_large is not None:
        reason = str(too_large)
    elif isinstance(exc, TimeoutError):
        reason = f"vCenter did not answer within {timeout or vcenter_tls.TIMEOUT:.0f} s"
    elif isinstance(exc, (ParseError, ExpatError)):  # SmartConnect's version probe; the SOAP stub's parser
        reason = f"vCenter's answer is not the vSphere API's (not XML: {_first_line(exc)})"
    elif isinstance(exc, http.client.BadStatusLine) and not isinstance(exc, ConnectionError):
        reason = "vCenter's answer is not the vSphere API's (not HTTP)"
    else:
        return None
    return VsphereError(f"{what}: {reason}", code="vsphere_unreachable")


def _first_line(text: object) -> str:
    lines = str(text or "").splitlines()
    return lines[0][:200] if lines else ""


def _fault_text(fault: object) -> str:
    """The server's words for a fault from a LocalizedMethodFault[] field (an import spec's error
    list): pyVmomi hands over the MethodFault itself, its localizedMessage moved to `msg`."""
    return getattr(fault, "localizedMessage", None) or getattr(fault, "msg", None) or ""


def connect(url: str, user: str, password: str, context: ssl.SSLContext) -> "Vcenter":
    """Log in to vCenter or ESXi at `url` (https://HOST[:PORT][/sdk]).

    `context` decides whom we talk to (vcenter_tls.pinned_context or ca_context); the password
    is sent only over a connection it accepted.

    Raises:
        VsphereError: unreachable, silent for vcenter_tls.TIMEOUT or not the vSphere API (code
            "vsphere_unreachable"), TLS refused (thumbprint mismatch), login refused.
    """
    _, pyvim_connect = _pyvmomi()
    parts = urlsplit(url)
    with api_call(f"connecting to {parts.hostname}"):
        try:
            si = pyvim_connect.SmartConnect(protocol="https", host=parts.hostname, port=parts.port or 443,
                                            path=parts.path or "/sdk", user=user, pwd=password, sslContext=context)
        except Exception as exc:  # noqa: BLE001 - only what SmartConnect raises itself is named here
            if type(exc) not in (Exception, AttributeError):
                raise
            # Exception: "HOST:PORT is down or is not a VIM server", no vimServiceVersions.xml it
            # understands at that path; AttributeError: RetrieveServiceContent's answer held none
            reason = f"no vSphere API at {parts.path or '/sdk'}" if type(exc) is Exception else "no ServiceContent"
            raise VsphereError(f"connecting to {parts.hostname}: vCenter's answer is not the vSphere API's "
                               f"({reason})", code="vsphere_unreachable") from None
    return Vcenter(si, context=context, netloc=parts.netloc)


@dataclass(frozen=True)
class VappProperty:
    """One vApp property as the server shows it. `value` of a "password" property always reads ""
    (VAppPropertyInfo.type: "the value field and default value field will always be returned as
    an empty string when queried. Thus, it is a write-only property.")."""

    key: int
    id: str
    type: str
    value: str

    @property
    def write_only(self) -> bool:
        return self.type == "password"


# What one inventory read asks for, per type: enough for placement.choose_placement.
_INVENTORY_PROPERTIES = {
    "Folder": ["name", "parent", "childEntity"],
    "Datacenter": ["name", "parent", "vmFolder", "hostFolder"],
    "ComputeResource": ["name", "parent", "host", "datastore", "network", "resourcePool"],
    "ClusterComputeResource": ["name", "parent", "host", "datastore", "network", "resourcePool",
                               "configurationEx"],
    "HostSystem": ["name", "parent", "datastore", "runtime.connectionState", "runtime.inMaintenanceMode"],
    "ResourcePool": ["name", "parent", "resourcePool"],
    "Datastore": ["name", "summary.accessible", "summary.maintenanceMode", "summary.freeSpace"],
    "Network": ["name"],
}


class Vcenter:
    """A logged-in session. Safe to share between threads (pyVmomi pools its connections).

    `context` and `netloc` ("host[:port]" of the API) serve the OVA uploads: a lease's device URL
    names the host "*" when it means the one the API was reached at. Tasks, leases and guest IPs
    are waited on through one private PropertyCollector (`waiter`, made at first use).
    """

    def __init__(self, si, context: ssl.SSLContext | None = None, netloc: str = "") -> None:
        self.si = si
        self.context, self.netloc = context, netloc
        self.content = si.RetrieveContent()
        self.vim, self.vmodl = _pyvmomi()[0].vim, _pyvmomi()[0].vmodl
        self._waiter: UpdateWaiter | None = None
        self._waiter_lock = threading.Lock()
        self._template_places: dict[str, tuple] = {}
        self._template_lock = threading.Lock()

    @property
    def waiter(self) -> UpdateWaiter:
        with self._waiter_lock:
            if self._waiter is None:
                self._waiter = UpdateWaiter(self)
            return self._waiter

    def interrupt(self) -> None:
        """Every wait in progress or to come ends with WaitInterrupted within a second."""
        self.waiter.cancel()

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.close()
        with contextlib.suppress(Exception):
            self.content.sessionManager.Logout()

    def session_key(self) -> str:
        """This session's key (SessionManager.currentSession.key): what the lab counts requests by."""
        with api_call("reading the session"):
            return self.content.sessionManager.currentSession.key

    def vm_by_moid(self, moid: str):
        """The VirtualMachine with this managed object ID (e.g. "vm-42"); checked when first used."""
        return self.vim.VirtualMachine(moid, self.si._stub)

    def _retrieve(self, root, types_and_paths: dict) -> list:
        """Every object of these types below `root` (a ContainerView, recursive), with these
        properties, in as few round trips as the server's page size allows."""
        vim, collector = self.vim, self.vmodl.query.PropertyCollector
        view = self.content.viewManager.CreateContainerView(root, [getattr(vim, t) for t in types_and_paths], True)
        try:
            spec = collector.FilterSpec(
                objectSet=[collector.ObjectSpec(obj=view, skip=True, selectSet=[
                    collector.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[collector.PropertySpec(type=getattr(vim, t), pathSet=paths)
                         for t, paths in types_and_paths.items()])
            pc = self.content.propertyCollector
            result = pc.RetrievePropertiesEx([spec], collector.RetrieveOptions())
            objects = list(result.objects) if result else []
            while result is not None and result.token:
                result = pc.ContinueRetrievePropertiesEx(result.token)
                objects += list(result.objects or [])
            return objects
        finally:
            view.Destroy()

    def virtual_machines(self) -> dict[str, object]:
        """name -> VirtualMachine for every VM and template in the inventory, in one round trip."""
        with api_call("listing virtual machines"):
            found = {}
            for item in self._retrieve(self.content.rootFolder, {"VirtualMachine": ["name"]}):
                for prop in item.propSet:
                    found.setdefault(prop.val, item.obj)
            return found

    def find_vm(self, name: str):
        """Raises: VsphereError (code "not_found") if no VM or template has this name."""
        vm = self.virtual_machines().get(name)
        if vm is None:
            raise VsphereError(f"no virtual machine or template named {name[:80]!r}", code="not_found")
        return vm

    # --- placement -----------------------------------------------------------------------------

    def inventory(self) -> Inventory:
        """Datacenters, folders, hosts, clusters, pools, datastores and networks: one read."""
        with api_call("reading the inventory"):
            items = self._retrieve(self.content.rootFolder, _INVENTORY_PROPERTIES)
        entities = []
        for item in items:
            props = {p.name: p.val for p in item.propSet}
            entities.append(self._entity(item.obj, props))
        return Inventory(entities)

    def _entity(self, obj, props: dict) -> Entity:
        vim = self.vim
        kind = type(obj).__name__.rpartition(".")[2]
        moids = lambda refs: [r._moId for r in (refs or [])]  # noqa: E731
        parent = props.get("parent")
        info: dict = {}
        if isinstance(obj, vim.Folder):
            kind, info["child_order"] = FOLDER, moids(props.get("childEntity"))
        elif isinstance(obj, vim.Datacenter):
            kind = DATACENTER
            info.update(vm_folder=getattr(props.get("vmFolder"), "_moId", None),
                        host_folder=getattr(props.get("hostFolder"), "_moId", None))
        elif isinstance(obj, vim.ComputeResource):
            pool = props.get("resourcePool")
            info.update(datastores=moids(props.get("datastore")), networks=moids(props.get("network")),
                        root_pool=getattr(pool, "_moId", None), child_order=moids(props.get("host")))
            if isinstance(obj, vim.ClusterComputeResource):
                kind = CLUSTER
                drs = getattr(props.get("configurationEx"), "drsConfig", None)
                info["drs"] = bool(getattr(drs, "enabled", False))
            else:
                kind = COMPUTE
            if pool is not None:  # the root pool's parent is the compute resource
                info["child_order"] = info["child_order"] + [pool._moId]
        elif isinstance(obj, vim.HostSystem):
            kind = HOST
            info.update(datastores=moids(props.get("datastore")),
                        connected=props.get("runtime.connectionState") in (None, "connected"),
                        maintenance=bool(props.get("runtime.inMaintenanceMode")))
        elif isinstance(obj, vim.ResourcePool):
            kind = VAPP if isinstance(obj, vim.VirtualApp) else POOL
            info["child_order"] = moids(props.get("resourcePool"))
        elif isinstance(obj, vim.Datastore):
            kind = DATASTORE
            info.update(accessible=props.get("summary.accessible", True) is not False,
                        maintenance_mode=props.get("summary.maintenanceMode") or "normal",
                        free_space=props.get("summary.freeSpace") or 0)
        elif isinstance(obj, vim.Network):
            kind = PORTGROUP if isinstance(obj, vim.dvs.DistributedVirtualPortgroup) else NETWORK
        return Entity(ref=obj, kind=kind, name=str(props.get("name", obj._moId)), moid=obj._moId,
                      parent=getattr(parent, "_moId", None), props=info)

    def placement(self, request: PlacementRequest) -> Placement:
        """choose_placement on one read of the inventory. Raises: PlacementError, VsphereError."""
        return choose_placement(self.inventory(), request)

    # --- clones --------------------------------------------------------------------------------

    def clone(self, template, name: str, extra_config: Iterable[tuple[str, str]],
              placement: Placement | None = None, vapp_values: Iterable[tuple[int, str]] = ()):
        """Clone `template` as `name`, powered off, with `extra_config` in the clone spec: beside the
        template without a placement, else into its folder, pool, host and datastore, the NICs on
        its network. `vapp_values` (integer key, value) edit the clone's vApp properties in the
        same spec (--ova --count: the clones of the imported appliance get their own secrets).

        Returns:
            The new VirtualMachine.
        """
        vim = self.vim
        with api_call(f"cloning {name}"):
            config = vim.vm.ConfigSpec(extraConfig=self._options(extra_config))
            vapp_values = list(vapp_values)
            if vapp_values:
                config.vAppConfig = self.vapp_edit_spec(vapp_values)
            if placement is None:
                folder, pool, host = self._beside(template)
                location = vim.vm.RelocateSpec(pool=pool, host=host)
            else:
                folder = placement.folder.ref
                location = vim.vm.RelocateSpec(pool=placement.pool.ref, datastore=placement.datastore.ref,
                                               host=placement.host.ref if placement.host else None)
                if placement.network is not None:
                    config.deviceChange = self._nic_changes(template, placement.network)
            spec = vim.vm.CloneSpec(location=location, powerOn=False, template=False, config=config)
            task = template.CloneVM_Task(folder=folder, name=name, spec=spec)
        return self.wait_task(task, f"cloning {name}")

    def _beside(self, template) -> tuple:
        """The template's folder, resource pool (its host's, for a template, which has none) and,
        in a cluster without DRS, its host: VirtualMachineRelocateSpec.host, "if resource pool is
        specified, and the target pool represents a cluster without DRS enabled, an
        InvalidArgument exception be thrown". Read once per template and session, not per clone."""
        with self._template_lock:
            known = self._template_places.get(template._moId)
            if known is None:
                host = template.runtime.host
                compute = host.parent
                without_drs = isinstance(compute, self.vim.ClusterComputeResource) and not getattr(
                    getattr(compute.configurationEx, "drsConfig", None), "enabled", False)
                known = (template.parent, template.resourcePool or compute.resourcePool,
                         host if without_drs else None)
                self._template_places[template._moId] = known
            return known

    def _nic_changes(self, vm, network: Entity) -> list:
        """Device edits that put every NIC of `vm` on `network` (a standard port group or a
        distributed one)."""
        vim = self.vim
        changes = []
        for device in vm.config.hardware.device or []:
            if not isinstance(device, vim.vm.device.VirtualEthernetCard):
                continue
            if network.kind == PORTGROUP:
                switch = network.ref.config.distributedVirtualSwitch
                device.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                    port=vim.dvs.PortConnection(portgroupKey=network.ref.key, switchUuid=switch.uuid))
            else:
                device.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                    network=network.ref, deviceName=network.name)
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=device))
        return changes

    def set_extra_config(self, vm, entries: Iterable[tuple[str, str]]) -> None:
        """ReconfigVM_Task with these extraConfig entries (a "" value deletes the key)."""
        with api_call("reconfiguring"):
            task = vm.ReconfigVM_Task(spec=self.vim.vm.ConfigSpec(extraConfig=self._options(entries)))
        self.wait_task(task, "reconfiguring")

    def extra_config(self, vm) -> list[tuple[str, str]]:
        """The VM's extraConfig as (key, value) pairs, in the server's order."""
        with api_call("reading the configuration"):
            return [(option.key, "" if option.value is None else str(option.value))
                    for option in (vm.config.extraConfig or [])]

    # --- --ova: import, vApp properties --------------------------------------------------------

    def import_spec(self, ova: OvaFile, name: str, properties: Iterable[tuple[str, str]],
                    extra_config: Iterable[tuple[str, str]], placement: Placement, networks: Iterable[str] = ()):
        """OvfManager.CreateImportSpec for `name` at `placement`: `properties` as the
        PropertyMapping, each OVF network in `networks` mapped to placement.network, the host as
        hostSystem where there is one; `extra_config` appended to the spec's configSpec. Nothing
        is created.

        Returns:
            (the import spec, its fileItems).
        Raises:
            VsphereError (code "ova_refused"): the server refused the descriptor, or it describes a vApp.
        """
        vim = self.vim
        what = f"importing {name}"
        with api_call(what):
            params = vim.OvfManager.CreateImportSpecParams(
                entityName=name, propertyMapping=[vim.KeyValue(key=k, value=v) for k, v in properties])
            if placement.network is not None:
                params.networkMapping = [vim.OvfManager.NetworkMapping(name=n, network=placement.network.ref)
                                         for n in networks]
            if placement.host is not None:
                params.hostSystem = placement.host.ref
            result = self.content.ovfManager.CreateImportSpec(ova.descriptor, placement.pool.ref,
                                                              placement.datastore.ref, params)
            if result.error:
                fault = result.error[0]
                raise VsphereError(f"{what}: the OVF descriptor was refused: {type(fault).__name__.rpartition('.')[2]}:"
                                   f" {_first_line(_fault_text(fault))}",
                                   code="ova_refused")
            spec = result.importSpec
            config = getattr(spec, "configSpec", None)
            if config is None:
                raise VsphereError(f"{what}: the OVA describes a vApp, not one virtual machine", code="ova_refused")
            config.extraConfig = list(config.extraConfig or []) + self._options(extra_config)
            return spec, list(result.fileItem or [])

    @staticmethod
    def spec_vapp_properties(spec) -> dict[str, str]:
        """id -> type of the vApp properties an import spec will create (what the server honours)."""
        vapp = getattr(spec.configSpec, "vAppConfig", None)
        return {p.info.id: p.info.type or "string" for p in ((vapp.property if vapp else None) or []) if p.info}

    @staticmethod
    def spec_transports(spec) -> list[str]:
        vapp = getattr(spec.configSpec, "vAppConfig", None)
        return list(getattr(vapp, "ovfEnvironmentTransport", None) or [])

    @staticmethod
    def spec_firmware(spec) -> str:
        return getattr(spec.configSpec, "firmware", None) or ""

    def import_ova(self, ova: OvaFile, name: str, spec_and_files, placement: Placement,
                   on_upload: Callable[[str, int], None] = lambda path, size: None):
        """Import `ova` as VM `name`, powered off, from `import_spec`'s result:
        ResourcePool.ImportVApp (with the host where the placement has one), each disk streamed
        from the file to its lease URL with HttpNfcLeaseProgress every LEASE_PROGRESS_INTERVAL,
        then HttpNfcLeaseComplete. Any failure after ImportVApp aborts the lease (vCenter then
        removes the partial VM). `on_upload(member name, bytes sent)` after each file the server
        accepted.

        Returns:
            The new VirtualMachine.
        """
        spec, file_items = spec_and_files
        what = f"importing {name}"
        with api_call(what):
            lease = placement.pool.ref.ImportVApp(spec, placement.folder.ref,
                                                  placement.host.ref if placement.host else None)
        try:
            self._wait_lease_ready(lease, what)
            with api_call(what):
                info = lease.info
                vm = info.entity  # gone from the lease once it is complete
                items = {item.deviceId: item for item in file_items}
                uploads = [(device, items[device.importKey]) for device in (info.deviceUrl or [])
                           if device.importKey in items]
            missing = [item.path for _, item in uploads if item.path not in ova.members]
            if missing:
                raise OvaReadError(f"{what}: the OVA has no file {missing[0]!r} its descriptor names")
            progress = LeaseProgress(lease, sum(ova.members[item.path] for _, item in uploads))
            for device, item in uploads:
                on_upload(item.path, self._upload(ova, device, item, progress, what))
            with api_call(what):
                lease.HttpNfcLeaseComplete()
        except BaseException:
            with contextlib.suppress(Exception):
                lease.HttpNfcLeaseAbort()
            raise
        return vm

    def _wait_lease_ready(self, lease, what: str) -> None:
        states = self.vim.HttpNfcLease.State
        values = self.waiter.watch(lease, LEASE_PROPERTIES, LEASE_READY_TIMEOUT, what,
                                   lambda v: v.get("state") not in (None, states.initializing))
        if values is None:
            raise VsphereError(f"{what}: the import lease was not ready within {LEASE_READY_TIMEOUT:.0f} s",
                               code="task_timeout")
        state = values.get("state")
        if state == states.error:
            raise VsphereError(f"{what}: the import lease failed: {_first_line(getattr(values.get('error'), 'msg', ''))}")
        if state == states.done:
            raise VsphereError(f"{what}: the import lease ended before the upload")

    def _upload(self, ova: OvaFile, device, item, progress: "LeaseProgress", what: str) -> int:
        """One disk, streamed from the OVA in UPLOAD_CHUNK pieces over TLS checked like the API's."""
        url = urlsplit(device.url.replace("*", self.netloc, 1) if "://*" in device.url else device.url)
        context = self.context
        if "://*" not in device.url and getattr(device, "sslThumbprint", None):
            try:  # the ESXi host's own certificate, as vCenter reported it over the pinned API channel
                context = pinned_context(device.sslThumbprint)
            except InvalidThumbprint:
                pass
        target = url.path + (f"?{url.query}" if url.query else "")
        uploading = api_call(f"{what}: uploading {item.path}", timeout=UPLOAD_TIMEOUT)
        with open_member(ova.path, item.path) as (size, stream), uploading:
            connection = http.client.HTTPSConnection(url.hostname, url.port or 443, context=context,
                                                     timeout=UPLOAD_TIMEOUT)
            try:
                connection.putrequest("PUT" if item.create else "POST", target)
                connection.putheader("Content-Type", "application/x-vnd.vmware-streamVmdk")
                connection.putheader("Content-Length", str(size))
                connection.endheaders()
                sent = 0
                while sent < size:
                    chunk = read_chunk(stream, min(UPLOAD_CHUNK, size - sent), ova.path)
                    connection.send(chunk)
                    sent += len(chunk)
                    progress.add(len(chunk))
                response = connection.getresponse()
                response.read(1 << 16)
            finally:
                connection.close()
        if response.status not in (200, 201):
            raise VsphereError(f"{what}: uploading {item.path}: HTTP {response.status} {response.reason}",
                               code="ova_upload")
        return sent

    def vapp_properties(self, vm) -> dict[str, VappProperty]:
        """The VM's vApp properties by id. Empty where the VM has none."""
        with api_call("reading the vApp properties"):
            vapp = vm.config.vAppConfig
            return {p.id: VappProperty(key=p.key, id=p.id, type=p.type or "string", value=p.value or "")
                    for p in ((vapp.property if vapp else None) or [])}

    def clear_vapp_properties(self, vm, keys: Iterable[int]) -> None:
        """ReconfigVM_Task setting these vApp properties (by integer key) to ""."""
        self.reconfigure(vm, self.vim.vm.ConfigSpec(vAppConfig=self.vapp_edit_spec((key, "") for key in keys)),
                         "clearing the secret vApp properties")

    def vapp_edit_spec(self, values: Iterable[tuple[int, str]]):
        vapp = self.vim.vApp
        return vapp.VmConfigSpec(property=[vapp.PropertySpec(operation="edit", info=vapp.PropertyInfo(key=k, value=v))
                                           for k, v in values])

    def reconfigure(self, vm, spec, what: str = "reconfiguring") -> None:
        with api_call(what):
            task = vm.ReconfigVM_Task(spec=spec)
        self.wait_task(task, what)

    def ovf_environment_state(self, vm) -> tuple[list[str], list[str], bool]:
        """(the VM's ovfEnvironmentTransport, the labels of its connected CD-ROMs backed by an ISO
        file, whether it has a vApp configuration at all): what remove_ovf_environment reads back."""
        vim = self.vim
        with api_call("reading the OVF environment's transport"):
            config = vm.config
            vapp = config.vAppConfig
            drives = [d for d in (config.hardware.device or []) if isinstance(d, vim.vm.device.VirtualCdrom)
                      and isinstance(d.backing, vim.vm.device.VirtualCdrom.IsoBackingInfo)
                      and d.connectable is not None and (d.connectable.connected or d.connectable.startConnected)]
            return (list((vapp.ovfEnvironmentTransport if vapp else None) or []),
                    [d.deviceInfo.label if d.deviceInfo else str(d.key) for d in drives], vapp is not None)

    def remove_ovf_environment(self, vm, remove_vapp: bool = False) -> None:
        """Stop handing the VM its OVF environment: ovfEnvironmentTransport emptied (VmConfigSpec.
        ovfEnvironmentTransport: "An empty list will not make any changes. A list with a single
        element {""} will clear the list of transports."), or with `remove_vapp` the whole vApp configuration (vAppConfigRemoved); and every
        CD-ROM backed by an ISO file disconnected and not connected at power-on (the ISO transport's
        environment image). A question the VM raises about it (the guest locked the CD-ROM door)
        is answered within QUESTION_TIMEOUT (answer_cdrom_question)."""
        vim = self.vim
        with api_call("reading the VM's CD-ROMs"):
            devices = list(vm.config.hardware.device or [])
        changes = []
        for device in devices:
            if isinstance(device, vim.vm.device.VirtualCdrom) and isinstance(
                    device.backing, vim.vm.device.VirtualCdrom.IsoBackingInfo):
                device.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
                    connected=False, startConnected=False, allowGuestControl=False)
                changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=device))
        spec = vim.vm.ConfigSpec(deviceChange=changes)
        if remove_vapp:
            spec.vAppConfigRemoved = True
        else:
            spec.vAppConfig = vim.vApp.VmConfigSpec(ovfEnvironmentTransport=[""])
        with api_call("removing the OVF environment"):
            task = vm.ReconfigVM_Task(spec=spec)
        self._wait_answering_questions(vm, task, "removing the OVF environment")

    def _wait_answering_questions(self, vm, task, what: str) -> None:
        """wait_task, answering a CD-ROM lock question on `vm` if one is raised meanwhile."""
        deadline = time.monotonic() + QUESTION_TIMEOUT
        while True:
            try:
                self.wait_task(task, what, timeout=QUESTION_POLL)
                return
            except VsphereError as exc:
                if exc.code != "task_timeout":
                    raise
            answered = self.answer_cdrom_question(vm)
            if not answered and time.monotonic() > deadline:
                raise VsphereError(f"{what}: not done within {QUESTION_TIMEOUT:.0f} s and no question to answer",
                                   code="task_timeout")

    def answer_cdrom_question(self, vm) -> bool:
        """If the VM asks whether to override the guest's CD-ROM door lock, answer yes (the guest
        keeps no secret it needs there any more). Returns whether a question was answered.

        Any other question is refused, never answered: "yes" to a question about something else
        (a moved VM, a full datastore) is not ours to give. The question is recognised by its
        message id (VirtualMachineQuestionInfo.message: "Only available on servers that support
        localization"), else by its text; the answer by its choice's summary "button.yes", else
        by a label that reads "Yes" once a menu accelerator ("_Yes", "&Yes") is taken out."""
        with api_call("answering the VM's question"):
            question = vm.runtime.question
            if question is None:
                return False
            answer = _yes_choice(question) if _is_cdrom_lock_question(question) else None
            if answer is None:
                raise VsphereError(f"the VM asks a question firsttrust cannot answer: {_first_line(question.text)}",
                                   code="vm_question")
            vm.AnswerVM(question.id, answer)
            return True

    def power_on(self, vm) -> None:
        with api_call("powering on"):
            task = vm.PowerOnVM_Task()
        self.wait_task(task, "powering on")

    def moid(self, vm) -> str:
        return vm._moId

    def wait_for_ip(self, vm, timeout: float) -> str:
        """The first usable IP address VMware Tools reports for the guest (deployplan.usable_guest_ip).

        Raises:
            VsphereError (code "no_ip"): none within `timeout` seconds. WaitInterrupted.
        """
        return self.waiter.wait_for_ip(vm, timeout)

    def wait_for_tools(self, vm, timeout: float) -> None:
        """Until VMware Tools runs in the guest (guest operations need it).

        Raises:
            VsphereError (code "tools_not_running"): not within `timeout`. WaitInterrupted.
        """
        self.waiter.wait_for_tools(vm, timeout)

    def wait_task(self, task, what: str, timeout: float = TASK_TIMEOUT):
        """Wait for a task; return its result.

        Raises:
            VsphereError: the task failed (its fault named), or did not finish within `timeout`.
            WaitInterrupted: the run was interrupted.
        """
        return self.waiter.wait_task(task, what, timeout)

    def _options(self, entries: Iterable[tuple[str, str]]) -> list:
        return [self.vim.option.OptionValue(key=key, value=value) for key, value in entries]


class LeaseProgress:
    """Calls HttpNfcLeaseProgress (percent of bytes sent) at most every `interval` seconds of
    upload, so a lease never goes more than `interval` plus one chunk's time without one."""

    def __init__(self, lease, total: int, interval: float = LEASE_PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease, self.total, self.interval, self.clock = lease, max(total, 1), interval, clock
        self.sent, self.last = 0, clock()

    def add(self, count: int) -> None:
        self.sent += count
        now = self.clock()
        if now - self.last >= self.interval:
            self.lease.HttpNfcLeaseProgress(percent=min(99, self.sent * 100 // self.total))
            self.last = now
