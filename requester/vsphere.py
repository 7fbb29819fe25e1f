"""The vSphere API calls the deployer makes, through pyVmomi, and nothing else.

    vc = connect("https://vc.example/sdk", user, password, pinned_context(thumbprint))
    template = vc.find_vm("appliance-template")
    vm = vc.clone(template, "app-01", extra_config)   # CloneVM_Task, extraConfig in the clone spec
    vc.power_on(vm); vc.wait_for_ip(vm, timeout=600)
    vc.set_extra_config(vm, [(key, "")])              # ReconfigVM_Task; ESXi deletes a key set to ""
    vc.extra_config(vm)                               # read back, in the server's order
    vc.close()

What to call is decided in requester/deployplan.py; this module only calls it and waits on
tasks. Needs pyVmomi 8 or later (PyPI's `pyvmomi`, installed with `pip install
firsttrust[vsphere]`); Debian 12's python3-pyvmomi 6.7.1 is refused by name, because its
SmartConnect does not take our SSL context on every connection. The agent never imports this.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import ssl
import time
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from firsttrust.errors import FirsttrustError

from .deployplan import usable_guest_ip
from .vcenter_tls import ThumbprintMismatch

MIN_PYVMOMI = (8, 0)

# How often a task or the guest's IP is polled: fast at first (vcsim finishes a clone in 9-28 ms),
# then every second (a real vCenter's clone takes seconds to minutes).
POLL_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
TASK_TIMEOUT = 1800.0  # a full clone of a large template on slow storage


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
        raise PyvmomiMissing("firsttrust deploy needs pyVmomi 8 or later: pip install 'firsttrust[vsphere]'") from None
    try:
        found = importlib.metadata.version("pyvmomi")
    except importlib.metadata.PackageNotFoundError:
        found = "unknown"
    version = tuple(int(part) for part in found.split(".")[:2] if part.isdigit())
    if version < MIN_PYVMOMI:
        raise PyvmomiMissing(f"firsttrust deploy needs pyVmomi 8 or later, found {found} "
                             f"(Debian 12's python3-pyvmomi is 6.7.1): pip install 'pyvmomi>=8'")
    return pyVmomi, pyvim_connect


@contextlib.contextmanager
def api_call(what: str) -> Iterator[None]:
    """Turn whatever pyVmomi or the network raises into a VsphereError naming `what`."""
    pyVmomi, _ = _pyvmomi()
    try:
        yield
    except VsphereError:
        raise
    except pyVmomi.vim.fault.InvalidLogin:
        raise VsphereError(f"{what}: vCenter refused the user name or password", code="vsphere_login") from None
    except pyVmomi.vmodl.MethodFault as exc:
        raise VsphereError(f"{what}: {type(exc).__name__.rpartition('.')[2]}: {_first_line(exc.msg)}") from None
    except ThumbprintMismatch as exc:
        raise VsphereError(f"{what}: {exc.args[0]}; nothing was sent", code="vcenter_thumbprint") from None
    except ssl.SSLError as exc:
        raise VsphereError(f"{what}: TLS: {_first_line(str(exc))}", code="vsphere_tls") from None
    except (OSError, http.client.HTTPException) as exc:
        raise VsphereError(f"{what}: cannot reach vCenter: {_first_line(str(exc)) or type(exc).__name__}",
                           code="vsphere_unreachable") from None


def _first_line(text: object) -> str:
    lines = str(text or "").splitlines()
    return lines[0][:200] if lines else ""


def connect(url: str, user: str, password: str, context: ssl.SSLContext) -> "Vcenter":
    """Log in to vCenter or ESXi at `url` (https://HOST[:PORT][/sdk]).

    `context` decides whom we talk to (vcenter_tls.pinned_context or ca_context); the password
    is sent only over a connection it accepted.

    Raises:
        VsphereError: unreachable, TLS refused (thumbprint mismatch), login refused.
    """
    _, pyvim_connect = _pyvmomi()
    parts = urlsplit(url)
    with api_call(f"connecting to {parts.hostname}"):
        si = pyvim_connect.SmartConnect(protocol="https", host=parts.hostname, port=parts.port or 443,
                                        path=parts.path or "/sdk", user=user, pwd=password, sslContext=context)
    return Vcenter(si)


class Vcenter:
    """A logged-in session. Safe to share between threads (pyVmomi pools its connections)."""

    def __init__(self, si) -> None:
        self.si = si
        self.content = si.RetrieveContent()
        self.vim, self.vmodl = _pyvmomi()[0].vim, _pyvmomi()[0].vmodl

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.content.sessionManager.Logout()

    def vm_by_moid(self, moid: str):
        """The VirtualMachine with this managed object ID (e.g. "vm-42"); checked when first used."""
        return self.vim.VirtualMachine(moid, self.si._stub)

    def virtual_machines(self) -> dict[str, object]:
        """name -> VirtualMachine for every VM and template in the inventory, in one round trip."""
        vim, collector = self.vim, self.vmodl.query.PropertyCollector
        with api_call("listing virtual machines"):
            view = self.content.viewManager.CreateContainerView(self.content.rootFolder, [vim.VirtualMachine], True)
            try:
                spec = collector.FilterSpec(
                    objectSet=[collector.ObjectSpec(obj=view, skip=True, selectSet=[
                        collector.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                    propSet=[collector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])])
                found = {}
                for item in self.content.propertyCollector.RetrieveContents([spec]):
                    for prop in item.propSet:
                        found.setdefault(prop.val, item.obj)
                return found
            finally:
                view.Destroy()

    def find_vm(self, name: str):
        """Raises: VsphereError (code "not_found") if no VM or template has this name."""
        vm = self.virtual_machines().get(name)
        if vm is None:
            raise VsphereError(f"no virtual machine or template named {name[:80]!r}", code="not_found")
        return vm

    def clone(self, template, name: str, extra_config: Iterable[tuple[str, str]]):
        """Clone `template` as `name` beside it, powered off, with `extra_config` in the clone spec.

        Returns:
            The new VirtualMachine.
        """
        vim = self.vim
        with api_call(f"cloning {name}"):
            pool = template.resourcePool or template.runtime.host.parent.resourcePool
            spec = vim.vm.CloneSpec(
                location=vim.vm.RelocateSpec(pool=pool), powerOn=False, template=False,
                config=vim.vm.ConfigSpec(extraConfig=self._options(extra_config)))
            task = template.CloneVM_Task(folder=template.parent, name=name, spec=spec)
        return self.wait_task(task, f"cloning {name}")

    def set_extra_config(self, vm, entries: Iterable[tuple[str, str]]) -> None:
        """ReconfigVM_Task with these extraConfig entries (a "" value deletes the key on ESXi)."""
        with api_call("reconfiguring"):
            task = vm.ReconfigVM_Task(spec=self.vim.vm.ConfigSpec(extraConfig=self._options(entries)))
        self.wait_task(task, "reconfiguring")

    def extra_config(self, vm) -> list[tuple[str, str]]:
        """The VM's extraConfig as (key, value) pairs, in the server's order."""
        with api_call("reading the configuration"):
            return [(option.key, "" if option.value is None else str(option.value))
                    for option in (vm.config.extraConfig or [])]

    def power_on(self, vm) -> None:
        with api_call("powering on"):
            task = vm.PowerOnVM_Task()
        self.wait_task(task, "powering on")

    def moid(self, vm) -> str:
        return vm._moId

    def wait_for_ip(self, vm, timeout: float) -> str:
        """The first usable IP address VMware Tools reports for the guest (deployplan.usable_guest_ip).

        Raises:
            VsphereError (code "no_ip"): none within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        for delay in _delays():
            with api_call("reading the guest's IP address"):
                guest = vm.guest  # one round trip: the whole GuestInfo
                reported = [guest.ipAddress] + [ip for nic in (guest.net or []) for ip in (nic.ipAddress or [])]
            address = usable_guest_ip(reported)
            if address:
                return address
            if time.monotonic() + delay > deadline:
                raise VsphereError(f"VMware Tools reported no IP address within {timeout:.0f} s", code="no_ip")
            time.sleep(delay)
        raise AssertionError("unreachable")

    def wait_task(self, task, what: str, timeout: float = TASK_TIMEOUT):
        """Wait for a task; return its result.

        Raises:
            VsphereError: the task failed (its fault named), or did not finish within `timeout`.
        """
        states = self.vim.TaskInfo.State
        deadline = time.monotonic() + timeout
        for delay in _delays():
            with api_call(what):
                info = task.info
            if info.state == states.success:
                return info.result
            if info.state == states.error:
                fault = info.error
                name = type(fault).__name__.rpartition(".")[2] if fault is not None else "error"
                raise VsphereError(f"{what}: {name}: {_first_line(getattr(fault, 'msg', ''))}")
            if time.monotonic() + delay > deadline:
                raise VsphereError(f"{what}: the task did not finish within {timeout:.0f} s", code="task_timeout")
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _options(self, entries: Iterable[tuple[str, str]]) -> list:
        return [self.vim.option.OptionValue(key=key, value=value) for key, value in entries]


def _delays() -> Iterator[float]:
    yield from POLL_DELAYS
    while True:
        yield POLL_DELAYS[-1]
