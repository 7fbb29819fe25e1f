"""The guestinfo scrub is verified by reading the keys back (agent/provision.py _scrub): a
hypervisor channel that answers "ok" to the scrub and keeps the value is reported as a failed
scrub, in state.json and in the audit log, never as done."""

from __future__ import annotations

import os

import pytest

from firsttrust.agent.config import load_config
from firsttrust.agent.provision import provision
from firsttrust.agent.sources.deploy import read_deploy_config
from firsttrust.agent.sources.guestinfo import GuestInfo
from firsttrust.agent.sources.ovfenv import serialize_ovf_env
from firsttrust.lab import vmware_emulator

SEC_B_KEY = "guestinfo.firsttrust.sec-b"


@pytest.fixture
def vm(tmp_path, monkeypatch):
    path = tmp_path / "vm.json"
    vmware_emulator.create_vm(path, {})
    monkeypatch.setenv(vmware_emulator.ENV_VAR, str(path))
    monkeypatch.setenv("PATH", vmware_emulator.guest_tools_path(os.environ["PATH"]))
    return path


class KeepsOne(GuestInfo):
    """A channel whose scrub of `kept` reports success and changes nothing."""

    def __init__(self, kept: str) -> None:
        super().__init__(timeout=5, attempts=1, backoff=0)
        self.kept = kept

    def set(self, key: str, value: str) -> None:
        if key == self.kept:
            return
        super().set(key, value)


def test_a_guestinfo_key_still_set_after_the_scrub_is_a_failed_scrub(tmp_path, vm, secrets, capsys):
    vmware_emulator.create_vm(vm, {"guestinfo.firsttrust.sec-a": secrets.sec_a, SEC_B_KEY: secrets.sec_b})
    deploy = read_deploy_config("vmware", guestinfo=GuestInfo(timeout=5, attempts=1))
    report = provision(load_config(None, tmp_path / "s"), deploy, guestinfo=KeepsOne(SEC_B_KEY),
                       set_account_password=False)
    assert report.state.scrub == {"result": "failed", "detail": f"{SEC_B_KEY} still set after scrubbing"}
    assert vmware_emulator.read_vm(vm)["guestinfo"][SEC_B_KEY] == secrets.sec_b  # really still there
    assert "event=scrub-failed" in capsys.readouterr().err


def test_an_ovf_environment_still_holding_our_properties_is_a_failed_scrub(tmp_path, vm, secrets, capsys):
    document = serialize_ovf_env({"firsttrust.sec-a": secrets.sec_a, "firsttrust.sec-b": secrets.sec_b}).decode()
    vmware_emulator.create_vm(vm, {"guestinfo.ovfEnv": document})
    deploy = read_deploy_config("vmware", guestinfo=GuestInfo(timeout=5, attempts=1))
    report = provision(load_config(None, tmp_path / "s"), deploy, guestinfo=KeepsOne("guestinfo.ovfEnv"),
                       set_account_password=False)
    assert report.state.scrub["result"] == "failed"
    assert "event=scrub-failed" in capsys.readouterr().err


def test_a_scrub_that_took_is_done(tmp_path, vm, secrets):
    vmware_emulator.create_vm(vm, {"guestinfo.firsttrust.sec-a": secrets.sec_a, SEC_B_KEY: secrets.sec_b})
    deploy = read_deploy_config("vmware", guestinfo=GuestInfo(timeout=5, attempts=1))
    report = provision(load_config(None, tmp_path / "s"), deploy, guestinfo=GuestInfo(timeout=5, attempts=1),
                       set_account_password=False)
    assert report.state.scrub["result"] == "done"


def test_an_ovf_environment_still_holding_the_guest_password_alone_is_a_failed_scrub(tmp_path, vm, capsys):
    """The guest-command way's environment holds no SEC-A or SEC-B: the read-back looks for every
    firsttrust property, not for the secrets' names (it found the guest password "done")."""
    from firsttrust.credentials import EnrollmentSecrets

    password = EnrollmentSecrets.generate().sec_a
    document = serialize_ovf_env({"firsttrust.guest-password": password, "vendor.hostname": "app-01"}).decode()
    vmware_emulator.create_vm(vm, {"guestinfo.ovfEnv": document})
    deploy = read_deploy_config("vmware", guestinfo=GuestInfo(timeout=5, attempts=1))
    report = provision(load_config(None, tmp_path / "s"), deploy, guestinfo=KeepsOne("guestinfo.ovfEnv"),
                       set_account_password=False)
    assert report.state.scrub["result"] == "failed"
    assert password in vmware_emulator.read_vm(vm)["guestinfo"]["guestinfo.ovfEnv"]  # really still there
    assert "event=scrub-failed" in capsys.readouterr().err


def test_an_ovf_environment_scrubbed_of_our_properties_keeps_the_vendors_and_is_done(tmp_path, vm, secrets):
    document = serialize_ovf_env({"firsttrust.sec-a": secrets.sec_a, "firsttrust.sec-b": secrets.sec_b,
                                  "vendor.note": "firsttrust.sec-a is ours"}).decode()
    vmware_emulator.create_vm(vm, {"guestinfo.ovfEnv": document})
    deploy = read_deploy_config("vmware", guestinfo=GuestInfo(timeout=5, attempts=1))
    report = provision(load_config(None, tmp_path / "s"), deploy, guestinfo=GuestInfo(timeout=5, attempts=1),
                       set_account_password=False)
    assert report.state.scrub["result"] == "done"
    assert "firsttrust.sec-a is ours" in vmware_emulator.read_vm(vm)["guestinfo"]["guestinfo.ovfEnv"]
