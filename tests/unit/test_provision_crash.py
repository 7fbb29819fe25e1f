"""kill -9 between every provisioning step; a rerun completes and leaves a consistent appliance.

Every step does something here: the deployment carries SEC-A, SEC-B and an injected requester
certificate, and the password step sets a throwaway account's real password with chpasswd. The
killed run is checked to have done its step (so the kill really was after it), and the rerun
to have done all of them: password, SEC-B, verifier, authorized key (once), identity and its
published certificate (the same pin everywhere), scrubbed guestinfo, no temp file, no secret in
any output, argv or file but sec-b."""

import base64
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest

from firsttrust import deployment as keys
from firsttrust.agent.sources.ovfenv import serialize_ovf_env
from firsttrust.identity import pin_of_certificate, certificate_der
from firsttrust.lab import vmware_emulator
from firsttrust.srp6a import compute_verifier

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["identity", "password", "sec-b", "authorized", "state", "publish", "scrub"]

# Runs the real CLI, its call of provision() given the documented `checkpoint` hook: a SIGKILL at one step.
KILLER = """
import functools, os, signal, sys
import firsttrust.agent.provision as p
target = sys.argv[1]
def checkpoint(step):
    if step == target:
        os.kill(os.getpid(), signal.SIGKILL)
p.provision = functools.partial(p.provision, checkpoint=checkpoint)
from firsttrust.agent.cli import main
sys.exit(main(sys.argv[2:]))
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a throwaway account")


def run(args, env, kill_at=None):
    argv = [sys.executable, "-c", KILLER, kill_at or "-"] + args
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def password_verifies(account: str, password: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    shadow = {line.split(":")[0]: line.split(":")[1] for line in Path("/etc/shadow").read_text().splitlines()}
    stored = shadow[account]
    return stored.startswith("$") and crypt.crypt(password, stored) == stored


@pytest.fixture
def account():
    name = "ft" + uuid.uuid4().hex[:10]
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, timeout=60)
    yield name
    subprocess.run(["userdel", name], check=False, timeout=60)
    assert name not in [entry.pw_name for entry in pwd.getpwall()]


def guestinfo(vm: Path) -> dict[str, str]:
    return vmware_emulator.read_vm(vm)["guestinfo"]


def published_pin(vm: Path) -> str | None:
    value = guestinfo(vm).get(keys.APPLIANCE_CERT_GUESTINFO)
    return pin_of_certificate(certificate_der(base64.b64decode(value))) if value else None


def authorized_pins(state_dir: Path) -> list[str]:
    path = state_dir / "authorized.json"
    return [entry["pin"] for entry in json.loads(path.read_text())["keys"]] if path.exists() else []


def identity_pin(state_dir: Path) -> str:
    return pin_of_certificate(certificate_der((state_dir / "identity.crt").read_bytes()))


def secrets_left_in_guestinfo(vm: Path, secrets) -> bool:
    return any(secrets.sec_a in value or secrets.sec_b in value for value in guestinfo(vm).values())


# What each step has visibly done once the process is killed right after it.
DONE_BY_STEP = {
    "identity": lambda c: (c.state_dir / "identity.key").exists() and (c.state_dir / "identity.crt").exists(),
    "password": lambda c: password_verifies(c.account, c.secrets.sec_a),
    "sec-b": lambda c: (c.state_dir / "sec-b").read_text() == c.secrets.sec_b,
    "authorized": lambda c: authorized_pins(c.state_dir) == [c.requester.pin],
    "state": lambda c: json.loads((c.state_dir / "state.json").read_text())["phase"] == "provisioned",
    "publish": lambda c: published_pin(c.vm) == identity_pin(c.state_dir),
    "scrub": lambda c: not secrets_left_in_guestinfo(c.vm, c.secrets),
}


class Case:
    def __init__(self, tmp_path, secrets, requester, account):
        self.secrets, self.requester, self.account = secrets, requester, account
        self.vm = tmp_path / "vm.json"
        self.state_dir = tmp_path / "s"


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_step_then_rerun_completes(tmp_path, secrets, requester_identity, account, step):
    case = Case(tmp_path, secrets, requester_identity, account)
    vmware_emulator.create_vm(case.vm, {"guestinfo.ovfEnv": serialize_ovf_env({
        keys.SEC_A: secrets.sec_a, keys.SEC_B: secrets.sec_b,
        keys.REQUESTER_CERT: requester_identity.cert_pem.decode()}).decode()})
    env = {**os.environ, vmware_emulator.ENV_VAR: str(case.vm),
           "PATH": vmware_emulator.guest_tools_path(os.environ['PATH'])}
    config = tmp_path / "agent.toml"
    config.write_text(f'account = "{account}"\n')
    args = ["provision", "--config", str(config), "--state-dir", str(case.state_dir)]

    killed = run(args, env, kill_at=step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert DONE_BY_STEP[step](case), f"the killed run had not done step {step!r}"
    if step in ("identity", "password", "sec-b"):  # not committed yet: nothing authorized
        assert authorized_pins(case.state_dir) == []

    finished = run(args, env)
    assert finished.returncode == 0, finished.stderr
    for name, done in DONE_BY_STEP.items():
        assert done(case), f"after a kill at {step!r}, the rerun did not do step {name!r}"
    assert not list(case.state_dir.glob(".*.tmp")), "a temp file survived the rerun"
    state = json.loads((case.state_dir / "state.json").read_text())
    assert state["phase"] == "provisioned" and state["password"] == "set"
    assert state["scrub"]["result"] == "done" and state["published"]["result"] == "done"
    assert compute_verifier(secrets.sec_a.encode(), bytes.fromhex(state["srp_salt"])).hex() == state["srp_verifier"]
    assert stat.S_IMODE((case.state_dir / "sec-b").stat().st_mode) == 0o600
    # One identity: the pin show-identity prints is the certificate's on disk and the one published.
    pin = subprocess.run([sys.executable, "-m", "firsttrust.agent.cli", "show-identity", "--format", "pin",
                          "--state-dir", str(case.state_dir)], capture_output=True, text=True, cwd=ROOT,
                         timeout=60).stdout.strip()
    assert pin == identity_pin(case.state_dir) == published_pin(case.vm)
    # Whatever the crash point, SEC-A reached no file; SEC-B only its own; no output or argv has either.
    for path in case.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secrets.sec_a.encode() not in data, path
            assert path.name == "sec-b" or secrets.sec_b.encode() not in data, path
    argv_log = json.dumps(vmware_emulator.read_vm(case.vm)["argv_log"])
    for text in (killed.stdout, killed.stderr, finished.stdout, finished.stderr, argv_log):
        assert secrets.sec_a not in text and secrets.sec_b not in text
