"""requester/converge.py through deployer.deploy with a fake vCenter: a re-run finishes the job,
creates nothing twice, and acts only on VMs carrying the secrets file's deployment id."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_deployer import URL, FakeVcenter, access  # noqa: F401 - fixtures and helpers

from firsttrust.requester import converge, deployer, vsphere
from firsttrust.requester.deployer import deploy
from firsttrust.requester.deploymentid import DEPLOYMENT_ID_KEY
from firsttrust.requester.deployplan import plan_deployment
from firsttrust.requester.interrupts import StopSignal
from firsttrust.requester.library import Outcome
from firsttrust.requester.truststore import TrustStore


@pytest.fixture
def fake(monkeypatch):
    fake = FakeVcenter()
    monkeypatch.setattr(vsphere, "connect", lambda *args: fake)
    return fake


def plan(names, enroll=False):
    return plan_deployment(URL, "tmpl", names, enroll=enroll)


def test_a_rerun_creates_only_what_is_missing_and_says_per_appliance_what_it_did(fake, tmp_path):
    fake.fail = {"a-02": "clone"}
    first = deploy(plan(["a-01", "a-02", "a-03"]), access(), tmp_path)
    assert [r.status for r in first] == ["deployed", "failed", "deployed"]
    fake.fail = {}
    again = deploy(plan(["a-01", "a-02", "a-03"]), access(), tmp_path)  # the same command: fresh secrets planned
    assert [(r.action, r.status) for r in again] == [("resumed", "deployed"), ("created", "deployed"),
                                                     ("resumed", "deployed")]
    assert sorted(fake.clones) == ["a-01", "a-02", "a-03"], "nothing created twice"
    for name in ("a-01", "a-02", "a-03"):  # the VM carries the id its secrets file holds
        document = json.loads((tmp_path / f"{name}.json").read_text())
        assert dict(fake.configs[name])[DEPLOYMENT_ID_KEY] == document["deployment_id"]


def test_a_rerun_after_an_interrupt_powers_on_what_was_only_created(fake, tmp_path, monkeypatch):
    stop = StopSignal()
    original = fake.power_on
    monkeypatch.setattr(fake, "power_on", lambda vm: (original(vm), stop.stop()))  # stopped after one power-on
    reports = deploy(plan(["b-01", "b-02", "b-03"]), access(), tmp_path, concurrency=1, stop=stop)
    assert [r.status for r in reports] == ["deployed", "interrupted", "interrupted"]
    assert [r.failed_step for r in reports[1:]] == ["power on", "power on"]
    monkeypatch.setattr(fake, "power_on", original)
    again = deploy(plan(["b-01", "b-02", "b-03"]), access(), tmp_path)
    assert [r.status for r in again] == ["deployed"] * 3 and fake.powered == {"b-01", "b-02", "b-03"}
    assert sorted(fake.clones) == ["b-01", "b-02", "b-03"]


def test_an_enrolled_and_scrubbed_appliance_is_unchanged_and_touched_not_at_all(fake, tmp_path, monkeypatch):
    home = TrustStore(tmp_path / "home")

    async def fake_enroll_many(targets, **kwargs):
        return [Outcome(t, SimpleNamespace(pin=f"sha256:{t.name}"), None, 0.01) for t in targets]
    monkeypatch.setattr(deployer, "enroll_many", fake_enroll_many)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    deploy(plan(["c-01"], enroll=True), access(), secrets_dir, store=home)
    deployment_id = json.loads((secrets_dir / "c-01.json").read_text())["deployment_id"]
    monkeypatch.setattr(converge, "_pinned", lambda store, name, wanted: "sha256:c-01" if wanted == deployment_id
                        else None)
    fake.set_extra_config = lambda vm, entries: pytest.fail("an unchanged appliance is reconfigured")
    again = deploy(plan(["c-01"], enroll=True), access(), secrets_dir, store=home)
    assert [(r.action, r.status, r.pin) for r in again] == [("unchanged", "already-pinned", "sha256:c-01")]


def test_a_vm_of_the_name_with_another_deployment_id_is_left_alone(fake, tmp_path):
    deploy(plan(["d-01"]), access(), tmp_path)
    fake.configs["d-01"] = [(k, "fd-0000000000000000" if k == DEPLOYMENT_ID_KEY else v)
                            for k, v in fake.configs["d-01"]]
    with pytest.raises(converge.VmNameTaken, match="not this deployment's"):
        deploy(plan(["d-01"]), access(), tmp_path)


def test_check_changes_nothing_and_says_what_a_run_would_do(fake, tmp_path):
    deploy(plan(["e-01"]), access(), tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    reports = deploy(plan(["e-01", "e-02"]), access(), tmp_path, check=True)
    assert [(r.action, r.status) for r in reports] == [("resumed", "checked"), ("created", "checked")]
    assert sorted(p.name for p in tmp_path.iterdir()) == before and fake.clones == ["e-01"]


def test_destroy_deletes_only_a_vm_carrying_the_secrets_files_id_and_then_forgets_it(fake, tmp_path):
    deploy(plan(["f-01", "f-02"]), access(), tmp_path)
    deleted = []
    fake.moid = lambda vm: f"vm-{vm.name}"
    fake.wait_task = lambda task, what: deleted.append(what)
    vms = {name: SimpleNamespace(name=name, PowerOffVM_Task=lambda: "t", Destroy_Task=lambda: "t")
           for name in ("f-01", "f-02")}
    fake.extra_config = lambda vm: FakeVcenter.extra_config(fake, vm.name)
    fake.power_state = lambda vm: "poweredOn"
    fake.configs["f-02"] = [(k, v) for k, v in fake.configs["f-02"] if k != DEPLOYMENT_ID_KEY]
    store = TrustStore(tmp_path / "home")
    done = converge.destroy_one(fake, vms, "f-01", tmp_path, store)
    assert deleted == ["powering off f-01", "deleting f-01"] and not (tmp_path / "f-01.json").exists()
    assert done.vm == "vm-f-01" and done.secrets_file
    with pytest.raises(converge.NotOurs, match="carries no deployment id"):
        converge.destroy_one(fake, vms, "f-02", tmp_path, store)
    assert (tmp_path / "f-02.json").exists() and deleted == ["powering off f-01", "deleting f-01"]


def test_a_secrets_dir_that_is_a_file_is_said_to_be_one(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(converge.InvalidDeployPlan, match="is not a directory"):
        converge.prepare(plan(["g-01"]), tmp_path / "file")
    with pytest.raises(converge.InvalidDeployPlan, match="does not exist"):
        converge.prepare(plan(["g-01"]), tmp_path / "missing")
