"""The guest-command way's first guest operation (requester/guestcommand.py `_first_call`): tried
again while the guest may still be starting, at once final otherwise, and every failure of the
connection to vCenter a typed one-line error (never an exception that ends the whole deploy)."""

from __future__ import annotations

import http.client
import time
from types import SimpleNamespace

import pytest

pyVmomi = pytest.importorskip("pyVmomi")

from firsttrust.requester import guestcommand  # noqa: E402

vc = SimpleNamespace(vim=pyVmomi.vim, vmodl=pyVmomi.vmodl)


def failing(*faults, result="/tmp/firsttrust-1"):
    pending, calls = list(faults), []

    def call():
        calls.append(time.monotonic())
        if pending:
            raise pending.pop(0)
        return result

    return call, calls


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(guestcommand, "RETRY_PAUSE", 0.01)


def test_the_first_call_is_tried_again_while_guest_operations_or_the_guest_login_are_not_ready_yet():
    call, calls = failing(pyVmomi.vim.fault.GuestOperationsUnavailable(), pyVmomi.vim.fault.InvalidGuestLogin(),
                          pyVmomi.vim.fault.GuestOperationsUnavailable())
    assert guestcommand._first_call(vc, "a-01", "creating", call, time.monotonic() + 5) == "/tmp/firsttrust-1"
    assert len(calls) == 4


def test_a_guest_login_refused_for_longer_than_the_grace_is_final(monkeypatch):
    monkeypatch.setattr(guestcommand, "GUEST_LOGIN_GRACE", 0.1)
    call, calls = failing(*[pyVmomi.vim.fault.InvalidGuestLogin() for _ in range(1000)])
    started = time.monotonic()
    with pytest.raises(guestcommand.GuestLoginRefused):
        guestcommand._first_call(vc, "a-01", "creating", call, started + 30)
    assert 1 < len(calls) and time.monotonic() - started < 2


def test_guest_operations_unavailable_past_the_deadline_is_final():
    call, calls = failing(*[pyVmomi.vim.fault.GuestOperationsUnavailable() for _ in range(1000)])
    started = time.monotonic()
    with pytest.raises(guestcommand.GuestOperationsUnavailable):
        guestcommand._first_call(vc, "a-01", "creating", call, started + 0.2)
    assert 1 < len(calls) and time.monotonic() - started < 2


@pytest.mark.parametrize("fault", [pyVmomi.vmodl.fault.MethodNotFound(), pyVmomi.vim.fault.NoPermission(),
                                   pyVmomi.vim.fault.GuestPermissionDenied()])
def test_a_refusal_that_waiting_cannot_change_is_final_at_once(fault):
    call, calls = failing(fault, fault)
    with pytest.raises(guestcommand.GuestCommandError):
        guestcommand._first_call(vc, "a-01", "creating", call, time.monotonic() + 30)
    assert len(calls) == 1


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"),
                                   http.client.RemoteDisconnected("Remote end closed connection"),
                                   TimeoutError()])
def test_a_failed_connection_to_vcenter_is_a_typed_one_line_error(error):
    call, _ = failing(error)
    with pytest.raises(guestcommand.GuestCommandError) as failed:
        guestcommand._call(vc, "a-01", "reading the program's exit code", call)
    assert failed.value.code == "guest_command" and "\n" not in str(failed.value)
    assert "the connection to vCenter failed" in str(failed.value)


def test_the_programs_exit_is_polled_with_growing_pauses_and_bounded_by_its_timeout(monkeypatch):
    """Each ListProcessesInGuest is a logon in the guest: a slow program is not polled 5 times a second."""
    clock, polls = [0.0], []
    monkeypatch.setattr(guestcommand.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(guestcommand.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    ends_at = 9.0

    def list_processes(vm, auth, pids):
        polls.append(clock[0])
        done = clock[0] >= ends_at
        return [SimpleNamespace(endTime="t" if done else None, exitCode=0 if done else None)]

    processes = SimpleNamespace(ListProcessesInGuest=list_processes)
    assert guestcommand._wait_exit(vc, "app", processes, None, None, 42, 60.0) == 0
    pauses = [b - a for a, b in zip(polls, polls[1:])]
    assert pauses[0] == guestcommand.PROGRAM_POLL and max(pauses) == guestcommand.PROGRAM_POLL_MAX
    assert len(polls) <= 10 and polls[-1] - ends_at <= guestcommand.PROGRAM_POLL_MAX
    clock[0], polls[:] = 0.0, []
    ends_at = float("inf")
    with pytest.raises(guestcommand.GuestProgramFailed, match="did not finish within 5 s"):
        guestcommand._wait_exit(vc, "app", processes, None, None, 42, 5.0)
    assert clock[0] == 5.0 and len(polls) <= 6
