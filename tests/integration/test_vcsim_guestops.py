"""The lab's vCenter serves guest operations (lab/go/vcsim/guestops.go, hostcert.go), through
pyVmomi as a client of vCenter calls them, and the same binary with `-stock` does not.

The guest side here is lab.guestops.GuestOpsServer with a guest of the test's own (a directory,
a password, /bin/sh as the one program), so the simulator's model is what is under test; the
lab's data center wires the appliances' own guests (tests/integration/test_guest_command.py).
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from firsttrust.lab.guestops import GuestOpsServer
from firsttrust.lab.vcsim import Vcsim
from firsttrust.requester.vcenter_tls import pinned_context
from firsttrust.requester.vsphere import connect

pytest.importorskip("pyVmomi", reason="firsttrust[vsphere] (pyvmomi) is not installed")

VM_NAME = "DC0_H0_VM0"  # powered on in the VPX inventory
USER, PASSWORD = "fttguest", "guest-Pass_9x"
TIMEOUT = 20.0


class ShellGuest:
    def __init__(self, root: Path) -> None:
        self.root = root

    def check_login(self, user: str, password: str) -> bool:
        return user == USER and hmac.compare_digest(password.encode(), PASSWORD.encode())

    def argv(self, program: str, arguments):
        return ["/bin/sh", *arguments] if program == "/bin/sh" else None

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin"}


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    server = Vcsim.start(guest_ops=True)
    root = tmp_path_factory.mktemp("guest")
    guests = GuestOpsServer(server.guest_ops_socket, lambda moid: ShellGuest(root)).start()
    yield server, root
    guests.stop()
    server.stop()


@pytest.fixture(scope="module")
def stock():
    server = Vcsim.start(stock=True)
    yield server
    server.stop()


def session(server: Vcsim):
    return connect(server.url, server.user, server.password, pinned_context(server.thumbprint_sha256))


def tools_running(server: Vcsim, vc) -> object:
    """Tools report running, then (a moment later, as on vCenter) guest operations ready."""
    vm = vc.find_vm(VM_NAME)
    server.lab.report_guest_ip(vc.moid(vm), "127.0.0.9")
    deadline = time.monotonic() + TIMEOUT
    while vm.guest.guestOperationsReady is not True:
        assert time.monotonic() < deadline, "guest operations never became ready"
        time.sleep(0.05)
    return vm


def auth(vc, password: str = PASSWORD):
    return vc.vim.vm.guest.NamePasswordAuthentication(username=USER, password=password)


def program(vc, arguments: str):
    return vc.vim.vm.guest.ProcessManager.ProgramSpec(programPath="/bin/sh", arguments=arguments)


def wait_exit(pm, vm, creds, pid: int):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        [info] = pm.ListProcessesInGuest(vm, creds, [pid])
        if info.endTime is not None:
            return info
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} did not end within {TIMEOUT} s")


def test_start_program_in_guest_returns_a_pid_whose_exit_code_and_end_time_list_processes_reports(strict):
    server, _ = strict
    vc = session(server)
    try:
        vm = tools_running(server, vc)
        pm = vc.content.guestOperationsManager.processManager
        pid = pm.StartProgramInGuest(vm, auth(vc), program(vc, "-c 'exit 7'"))
        assert isinstance(pid, int) and pid > 0
        info = wait_exit(pm, vm, auth(vc), pid)
        assert (info.pid, info.exitCode, info.owner) == (pid, 7, USER)
        assert info.endTime >= info.startTime
        ok = pm.StartProgramInGuest(vm, auth(vc), program(vc, "-c true"))
        assert wait_exit(pm, vm, auth(vc), ok).exitCode == 0
    finally:
        vc.close()


def test_a_wrong_guest_password_raises_invalid_guest_login_on_every_guest_operation(strict):
    server, root = strict
    vc = session(server)
    try:
        vm = tools_running(server, vc)
        pm = vc.content.guestOperationsManager.processManager
        fm = vc.content.guestOperationsManager.fileManager
        wrong = auth(vc, "not-" + PASSWORD)
        calls = [lambda: pm.StartProgramInGuest(vm, wrong, program(vc, "-c true")),
                 lambda: pm.ListProcessesInGuest(vm, wrong, []),
                 lambda: fm.CreateTemporaryDirectoryInGuest(vm, wrong, "x", ""),
                 lambda: fm.InitiateFileTransferFromGuest(vm, wrong, str(root / "nothing")),
                 lambda: fm.InitiateFileTransferToGuest(vm, wrong, str(root / "f"),
                                                        vc.vim.vm.guest.FileManager.FileAttributes(), 1, True)]
        for call in calls:
            with pytest.raises(vc.vim.fault.InvalidGuestLogin):
                call()
    finally:
        vc.close()


def test_guest_operations_are_unavailable_while_the_vms_tools_do_not_run(strict):
    server, _ = strict
    vc = session(server)
    try:
        spec = vc.vim.vm.CloneSpec(location=vc.vim.vm.RelocateSpec(), powerOn=True)
        source = vc.find_vm(VM_NAME)
        vc.wait_task(source.CloneVM_Task(folder=source.parent, name="guestops-no-tools", spec=spec), "clone", TIMEOUT)
        vm = vc.find_vm("guestops-no-tools")
        vc.wait_task(vm.PowerOnVM_Task(), "power-on", TIMEOUT)
        pm = vc.content.guestOperationsManager.processManager
        with pytest.raises(vc.vim.fault.GuestOperationsUnavailable):
            pm.StartProgramInGuest(vm, auth(vc), program(vc, "-c true"))
    finally:
        vc.close()


def test_guest_operations_are_unavailable_until_tools_report_them_ready(strict):
    """GuestInfo.guestOperationsReady is its own flag: Tools report running first, and a guest
    operation before the flag is true meets GuestOperationsUnavailable."""
    server, _ = strict
    vc = session(server)
    try:
        vm = vc.find_vm(VM_NAME)
        server.lab.report_guest_ip(vc.moid(vm), "127.0.0.9")
        assert vm.guest.toolsRunningStatus == "guestToolsRunning" and vm.guest.guestOperationsReady is False
        pm = vc.content.guestOperationsManager.processManager
        with pytest.raises(vc.vim.fault.GuestOperationsUnavailable):
            pm.ListProcessesInGuest(vm, auth(vc), [])
        tools_running(server, vc)
        assert pm.ListProcessesInGuest(vm, auth(vc), []) is not None
    finally:
        vc.close()


def _host_certificate(vc, vm) -> bytes:
    raw = vm.runtime.host.config.certificate
    return bytes(b & 0xFF for b in raw)


def test_files_go_both_ways_over_the_simulators_tls_verified_against_the_hosts_certificate(strict):
    server, root = strict
    vc = session(server)
    try:
        vm = tools_running(server, vc)
        fm = vc.content.guestOperationsManager.fileManager
        directory = fm.CreateTemporaryDirectoryInGuest(vm, auth(vc), "ft-", "")
        assert Path(directory).parent == root / "tmp"
        pem = _host_certificate(vc, vm)
        assert pem == server.ca_file.read_bytes()
        context = ssl.create_default_context(cadata=pem.decode("ascii"))
        host = server.url.split("//")[1].split(":")[0]
        target = f"{directory}/hello.txt"
        url = fm.InitiateFileTransferToGuest(vm, auth(vc), target, vc.vim.vm.guest.FileManager.FileAttributes(),
                                             5, False)
        assert url.startswith("https://*:")
        put = urllib.request.Request(url.replace("*", host, 1), data=b"hello", method="PUT")
        with urllib.request.urlopen(put, context=context, timeout=TIMEOUT) as response:
            assert response.status == 200
        assert (Path(target)).read_bytes() == b"hello"
        info = fm.InitiateFileTransferFromGuest(vm, auth(vc), target)
        assert info.size == 5
        with urllib.request.urlopen(info.url.replace("*", host, 1), context=context, timeout=TIMEOUT) as response:
            assert response.read() == b"hello"
        # "URL will become invalid once a successful GET request is sent."
        with pytest.raises(urllib.error.HTTPError) as again:
            urllib.request.urlopen(info.url.replace("*", host, 1), context=context, timeout=TIMEOUT)
        assert again.value.code == 404
        with pytest.raises(vc.vim.fault.FileAlreadyExists):
            fm.InitiateFileTransferToGuest(vm, auth(vc), target, vc.vim.vm.guest.FileManager.FileAttributes(), 1, False)
        with pytest.raises(vc.vim.fault.FileNotFound):
            fm.InitiateFileTransferFromGuest(vm, auth(vc), f"{directory}/absent")
        fm.DeleteDirectoryInGuest(vm, auth(vc), directory, True)
        assert not Path(directory).exists()
    finally:
        vc.close()


def test_stock_vcsim_has_no_process_manager_no_transfers_and_no_host_certificate(stock):
    vc = session(stock)
    try:
        vm = vc.find_vm(VM_NAME)
        stock.lab.report_guest_ip(vc.moid(vm), "127.0.0.9")
        pm = vc.content.guestOperationsManager.processManager
        fm = vc.content.guestOperationsManager.fileManager
        with pytest.raises(vc.vmodl.fault.MethodNotFound):
            pm.StartProgramInGuest(vm, auth(vc), program(vc, "-c true"))
        with pytest.raises(vc.vim.fault.GuestOperationsUnavailable):
            fm.InitiateFileTransferFromGuest(vm, auth(vc), "/etc/hostname")
        assert b"CERTIFICATE" not in _host_certificate(vc, vm)  # stock: an empty element
    finally:
        vc.close()


def test_the_lab_file_manager_stays_inside_the_guests_directory(strict):
    server, root = strict
    vc = session(server)
    try:
        vm = tools_running(server, vc)
        fm = vc.content.guestOperationsManager.fileManager
        with pytest.raises(vc.vim.fault.GuestPermissionDenied):
            fm.InitiateFileTransferFromGuest(vm, auth(vc), "/etc/hostname")
    finally:
        vc.close()


def test_the_guest_password_never_reaches_the_simulators_log(strict):
    server, _ = strict
    log = (server.workdir / "vcsim.log").read_text(errors="replace")
    assert PASSWORD not in log
    assert hashlib.sha256(PASSWORD.encode()).hexdigest() not in log
