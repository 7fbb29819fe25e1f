"""Waiting on vCenter the way vCenter wants to be waited on: one private PropertyCollector per
run, one WaitForUpdatesEx loop for every task and every guest IP, not a poll per VM.

    waiter = UpdateWaiter(vcenter)                      # CreatePropertyCollector (private to the run)
    result = waiter.wait_task(task, "cloning app-01")   # a filter on task.info until it ends
    ip = waiter.wait_for_ip(vm, timeout=600)            # a filter on guest.ipAddress/guest.net
    waiter.close()                                      # DestroyPropertyCollector

One thread (the loop) owns the collector: it creates and destroys the filters between its
calls, so the collector is never changed under a wait in flight, then calls WaitForUpdatesEx with
`maxWaitSeconds` = MAX_WAIT_SECONDS, so an interrupt (`cancel`) is seen within a second. A caller
that adds a watch while a wait is in flight cancels that wait (CancelWaitForUpdates), so a new
task is watched at once rather than after the second. The loop sleeps, sending nothing, while
nothing is watched.

What it costs (docs/deployment.md, "What a deploy asks of vCenter"): per watched object one
CreateFilter, one DestroyPropertyFilter and at most one CancelWaitForUpdates; per second of
waiting, whatever the number of appliances, at most one WaitForUpdatesEx (more only when updates
arrive, which they do once per change).

Why a filter per object and not one filter on a ListView (ViewManager.CreateListView,
ModifyListView), which would save the two filter calls per object: govmomi's simulator 0.24,
the lab's vCenter, has no ListView. The filters are created and destroyed on the loop's thread
only, as a ListView would be modified.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .deployplan import usable_guest_ip

# WaitForUpdatesEx's maxWaitSeconds: how long one call may block on the server. 1 s bounds how
# long an interrupt or a deadline waits for the loop (the "within a second").
MAX_WAIT_SECONDS = 1
TASK_PROPERTIES = ("info.state", "info.error", "info.result")
GUEST_PROPERTIES = ("guest.ipAddress", "guest.net")
TOOLS_PROPERTIES = ("guest.toolsRunningStatus", "guest.guestOperationsReady")
# After a failed WaitForUpdatesEx (the network, a restarted vCenter): how long before trying again,
# and how many failures in a row end every wait with the error.
RETRY_DELAY = 1.0
MAX_CONSECUTIVE_FAILURES = 5


class WaitInterrupted(Exception):
    """The waiter was cancelled (Ctrl-C, the run is stopping)."""


@dataclass(eq=False)
class _Watch:
    obj: object
    properties: tuple[str, ...]
    values: dict[str, object] = field(default_factory=dict)
    entered: bool = False  # the filter's first (enter) update arrived: `values` is current
    filter: object = None
    done: bool = False
    error: object = None  # the MethodFault CreateFilter answered for this object (it is gone, ...)


class UpdateWaiter:
    """Watches objects' properties through one private PropertyCollector (see the module docstring).

    Thread-safe: any number of threads wait at once (the deployer's workers).
    """

    def __init__(self, vcenter, max_wait: int = MAX_WAIT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from .vsphere import api_call

        self.vcenter, self.max_wait, self.clock = vcenter, max_wait, clock
        self.vim, self.vmodl = vcenter.vim, vcenter.vmodl
        with api_call("creating a property collector"):
            self.collector = vcenter.content.propertyCollector.CreatePropertyCollector()
        self._cond = threading.Condition()
        self._watches: dict[str, _Watch] = {}      # by managed object ID, while someone waits
        self._to_add: list[_Watch] = []
        self._to_remove: list[_Watch] = []
        self._waiting = False                    # a WaitForUpdatesEx is in flight
        self._cancelled = False
        self._closed = False
        self._error: Exception | None = None
        self._version = ""
        self._thread = threading.Thread(target=self._loop, name="vsphere-updates", daemon=True)
        self._thread.start()

    # --- what callers use ------------------------------------------------------------------------

    def wait_task(self, task, what: str, timeout: float):
        """The task's result once it succeeds.

        Raises:
            VsphereError: it failed (its fault named), or did not end within `timeout` (code
                "task_timeout"). WaitInterrupted: cancelled.
        """
        from .vsphere import VsphereError, _first_line

        states = self.vim.TaskInfo.State
        try:
            values = self.watch(task, TASK_PROPERTIES, timeout, what,
                                lambda v: v.get("info.state") in (states.success, states.error))
        except WaitInterrupted as exc:
            exc.task = getattr(task, "_moId", None)  # the report names it: the task goes on in vCenter
            raise
        if values is None:
            raise VsphereError(f"{what}: the task did not finish within {timeout:.0f} s", code="task_timeout")
        if values.get("info.state") == states.error:
            fault = values.get("info.error")
            fault = getattr(fault, "fault", fault)  # a LocalizedMethodFault carries the MethodFault
            name = type(fault).__name__.rpartition(".")[2] if fault is not None else "error"
            raise VsphereError(f"{what}: {name}: {_first_line(getattr(fault, 'msg', ''))}")
        return values.get("info.result")

    def wait_for_ip(self, vm, timeout: float) -> str:
        """The first usable IP address VMware Tools reports for the guest (deployplan.usable_guest_ip).

        Raises:
            VsphereError (code "no_ip"): none within `timeout`. WaitInterrupted: cancelled.
        """
        from .vsphere import VsphereError

        values = self.watch(vm, GUEST_PROPERTIES, timeout, "reading the guest's IP address",
                            lambda v: _guest_ip(v) is not None)
        if values is None:
            raise VsphereError(f"VMware Tools reported no IP address within {timeout:.0f} s", code="no_ip")
        return _guest_ip(values)

    def wait_for_tools(self, vm, timeout: float) -> None:
        """Until VMware Tools reports it is running (guest.toolsRunningStatus "guestToolsRunning")
        and ready for guest operations (GuestInfo.guestOperationsReady: "If true, the virtual
        machine is ready to process guest operations"; Tools reports running first).

        Raises:
            VsphereError (code "tools_not_running"): not within `timeout`. WaitInterrupted: cancelled.
        """
        from .vsphere import VsphereError

        values = self.watch(vm, TOOLS_PROPERTIES, timeout, "waiting for VMware Tools",
                            lambda v: str(v.get("guest.toolsRunningStatus")) == "guestToolsRunning"
                            and v.get("guest.guestOperationsReady") is True)
        if values is None:
            raise VsphereError(f"VMware Tools did not report guest operations ready within {timeout:.0f} s",
                               code="tools_not_running")

    def cancel(self) -> None:
        """Every wait, now and later, raises WaitInterrupted (within MAX_WAIT_SECONDS at most)."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        self._cancel_wait_in_flight()

    def close(self) -> None:
        """Stop the loop and destroy the collector (and with it its filters). Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._cancel_wait_in_flight()
        self._thread.join(timeout=self.max_wait + 30)
        try:
            self.collector.DestroyPropertyCollector()
        except Exception:  # noqa: BLE001 - the session may be gone; the server drops it with the session
            pass

    # --- the loop ---------------------------------------------------------------------------------

    def watch(self, obj, properties: tuple[str, ...], timeout: float, what: str,
              ready: Callable[[dict], bool]) -> dict | None:
        """Watch `properties` of `obj` until `ready(values)`; the values then, or None at `timeout`.

        Raises:
            WaitInterrupted: cancelled. VsphereError: the collector failed MAX_CONSECUTIVE_FAILURES times.
        """
        from .vsphere import VsphereError

        watch = _Watch(obj, properties)
        deadline = self.clock() + timeout
        with self._cond:
            if self._cancelled or self._closed:
                raise WaitInterrupted(what)
            self._to_add.append(watch)
            in_flight = self._waiting
            self._cond.notify_all()
        if in_flight:
            self._cancel_wait_in_flight()
        try:
            with self._cond:
                while True:
                    if self._cancelled or self._closed:
                        raise WaitInterrupted(what)
                    if self._error is not None:
                        raise VsphereError(f"{what}: {self._error}", code=getattr(self._error, "code", "vsphere"))
                    if watch.error is not None:
                        raise VsphereError(f"{what}: {type(watch.error).__name__.rpartition('.')[2]}")
                    if watch.entered and ready(watch.values):
                        return dict(watch.values)
                    left = deadline - self.clock()
                    if left <= 0:
                        return None
                    self._cond.wait(timeout=min(left, self.max_wait))
        finally:
            with self._cond:
                watch.done = True
                if watch in self._to_add:
                    self._to_add.remove(watch)
                else:
                    self._to_remove.append(watch)
                self._cond.notify_all()

    def _loop(self) -> None:
        from .vsphere import VsphereError, api_call

        failures = 0
        while True:
            with self._cond:
                while not (self._closed or self._to_add or self._to_remove or self._watches):
                    self._cond.wait()
                if self._closed:
                    return
                adding, self._to_add = self._to_add, []
                removing, self._to_remove = self._to_remove, []
            try:
                with api_call("waiting for vCenter's updates"):
                    self._apply(adding, removing)
                    update = self._wait_for_updates()
                failures = 0
            except VsphereError as exc:
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    with self._cond:
                        self._error = exc
                        self._cond.notify_all()
                    return
                time.sleep(RETRY_DELAY)
                continue
            if update is not None:
                self._dispatch(update)

    def _apply(self, adding: list[_Watch], removing: list[_Watch]) -> None:
        collector = self.vmodl.query.PropertyCollector
        for watch in removing:
            self._watches.pop(watch.obj._moId, None)
            if watch.filter is not None:
                try:
                    watch.filter.DestroyPropertyFilter()
                except self.vmodl.MethodFault:
                    pass  # already gone with its object
        for index, watch in enumerate(adding):
            spec = collector.FilterSpec(
                objectSet=[collector.ObjectSpec(obj=watch.obj, skip=False)],
                propSet=[collector.PropertySpec(type=type(watch.obj), pathSet=list(watch.properties))])
            try:
                watch.filter = self.collector.CreateFilter(spec, partialUpdates=False)
            except self.vmodl.MethodFault as exc:  # this object's own answer (deleted, no permission): its wait alone
                with self._cond:
                    watch.error = exc
                    self._cond.notify_all()
                continue
            except BaseException:  # the connection: the watches not applied yet go back in the queue
                with self._cond:
                    self._to_add[:0] = [w for w in adding[index:] if not w.done]
                raise
            with self._cond:
                self._watches[watch.obj._moId] = watch

    def _wait_for_updates(self):
        with self._cond:
            if not self._watches:
                return None
            self._waiting = True
        options = self.vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=self.max_wait)
        try:
            update = self.collector.WaitForUpdatesEx(self._version, options)
        except self.vmodl.fault.RequestCanceled:
            return None
        finally:
            with self._cond:
                self._waiting = False
        if update is not None:
            self._version = update.version
        return update

    def _dispatch(self, update) -> None:
        with self._cond:
            for filter_update in update.filterSet or []:
                for object_update in filter_update.objectSet or []:
                    watch = self._watches.get(object_update.obj._moId)
                    if watch is None:
                        continue
                    for change in object_update.changeSet or []:
                        if change.op in ("assign", "add"):
                            watch.values[change.name] = change.val
                        elif change.op in ("remove", "indirectRemove"):
                            watch.values.pop(change.name, None)
                    watch.entered = True
            self._cond.notify_all()

    def _cancel_wait_in_flight(self) -> None:
        try:
            self.collector.CancelWaitForUpdates()
        except Exception:  # noqa: BLE001 - nothing in flight, or the session is gone: the wait ends by itself
            pass


def _guest_ip(values: dict) -> str | None:
    reported = [values.get("guest.ipAddress")]
    for nic in values.get("guest.net") or []:
        reported += list(getattr(nic, "ipAddress", None) or [])
    return usable_guest_ip(reported)
