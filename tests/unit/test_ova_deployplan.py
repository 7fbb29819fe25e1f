"""`firsttrust deploy --ova` without a server: the plan, the CLI's refusals, the OVA check, how the
properties are verified (write-only ones by id and type) and scrubbed, what is refused before
anything is created, and the requests the vApp-property branch sends. The same branch against the
lab's strict vCenter: tests/integration/test_ova_deploy.py."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from types import SimpleNamespace

import pytest

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import SEC_A, SEC_B
from firsttrust.requester import cli
from firsttrust.requester.deployer import scrub_imported
from firsttrust.requester.deployplan import (
    CLEARED_WRITE_ONLY,
    NOT_REMOVED,
    REMOVED,
    VERIFIED_VAPP,
    InvalidDeployPlan,
    appliance_names,
    check_descriptor,
    check_import_spec,
    plan_deployment,
    steps,
    vapp_scrub_status,
    verify_properties,
)
from firsttrust.requester.deployspec import HARDENING_VMX_SETTINGS
from firsttrust.requester.ovafile import check_ova

URL = "https://vc.example/sdk"
SECRETS = EnrollmentSecrets.generate()


def make_ova(path, members=(("a.ovf", b"<Envelope/>"), ("a-disk1.vmdk", b"\0" * 4096))):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- the plan ----------------------------------------------------------------------------------------


def test_an_ova_plan_maps_the_unprefixed_properties_and_adds_only_the_deployment_id_and_the_hardening_to_extra_config():
    plan = plan_deployment(URL, None, ["a-01"], ova="/x/appliance.ova", generate=lambda: SECRETS)
    (appliance,) = plan.appliances
    assert dict(appliance.properties) == {SEC_A: SECRETS.sec_a, SEC_B: SECRETS.sec_b}
    assert appliance.extra_config == (("firsttrust.deploymentId", appliance.deployment_id),) + HARDENING_VMX_SETTINGS
    assert plan.scrub_keys == (SEC_A, SEC_B)


def test_the_dry_run_of_an_ova_plan_names_the_ova_and_the_import_step_and_hides_the_secrets():
    plan = plan_deployment(URL, None, ["a-01"], ova="/x/appliance.ova", generate=lambda: SECRETS)
    described = plan.describe()
    text = json.dumps(described)
    assert described["ova"] == "/x/appliance.ova" and "template" not in described
    assert "import OVA with vApp properties" in described["steps"] and "clone with extraConfig" not in text
    assert described["appliances"][0]["vapp_properties"] == {SEC_A: "<secret>", SEC_B: "<secret>"}
    assert SECRETS.sec_a not in text and SECRETS.sec_b not in text
    assert described["scrub_after_enroll"] == [SEC_A, SEC_B]


def test_a_template_plan_still_clones():
    described = plan_deployment(URL, "tmpl", ["a-01"]).describe()
    assert described["template"] == "tmpl" and "ova" not in described
    assert steps(True)[1] == "clone with extraConfig" and steps(True, ova=True)[1] == "import OVA with vApp properties"


@pytest.mark.parametrize("template, ova", [("tmpl", "/x.ova"), (None, None), (None, "")])
def test_a_plan_needs_exactly_one_of_template_and_ova(template, ova):
    with pytest.raises(InvalidDeployPlan):
        plan_deployment(URL, template, ["a-01"], ova=ova)


# --- the OVA file --------------------------------------------------------------------------------


def test_a_well_formed_ova_passes_the_check_with_its_descriptor(tmp_path):
    ova = check_ova(str(make_ova(tmp_path / "a.ova")))
    assert ova.descriptor == "<Envelope/>" and ova.members == {"a.ovf": 11, "a-disk1.vmdk": 4096}


def bad_ovas(tmp_path):
    yield "missing", tmp_path / "nope.ova", "cannot read OVA"
    (tmp_path / "dir.ova").mkdir()
    yield "a directory", tmp_path / "dir.ova", "not a regular file"
    (tmp_path / "small.ova").write_bytes(b"x" * 10)
    yield "too small", tmp_path / "small.ova", "too small"
    (tmp_path / "text.ova").write_bytes(b"not a tar at all\n" * 200)
    yield "not a tar", tmp_path / "text.ova", "not an uncompressed tar"
    plain = make_ova(tmp_path / "plain.ova", [("a.ovf", b"<E/>"), ("a-disk1.vmdk", os.urandom(8192))])
    (tmp_path / "gz.ova").write_bytes(gzip.compress(plain.read_bytes()))
    yield "compressed", tmp_path / "gz.ova", "not an uncompressed tar"
    yield "disk first", make_ova(tmp_path / "order.ova", [("a-disk1.vmdk", b"\0" * 4096), ("a.ovf", b"<E/>")]), \
        "first member is not an .ovf"
    yield "huge descriptor", make_ova(tmp_path / "huge.ova", [("a.ovf", b" " * (2 << 20))]), "the descriptor is"
    yield "not utf-8", make_ova(tmp_path / "latin.ova", [("a.ovf", b"\xff\xfe" * 1024)]), "not UTF-8"


def test_an_unusable_ova_is_refused_in_one_line_naming_it(tmp_path):
    for what, path, message in bad_ovas(tmp_path):
        with pytest.raises(InvalidDeployPlan) as caught:
            check_ova(str(path))
        text = str(caught.value)
        assert message in text and str(path) in text and "\n" not in text, what


# --- the CLI -----------------------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["deploy", "--vcenter", URL, "--thumbprint", "AB" * 20, "--name", "a-01", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_refuses_both_or_neither_of_template_and_ova(capsys, tmp_path):
    ova = str(make_ova(tmp_path / "a.ova"))
    code, _, err = run_cli(capsys, "--template", "t", "--ova", ova, "--secrets-dir", str(tmp_path), "--dry-run")
    assert code == 2 and "not allowed with argument" in err
    code, _, err = run_cli(capsys, "--secrets-dir", str(tmp_path), "--dry-run")
    assert code == 2 and "--template" in err and "--ova" in err and "required" in err


def test_the_cli_refuses_a_bad_ova_before_anything_with_exit_2_and_one_line(capsys, tmp_path):
    (tmp_path / "text.ova").write_bytes(b"not a tar at all\n" * 200)
    for path in (tmp_path / "nope.ova", tmp_path / "text.ova"):
        code, out, err = run_cli(capsys, "--ova", str(path), "--secrets-dir", str(tmp_path), "--dry-run")
        assert code == 2 and out == "" and err.startswith("firsttrust: error: ") and str(path) in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_cli_dry_run_with_an_ova_prints_the_import_plan(capsys, tmp_path):
    ova = str(make_ova(tmp_path / "a.ova"))
    code, out, _ = run_cli(capsys, "--ova", ova, "--secrets-dir", str(tmp_path), "--dry-run")
    assert code == 0 and json.loads(out)["ova"] == ova


def test_removing_the_vapp_config_goes_with_ova_only(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--template", "t", "--remove-vapp-config", "--secrets-dir", str(tmp_path),
                           "--dry-run")
    assert code == 2 and "--remove-vapp-config goes with --ova" in err


def test_the_dry_run_shows_the_placement_asked_for(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "--template", "t", "--pool", "prod/c1", "--datastore", "ds1",
                           "--secrets-dir", str(tmp_path), "--dry-run")
    assert code == 0 and json.loads(out)["placement"] == {"pool": "prod/c1", "datastore": "ds1"}


# --- where the properties are held ---------------------------------------------------------------


PLANNED = ((SEC_A, "a-value"), (SEC_B, "b-value"), ("firsttrust.enroll-window", "2d"))
WRITE_ONLY = {SEC_A: ("password", ""), SEC_B: ("password", ""), "firsttrust.enroll-window": ("string", "2d")}


def test_write_only_properties_are_verified_by_id_and_type_and_the_others_by_value():
    # vCenter reads a password property back as "" (VAppPropertyInfo.type): that is verified
    assert verify_properties(WRITE_ONLY, PLANNED) == (VERIFIED_VAPP, [])
    assert verify_properties({**WRITE_ONLY, "firsttrust.enroll-window": ("string", "1h")}, PLANNED)[1] == [
        "firsttrust.enroll-window"]
    assert verify_properties({SEC_A: ("password", "")}, PLANNED)[1] == [SEC_B, "firsttrust.enroll-window"]


def test_a_secret_that_the_server_would_show_is_not_verified():
    held = {**WRITE_ONLY, SEC_B: ("string", "b-value")}  # the right value, but readable by any API reader
    assert verify_properties(held, PLANNED)[1] == [f"{SEC_B} (type 'string', not write-only)"]


def test_the_scrub_of_a_write_only_property_is_reported_as_what_it_is():
    assert vapp_scrub_status(WRITE_ONLY) == {SEC_A: CLEARED_WRITE_ONLY, SEC_B: CLEARED_WRITE_ONLY}
    readable = {SEC_A: ("string", ""), SEC_B: ("string", "still")}
    assert vapp_scrub_status(readable) == {SEC_A: REMOVED, SEC_B: NOT_REMOVED}
    assert vapp_scrub_status({}) == {SEC_A: REMOVED, SEC_B: REMOVED}


def test_an_import_the_target_would_not_honour_is_refused_before_anything_exists():
    types = {SEC_A: "password", SEC_B: "password", "firsttrust.enroll-window": "string"}
    transports = ["com.vmware.guestInfo", "iso"]
    assert check_import_spec(PLANNED, types, transports, "efi", "efi") == []
    assert check_import_spec(PLANNED, {}, transports, "efi", "efi") == [
        f"the target keeps no vApp property {SEC_A}, {SEC_B}, firsttrust.enroll-window (it keeps no vApp "
        f"properties at all)"]
    assert "readable" in check_import_spec(PLANNED, {**types, SEC_A: "string"}, transports, "efi", "efi")[0]
    assert "no OVF environment transport" in check_import_spec(PLANNED, types, [], "efi", "efi")[0]
    assert check_import_spec(PLANNED, types, transports, "bios", "efi") == [
        "the OVA asks for efi firmware, the target would set bios"]
    assert check_import_spec(PLANNED, types, transports, "", "") == []


def test_a_descriptor_that_cannot_carry_the_secrets_is_refused():
    declared = {SEC_A: True, SEC_B: True, "firsttrust.enroll-window": False}
    assert check_descriptor(("com.vmware.guestInfo", "iso"), "efi", declared, PLANNED) == []
    assert check_descriptor(("com.vmware.guestInfo",), "", {SEC_A: True}, PLANNED) == [
        f"the OVA declares no property {SEC_B}, firsttrust.enroll-window"]
    assert "without ovf:password" in check_descriptor(("iso",), "", {**declared, SEC_B: False}, PLANNED)[0]
    assert "transports" in check_descriptor(("http://example/transport",), "", declared, PLANNED)[0]
    assert "transports" in check_descriptor((), "", declared, PLANNED)[0]
    assert "firmware" in check_descriptor(("iso",), "uefi-ish", declared, PLANNED)[0]


def test_an_ova_plan_never_maps_a_property_the_ova_fixes_and_needs_it_declared(requester_identity):
    """vCenter refuses a value for an ovf:userConfigurable="false" property (NotUserConfigurable-
    Property); the requester certificate's encoding is one, its value the descriptor's default."""
    cert_key, encoding_key = "firsttrust.requester-cert", "firsttrust.requester-cert.encoding"
    plan = plan_deployment(URL, None, ["a-01"], ova="/x/appliance.ova", generate=lambda: SECRETS,
                           requester_cert=requester_identity.cert_pem)
    (appliance,) = plan.appliances
    assert [key for key, _ in appliance.properties] == [SEC_A, SEC_B, cert_key]
    declared = {SEC_A: True, SEC_B: True, cert_key: False}
    assert check_descriptor(("iso",), "", declared, appliance.properties) == [
        f"the OVA declares no property {encoding_key}"]
    assert check_descriptor(("iso",), "", {**declared, encoding_key: False}, appliance.properties) == []
    # the template way still writes the encoding, as guestinfo (extraConfig has no such notion)
    (cloned,) = plan_deployment(URL, "tmpl", ["a-01"], requester_cert=requester_identity.cert_pem).appliances
    assert ("guestinfo." + encoding_key, "base64") in cloned.extra_config


def test_the_descriptor_facts_are_read_from_the_firsttrust_ova_descriptor():
    import importlib.util
    from pathlib import Path

    from firsttrust.requester.ovafile import descriptor_facts

    spec = importlib.util.spec_from_file_location(
        "ova_descriptor", Path(__file__).resolve().parents[2] / "packaging/ova/descriptor.py")
    packaging = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(packaging)
    envelope = packaging.build_envelope(name="a", vmdk_name="a.vmdk", vmdk_size=1, capacity=2, version="1")
    facts = descriptor_facts(packaging.serialize(envelope).decode())
    assert facts.networks == ("VM Network",) and facts.transports == ("com.vmware.guestInfo", "iso")
    assert facts.firmware == "efi" and facts.properties[SEC_A] is True and facts.properties[SEC_B] is True


def test_a_descriptor_with_entities_is_refused_in_one_line():
    from firsttrust.requester.ovafile import descriptor_facts

    bomb = '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaa">]><e>&a;</e>'
    with pytest.raises(InvalidDeployPlan, match="without entities"):
        descriptor_facts(bomb, "x.ova")


class FakeVcenter:
    """The Vcenter calls scrub_imported makes, recorded; the VM's vApp properties as vCenter shows
    them (a password property's value always reads "")."""

    def __init__(self, vapp: dict[str, tuple[int, str, str]]) -> None:
        self.vapp, self.calls = vapp, []

    def vapp_properties(self, vm):
        from firsttrust.requester.vsphere import VappProperty

        return {pid: VappProperty(key=key, id=pid, type=kind, value="" if kind == "password" else value)
                for pid, (key, kind, value) in self.vapp.items()}

    def clear_vapp_properties(self, vm, keys):
        self.calls.append(("clear_vapp_properties", list(keys)))
        self.vapp = {pid: (key, kind, "" if key in keys else value) for pid, (key, kind, value) in self.vapp.items()}


def test_scrub_edits_the_secret_vapp_properties_by_their_integer_keys():
    pytest.importorskip("pyVmomi")
    fake = FakeVcenter({SEC_A: (3, "password", "a"), SEC_B: (7, "password", "b"),
                        "firsttrust.enroll-window": (9, "string", "2d")})
    assert scrub_imported(fake, object()) == {SEC_A: CLEARED_WRITE_ONLY, SEC_B: CLEARED_WRITE_ONLY}
    assert fake.calls == [("clear_vapp_properties", [3, 7])]  # not the window


def test_scrub_of_a_vm_without_the_secret_properties_is_an_error_not_a_success():
    pytest.importorskip("pyVmomi")
    from firsttrust.requester.vsphere import VsphereError

    with pytest.raises(VsphereError) as caught:
        scrub_imported(FakeVcenter({}), object())
    assert caught.value.code == "extra_config"


# --- the requests themselves (pyVmomi's types, no server) -----------------------------------------


@pytest.fixture
def vcenter():
    pytest.importorskip("pyVmomi")
    from firsttrust.requester.vsphere import Vcenter

    return Vcenter(SimpleNamespace(RetrieveContent=lambda: None))


def test_the_vapp_scrub_request_edits_each_property_by_key_to_an_empty_value(vcenter, monkeypatch):
    sent = []
    vm = SimpleNamespace(ReconfigVM_Task=lambda spec: sent.append(spec) or "task")
    monkeypatch.setattr(vcenter, "wait_task", lambda task, what: None)
    vcenter.clear_vapp_properties(vm, [3, 7])
    (spec,) = sent
    assert isinstance(spec, vcenter.vim.vm.ConfigSpec) and not spec.extraConfig
    properties = spec.vAppConfig.property
    assert [(p.operation, p.info.key, p.info.value) for p in properties] == [("edit", 3, ""), ("edit", 7, "")]
    assert all(isinstance(p, vcenter.vim.vApp.PropertySpec) for p in properties)


def test_the_vapp_properties_are_read_as_id_to_key_type_and_value(vcenter):
    from firsttrust.requester.vsphere import VappProperty

    vapp = vcenter.vim.vApp
    config = SimpleNamespace(vAppConfig=vapp.VmConfigInfo(property=[
        vapp.PropertyInfo(key=3, id=SEC_A, value="", type="password"), vapp.PropertyInfo(key=4, id="w", value="2d")]))
    assert vcenter.vapp_properties(SimpleNamespace(config=config)) == {
        SEC_A: VappProperty(3, SEC_A, "password", ""), "w": VappProperty(4, "w", "string", "2d")}
    assert vcenter.vapp_properties(SimpleNamespace(config=SimpleNamespace(vAppConfig=None))) == {}


def test_removing_the_ovf_environment_empties_the_transport_and_disconnects_the_iso_cdrom(vcenter, monkeypatch):
    vim = vcenter.vim
    cdrom = vim.vm.device.VirtualCdrom(key=3000, backing=vim.vm.device.VirtualCdrom.IsoBackingInfo(fileName="[ds] x.iso"),
                                        connectable=vim.vm.device.VirtualDevice.ConnectInfo(connected=True,
                                                                                           startConnected=True))
    disk = vim.vm.device.VirtualDisk(key=2000)
    sent = []
    vm = SimpleNamespace(config=SimpleNamespace(hardware=SimpleNamespace(device=[disk, cdrom])),
                         ReconfigVM_Task=lambda spec: sent.append(spec) or "task")
    monkeypatch.setattr(vcenter, "wait_task", lambda task, what, timeout=0: None)
    vcenter.remove_ovf_environment(vm)
    (spec,) = sent
    # VmConfigSpec.ovfEnvironmentTransport: an empty list changes nothing; [""] removes them all
    assert list(spec.vAppConfig.ovfEnvironmentTransport) == [""] and not spec.vAppConfigRemoved
    (change,) = spec.deviceChange
    assert change.operation == "edit" and change.device.key == 3000
    assert not change.device.connectable.connected and not change.device.connectable.startConnected
    sent.clear()
    vcenter.remove_ovf_environment(vm, remove_vapp=True)
    assert sent[0].vAppConfigRemoved is True and sent[0].vAppConfig is None


def test_lease_progress_is_reported_at_least_every_thirty_seconds_of_upload():
    pytest.importorskip("pyVmomi")
    from firsttrust.requester.vsphere import LEASE_PROGRESS_INTERVAL, LeaseProgress

    assert LEASE_PROGRESS_INTERVAL <= 30
    now = [0.0]
    reported: list[tuple[float, int]] = []
    lease = SimpleNamespace(HttpNfcLeaseProgress=lambda percent: reported.append((now[0], percent)))
    progress = LeaseProgress(lease, total=1000, clock=lambda: now[0])
    for _ in range(100):  # a chunk of 10 bytes every 2 s: 200 s of upload
        now[0] += 2.0
        progress.add(10)
    times = [0.0] + [at for at, _ in reported]
    assert max(b - a for a, b in zip(times, times[1:])) <= LEASE_PROGRESS_INTERVAL
    assert 200 - times[-1] <= LEASE_PROGRESS_INTERVAL
    percents = [percent for _, percent in reported]
    assert percents == sorted(percents) and 0 < percents[0] and percents[-1] <= 99


def fake_import(vcenter, tmp_path, device_url="https://*/nfc/1/disk-0.vmdk"):
    """A server that accepts the import spec and hands out a ready lease for one disk; what it
    was sent, recorded."""
    vim = vcenter.vim
    calls = []
    lease = SimpleNamespace(state=vim.HttpNfcLease.State.ready,
                            info=SimpleNamespace(entity="vm-1", deviceUrl=[SimpleNamespace(
                                importKey="disk-0", url=device_url, sslThumbprint=None)]),
                            HttpNfcLeaseAbort=lambda: calls.append("abort"),
                            HttpNfcLeaseComplete=lambda: calls.append("complete"),
                            HttpNfcLeaseProgress=lambda percent: calls.append(("progress", percent)))
    spec = SimpleNamespace(configSpec=vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="x", value="v")]))
    result = SimpleNamespace(error=None, importSpec=spec,
                             fileItem=[SimpleNamespace(deviceId="disk-0", path="a-disk1.vmdk", create=True)])

    def create_import_spec(descriptor, pool, datastore, params):
        calls.append(("CreateImportSpec", {kv.key: kv.value for kv in params.propertyMapping}))
        return result

    vcenter.content = SimpleNamespace(ovfManager=SimpleNamespace(CreateImportSpec=create_import_spec))
    vcenter._waiter = SimpleNamespace(watch=lambda obj, props, timeout, what, ready: {"state": lease.state})
    pool = SimpleNamespace(ImportVApp=lambda spec, folder, host: calls.append(("ImportVApp", spec)) or lease)
    entity = lambda ref: SimpleNamespace(ref=ref)  # noqa: E731
    return calls, SimpleNamespace(folder=entity("folder"), pool=entity(pool), datastore=entity("datastore"),
                                  host=None, network=None)


def test_the_import_adds_the_hardening_to_the_mapped_extra_config_and_aborts_the_lease_on_failure(vcenter, tmp_path):
    from firsttrust.requester.ovafile import OvaReadError

    ova = check_ova(str(make_ova(tmp_path / "a.ova", [("a.ovf", b"<E/>" * 300)])))  # no disk member
    calls, target = fake_import(vcenter, tmp_path)
    with pytest.raises(OvaReadError) as caught:
        vcenter.import_ova(ova, "a-01", vcenter.import_spec(ova, "a-01", PLANNED, HARDENING_VMX_SETTINGS, target),
                           target)
    assert caught.value.code == "ova_read" and "a-disk1.vmdk" in str(caught.value)
    assert calls[0] == ("CreateImportSpec", dict(PLANNED))
    imported = calls[1][1].configSpec.extraConfig
    assert [(o.key, o.value) for o in imported] == [("x", "v"), *HARDENING_VMX_SETTINGS]  # appended, not replaced
    assert calls[-1] == "abort" and "complete" not in calls


def test_an_ova_gone_after_the_check_fails_the_import_as_ova_read_and_aborts(vcenter, tmp_path):
    from firsttrust.requester.ovafile import OvaReadError

    path = make_ova(tmp_path / "a.ova")
    ova = check_ova(str(path))
    path.unlink()
    calls, target = fake_import(vcenter, tmp_path)
    with pytest.raises(OvaReadError) as caught:
        vcenter.import_ova(ova, "a-01", vcenter.import_spec(ova, "a-01", PLANNED, HARDENING_VMX_SETTINGS, target),
                           target)
    assert str(path) in str(caught.value) and "cannot reach vCenter" not in str(caught.value)
    assert calls[-1] == "abort"


def test_a_cdrom_lock_question_is_answered_yes_and_the_removal_then_finishes(vcenter, monkeypatch):
    """The guest locked the environment CD-ROM's door: vCenter asks, the task waits for the answer."""
    from firsttrust.requester.vsphere import VsphereError

    answered = []
    choice = SimpleNamespace(choiceInfo=[SimpleNamespace(label="Yes", key="0"), SimpleNamespace(label="No", key="1")])
    # no message ids: a server without localization; the text says what it is
    question = SimpleNamespace(id="q-1", text="The guest operating system has locked the CD-ROM door", choice=choice)
    vm = SimpleNamespace(runtime=SimpleNamespace(question=question), config=SimpleNamespace(
        hardware=SimpleNamespace(device=[])), ReconfigVM_Task=lambda spec: "task",
        AnswerVM=lambda qid, key: answered.append((qid, key)))
    waits = []

    def wait_task(task, what, timeout=0):
        waits.append(timeout)
        if not answered:
            raise VsphereError(f"{what}: the task did not finish within {timeout:.0f} s", code="task_timeout")

    monkeypatch.setattr(vcenter, "wait_task", wait_task)
    vcenter.remove_ovf_environment(vm)
    assert answered == [("q-1", "0")] and len(waits) == 2


@pytest.mark.parametrize("choices", [
    [("_Yes", "button.yes", "0"), ("_No", "button.no", "1")],   # an accelerator in the label
    [("Ja", "button.yes", "7"), ("Nein", "button.no", "8")],    # localized: the summary decides
    [("No", None, "1"), ("&Yes", None, "0")],                   # no summaries, another order
])
def test_the_cdrom_lock_question_is_known_by_its_message_id_and_its_yes_by_summary_or_label(vcenter, choices):
    answered = []
    question = SimpleNamespace(id="q-2", text="Die Gastbetriebssystem hat die Tür gesperrt",
                               message=[SimpleNamespace(id="msg.cdromdisconnect.locked", text="")],
                               choice=SimpleNamespace(choiceInfo=[SimpleNamespace(label=label, summary=summary, key=key)
                                                                  for label, summary, key in choices]))
    vm = SimpleNamespace(runtime=SimpleNamespace(question=question), AnswerVM=lambda qid, key: answered.append(key))
    assert vcenter.answer_cdrom_question(vm)
    assert answered == ["0" if choices[0][2] in ("0", "1") else "7"]


def test_a_yes_no_question_about_something_else_is_never_answered(vcenter):
    """A question with a "Yes" choice, asked while the removal waits, that is not the CD-ROM lock's."""
    from firsttrust.requester.vsphere import VsphereError

    answered = []
    question = SimpleNamespace(id="q-3", text="The CD-ROM door is locked. Msg: datastore full. Retry?",
                               message=[SimpleNamespace(id="msg.hbacommon.outofspace", text="")],
                               choice=SimpleNamespace(choiceInfo=[SimpleNamespace(label="Yes", summary="button.yes",
                                                                                  key="0")]))
    vm = SimpleNamespace(runtime=SimpleNamespace(question=question), AnswerVM=lambda qid, key: answered.append(key))
    with pytest.raises(VsphereError) as caught:
        vcenter.answer_cdrom_question(vm)
    assert caught.value.code == "vm_question" and answered == []


def test_a_question_firsttrust_cannot_answer_is_reported_and_a_silent_task_is_bounded(vcenter, monkeypatch):
    from firsttrust.requester import vsphere
    from firsttrust.requester.vsphere import VsphereError

    def never(task, what, timeout=0):
        raise VsphereError(f"{what}: the task did not finish", code="task_timeout")

    monkeypatch.setattr(vcenter, "wait_task", never)
    odd = SimpleNamespace(id="q", text="Something else?\nsecond line",
                          choice=SimpleNamespace(choiceInfo=[SimpleNamespace(label="Cancel", key="2")]))
    vm = SimpleNamespace(runtime=SimpleNamespace(question=odd), config=SimpleNamespace(hardware=SimpleNamespace(
        device=[])), ReconfigVM_Task=lambda spec: "task")
    with pytest.raises(VsphereError) as caught:
        vcenter.remove_ovf_environment(vm)
    assert caught.value.code == "vm_question" and str(caught.value).endswith("Something else?")
    clock = [0.0]
    monkeypatch.setattr(vsphere.time, "monotonic", lambda: clock[0])

    def slow(task, what, timeout=0):
        clock[0] += timeout
        raise VsphereError(f"{what}: the task did not finish", code="task_timeout")

    monkeypatch.setattr(vcenter, "wait_task", slow)
    vm.runtime.question = None
    with pytest.raises(VsphereError) as caught:
        vcenter.remove_ovf_environment(vm)
    assert caught.value.code == "task_timeout" and clock[0] <= vsphere.QUESTION_TIMEOUT + 2 * vsphere.QUESTION_POLL
