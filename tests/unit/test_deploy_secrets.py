"""The deployer's secrets (requester/deployer.py): a vCenter credentials file readable by
anyone but its owner (group included) is refused before it is parsed; deploy's progress lines,
which go to stderr and into CI logs, carry redacted errors, never a server message that echoes
SEC-A or SEC-B, at every step that reports one (bring-up, enroll, scrub)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from firsttrust.errors import FirsttrustError
from firsttrust.requester import deployer, vsphere
from firsttrust.requester.deployer import CredentialsError, VcenterAccess, deploy
from firsttrust.requester.deployplan import SCRUB_KEYS, plan_deployment
from firsttrust.requester.library import Outcome
from firsttrust.requester.vsphere import VsphereError


@pytest.mark.parametrize("mode", [0o640, 0o620, 0o610, 0o604, 0o602, 0o601, 0o660, 0o644])
def test_a_credentials_file_accessible_to_group_or_others_is_refused(tmp_path, mode):
    path = tmp_path / "vc.json"
    path.write_text(json.dumps({"user": "u", "password": "pw-not-shown"}))
    path.chmod(mode)
    with pytest.raises(CredentialsError, match="accessible to group or others") as caught:
        VcenterAccess.load(URL, None, str(path), environ={})
    assert "pw-not-shown" not in str(caught.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_credentials_file_only_its_owner_can_read_is_accepted(tmp_path, mode):
    path = tmp_path / "vc.json"
    path.write_text(json.dumps({"user": "u", "password": "p"}))
    path.chmod(mode)
    assert VcenterAccess.load(URL, None, str(path), environ={}).password == "p"


URL = "https://vc.example/sdk"


def access():
    return VcenterAccess(URL, None, "user", "password")


class Echoing:
    """A vCenter (ESXi semantics: setting a key to "" deletes it) whose every error message
    quotes what it was sent, secrets included. `fail` maps a VM name to the step that fails."""

    def __init__(self) -> None:
        self.fail: dict[str, str] = {}
        self.configs: dict[str, list[tuple[str, str]]] = {}
        self.secret = ""

    def virtual_machines(self):
        return {"tmpl": "tmpl", **{name: name for name in self.configs}}

    def clone(self, template, name, extra_config, placement=None, vapp_values=()):
        if self.fail.get(name) == "clone":
            raise VsphereError(f"cloning {name}: InvalidArgument: bad value {dict(extra_config)[SCRUB_KEYS[0]]}")
        self.configs[name] = list(extra_config)
        return name

    def moid(self, vm):
        return f"vm-{vm}"

    def interrupt(self):  # converge's deployer hands it to the stop signal (requester/interrupts.py)
        pass

    def extra_config(self, vm):
        return list(self.configs[vm])

    def power_on(self, vm):
        self.powered = getattr(self, "powered", set()) | {vm}

    def power_state(self, vm):
        return "poweredOn" if vm in getattr(self, "powered", set()) else "poweredOff"

    def interrupt(self):
        pass

    def wait_for_ip(self, vm, timeout):
        return "10.0.0.1"

    def set_extra_config(self, vm, entries):
        if self.fail.get(vm) == "scrub":
            raise VsphereError(f"reconfiguring: InvalidArgument: {self.secret}", code="vsphere")
        for key, value in entries:
            self.configs[vm] = [(k, v) for k, v in self.configs[vm] if k != key] + ([(key, value)] if value else [])

    def close(self):
        pass


@pytest.fixture
def lines(monkeypatch):
    vcenter = Echoing()
    monkeypatch.setattr(vsphere, "connect", lambda *args: vcenter)
    seen: list[str] = []
    return SimpleNamespace(vcenter=vcenter, seen=seen, progress=lambda name, event: seen.append(f"{name}: {event}"))


def assert_redacted(lines, plan, failed_line: str):
    secrets = [value for appliance in plan.appliances for value in appliance.secret_values]
    assert any(failed_line in line and "<secret>" in line for line in lines.seen), lines.seen
    for line in lines.seen:
        assert not any(secret in line for secret in secrets), line


def test_a_failed_bring_up_progress_line_is_redacted(lines, tmp_path):
    lines.vcenter.fail = {"a-01": "clone"}
    plan = plan_deployment(URL, "tmpl", ["a-01"], enroll=False)
    deploy(plan, access(), tmp_path, progress=lines.progress)
    assert_redacted(lines, plan, "failed at clone")


def test_a_failed_enrollment_progress_line_is_redacted(lines, tmp_path, monkeypatch):
    async def echoing_enroll_many(targets, **kwargs):
        return [Outcome(t, None, FirsttrustError(f"refused: {t.secrets.sec_a} / {t.secrets.sec_b}", code="x"), 0.01)
                for t in targets]
    monkeypatch.setattr(deployer, "enroll_many", echoing_enroll_many)
    plan = plan_deployment(URL, "tmpl", ["a-01"])
    deploy(plan, access(), tmp_path, progress=lines.progress)
    assert_redacted(lines, plan, "failed at enroll")


def test_a_failed_scrub_progress_line_is_redacted(lines, tmp_path, monkeypatch):
    async def enrolled(targets, **kwargs):
        return [Outcome(t, SimpleNamespace(pin=f"sha256:{t.name}"), None, 0.01) for t in targets]
    monkeypatch.setattr(deployer, "enroll_many", enrolled)
    plan = plan_deployment(URL, "tmpl", ["a-01"])
    lines.vcenter.fail, lines.vcenter.secret = {"a-01": "scrub"}, plan.appliances[0].secrets.sec_b
    deploy(plan, access(), tmp_path, progress=lines.progress)
    assert_redacted(lines, plan, "secret keys not removed")
