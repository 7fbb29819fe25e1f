"""`firsttrust deploy --ova` against govmomi's vCenter simulator: the OVA packaged by
packaging/ova/package.sh around a small disk (test_ova_import.small_ova), imported through
CreateImportSpec + ImportVApp + the HttpNfcLease with the deployment properties as its
PropertyMapping, verified, powered on.

vcsim 0.24 keeps no vApp properties: the mapping arrives as extraConfig keys named as the
properties, and that is where the deployer verifies (and scrubs) them there. The vApp-property
branch (a real vCenter or ESXi) is tested at the request level in tests/unit/test_ova_deployplan.py.
"""

from __future__ import annotations

import json
import stat
import subprocess

from test_ova_import import small_ova  # noqa: F401 - the fixture
from test_vsphere_deploy import FIRSTTRUST, ROOT, ArgvScanner, environment
from vcsim_fixture import Guests, vcenter_session, vcsim  # noqa: F401 - the fixture

from firsttrust.deployment import SEC_A, SEC_B
from firsttrust.requester.deployer import VcenterAccess, deploy
from firsttrust.requester.deployplan import (
    NOT_REMOVED,
    OVA_SCRUB_KEYS,
    VERIFIED_EXTRA_CONFIG,
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


def test_two_appliances_imported_from_the_ova_hold_their_properties_and_no_secret_in_argv(vcsim, small_ova, tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    command = ova_command(vcsim, small_ova, secrets_dir, "--name-prefix", "ova", "--count", "2", "--no-enroll",
                          "--json")
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
            assert report[name]["extra_config"] == VERIFIED_EXTRA_CONFIG  # vcsim: no vApp properties
            vm = inventory[name]
            assert report[name]["vm"] == vm._moId and vm.runtime.powerState == "poweredOn"
            assert vm.config.hardware.numCPU == 2  # the OVA's hardware, not a clone of DC0_H0_VM0 (1 CPU)
            config = current_values(vc.extra_config(vm))
            assert config[SEC_A] == secrets.sec_a and config[SEC_B] == secrets.sec_b
            for key, value in HARDENING_VMX_SETTINGS:
                assert config[key] == value
            for value in (secrets.sec_a, secrets.sec_b):
                assert value not in result.stderr and value not in result.stdout
                assert not scanner.holding(value), "a secret appeared in a process's argv"
    finally:
        vc.close()
    assert not scanner.holding(vcsim.password), "the vCenter password appeared in a process's argv"
    assert any("--ova" in argv and str(secrets_dir) in argv for argv in scanner.seen), "the scan missed the deploy"
    assert "ova-01: uploaded firsttrust-appliance-disk1.vmdk" in result.stderr
    assert "ova-02: powered on" in result.stderr


def test_an_ova_deployed_appliance_enrolls_and_its_secret_properties_removal_is_read_back(vcsim, small_ova,
                                                                                           tmp_path):
    """vcsim keeps the mapping as extraConfig and only appends: the honest answer is "not removed",
    with the empty value appended after the old one (the request that was sent)."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    plan = plan_deployment(vcsim.url, None, appliance_names(prefix="ovaen", count=2), ova=str(small_ova))
    access = VcenterAccess.load(vcsim.url, pinned_context(vcsim.thumbprint_sha1), environ=vcsim.credentials_env())
    store = TrustStore(tmp_path / "home")
    with Guests(vcsim, "ovaen-", tmp_path / "guests") as guests:
        reports = deploy(plan, access, secrets_dir, concurrency=2, ip_timeout=60, store=store)
    failed = [(r.name, r.failed_step, str(r.error)) for r in reports if not r.ok]
    assert not failed, failed
    assert [r.status for r in reports] == ["enrolled", "enrolled"] and not guests.errors
    vc = vcenter_session(vcsim)
    try:
        vm = vc.virtual_machines()["ovaen-01"]
        entries = vc.extra_config(vm)
        for report in reports:
            assert report.scrub == {key: NOT_REMOVED for key in OVA_SCRUB_KEYS}
        for key in OVA_SCRUB_KEYS:
            assert [value == "" for k, value in entries if k == key] == [False, True]
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
