"""The guest-command way in through the vSphere API's guest operations (requester/guestcommand.py,
`firsttrust deploy --way guest-command`), against the lab's data center: its vCenter serves the
guest operations (lab/go/vcsim/guestops.go) and its hosts run them in the appliances
(lab/guestops.py, the guest account the agent recorded). The error cases each end in one line,
with nothing pinned and nothing authorized, and a re-run finishes the job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firsttrust.deployment import GUEST_ACCOUNT, GUEST_PASSWORD, guestinfo_key
from firsttrust.lab.datacenter import TEMPLATE, DataCenter
from firsttrust.lab.manager import Manager
from firsttrust.requester import guestcommand
from firsttrust.requester.deployplan import GUEST_COMMAND_WAY, plan_deployment
from firsttrust.requester.guestcommand import (
    GuestIdentityMismatch,
    GuestLogin,
    GuestLoginRefused,
    GuestProgramFailed,
    GuestToolsNotRunning,
    GuestTransferRefused,
    trust_by_guest_command,
)
from firsttrust.requester.truststore import TrustStore, UnknownAppliance

pytest.importorskip("pyVmomi", reason="firsttrust[vsphere] (pyvmomi) is not installed")

# Where the kill test kills the requester: after the temporary directory was made (on the upload),
# after the program was started (on waiting for it), after it ended (on fetching its report),
# before the first pinned call, before the pin is saved.
KILL_POINTS = ("_Transfers.put", "_wait_exit", "_read_report", "_first_pinned_call", "TrustStore.save")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One data center, appliances deployed the guest-command way with --no-enroll: three for the
    error cases, one per kill point (each sees one requester only)."""
    root = tmp_path_factory.mktemp("guestcmd")
    manager = Manager(root / "lab")
    datacenter = DataCenter.start(manager)
    try:
        names = ["gc-1", "gc-2", "gc-3", *(f"gc-k{n}" for n in range(len(KILL_POINTS)))]
        plan = plan_deployment(datacenter.vcsim.url, TEMPLATE, names, enroll=False, way=GUEST_COMMAND_WAY)
        secrets = root / "secrets"
        secrets.mkdir()
        datacenter.deploy(plan, secrets)
        yield datacenter, manager, plan, secrets
    finally:
        datacenter.stop()
        manager.destroy_all()


def login(secrets: Path, name: str) -> GuestLogin:
    document = json.loads((secrets / f"{name}.guest.json").read_text())
    return GuestLogin(document["user"], document["password"])


def authorized_pins(manager: Manager, name: str) -> set[str]:
    path = manager.appliance(name).state_dir / "authorized.json"
    return {entry["pin"] for entry in json.loads(path.read_text())["keys"]} if path.exists() else set()


def temp_dirs_left(manager: Manager, name: str) -> list[Path]:
    return sorted((manager.appliance(name).directory / "tmp").glob("firsttrust-*"))


def call(datacenter, manager, name, store, guest, **kwargs):
    vm = datacenter.vc.find_vm(name)
    return trust_by_guest_command(datacenter.vc, vm, name, manager.appliance(name).host, guest=guest, store=store,
                                  **kwargs)


def test_deploy_the_guest_command_way_authorizes_fetches_verifies_pins_and_removes_the_guest_password(tmp_path):
    manager = Manager(tmp_path / "lab")
    store = TrustStore(tmp_path / "store")
    with DataCenter.start(manager) as datacenter:
        plan = plan_deployment(datacenter.vcsim.url, TEMPLATE, ["gc-deploy"], way=GUEST_COMMAND_WAY)
        (tmp_path / "secrets").mkdir()
        try:
            [report] = datacenter.deploy(plan, tmp_path / "secrets", store=store)
            assert report.status == "enrolled", report.error
            shown = manager.guest_command("gc-deploy", ["firsttrust-agent", "show-identity", "--format", "pin"])
            assert report.pin == shown.stdout.decode().strip()
            record = store.get("gc-deploy")
            assert (record.pin, record.embodiment) == (report.pin, "guest-command")
            assert store.identity().pin in authorized_pins(manager, "gc-deploy")
            assert report.scrub[guestinfo_key(GUEST_PASSWORD)] == "removed"
            assert datacenter.read_guestinfo("gc-deploy", guestinfo_key(GUEST_PASSWORD)) is None
            assert temp_dirs_left(manager, "gc-deploy") == []
            guest_file = tmp_path / "secrets" / "gc-deploy.guest.json"
            assert guest_file.stat().st_mode & 0o077 == 0
        finally:
            manager.destroy_all()


def test_a_wrong_guest_password_is_one_line_and_nothing_is_pinned_or_authorized(lab, tmp_path, monkeypatch):
    monkeypatch.setattr(guestcommand, "GUEST_LOGIN_GRACE", 2.0)  # tried again for 30 s in a real run
    datacenter, manager, _, secrets = lab
    store = TrustStore(tmp_path / "store")
    right = login(secrets, "gc-1")
    with pytest.raises(GuestLoginRefused) as refused:
        call(datacenter, manager, "gc-1", store, GuestLogin(right.user, right.password[::-1]))
    assert "\n" not in str(refused.value) and right.password not in str(refused.value)
    assert refused.value.code == "guest_login_refused"
    with pytest.raises(UnknownAppliance):
        store.get("gc-1")
    assert store.identity().pin not in authorized_pins(manager, "gc-1")


def test_a_transfer_that_cannot_be_verified_against_the_hosts_certificate_fails_before_anything_is_authorized(
        lab, tmp_path, monkeypatch, stranger_identity):
    datacenter, manager, _, secrets = lab
    store = TrustStore(tmp_path / "store")
    original = guestcommand._Transfers.__init__

    def other_host(self, *args):
        original(self, *args)
        self.host_der = stranger_identity.cert_der  # a certificate that is not the server's

    monkeypatch.setattr(guestcommand._Transfers, "__init__", other_host)
    with pytest.raises(GuestTransferRefused) as refused:
        call(datacenter, manager, "gc-2", store, login(secrets, "gc-2"))
    assert "HostSystem.config.certificate" in str(refused.value)
    assert store.identity().pin not in authorized_pins(manager, "gc-2")
    with pytest.raises(UnknownAppliance):
        store.get("gc-2")
    assert temp_dirs_left(manager, "gc-2") == []


def test_the_programs_non_zero_exit_is_reported_with_its_error_line_and_nothing_is_authorized(lab, tmp_path,
                                                                                              monkeypatch):
    datacenter, manager, _, secrets = lab
    store = TrustStore(tmp_path / "store")
    # The pin on the command line is not the uploaded certificate's: as if the file had been swapped.
    monkeypatch.setattr(guestcommand, "pin_of_certificate", lambda cert: "sha256:" + "00" * 32)
    with pytest.raises(GuestProgramFailed) as failed:
        call(datacenter, manager, "gc-3", store, login(secrets, "gc-3"))
    message = str(failed.value)
    assert "exited 2" in message and "--expect-pin" in message and "\n" not in message
    assert store.identity().pin not in authorized_pins(manager, "gc-3")


def test_a_run_stopped_before_pinning_leaves_nothing_pinned_and_the_same_call_rerun_finishes(lab, tmp_path,
                                                                                           monkeypatch):
    datacenter, manager, _, secrets = lab
    store = TrustStore(tmp_path / "store")

    async def killed(*args):
        raise KeyboardInterrupt  # the requester dies between authorize and its first pinned call

    monkeypatch.setattr(guestcommand, "_first_pinned_call", killed)
    with pytest.raises(KeyboardInterrupt):
        call(datacenter, manager, "gc-1", store, login(secrets, "gc-1"))
    with pytest.raises(UnknownAppliance):
        store.get("gc-1")
    monkeypatch.undo()
    report = call(datacenter, manager, "gc-1", store, login(secrets, "gc-1"))
    assert store.get("gc-1").pin == report.pin
    assert store.identity().pin in authorized_pins(manager, "gc-1")


def test_an_appliance_that_serves_another_identity_than_the_guest_reported_is_not_pinned(lab, tmp_path, monkeypatch,
                                                                                        appliance_identity):
    datacenter, manager, _, secrets = lab
    store = TrustStore(tmp_path / "store")
    original = guestcommand._read_report

    def lying_report(*args):
        report = original(*args)
        report["appliance_certificate"] = appliance_identity.cert_pem.decode()
        return report

    monkeypatch.setattr(guestcommand, "_read_report", lying_report)
    with pytest.raises(GuestIdentityMismatch):
        call(datacenter, manager, "gc-2", store, login(secrets, "gc-2"))
    with pytest.raises(UnknownAppliance):
        store.get("gc-2")


def test_a_vm_whose_tools_do_not_run_is_one_line_within_the_timeout(lab, tmp_path):
    datacenter, _, _, _ = lab
    store = TrustStore(tmp_path / "store")
    vm = datacenter.vc.find_vm(TEMPLATE)  # not an appliance: nothing reports tools running
    with pytest.raises(GuestToolsNotRunning) as refused:
        trust_by_guest_command(datacenter.vc, vm, "template", "127.0.0.1", guest=GuestLogin(GUEST_ACCOUNT, "x" * 20),
                               store=store, tools_timeout=1.0)
    assert "VMware Tools" in str(refused.value)


def test_the_injected_certificate_way_reads_by_file_transfer_with_credentials_else_from_guestinfo_and_pins_only_after_the_first_call(
        lab, tmp_path):
    datacenter, manager, _, secrets = lab
    vm = datacenter.vc.find_vm("gc-3")
    path = str(manager.appliance("gc-3").directory / "appliance.crt")
    by_transfer, channel = guestcommand.read_appliance_certificate(datacenter.vc, vm, "gc-3",
                                                                   guest=login(secrets, "gc-3"), guest_path=path)
    assert channel == guestcommand.FILE_TRANSFER
    assert by_transfer == Path(path).read_bytes()
    by_guestinfo, channel = guestcommand.read_appliance_certificate(datacenter.vc, vm, "gc-3")
    assert channel == guestcommand.GUESTINFO_READ_BACK and by_guestinfo == by_transfer
    with pytest.raises(GuestTransferRefused, match="no such file"):
        guestcommand.read_appliance_certificate(datacenter.vc, vm, "gc-3", guest=login(secrets, "gc-3"),
                                                guest_path=path + ".absent")
    # This requester's certificate was never injected into gc-3: its API does not accept it, and
    # the certificate read is not pinned.
    store = TrustStore(tmp_path / "store")
    with pytest.raises(GuestIdentityMismatch):
        guestcommand.verify_and_pin("gc-3", manager.appliance("gc-3").host, by_transfer,
                                    embodiment="injected-certificate", store=store)
    with pytest.raises(UnknownAppliance):
        store.get("gc-3")


CHILD = r"""
import json, os, signal, sys
from pathlib import Path
from firsttrust.requester import guestcommand, truststore
from firsttrust.requester.vcenter_tls import pinned_context
from firsttrust.requester.vsphere import connect

config = json.loads(Path(sys.argv[1]).read_text())
owner, attribute = config["kill_at"].rsplit(".", 1) if "." in config["kill_at"] else ("", config["kill_at"])
target = {"": guestcommand, "_Transfers": guestcommand._Transfers, "TrustStore": truststore.TrustStore}[owner]

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(target, attribute, killed)
vc = connect(config["url"], config["user"], os.environ["CHILD_VC_PASSWORD"], pinned_context(config["thumbprint"]))
guest = guestcommand.GuestLogin(config["guest_user"], os.environ["CHILD_GUEST_PASSWORD"])
guestcommand.trust_by_guest_command(vc, vc.find_vm(config["name"]), config["name"], config["address"], guest=guest,
                                    store=truststore.TrustStore(Path(config["store"])))
"""


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_requester_killed_at_each_step_leaves_nothing_pinned_and_the_rerun_finishes(lab, tmp_path, kill_at):
    import os
    import signal
    import subprocess
    import sys

    datacenter, manager, _, secrets = lab
    name = f"gc-k{KILL_POINTS.index(kill_at)}"
    guest = login(secrets, name)
    store = TrustStore(tmp_path / "store")
    store.identity()
    config = tmp_path / "child.json"
    config.write_text(json.dumps({
        "kill_at": kill_at, "url": datacenter.vcsim.url, "user": datacenter.vcsim.user,
        "thumbprint": datacenter.vcsim.thumbprint_sha256, "guest_user": guest.user, "name": name,
        "address": manager.appliance(name).host, "store": str(tmp_path / "store")}))
    env = dict(os.environ, CHILD_VC_PASSWORD=datacenter.vcsim.password, CHILD_GUEST_PASSWORD=guest.password)
    child = subprocess.run([sys.executable, "-c", CHILD, str(config)], env=env, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    with pytest.raises(UnknownAppliance):
        store.get(name)  # killed before the pin: nothing pinned
    # Killed before authorize ran: nothing authorized; after: authorized, not pinned, and the
    # re-run completes it.
    authorized = store.identity().pin in authorized_pins(manager, name)
    assert authorized == (kill_at != "_Transfers.put") or kill_at == "_wait_exit"
    # Killed while the temporary directory was in use, it stays (a re-run makes its own); after,
    # it was removed before the pinned call.
    assert bool(temp_dirs_left(manager, name)) == (kill_at in KILL_POINTS[:3])
    report = call(datacenter, manager, name, store, guest)  # the same call again finishes the job
    assert store.get(name).pin == report.pin and store.identity().pin in authorized_pins(manager, name)


def test_a_vm_whose_guest_operations_are_unavailable_is_one_line_and_nothing_is_pinned(lab, tmp_path):
    datacenter, _, _, _ = lab
    store = TrustStore(tmp_path / "store")
    vm = datacenter.vc.find_vm(TEMPLATE)
    # Tools run, but no guest agent answers guest operations in this VM (as with guest operations
    # disabled in VMware Tools): vCenter answers GuestOperationsUnavailable.
    datacenter.vcsim.lab.report_guest_ip(datacenter.vc.moid(vm), "127.0.0.250")
    with pytest.raises(guestcommand.GuestOperationsUnavailable) as refused:
        trust_by_guest_command(datacenter.vc, vm, "template", "127.0.0.250", guest=GuestLogin(GUEST_ACCOUNT, "x" * 20),
                               store=store, tools_timeout=5.0)
    assert refused.value.code == "guest_ops_unavailable" and "\n" not in str(refused.value)
    with pytest.raises(UnknownAppliance):
        store.get("template")


def test_pin_cert_through_vcenter_runs_the_guest_command_way_then_the_injected_way_and_says_the_channel(
        lab, tmp_path, monkeypatch, capsys):
    from firsttrust.requester.cli import main

    datacenter, manager, _, secrets = lab
    name = "gc-3"  # nobody authorized yet
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    for key, value in datacenter.vcsim.credentials_env().items():
        monkeypatch.setenv(key, value)
    through = ["--vcenter", datacenter.vcsim.url, "--thumbprint", datacenter.vcsim.thumbprint_sha256]
    assert main(["pin-cert", name, *through, "--embodiment", "guest-command"]) == 2  # no guest credentials
    assert "--guest-credentials" in capsys.readouterr().err
    assert main(["pin-cert", name, *through, "--embodiment", "guest-command",
                 "--guest-credentials", str(secrets / f"{name}.guest.json")]) == 0
    out = capsys.readouterr().out
    record = TrustStore(tmp_path / "home").get(name)
    assert record.embodiment == "guest-command" and record.pin in out and "guest file transfer" in out
    # Now that this requester is authorized, the injected-certificate way through vCenter: the
    # certificate by file transfer with guest credentials, else read back from guestinfo.
    path = str(manager.appliance(name).directory / "appliance.crt")
    assert main(["pin-cert", name, *through, "--guest-credentials", str(secrets / f"{name}.guest.json"),
                 "--guest-cert-path", path]) == 0
    assert "by guest file transfer" in capsys.readouterr().out
    assert main(["pin-cert", name, *through]) == 0
    assert "guestinfo read-back" in capsys.readouterr().out
    assert TrustStore(tmp_path / "home").get(name).pin == record.pin
