"""`firsttrust deploy --ova` against the lab's vCenter (lab/go/vcsim: vApp properties kept, password
values write-only, the OVF environment built at power-on for the guest alone): the OVA packaged by
packaging/ova/package.sh around a small disk (test_ova_import.small_ova), imported once through
CreateImportSpec + ImportVApp + the HttpNfcLease with the deployment properties as its
PropertyMapping, the other appliances cloned from it with their own values, verified by id and type,
powered on, enrolled from the environment the guest reads, the secrets cleared and the OVF
environment removed. Against stock vcsim 0.24 (no vApp properties at all) the deploy is refused
before anything exists.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess

from test_ova_import import small_ova  # noqa: F401 - the fixture
from test_vsphere_deploy import FIRSTTRUST, ROOT, ArgvScanner, environment
from vcsim_fixture import Guests, vcenter_session, vcsim  # noqa: F401 - the fixture

from firsttrust.deployment import ENCODING_SUFFIX, REQUESTER_CERT, SEC_A, SEC_B
from firsttrust.requester.deployer import VcenterAccess, deploy
from firsttrust.lab.vcsim import Vcsim
from firsttrust.requester.deployplan import (
    CLEARED_WRITE_ONLY,
    OVA_SCRUB_KEYS,
    VERIFIED_VAPP,
    appliance_names,
    current_values,
    plan_deployment,
)
from firsttrust.requester.deployspec import HARDENING_VMX_SETTINGS, secrets_from_json
from firsttrust.requester.truststore import TrustStore
from firsttrust.requester.vcenter_tls import pinned_context


def ova_command(server, ova, secrets_dir, *extra: str) -> list[str]:
    return [*FIRSTTRUST, "deploy", "--vcenter", server.url, "--thumbprint", server.thumbprint_sha1,
            "--ova", str(ova), "--secrets-dir", str(secrets_dir), *extra]


def test_two_appliances_imported_from_the_ova_hold_their_properties_and_no_secret_in_argv(vcsim, small_ova, tmp_path,
                                                                                          requester_identity):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    cert = tmp_path / "requester.pem"
    cert.write_bytes(requester_identity.cert_pem)
    # With --requester-cert: the clone of the imported appliance gets its own values, never one
    # for the property the OVA fixes (vCenter refuses that edit: NotUserConfigurableProperty).
    command = ova_command(vcsim, small_ova, secrets_dir, "--name-prefix", "ova", "--count", "2", "--no-enroll",
                          "--json", "--requester-cert", str(cert))
    with ArgvScanner() as scanner:
        result = subprocess.run(command, env=environment(vcsim, tmp_path / "home"), capture_output=True, text=True,
                                timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert sorted(report) == ["ova-01", "ova-02"]
    files = sorted(secrets_dir.iterdir())
    assert [f.name for f in files] == ["ova-01.json", "ova-02.json"]
    vc = vcenter_session(vcsim)
    try:
        inventory = vc.virtual_machines()
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            secrets = secrets_from_json(path.read_bytes())
            name = path.stem
            assert report[name]["status"] == "deployed"
            assert report[name]["extra_config"] == VERIFIED_VAPP
            vm = inventory[name]
            assert report[name]["vm"] == vm._moId and vm.runtime.powerState == "poweredOn"
            assert vm.config.hardware.numCPU == 2  # the OVA's hardware, not a clone of DC0_H0_VM0 (1 CPU)
            assert vm.config.firmware == "efi"
            held = {p.id: p for p in vm.config.vAppConfig.property}
            for key in (SEC_A, SEC_B):  # write-only through pyVmomi, and nowhere in extraConfig
                assert held[key].type == "password" and not held[key].value and not held[key].defaultValue
            assert base64.b64decode(held[REQUESTER_CERT].value) == requester_identity.cert_pem
            assert held[REQUESTER_CERT + ENCODING_SUFFIX].value == "base64"
            config = current_values(vc.extra_config(vm))
            assert SEC_A not in config and SEC_B not in config
            for key, value in HARDENING_VMX_SETTINGS:
                assert config[key] == value
            # what the guest reads: its own secrets, in the environment built at power-on
            ovf_env = vcsim.lab.guestinfo_get(vm._moId, "guestinfo.ovfEnv")
            assert secrets.sec_a in ovf_env and secrets.sec_b in ovf_env
            for value in (secrets.sec_a, secrets.sec_b):
                assert value not in result.stderr and value not in result.stdout
                assert not scanner.holding(value), "a secret appeared in a process's argv"
    finally:
        vc.close()
    assert not scanner.holding(vcsim.password), "the vCenter password appeared in a process's argv"
    assert any("--ova" in argv and str(secrets_dir) in argv for argv in scanner.seen), "the scan missed the deploy"
    # the disk went up once: ova-02 is a clone of ova-01, with its own secrets
    assert result.stderr.count("uploaded firsttrust-appliance-disk1.vmdk") == 1
    assert "ova-01: uploaded firsttrust-appliance-disk1.vmdk" in result.stderr
    assert "ova-02: cloned from ova-01" in result.stderr and "ova-02: powered on" in result.stderr
    assert "placement: datastore" in result.stderr  # the automatic choice, said before anything was made


def test_an_ova_deployed_appliance_enrolls_its_secrets_are_cleared_and_its_environment_removed(vcsim, small_ova,
                                                                                               tmp_path):
    """The write-only secrets are cleared and said to be so (nothing can read them back); the
    transport is emptied and the read-back says so; with remove_vapp the whole vApp config goes."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    access = VcenterAccess.load(vcsim.url, pinned_context(vcsim.thumbprint_sha1), environ=vcsim.credentials_env())
    store = TrustStore(tmp_path / "home")
    outcome = {}
    for prefix, remove_vapp in (("ovaen", False), ("ovarm", True)):
        plan = plan_deployment(vcsim.url, None, appliance_names(prefix=prefix, count=2), ova=str(small_ova))
        with Guests(vcsim, f"{prefix}-", tmp_path / f"guests-{prefix}") as guests:
            outcome[prefix] = deploy(plan, access, secrets_dir, concurrency=2, ip_timeout=60, store=store,
                                     remove_vapp=remove_vapp)
        assert not guests.errors, guests.errors
    vc = vcenter_session(vcsim)
    try:
        inventory = vc.virtual_machines()
        for prefix, reports in outcome.items():
            failed = [(r.name, r.failed_step, str(r.error)) for r in reports if not r.ok]
            assert not failed, failed
            assert [r.status for r in reports] == ["enrolled", "enrolled"]
            for report in reports:
                assert report.scrub == {key: CLEARED_WRITE_ONLY for key in OVA_SCRUB_KEYS}
                vm = inventory[report.name]
                vapp = vm.config.vAppConfig
                if prefix == "ovaen":
                    assert report.environment == "transport removed; no ISO CD-ROM connected"
                    assert not [t for t in (vapp.ovfEnvironmentTransport or []) if t]
                    assert {p.id for p in vapp.property} >= set(OVA_SCRUB_KEYS)  # kept, cleared, unreadable
                else:
                    assert report.environment == "vApp configuration removed; no ISO CD-ROM connected"
                    assert vapp is None
    finally:
        vc.close()


def test_a_target_that_keeps_no_vapp_properties_is_refused_before_anything_exists(small_ova, tmp_path):
    """Stock vcsim 0.24 turns the property mapping into extraConfig (readable by anyone who may read
    the VM): the deployer sees it in CreateImportSpec's answer and creates nothing."""
    with Vcsim.start(stock=True) as stock:
        secrets_dir = tmp_path / "secrets"
        secrets_dir.mkdir()
        plan = plan_deployment(stock.url, None, ["refused-01"], ova=str(small_ova), enroll=False)
        access = VcenterAccess.load(stock.url, pinned_context(stock.thumbprint_sha1), environ=stock.credentials_env())
        from firsttrust.requester.vsphere import VsphereError

        try:
            deploy(plan, access, secrets_dir)
        except VsphereError as exc:
            assert exc.code == "ova_refused" and "keeps no vApp propert" in str(exc) and "\n" not in str(exc)
        else:
            raise AssertionError("a target without vApp properties was not refused")
        assert not list(secrets_dir.iterdir())
        vc = vcenter_session(stock)
        try:
            assert "refused-01" not in vc.virtual_machines()
        finally:
            vc.close()


def test_an_ova_missing_its_disk_fails_that_appliance_in_one_line(vcsim, small_ova, tmp_path):
    """The lease is aborted (tests/unit/test_ova_deployplan.py checks that call); vCenter then removes
    the partial VM, vcsim 0.24 keeps it (docs/deployment.md)."""
    import tarfile

    broken = tmp_path / "no-disk.ova"
    with tarfile.open(small_ova) as source, tarfile.open(broken, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member in source.getmembers():
            if member.name.endswith((".ovf", ".mf")):
                tar.addfile(member, source.extractfile(member))
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    plan = plan_deployment(vcsim.url, None, ["nodisk-01"], ova=str(broken), enroll=False)
    access = VcenterAccess.load(vcsim.url, pinned_context(vcsim.thumbprint_sha1), environ=vcsim.credentials_env())
    (report,) = deploy(plan, access, secrets_dir)
    assert (report.status, report.failed_step, report.error.code) == ("failed", "import OVA", "ova_read")
    assert "firsttrust-appliance-disk1.vmdk" in str(report.error) and "\n" not in str(report.error)
    vc = vcenter_session(vcsim)
    try:
        assert "nodisk-01" in vc.virtual_machines()  # vcsim 0.24 keeps an aborted import's VM
    finally:
        vc.close()
