"""`firsttrust deploy` against govmomi's vCenter simulator: the real vSphere API, no VMware.

Issue 12's "done when": two appliances cloned with their guestinfo.firsttrust.* extraConfig
(read back through pyVmomi) and two 0600 secrets files, with no secret in any process's argv
meanwhile; fifty appliances deployed and enrolled; the secret keys' removal read back.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from test_ova_import import small_ova  # noqa: F401 - the fixture
from vcsim_fixture import Guests, vcenter_session, vcsim  # noqa: F401 - the fixture

from firsttrust.deployment import guestinfo_key
from firsttrust.lab import procs
from firsttrust.lab import vcsim as vcsim_module
from firsttrust.lab.vcsim import Vcsim
from firsttrust.requester.deployer import VcenterAccess, deploy
from firsttrust.requester.deployplan import REMOVED, SCRUB_KEYS, appliance_names, plan_deployment
from firsttrust.requester.deployspec import HARDENING_VMX_SETTINGS, secrets_from_json
from firsttrust.requester.truststore import TrustStore
from firsttrust.requester.vcenter_tls import pinned_context
from firsttrust.requester.vsphere import connect

ROOT = Path(__file__).resolve().parents[2]
FIRSTTRUST = [sys.executable, "-m", "firsttrust.requester.cli"]


def deploy_command(server: Vcsim, secrets_dir: Path, *extra: str, thumbprint: str | None = None) -> list[str]:
    return [*FIRSTTRUST, "deploy", "--vcenter", server.url, "--thumbprint", thumbprint or server.thumbprint_sha1,
            "--template", "DC0_H0_VM0", "--secrets-dir", str(secrets_dir), *extra]


def environment(server: Vcsim, home: Path) -> dict[str, str]:
    return {**os.environ, **server.credentials_env(), "FIRSTTRUST_HOME": str(home)}


class ArgvScanner:
    """Every process's argv, read from /proc over and over while something runs."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, ...]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def _scan(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    argv = procs.cmdline(int(entry))
                    if argv:
                        self.seen.add(tuple(argv))
            time.sleep(0.005)

    def __enter__(self) -> "ArgvScanner":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(10)

    def holding(self, value: str) -> list[tuple[str, ...]]:
        return [argv for argv in self.seen if any(value in arg for arg in argv)]


def test_the_argv_scanner_sees_a_value_in_another_process():
    marker = f"firsttrust-argv-marker-{os.getpid()}"
    with ArgvScanner() as scanner:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)", marker])
        child.wait()
    assert scanner.holding(marker)


def test_done_when_two_appliances_cloned_with_their_properties_and_no_secret_in_argv(vcsim, tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    command = deploy_command(vcsim, secrets_dir, "--name-prefix", "app", "--count", "2", "--no-enroll", "--json")
    with ArgvScanner() as scanner:
        result = subprocess.run(command, env=environment(vcsim, tmp_path / "home"), capture_output=True, text=True,
                                timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert sorted(report) == ["app-01", "app-02"]

    files = sorted(secrets_dir.iterdir())
    assert [f.name for f in files] == ["app-01.json", "app-02.json"]
    vc = vcenter_session(vcsim)
    try:
        inventory = vc.virtual_machines()
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            secrets = secrets_from_json(path.read_bytes())  # the same JSON `secrets new` writes
            name = path.stem
            assert report[name]["status"] == "deployed" and report[name]["extra_config"] == "verified"
            vm = inventory[name]
            assert report[name]["vm"] == vm._moId and vm.runtime.powerState == "poweredOn"
            config = dict(vc.extra_config(vm))
            assert config[guestinfo_key("firsttrust.sec-a")] == secrets.sec_a
            assert config[guestinfo_key("firsttrust.sec-b")] == secrets.sec_b
            for key, value in HARDENING_VMX_SETTINGS:
                assert config[key] == value
            for value in (secrets.sec_a, secrets.sec_b):
                assert value not in result.stderr and value not in result.stdout
                assert not scanner.holding(value), "a secret appeared in a process's argv"
    finally:
        vc.close()
    assert not scanner.holding(vcsim.password), "the vCenter password appeared in a process's argv"
    assert any("deploy" in argv and str(secrets_dir) in argv for argv in scanner.seen), "the scan missed the deploy"
    assert "app-01: powered on" in result.stderr  # progress on stderr


def test_a_wrong_thumbprint_sends_no_credentials_and_changes_nothing(vcsim, tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    wrong = "00:" * 19 + "00"
    result = subprocess.run(deploy_command(vcsim, secrets_dir, "--name", "wrong-tp", "--no-enroll",
                                           thumbprint=wrong),
                            env=environment(vcsim, tmp_path / "home"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "does not match the pinned thumbprint" in result.stderr and "nothing was sent" in result.stderr
    assert vcsim.thumbprint_sha1 in result.stderr  # what the operator compares with vCenter's
    assert list(secrets_dir.iterdir()) == []
    vc = vcenter_session(vcsim)
    try:
        assert "wrong-tp" not in vc.virtual_machines()
    finally:
        vc.close()


def test_credentials_come_from_a_private_file_or_the_environment_only(vcsim, tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    bare = {k: v for k, v in os.environ.items() if not k.startswith("FIRSTTRUST_VSPHERE_")}
    bare["FIRSTTRUST_HOME"] = str(tmp_path / "home")
    command = deploy_command(vcsim, secrets_dir, "--name", "creds-01", "--no-enroll",
                             thumbprint=vcsim.thumbprint_sha256)
    result = subprocess.run(command, env=bare, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "FIRSTTRUST_VSPHERE_USER" in result.stderr

    credentials = tmp_path / "vcenter.json"
    credentials.write_text(json.dumps({"user": vcsim.user, "password": vcsim.password}))
    credentials.chmod(0o644)
    result = subprocess.run(command + ["--credentials", str(credentials)], env=bare, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "chmod 600" in result.stderr

    credentials.chmod(0o600)
    result = subprocess.run(command + ["--credentials", str(credentials)], env=bare, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (secrets_dir / "creds-01.json").exists()


def test_a_ca_bundle_verifies_the_server_instead_of_a_thumbprint(vcsim, tmp_path, requester_identity):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(requester_identity.cert_pem)
    env = environment(vcsim, tmp_path / "home")

    def command(ca_file, name):
        return [*FIRSTTRUST, "deploy", "--vcenter", vcsim.url, "--ca-file", str(ca_file), "--template", "DC0_H0_VM0",
                "--secrets-dir", str(secrets_dir), "--name", name, "--no-enroll"]

    result = subprocess.run(command(other_ca, "ca-wrong"), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "TLS" in result.stderr and list(secrets_dir.iterdir()) == []
    result = subprocess.run(command(vcsim.ca_file, "ca-right"), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (secrets_dir / "ca-right.json").exists()


def test_an_existing_vm_name_or_secrets_file_not_this_deployments_stops_before_anything_is_made(vcsim, tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    env = environment(vcsim, tmp_path / "home")
    result = subprocess.run(deploy_command(vcsim, secrets_dir, "--name", "DC0_H0_VM1", "--no-enroll"), env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "exists already" in result.stderr  # as a secrets file in the way
    assert list(secrets_dir.iterdir()) == []

    (secrets_dir / "taken-01.json").write_text("someone else's secrets")
    result = subprocess.run(deploy_command(vcsim, secrets_dir, "--name", "taken-01", "--no-enroll"), env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "exists and is not a secrets file" in result.stderr
    assert (secrets_dir / "taken-01.json").read_text() == "someone else's secrets"


def test_dry_run_prints_the_plan_without_secrets_and_touches_nothing(vcsim, tmp_path):
    result = subprocess.run(deploy_command(vcsim, tmp_path, "--name-prefix", "dry", "--count", "3", "--dry-run"),
                            env=environment(vcsim, tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [a["name"] for a in plan["appliances"]] == ["dry-01", "dry-02", "dry-03"]
    assert plan["appliances"][0]["extra_config"][SCRUB_KEYS[0]] == "<secret>"
    assert list(tmp_path.glob("dry-*")) == []


def test_fifty_appliances_deployed_enrolled_and_their_secret_keys_removal_read_back(vcsim, tmp_path, capsys):
    """Clone + extraConfig + power on through vcsim, first boot from the VM's config, SRP enrollment of
    all fifty, then the secret keys set to "" through the API and read back: the lab's vCenter deletes
    a key set to "" as vCenter does (stock vcsim 0.24 would append, and the report would say "not
    removed": tests/integration/test_vcsim_models.py shows the difference)."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    url = vcsim.url
    plan = plan_deployment(url, "DC0_H0_VM0", appliance_names(prefix="fifty", count=50))
    access = VcenterAccess.load(url, pinned_context(vcsim.thumbprint_sha1), environ=vcsim.credentials_env())
    store = TrustStore(tmp_path / "home")
    events: list[tuple[str, str]] = []
    started = time.perf_counter()
    with Guests(vcsim, "fifty-", tmp_path / "guests") as guests:
        reports = deploy(plan, access, secrets_dir, concurrency=16, ip_timeout=120, store=store,
                         progress=lambda name, event: events.append((name, event)))
    elapsed = time.perf_counter() - started
    assert not guests.errors, guests.errors
    failed = [(r.name, r.failed_step, str(r.error)) for r in reports if not r.ok]
    assert not failed, failed
    assert [r.status for r in reports] == ["enrolled"] * 50
    pinned = {record.name: record for record in store.list()}
    assert sorted(pinned) == [a.name for a in plan.appliances]
    for report in reports:
        assert report.ip == guests.booted[report.name] and pinned[report.name].pin == report.pin
        assert report.scrub == {key: REMOVED for key in SCRUB_KEYS}
        assert stat.S_IMODE((secrets_dir / f"{report.name}.json").stat().st_mode) == 0o600
    vc = vcenter_session(vcsim)
    try:
        vm = vc.virtual_machines()["fifty-07"]
        entries = vc.extra_config(vm)
        for key in SCRUB_KEYS:  # gone, not emptied
            assert not [k for k, _ in entries if k == key]
    finally:
        vc.close()
    assert any(event.startswith("secret keys:") for _, event in events)
    with capsys.disabled():
        print(f"\n50 appliances deployed and enrolled through vcsim in {elapsed:.1f} s")


def test_the_command_enrolls_pins_and_reports_per_appliance(vcsim, tmp_path, monkeypatch, capsys):
    from firsttrust.requester import cli

    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for key, value in vcsim.credentials_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    argv = ["deploy", "--vcenter", vcsim.url, "--thumbprint", vcsim.thumbprint_sha256.replace(":", "").lower(),
            "--template", "DC0_H0_VM0", "--name-prefix", "cli", "--count", "2", "--secrets-dir", str(secrets_dir),
            "--enroll-window", "1h", "--ip-timeout", "60", "--json"]
    with Guests(vcsim, "cli-", tmp_path / "guests") as guests:
        code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert not guests.errors
    report = json.loads(out)
    assert [entry["status"] for entry in report] == ["enrolled", "enrolled"]
    pins = {record.name: record.pin for record in TrustStore(tmp_path / "home").list()}
    for entry in report:
        assert entry["pin"] == pins[entry["name"]] and entry["ip"] == guests.booted[entry["name"]]
        assert entry["scrub"] == {key: REMOVED for key in SCRUB_KEYS}
        assert set(entry["seconds"]) >= {"clone", "power_on", "wait_ip", "enroll", "scrub"}
    assert "cli-02: enrolled: sha256:" in err and "secret keys:" in err


# --- the simulator's lifecycle -------------------------------------------------------------------


def test_the_simulator_keeps_its_password_out_of_argv_and_stops_for_good(vcsim):
    server = Vcsim.start()
    pid = server.pid
    assert procs.alive(pid)
    argv = procs.cmdline(pid)
    assert argv and not any(server.password in arg for arg in argv)
    assert not (server.workdir / "key.pem").exists()  # loaded, then gone
    server.stop()
    assert not procs.alive(pid)
    server.stop()  # idempotent


def test_a_killed_lab_leaves_no_simulator_behind(vcsim, tmp_path):
    script = ("import sys, time\nfrom firsttrust.lab.vcsim import Vcsim\nserver = Vcsim.start()\n"
              "print(server.pid, flush=True)\ntime.sleep(300)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())
        assert procs.alive(pid)
    finally:
        owner.kill()  # SIGKILL: no atexit, no cleanup
        owner.wait()
    deadline = time.monotonic() + 10
    while procs.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not procs.alive(pid), "the simulator outlived the process that started it"
    leftovers = list(Path(tempfile.gettempdir()).glob(f"{vcsim_module.WORKDIR_PREFIX}{owner.pid}-*"))
    assert leftovers  # its working directory stayed behind: nobody cleaned up after SIGKILL ...
    assert set(leftovers) <= set(vcsim_module.sweep_stale_workdirs())  # ... until the next start sweeps it
    assert not any(path.exists() for path in leftovers)


def test_the_build_is_cached_and_keyed_by_its_source(vcsim, tmp_path, monkeypatch):
    binary = vcsim_module.build_vcsim()
    built_at = binary.stat().st_mtime_ns
    started = time.perf_counter()
    assert vcsim_module.build_vcsim() == binary and binary.stat().st_mtime_ns == built_at
    assert time.perf_counter() - started < 5
    key = vcsim_module.build_key()
    assert binary.parent.name == key
    changed = tmp_path / "main.go"
    changed.write_bytes(vcsim_module.MAIN_GO.read_bytes() + b"\n// changed\n")
    monkeypatch.setattr(vcsim_module, "MAIN_GO", changed)
    assert vcsim_module.build_key() != key


def test_done_when_against_a_separately_started_simulator(vcsim, small_ova, tmp_path):
    """`firsttrust-lab vcsim` in one process (the lab's vCenter and hosts), the issue's `deploy
    --ova` in another, with the credentials file it wrote: the appliances deploy, boot, enroll and
    are pinned, and their password properties read back "" through pyVmomi; SIGTERM then stops the
    simulator and its appliances for good."""
    root = tmp_path / "lab"
    lab = subprocess.Popen([sys.executable, "-m", "firsttrust.lab.cli", "vcsim", "--root", str(root)],
                           stdout=subprocess.PIPE, text=True)
    try:
        shown = {}
        for line in lab.stdout:
            key, _, value = line.strip().partition(": ")
            shown[key] = value
            if key == "pid":
                break
        credentials = Path(shown["credentials"])
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        secrets_dir = tmp_path / "D"
        secrets_dir.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIRSTTRUST_VSPHERE_")}
        result = subprocess.run(
            [*FIRSTTRUST, "deploy", "--vcenter", shown["url"], "--thumbprint", shown["thumbprint"], "--credentials",
             str(credentials), "--ova", str(small_ova), "--name-prefix", "app", "--count", "2",
             "--secrets-dir", str(secrets_dir), "--ip-timeout", "60", "--json"],
            env={**env, "FIRSTTRUST_HOME": str(tmp_path / "home")}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in secrets_dir.iterdir()) == ["app-01.json", "app-02.json"]
        report = json.loads(result.stdout)
        pins = {record.name: record.pin for record in TrustStore(tmp_path / "home").list()}
        assert [entry["status"] for entry in report] == ["enrolled", "enrolled"]
        assert all(entry["pin"] == pins[entry["name"]] for entry in report)
        user, password = (json.loads(credentials.read_text())[k] for k in ("user", "password"))
        vc = connect(shown["url"], user, password, pinned_context(shown["thumbprint"]))
        try:
            for name in ("app-01", "app-02"):
                held = {p.id: p for p in vc.find_vm(name).config.vAppConfig.property}
                assert held["firsttrust.sec-a"].type == held["firsttrust.sec-b"].type == "password"
                assert not held["firsttrust.sec-a"].value and not held["firsttrust.sec-b"].value
        finally:
            vc.close()
    finally:
        lab.terminate()
        assert lab.wait(60) == 0
    assert "vcsim stopped" in lab.stdout.read()
    assert not procs.alive(int(shown["pid"])) and not credentials.exists()
