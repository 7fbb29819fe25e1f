"""The lab's data center: govmomi's vCenter simulator, the deployer, and hosts that boot what it powers on.

    with DataCenter.start(manager) as dc:              # vcsim up (lab.vcsim), logged in
        reports = dc.deploy(plan, secrets_dir, store)  # requester.deployer.deploy, unchanged
        dc.read_guestinfo("app-01", key)               # the VM's extraConfig through the API
        dc.guest_view("app-01", key)                   # what the guest reads (the lab endpoint)
    # the simulator is stopped; the appliances are the manager's (destroy_all)

A bring-up script in a real data center calls `firsttrust deploy` (requester/deployer.py) against
vCenter; so does the lab, against a simulator it starts. What ESXi and VMware Tools do is the
lab's part: while a deployment runs, a watcher (the "hosts") sees every VM that was not in the
simulator's inventory at start and is now powered on, boots it as an agent process
(Manager.boot: first boot reading the guest's guestinfo, by way of the lab's guest channel
server, lab/vsphere_channel.py, which asks the simulator for the guest's view: extraConfig, or
the OVF environment the simulator built at power-on; then `serve` on an address of its own,
127.0.0.N, at the standard ports), and reports that address as the guest's IP through the
simulator's lab endpoint (LabControl.report_guest_ip: guest.ipAddress, guest.net, tools running,
as VMware Tools reports them). The deployer waits for that IP, enrolls and pins the appliance,
and removes the secrets through the API, exactly as against vCenter.

The simulator is strict where the deployer relies on vCenter's behaviour (lab/go/vcsim: vApp
properties, write-only passwords, extraConfig per key, DRS, docs/deployment.md), and serves guest
operations on the booted appliances (lab/go/vcsim/guestops.go): what happens in the guest is this
process's (lab.guestops.GuestOpsServer): a program runs in the appliance's guest context (the
agent with the guest's configuration), files are read and written in the appliance's directory,
and a login is checked against the guest account the appliance's agent recorded at first boot
(agent/guestaccount.py); no Unix account is made.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

from firsttrust.errors import FirsttrustError
from firsttrust.requester.deployer import ApplianceReport, VcenterAccess, deploy
from firsttrust.requester.deployplan import DeployPlan, current_values
from firsttrust.requester.truststore import TrustStore
from firsttrust.requester.vcenter_tls import pinned_context
from firsttrust.requester.vsphere import Vcenter, VsphereError, api_call, connect

from .errors import LabError
from .manager import MAX_PARALLEL_DEPLOYS, Appliance, Manager
from .vcsim import Vcsim
from .vmware_emulator import answer_rpc
from .guestops import GuestOpsServer
from .vsphere_channel import SOCKET_NAME, ChannelServer

# The simulator's VPX inventory has powered-on VMs named DC0_H0_VM0 and so on: the template the
# lab clones. The clones inherit nothing from it (vcsim 0.24), which suits an appliance template.
TEMPLATE = "DC0_H0_VM0"
# How often the hosts look for newly powered-on VMs; a clone and power-on take ~20 ms in vcsim.
WATCH_INTERVAL = 0.1
# The deployer's wait for the guest's IP: a lab first boot takes 1-5 s on a loaded 2-core
# machine; a minute bounds a wedged one (its error is then reported by the host).
LAB_IP_TIMEOUT = 60.0


class DataCenter:
    """A running simulator plus the hosts that boot its VMs. Use `DataCenter.start` as a context manager."""

    def __init__(self, manager: Manager, vcsim: Vcsim) -> None:
        self.manager, self.vcsim = manager, vcsim
        self.access = VcenterAccess(url=vcsim.url, context=pinned_context(vcsim.thumbprint_sha256),
                                    user=vcsim.user, password=vcsim.password)
        self.vc: Vcenter = _lab_call("logging in to the simulator", lambda: connect(
            vcsim.url, vcsim.user, vcsim.password, pinned_context(vcsim.thumbprint_sha256)))
        self.inventory_at_start = set(self.vc.virtual_machines())
        self.channel = ChannelServer(vcsim.lab, vcsim.workdir / SOCKET_NAME, answer_rpc).start()
        self.guest_ops = GuestOpsServer(vcsim.guest_ops_socket, self._guest).start()
        self.booted: dict[str, Appliance] = {}
        self._names_by_moid: dict[str, str] = {}
        self.boot_errors: dict[str, str] = {}
        self._booting: dict[str, Future] = {}
        self._lock = threading.Lock()

    @classmethod
    def start(cls, manager: Manager) -> "DataCenter":
        """Start a simulator (building it at first use) and log in.

        Raises:
            VcsimError: it could not be built or started. LabError: the login failed.
        """
        vcsim = Vcsim.start(guest_ops=True)
        try:
            return cls(manager, vcsim)
        except BaseException:
            vcsim.stop()
            raise

    def stop(self) -> None:
        """Stop the guest channel, log out, stop the simulator (idempotent). The appliances are
        the manager's; they need neither after first boot."""
        self.channel.stop()
        self.guest_ops.stop()
        self.vc.close()
        self.vcsim.stop()

    def __enter__(self) -> "DataCenter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- what the bring-up script calls ------------------------------------------------------------

    def deploy(self, plan: DeployPlan, secrets_dir: Path, *, store: TrustStore | None = None,
               progress: Callable[[str, str], None] = lambda name, event: None) -> list[ApplianceReport]:
        """`firsttrust deploy` against the simulator while the hosts boot what it powers on.

        Returns once the hosts booted every VM the deployer powered on (with --no-enroll too).

        Returns:
            The deployer's reports, one per appliance.
        Raises:
            LabError: an appliance did not boot (its first boot's error, one line).
            FirsttrustError: as requester.deployer.deploy, before anything was cloned.
        """
        with self.hosts():
            reports = deploy(plan, self.access, secrets_dir, store=store, progress=progress,
                             ip_timeout=LAB_IP_TIMEOUT, concurrency=MAX_PARALLEL_DEPLOYS)
        failed = {name: error for name, error in self.boot_errors.items() if name in {a.name for a in plan.appliances}}
        if failed:
            name, error = next(iter(failed.items()))
            raise LabError(f"{name}: did not boot: {error.removeprefix(f'{name}: ')}")
        return reports

    @contextlib.contextmanager
    def hosts(self) -> Iterator[None]:
        """The hosts at work: every VM powered on meanwhile that was not in the inventory at start
        boots as an appliance (Manager.boot) and reports its IP as VMware Tools would. On leaving,
        one more look (a deployer with --no-enroll returns right after power-on), then every boot
        under way is waited for."""
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL_DEPLOYS, thread_name_prefix="lab-host") as pool:
            watcher = threading.Thread(target=self._watch, args=(stop, pool), name="lab-hosts", daemon=True)
            watcher.start()
            try:
                yield
            finally:
                stop.set()
                watcher.join()
                with contextlib.suppress(FirsttrustError):
                    self._submit_boots(pool)
                with self._lock:
                    pending = list(self._booting.values())
                for future in pending:
                    with contextlib.suppress(Exception):
                        future.result()

    def read_guestinfo(self, name: str, key: str) -> str | None:
        """What the VM's configuration says for `key` through the API (last entry wins; "" is none)."""
        return current_values(self.extra_config(name)).get(key) or None

    def guest_view(self, name: str, key: str) -> str | None:
        """What the VM's guest reads for guestinfo `key` (the simulator's lab endpoint: a
        guest-only variable such as guestinfo.ovfEnv, else the extraConfig value)."""
        moid = _lab_call(f"{name}: finding it", lambda: self.vc.moid(self.vc.find_vm(name)))
        return self.vcsim.lab.guestinfo_get(moid, key)

    def extra_config(self, name: str) -> list[tuple[str, str]]:
        """Every extraConfig entry of the VM, in the server's order."""
        return _lab_call(f"{name}: reading its configuration",
                         lambda: self.vc.extra_config(self.vc.find_vm(name)))

    def guest_ip(self, name: str, timeout: float = LAB_IP_TIMEOUT) -> str:
        """The IP the guest reports (VMware Tools' guest.ipAddress), waited for."""
        return _lab_call(f"{name}: waiting for its IP", lambda: self.vc.wait_for_ip(self.vc.find_vm(name), timeout))

    # -- the hosts ---------------------------------------------------------------------------------

    def _watch(self, stop: threading.Event, pool: ThreadPoolExecutor) -> None:
        while not stop.is_set():
            try:
                self._submit_boots(pool)
            except FirsttrustError:  # the simulator went away: the deployer reports it
                return
            stop.wait(WATCH_INTERVAL)

    def _submit_boots(self, pool: ThreadPoolExecutor) -> None:
        for name, vm in self._powered_on_new_vms():
            with self._lock:
                if name not in self._booting:
                    self._booting[name] = pool.submit(self._boot, name, vm)

    def _powered_on_new_vms(self) -> list[tuple[str, object]]:
        vim, collector = self.vc.vim, self.vc.vmodl.query.PropertyCollector
        content = self.vc.content
        found = []
        with api_call("watching for powered-on VMs"):
            view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
            try:
                spec = collector.FilterSpec(
                    objectSet=[collector.ObjectSpec(obj=view, skip=True, selectSet=[
                        collector.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                    propSet=[collector.PropertySpec(type=vim.VirtualMachine, pathSet=["name", "runtime.powerState"])])
                for item in content.propertyCollector.RetrieveContents([spec]):
                    props = {prop.name: prop.val for prop in item.propSet}
                    if props.get("runtime.powerState") == "poweredOn" and props.get("name") not in self.inventory_at_start:
                        found.append((props["name"], item.obj))
            finally:
                view.Destroy()
        return found

    def _boot(self, name: str, vm) -> None:
        try:
            moid = self.vc.moid(vm)
            appliance = self.manager.boot(name, self.channel.path, moid)
            self.booted[name] = appliance
            self._names_by_moid[moid] = name
            self.vcsim.lab.report_guest_ip(moid, appliance.host)
        except (FirsttrustError, OSError) as exc:
            self.boot_errors[name] = str(exc)


    def _guest(self, moid: str) -> "LabGuest | None":
        """The guest of a booted appliance (guest operations), or None: no guest agent runs there."""
        name = self._names_by_moid.get(moid)
        appliance = self.booted.get(name) if name else None
        return LabGuest(self.manager, appliance) if appliance is not None else None


class LabGuest:
    """One booted appliance's guest, for lab.guestops: its directory, its agent, its guest account."""

    AGENT = "firsttrust-agent"

    def __init__(self, manager: Manager, appliance: Appliance) -> None:
        self.manager, self.appliance = manager, appliance
        self.root = appliance.directory

    def check_login(self, user: str, password: str) -> bool:
        from firsttrust.agent import guestaccount

        return guestaccount.check(self.appliance.state_dir, user, password)

    def argv(self, program: str, arguments) -> list[str] | None:
        """The agent is the one program the guest account runs here (`firsttrust-agent` or its
        absolute path), with the guest's configuration, as Manager.guest_command runs it."""
        if Path(program).name != self.AGENT or not (program == self.AGENT or program.startswith("/")):
            return None
        return self.manager.guest_argv(self.appliance.name, [self.AGENT, *arguments])

    def env(self) -> dict[str, str]:
        return self.manager.guest_env(self.appliance.name)


def _lab_call(what: str, call):
    try:
        return call()
    except VsphereError as exc:
        raise LabError(f"{what}: {exc}") from None

