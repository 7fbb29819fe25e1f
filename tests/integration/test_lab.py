"""The local data center (`lab/`): the demo as a test, `up`/`down` across invocations, and that
no agent process ever outlives its lab.

`demo` and `up` deploy through govmomi's simulator (lab.datacenter); the tests that drive
Manager.deploy directly use the file-based guest channel, where the simulator cannot serve: an
agent that ignores SIGTERM, a recorded PID that is no longer an agent, a VM with nothing injected
(first boot's own error), guest operations (vcsim 0.24 has none)."""

import base64
import contextlib
import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import firsttrust.credentials as credentials
from firsttrust.deployment import DEFAULT_API_PORT, DEFAULT_ENROLL_PORT
from firsttrust.identity import pin_of_certificate
from firsttrust.lab import demo, procs
from firsttrust.lab.cli import main
from firsttrust.lab.datacenter import TEMPLATE, DataCenter
from firsttrust.lab.errors import LabError
from firsttrust.lab.manager import Manager
from firsttrust.lab.vcsim import Vcsim
from firsttrust.requester.deployplan import DeployPlan, plan_deployment
from firsttrust.lab.vmware_emulator import ENV_VAR
from firsttrust.requester.deployspec import deployment_properties, secrets_from_json
from firsttrust.requester.library import enroll_appliance_sync
from firsttrust.requester.truststore import TrustStore

# `serve` that ignores SIGTERM: SIG_IGN, and the event loop's own SIGTERM handler never installed.
STUBBORN_AGENT = """
import asyncio, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
_add = asyncio.unix_events._UnixSelectorEventLoop.add_signal_handler
def add_signal_handler(self, signum, callback, *args):
    if signum != signal.SIGTERM:
        return _add(self, signum, callback, *args)
asyncio.unix_events._UnixSelectorEventLoop.add_signal_handler = add_signal_handler
from firsttrust.agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def processes_naming(root: Path) -> list[int]:
    """Every live process (but this one) whose command line mentions the lab root."""
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if pid != os.getpid() and procs.alive(pid) and any(str(root) in arg for arg in procs.cmdline(pid))]


@pytest.fixture
def lab_root(tmp_path):
    root = (tmp_path / "lab").resolve()
    yield root
    left = sorted(set(processes_naming(root)) | set(procs.guest_processes(root, ENV_VAR)))
    for pid in left:  # do not leak them into the rest of the suite, then fail
        procs.stop_recorded(pid, 1.0)
    assert left == [], f"processes of {root} outlived the test: {[procs.cmdline(pid) for pid in left]}"


@pytest.fixture
def generated(monkeypatch):
    """Every secret generated during the test."""
    values: list[str] = []
    original = credentials.generate_secret

    def remembering(*args, **kwargs):
        value = original(*args, **kwargs)
        values.append(value)
        return value

    monkeypatch.setattr(credentials, "generate_secret", remembering)
    return values


def table_rows(output: str) -> list[list[str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NAME ") and "EMBODIMENT" in line)
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or line.startswith("note:"):
            break
        rows.append(line.split(None, 1)[:1] + [line])
    return rows


class ArgvWatch:
    """Scans every process's argv (/proc/PID/cmdline) every few milliseconds while it runs; the
    demo's processes (agents, emulated guest tools, guest commands) are all children of this one."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError):
                    self.seen.add(cmdline.read_bytes())
            self.scans += 1
            time.sleep(0.005)

    def __enter__(self) -> "ArgvWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def simulators(monkeypatch):
    """Every vCenter simulator the lab starts during the test."""
    started: list[Vcsim] = []
    original = Vcsim.start

    def remembering(cls, *args, **kwargs):
        server = original(*args, **kwargs)
        started.append(server)
        return server

    monkeypatch.setattr(Vcsim, "start", classmethod(remembering))
    return started


def test_the_demo_enrolls_three_ways_refuses_two_attacks_and_leaves_nothing_running(lab_root, capsys, generated,
                                                                                     simulators):
    with ArgvWatch() as argv:
        assert main(["demo", "--short", "--root", str(lab_root)]) == 0
    # No secret, nor a 12-character piece of one, on any command line while the demo ran; nor
    # the simulator's password.
    assert argv.scans > 10 and any(b"firsttrust" in line for line in argv.seen)
    assert len(simulators) == 1 and simulators[0].process.poll() is not None  # started, and stopped
    assert not [line for line in argv.seen if simulators[0].password.encode() in line]
    for secret in generated:
        pieces = {secret[i:i + 12].encode() for i in range(0, len(secret) - 11)}
        assert not [line for line in argv.seen if any(piece in line for piece in pieces)]
    out, err = capsys.readouterr()
    assert err == ""
    rows = table_rows(out)
    trusted = {name: line for name, line in rows if "ok: pinned, /v1/identity verified" in line}
    assert sorted(trusted) == ["app-cert", "app-guest", "app-srp-1", "app-srp-2"]
    assert " injected-certificate " in trusted["app-cert"] and " guest-command " in trusted["app-guest"]
    assert all(" srp " in trusted[name] for name in ("app-srp-1", "app-srp-2"))
    refusals = [line for _, line in rows if "(expected)" in line]
    assert len(refusals) == 2 and len(rows) == 6
    assert any("refused: auth_failed (expected)" in line for line in refusals)
    assert any("caught: " in line and "relay" in line for line in refusals)
    assert out.rstrip().splitlines()[-1].startswith("all checks passed")

    records = {record.name: record for record in TrustStore(lab_root / "requester").list()}
    assert {name: record.embodiment for name, record in records.items()} == {
        "app-srp-1": "srp", "app-srp-2": "srp", "app-cert": "injected-certificate", "app-guest": "guest-command"}
    for name, record in records.items():
        assert record.pin.split(":")[1][:12] in trusted[name]
    # Deployed through the simulator's API; each appliance at an address of its own at the
    # standard ports, which the deployer found as the guest's IP.
    assert "govmomi's simulator at https://127.0.0.1:" in out
    addresses = {name: record.address for name, record in records.items()}
    assert len(set(addresses.values())) == 4
    assert all(a.startswith("127.0.0.") and a != "127.0.0.1" for a in addresses.values())
    assert all(record.api_port == DEFAULT_API_PORT for record in records.values())
    for name in ("app-srp-1", "app-srp-2", "app-guest"):
        assert f"{name}: guest IP {addresses[name]}" in out and f"{name}: cloned as vm-" in out
    for name in ("app-cert", "app-attacked"):
        assert f"enrollment {addresses.get(name, '127.0.0.')}" in out and f"{name}: powered on" in out
    # The secrets were scrubbed, visibly through the API; the deployer's secrets files are 0600
    # (app-cert and app-guest got no SRP secrets, only a guest account each).
    assert "shows the secret keys empty" in out
    assert sorted(p.name for p in (lab_root / "secrets").glob("*.json")) == [
        "app-attacked.json", "app-cert.guest.json", "app-guest.guest.json", "app-srp-1.json", "app-srp-2.json"]
    # Every way in went through the lab vCenter's API, guest operations included: nothing emulated.
    assert "emulated" not in out
    assert "channel: guest file transfer" in out and "firsttrust-agent authorize" in out
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (lab_root / "secrets").glob("*.json"))
    # Lab appliances have SSH host keys of their own: pinned with the enrollment, found by ssh-keygen.
    host_key = (lab_root / "app-srp-1" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert [key.split()[1] for key in records["app-srp-1"].ssh_host_keys] == [host_key]
    address = addresses["app-srp-1"]
    assert (lab_root / "app-srp-1.known_hosts").read_text() == f"{address} ssh-ed25519 {host_key}\n"
    assert f"ssh-keygen -F {address} -f app-srp-1.known_hosts: found" in out
    assert json.loads((lab_root / "lab.json").read_text())["appliances"] == {}
    assert generated and not [secret for secret in generated if secret in out]


def test_a_failed_demo_check_is_one_line_exit_1_and_still_cleans_up(lab_root, capsys, monkeypatch):
    # The injected-certificate step asks for the appliance's certificate where the guest has none.
    monkeypatch.setattr(demo, "APPLIANCE_CERT_FILE", "no-such.crt")
    assert main(["demo", "--short", "--root", str(lab_root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file in the guest" in err and "Traceback" not in err
    assert json.loads((lab_root / "lab.json").read_text())["appliances"] == {}


def test_up_leaves_agents_running_detached_and_down_stops_them(lab_root, capsys, generated):
    assert main(["up", "3", "--root", str(lab_root)]) == 0
    out = capsys.readouterr().out
    names = ["app-01", "app-02", "app-03"]
    assert all(f"{name} " in out for name in names)
    assert generated and not [secret for secret in generated if secret in out]
    assert "govmomi's simulator" in out
    running = Manager(lab_root).running()
    assert [app.name for app in running] == names
    assert len({app.host for app in running}) == 3
    for app in running:
        assert os.getsid(app.pid) == app.pid  # its own session: a Ctrl-C at the terminal does not reach it
        assert app.host.startswith("127.0.0.") and app.host != "127.0.0.1"
        assert (app.enroll_port, app.api_port) == (DEFAULT_ENROLL_PORT, DEFAULT_API_PORT)
        assert f"{app.name}  {app.host}:{DEFAULT_ENROLL_PORT}" in out
        secrets_file = lab_root / "secrets" / f"{app.name}.json"
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600 and str(secrets_file) in out

    # The printed secrets file enrolls the printed address, as a person would.
    first = running[0]
    secrets = secrets_from_json((lab_root / "secrets" / "app-01.json").read_bytes())
    store = TrustStore(lab_root / "requester")
    record = enroll_appliance_sync(first.enroll_address, secrets, name="app-01", store=store)
    assert record.api_port == first.api_port

    assert main(["status", "--root", str(lab_root)]) == 0
    status = capsys.readouterr().out
    assert "enrolled" in status and status.count("provisioned") == 2

    assert main(["down", "--root", str(lab_root)]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: stopped" in out for name in names)
    assert not any(procs.alive(app.pid) for app in running)
    assert not list((lab_root / "secrets").iterdir())
    assert main(["down", "--root", str(lab_root)]) == 0
    assert "nothing runs" in capsys.readouterr().out


def test_up_refuses_a_lab_root_that_already_runs(lab_root, capsys):
    assert main(["up", "1", "--root", str(lab_root)]) == 0
    try:
        assert main(["up", "1", "--root", str(lab_root)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "already" in err
    finally:
        assert main(["down", "--root", str(lab_root)]) == 0


def test_destroy_all_kills_an_agent_that_ignores_sigterm(lab_root):
    # The polite agent must stop on SIGTERM within stop_timeout; on a loaded 2-core machine a
    # Python agent's clean shutdown can take longer than half a second, so allow it three.
    manager = Manager(lab_root, stop_timeout=3.0)
    properties = deployment_properties(credentials.EnrollmentSecrets.generate())
    manager.deploy("polite", properties)
    manager.deploy("stubborn", properties, agent_command=[sys.executable, "-c", STUBBORN_AGENT])
    polite, stubborn = manager._children["polite"], manager._children["stubborn"]
    stubborn.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert stubborn.poll() is None  # it really ignores SIGTERM
    started = time.monotonic()
    assert manager.destroy_all() == {"polite": "stopped", "stubborn": "stopped"}
    assert time.monotonic() - started >= 3.0  # the stubborn one was given its full stop_timeout
    assert polite.returncode == 0 and stubborn.returncode == -signal.SIGKILL


def test_down_leaves_alone_a_recorded_pid_that_is_no_longer_an_agent(lab_root):
    manager = Manager(lab_root)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        with manager.registry.editing() as data:
            data["appliances"]["gone"] = {"directory": str(lab_root / "gone"), "enroll_port": 1, "api_port": 2,
                                          "pid": stranger.pid}
        assert manager.destroy_all() == {"gone": "not ours"}
        assert stranger.poll() is None
        assert manager.appliances() == []
    finally:
        stranger.kill()
        stranger.wait()


def test_a_vm_with_nothing_injected_fails_first_boot_with_the_agents_reason(lab_root):
    manager = Manager(lab_root)
    with pytest.raises(LabError) as info:
        manager.deploy("empty", None)
    assert "first boot failed" in str(info.value) and "no firsttrust properties found" in str(info.value)
    assert "\n" not in str(info.value)
    assert manager.running() == []


def test_guest_operations_and_guestinfo_reach_only_their_own_vm(lab_root):
    manager = Manager(lab_root)
    try:
        manager.deploy_many({name: deployment_properties(credentials.EnrollmentSecrets.generate())
                             for name in ("one", "two")})
        for name in ("one", "two"):
            published = manager.read_guestinfo(name, "guestinfo.firsttrust.appliance-cert")
            shown = manager.guest_command(name, ["firsttrust-agent", "show-identity", "--format", "pin"])
            assert shown.returncode == 0
            assert shown.stdout.decode().strip() == pin_of_certificate(base64.b64decode(published))
            assert manager.read_guestinfo(name, "guestinfo.firsttrust.sec-a") is None
        pins = {manager.guest_command(name, ["firsttrust-agent", "show-identity", "--format", "pin"]).stdout
                for name in ("one", "two")}
        assert len(pins) == 2
    finally:
        manager.destroy_all()


def test_a_guest_command_in_a_vm_whose_directory_is_gone_names_the_directory_not_the_program(lab_root, tmp_path):
    manager = Manager(lab_root)
    try:
        manager.deploy("gone", deployment_properties(credentials.EnrollmentSecrets.generate()))
        directory = manager.appliance("gone").directory
        directory.rename(tmp_path / "moved")
        with pytest.raises(LabError) as info:
            manager.guest_command("gone", ["firsttrust-agent", "show-identity"])
        message = str(info.value)
        assert str(directory) in message and "No such file or directory" in message, message
        assert "\n" not in message
    finally:
        (tmp_path / "moved").rename(directory)
        manager.destroy_all()


def test_a_vm_of_the_data_center_that_fails_first_boot_fails_the_deployment_in_one_line(lab_root, tmp_path):
    manager = Manager(lab_root)
    with DataCenter.start(manager) as datacenter:
        planned = plan_deployment(datacenter.vcsim.url, TEMPLATE, ["empty"], enroll=False).appliances[0]
        # Nothing injected: the agent's first boot refuses, and says why.
        plan = DeployPlan(datacenter.vcsim.url, TEMPLATE, (dataclasses.replace(planned, extra_config=()),),
                          enroll=False)
        (tmp_path / "secrets").mkdir()
        with pytest.raises(LabError) as info:
            datacenter.deploy(plan, tmp_path / "secrets")
    message = str(info.value)
    assert message.startswith("empty: did not boot: ") and "no firsttrust properties found" in message
    assert "\n" not in message
    assert manager.running() == []
