"""The lab's PropertyCollector model (lab/go/vcsim/collector.go) and the deployer's waiter on it
(requester/vsphere_wait.py): a filter made after its task ended is reported by the next
WaitForUpdatesEx on the lab's vCenter, as the vSphere API reference has it; on stock vcsim 0.24 it
is not (the wait runs out), so the model is shown to be what the waiter relies on."""

from __future__ import annotations

import threading
import time

import pytest

from vcsim_fixture import task_result

from firsttrust.lab.vcsim import Vcsim
from firsttrust.requester.vcenter_tls import pinned_context
from firsttrust.requester.vsphere import VsphereError, connect
from firsttrust.requester.vsphere_wait import UpdateWaiter, WaitInterrupted

TEMPLATE = "DC0_H0_VM0"


@pytest.fixture(scope="module", params=["strict", "stock"])
def server(request):
    pytest.importorskip("pyVmomi")
    simulator = Vcsim.start(stock=request.param == "stock")
    yield request.param, simulator
    simulator.stop()


def finished_task(vc):
    """A task that has ended before anyone watches it (vcsim runs a reconfigure inside the call)."""
    vm = vc.find_vm(TEMPLATE)
    task = vm.ReconfigVM_Task(spec=vc.vim.vm.ConfigSpec(annotation="touched"))
    task_result(task, timeout=10)
    return task


def test_a_filter_made_after_its_task_ended_is_reported_by_the_next_wait(server):
    """The case that matters: the task ends while the waiter's loop is inside a wait for something
    else, which consumes the task's changes before anyone watches the task."""
    kind, simulator = server
    vc = connect(simulator.url, simulator.user, simulator.password, pinned_context(simulator.thumbprint_sha256))
    background = threading.Thread(target=vc.waiter.watch, args=(vc.find_vm(TEMPLATE), ("name",), 8, "background",
                                                                  lambda values: False), daemon=True)
    try:
        background.start()
        time.sleep(0.5)  # the loop is in WaitForUpdatesEx now
        task = finished_task(vc)
        time.sleep(0.6)  # the wait in flight has taken the task's changes (vcsim looks every 250 ms)
        started = time.monotonic()
        if kind == "strict":
            assert vc.wait_task(task, "reconfiguring", timeout=5) is None
            assert time.monotonic() - started < 3
        else:  # stock: nothing changes after the filter is made, so nothing is ever reported
            with pytest.raises(VsphereError) as caught:
                vc.wait_task(task, "reconfiguring", timeout=3)
            assert caught.value.code == "task_timeout"
    finally:
        background.join(timeout=10)
        vc.close()


def test_a_cancelled_waiter_ends_every_wait_within_a_second(server):
    kind, simulator = server
    if kind == "stock":
        pytest.skip("the interrupt does not depend on the collector model")
    vc = connect(simulator.url, simulator.user, simulator.password, pinned_context(simulator.thumbprint_sha256))
    waiter = UpdateWaiter(vc)
    try:
        vm = vc.find_vm(TEMPLATE)
        outcome = []

        def wait() -> None:
            try:
                waiter.wait_for_ip(vm, timeout=60)  # the template never reports a usable IP here
            except WaitInterrupted:
                outcome.append(time.monotonic())

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(1.5)
        cancelled = time.monotonic()
        waiter.cancel()
        thread.join(timeout=5)
        assert outcome and outcome[0] - cancelled < 1.0
    finally:
        waiter.close()
        vc.close()


def test_a_watch_on_an_object_that_is_gone_fails_alone_at_once(server):
    """CreateFilter answers ManagedObjectNotFound for a deleted VM: that wait fails at once, and the
    waits queued with it are still applied (they were dropped with it, and ran to their timeout)."""
    kind, simulator = server
    if kind == "stock":
        pytest.skip("the waiter's handling, not the collector model")
    vc = connect(simulator.url, simulator.user, simulator.password, pinned_context(simulator.thumbprint_sha256))
    waiter = UpdateWaiter(vc)
    try:
        source = vc.find_vm(TEMPLATE)
        spec = vc.vim.vm.CloneSpec(location=vc.vim.vm.RelocateSpec(), powerOn=False)
        task_result(source.CloneVM_Task(folder=source.parent, name="collector-gone", spec=spec), timeout=10)
        gone = vc.find_vm("collector-gone")
        task_result(gone.Destroy_Task(), timeout=10)
        outcomes: dict[str, object] = {}

        def watch(name, obj, properties, ready):
            try:
                outcomes[name] = waiter.watch(obj, properties, 20, name, ready)
            except VsphereError as exc:
                outcomes[name] = exc

        threads = [threading.Thread(target=watch, args=("gone", gone, ("name",), lambda v: True)),
                   threading.Thread(target=watch, args=("live", source, ("name",), lambda v: "name" in v))]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert time.monotonic() - started < 10
        assert isinstance(outcomes["gone"], VsphereError) and "ManagedObjectNotFound" in str(outcomes["gone"])
        assert outcomes["live"] == {"name": TEMPLATE}
    finally:
        waiter.close()
        vc.close()


def test_a_filter_on_a_missing_object_is_refused_by_the_lab_and_made_by_stock_vcsim(server):
    """PropertyFilterSpec.reportMissingObjectsInResults: "If false or unset and objectSet refers to
    missing objects, filter creation will fail with a ManagedObjectNotFound fault." Stock vcsim
    0.24 makes the filter (its later waits then fail); the lab refuses it."""
    kind, simulator = server
    vc = connect(simulator.url, simulator.user, simulator.password, pinned_context(simulator.thumbprint_sha256))
    collector = vc.content.propertyCollector.CreatePropertyCollector()
    try:
        pc = vc.vmodl.query.PropertyCollector
        missing = vc.vim.VirtualMachine("vm-does-not-exist", vc.content.propertyCollector._stub)
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=missing, skip=False)],
                             propSet=[pc.PropertySpec(type=vc.vim.VirtualMachine, pathSet=["name"])])
        if kind == "strict":
            with pytest.raises(vc.vmodl.fault.ManagedObjectNotFound):
                collector.CreateFilter(spec, partialUpdates=False)
        else:
            assert collector.CreateFilter(spec, partialUpdates=False) is not None
    finally:
        collector.DestroyPropertyCollector()
        vc.close()
