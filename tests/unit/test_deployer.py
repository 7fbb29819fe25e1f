"""The deployer's orchestration against a fake vCenter: failures stay per appliance, ESXi's delete
semantics read back as "removed", server messages are redacted, usage errors touch nothing."""

from __future__ import annotations

import json
import stat
from types import SimpleNamespace

import pytest

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.requester import cli, deployer, vsphere
from firsttrust.requester.deployspec import secrets_to_json
from firsttrust.requester.deployer import CredentialsError, VcenterAccess, deploy
from firsttrust.requester.deployplan import REMOVED, SCRUB_KEYS, InvalidDeployPlan, plan_deployment
from firsttrust.requester.library import Outcome
from firsttrust.requester.vsphere import VsphereError

URL = "https://vc.example/sdk"


class FakeVcenter:
    """ESXi semantics: setting a key to "" deletes it. `fail` maps a VM name to the step that fails."""

    def __init__(self, fail: dict[str, str] | None = None, echo_secret: bool = False) -> None:
        self.fail, self.echo_secret = fail or {}, echo_secret
        self.configs: dict[str, list[tuple[str, str]]] = {}
        self.powered: set[str] = set()
        self.clones: list[str] = []
        self.closed = False

    def virtual_machines(self):
        return {"tmpl": "tmpl", "existing": "existing", **{name: name for name in self.configs}}

    def clone(self, template, name, extra_config, placement=None, vapp_values=()):
        if self.fail.get(name) == "clone":
            secret = dict(extra_config)[SCRUB_KEYS[0]] if self.echo_secret else "x"
            raise VsphereError(f"cloning {name}: InvalidArgument: bad value {secret}")
        self.configs[name] = [] if self.fail.get(name) == "extra_config" else list(extra_config)
        self.clones.append(name)
        return name

    def moid(self, vm):
        return f"vm-{vm}"

    def extra_config(self, vm):
        return list(self.configs.get(vm, []))

    def power_on(self, vm):
        self.powered.add(vm)

    def power_state(self, vm):
        return "poweredOn" if vm in self.powered else "poweredOff"

    def wait_for_ip(self, vm, timeout):
        return "10.0.0.1"

    def set_extra_config(self, vm, entries):
        if self.fail.get(vm) == "scrub":
            raise VsphereError("reconfiguring: TaskInProgress: busy", code="vsphere")
        for key, value in entries:
            self.configs[vm] = [(k, v) for k, v in self.configs[vm] if k != key]
            if value:
                self.configs[vm].append((key, value))

    def close(self):
        self.closed = True

    def interrupt(self):
        self.interrupted = True


@pytest.fixture
def fake(monkeypatch):
    vcenter = FakeVcenter()
    monkeypatch.setattr(vsphere, "connect", lambda *args: vcenter)
    return vcenter


def access():
    return VcenterAccess(URL, None, "user", "password")


def test_one_failed_clone_does_not_stop_the_others(fake, tmp_path):
    fake.fail = {"a-02": "clone", "a-03": "extra_config"}
    plan = plan_deployment(URL, "tmpl", ["a-01", "a-02", "a-03"], enroll=False)
    reports = deploy(plan, access(), tmp_path)
    assert [(r.status, r.failed_step) for r in reports] == [
        ("deployed", None), ("failed", "clone"), ("failed", "verify extraConfig")]
    assert reports[2].error.code == "extra_config"
    # every secrets file was written before its clone: a failed clone's secrets are not lost
    for name in ("a-01", "a-02", "a-03"):
        assert stat.S_IMODE((tmp_path / f"{name}.json").stat().st_mode) == 0o600
    assert fake.closed


def test_a_server_message_that_echoes_a_secret_is_redacted(fake, tmp_path):
    fake.fail, fake.echo_secret = {"a-01": "clone"}, True
    plan = plan_deployment(URL, "tmpl", ["a-01"], enroll=False)
    report = deploy(plan, access(), tmp_path)[0]
    assert plan.appliances[0].secrets.sec_a not in str(report.error)
    assert "<secret>" in str(report.error)


def enrolled(monkeypatch):
    async def fake_enroll_many(targets, **kwargs):
        return [Outcome(t, SimpleNamespace(pin=f"sha256:{t.name}"), None, 0.01) for t in targets]
    monkeypatch.setattr(deployer, "enroll_many", fake_enroll_many)


def test_esxi_semantics_read_back_as_removed(fake, tmp_path, monkeypatch):
    enrolled(monkeypatch)
    reports = deploy(plan_deployment(URL, "tmpl", ["a-01"]), access(), tmp_path)
    assert reports[0].status == "enrolled" and reports[0].scrub == {key: REMOVED for key in SCRUB_KEYS}
    assert not any(key in SCRUB_KEYS for key, _ in fake.configs["a-01"])
    assert reports[0].to_json()["scrub"] == {key: "removed" for key in SCRUB_KEYS}


def test_a_failed_removal_is_reported_and_the_appliance_stays_enrolled(fake, tmp_path, monkeypatch):
    enrolled(monkeypatch)
    fake.fail = {"a-01": "scrub"}
    report = deploy(plan_deployment(URL, "tmpl", ["a-01"]), access(), tmp_path)[0]
    assert report.ok and report.status == "enrolled"
    assert report.scrub == {key: "not removed (vsphere)" for key in SCRUB_KEYS}


def test_a_vm_or_a_file_that_is_not_this_deployments_stops_before_anything_is_made(fake, tmp_path):
    with pytest.raises(InvalidDeployPlan, match="exists already and is not this deployment's"):
        deploy(plan_deployment(URL, "tmpl", ["a-01", "existing"], enroll=False), access(), tmp_path)
    assert list(tmp_path.iterdir()) == [] and fake.configs == {}
    (tmp_path / "a-02.json").write_text("{}")
    with pytest.raises(InvalidDeployPlan, match="exists and is not a secrets file"):
        deploy(plan_deployment(URL, "tmpl", ["a-01", "a-02"], enroll=False), access(), tmp_path)
    (tmp_path / "a-02.json").write_bytes(secrets_to_json(EnrollmentSecrets.generate()))  # from before ids
    with pytest.raises(InvalidDeployPlan, match="has no deployment id"):
        deploy(plan_deployment(URL, "tmpl", ["a-01", "a-02"], enroll=False), access(), tmp_path)
    with pytest.raises(VsphereError, match="no virtual machine or template"):
        deploy(plan_deployment(URL, "nope", ["a-01"], enroll=False), access(), tmp_path)
    assert fake.configs == {}


# --- credentials -------------------------------------------------------------------------------------


def test_credentials_from_the_environment_or_a_private_file(tmp_path):
    environ = {"FIRSTTRUST_VSPHERE_USER": "u", "FIRSTTRUST_VSPHERE_PASSWORD": "pw-not-shown"}
    loaded = VcenterAccess.load(URL, None, environ=environ)
    assert (loaded.user, loaded.password) == ("u", "pw-not-shown") and "pw-not-shown" not in repr(loaded)
    with pytest.raises(CredentialsError):
        VcenterAccess.load(URL, None, environ={"FIRSTTRUST_VSPHERE_USER": "u"})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"user": "u2", "password": "p2"}))
    path.chmod(0o600)
    assert VcenterAccess.load(URL, None, str(path), environ={}).user == "u2"
    for bad in ('{"user": "u"}', "[]", "not json", '{"user": "u", "password": ""}',
                '{"user": "u", "password": "p1", "password": "p2"}'):  # which one was meant? not ours to pick
        path.write_text(bad)
        with pytest.raises(CredentialsError):
            VcenterAccess.load(URL, None, str(path), environ={})


# --- the command's usage errors: exit 2, nothing contacted --------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--template", "t", "--name", "a", "--secrets-dir", "."], "whom to trust at https://vc.example/sdk? give --thumbprint TP or --ca-file FILE"),
    (["--thumbprint", "12:34", "--template", "t", "--name", "a", "--secrets-dir", "."], "thumbprint is the SHA-1"),
    (["--thumbprint", "ab" * 20, "--template", "t", "--name-prefix", "a", "--secrets-dir", "."], "count"),
    (["--thumbprint", "ab" * 20, "--template", "t", "--name", "a", "--secrets-dir", ".", "--concurrency", "0"],
     "--concurrency"),
])
def test_usage_errors_exit_2_before_any_connection(args, message, capsys, monkeypatch):
    monkeypatch.setattr(vsphere, "connect", lambda *a: pytest.fail("connected"))
    code = cli.main(["deploy", "--vcenter", URL, *args])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and message in err and err.count("\n") == 1


def test_http_is_refused_for_vcenter(capsys):
    code = cli.main(["deploy", "--vcenter", "http://vc.example/sdk", "--thumbprint", "ab" * 20, "--template", "t",
                     "--name", "a", "--secrets-dir", "."])
    assert code == cli.EXIT_USAGE and "https" in capsys.readouterr().err
