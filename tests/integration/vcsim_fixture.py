"""One vCenter simulator for the whole session, and guests that boot from what it holds.

`vcsim` starts lab.vcsim's simulator once (building it on first use, ~45 s, cached under
build/vcsim/) and stops it at the end of the session.

`Guests` stands in for the appliances' first boot where fifty of them must boot at once: the
lab's own hosts (lab.datacenter, used by `firsttrust-lab demo` and tests/integration/test_lab.py)
start an agent process per VM whose first boot runs the guest tools ~15 times, several CPU-minutes
for fifty on a 2-core machine. It watches the simulator for powered-on VMs with a name prefix, reads each
one's deployment secrets as its guest would (the simulator's lab endpoint, LabControl.guestinfo_get:
a clone's guestinfo.firsttrust.* keys, else an OVA import's guestinfo.ovfEnv, the OVF environment the
simulator built at power-on, password values included), provisions an in-process agent from them on
an address of its own in 127.0.0.0/8 at the standard enrollment port, and reports that address as
the guest's IP (LabControl.report_guest_ip: what VMware Tools does on ESXi). The deployer then finds
and enrolls it exactly as in a data center.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from pathlib import Path

import pytest

from firsttrust.agent.config import load_config
from firsttrust.agent.provision import provision
from firsttrust.agent.server import EnrollmentGate, EnrollmentServer, start_enrollment_server
from firsttrust.agent.sources.deploy import OVFENV_GUESTINFO_KEY, DeployConfig
from firsttrust.agent.sources.ovfenv import parse_ovf_env
from firsttrust.agent.state import StateDir
from firsttrust.deployment import DEFAULT_ENROLL_PORT, SEC_A, SEC_B, guestinfo_key
from firsttrust.lab.vcsim import Vcsim
from firsttrust.requester.vcenter_tls import pinned_context
from firsttrust.requester.vsphere import connect


@pytest.fixture(scope="session")
def vcsim():
    pytest.importorskip("pyVmomi", reason="firsttrust[vsphere] (pyvmomi) is not installed")
    server = Vcsim.start()
    yield server
    server.stop()


def task_result(task, timeout: float = 30.0):
    """A task's result, read from task.info until it ends (not through the deployer's waiter, which
    relies on the lab's collector model that -stock turns off); fails the test if it did not succeed."""
    deadline = time.monotonic() + timeout
    while task.info.state not in ("success", "error") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert task.info.state == "success", task.info.error
    return task.info.result


def vcenter_session(server: Vcsim):
    return connect(server.url, server.user, server.password, pinned_context(server.thumbprint_sha256))


class Guests:
    """First boots for the VMs named `prefix`*, once they are powered on (see the module docstring)."""

    def __init__(self, server: Vcsim, prefix: str, root: Path) -> None:
        self.vc = vcenter_session(server)
        self.lab = server.lab
        self.prefix, self.root = prefix, root
        # A /16 of 127.0.0.0/8 of our own: parallel test runs on one machine do not collide.
        self.network = f"127.{random.randrange(1, 255)}.{random.randrange(0, 256)}"
        self.booted: dict[str, str] = {}
        self.errors: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.listeners: list = []
        self._stop = threading.Event()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "Guests":
        self._loop_thread.start()
        self._watcher.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._watcher.join(10)

        async def close() -> None:
            for listener in self.listeners:
                listener.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.wait_closed(), 5)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(10)
        self.loop.close()
        self.vc.close()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for name, vm in self.vc.virtual_machines().items():
                if name.startswith(self.prefix) and name not in self.booted and \
                        vm.runtime.powerState == "poweredOn":
                    try:
                        self._boot(name, vm)
                    except Exception as exc:  # noqa: BLE001 - reported by the test
                        self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                        self.booted[name] = ""
            time.sleep(0.05)

    def _boot(self, name: str, vm) -> None:
        moid = self.vc.moid(vm)
        address = f"{self.network}.{len(self.booted) + 1}"
        config = load_config(None, self.root / name / "state")
        # A clone carries guestinfo.firsttrust.*; an OVA import (deploy --ova) vApp properties, which
        # the guest reads in the OVF environment (their password values read "" through the API).
        sec_a = self.lab.guestinfo_get(moid, guestinfo_key(SEC_A))
        if sec_a is not None:
            source, values = "guestinfo", {SEC_A: sec_a, SEC_B: self.lab.guestinfo_get(moid, guestinfo_key(SEC_B))}
        else:
            document = self.lab.guestinfo_get(moid, OVFENV_GUESTINFO_KEY)
            if document is None:
                raise RuntimeError("neither guestinfo.firsttrust.* nor an OVF environment for the guest")
            source, values = "ovfenv", parse_ovf_env(document.encode()).properties
        provision(config, DeployConfig(source=source, sec_a=values[SEC_A], sec_b=values[SEC_B]),
                  set_account_password=False)
        server = EnrollmentServer(EnrollmentGate(config, StateDir(config.state_dir), backoff_base=0.0),
                                  api_port=8791, host_key_glob=str(self.root / "no-host-keys-*"))
        listener = asyncio.run_coroutine_threadsafe(
            start_enrollment_server(server, address, DEFAULT_ENROLL_PORT), self.loop).result(30)
        self.listeners.append(listener)
        self.lab.report_guest_ip(moid, address)
        self.booted[name] = address
