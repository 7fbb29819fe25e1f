"""kill -9 between every provisioning step; a rerun completes and leaves no partial file."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from firsttrust.agent.sources.ovfenv import serialize_ovf_env
from firsttrust import deployment as keys
from firsttrust.srp6a import compute_verifier
from firsttrust.lab import vmware_emulator

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["identity", "password", "sec-b", "authorized", "state", "publish", "scrub"]

# Runs the real CLI with the provisioning checkpoint replaced by a SIGKILL at one step.
KILLER = """
import os, signal, sys
import firsttrust.agent.provision as p
target = sys.argv[1]
def checkpoint(step):
    if step == target:
        os.kill(os.getpid(), signal.SIGKILL)
p._no_checkpoint = checkpoint
from firsttrust.agent.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run(args, env, kill_at=None):
    argv = [sys.executable, "-c", KILLER, kill_at or "-"] + args
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_step_then_rerun_completes(tmp_path, secrets, requester_identity, step):
    vm = tmp_path / "vm.json"
    vmware_emulator.create_vm(vm, {"guestinfo.ovfEnv": serialize_ovf_env({
        keys.SEC_A: secrets.sec_a, keys.SEC_B: secrets.sec_b}).decode()})
    env = {**os.environ, vmware_emulator.ENV_VAR: str(vm),
           "PATH": vmware_emulator.guest_tools_path(os.environ['PATH'])}
    state_dir = tmp_path / "s"
    args = ["provision", "--state-dir", str(state_dir), "--no-set-password"]
    killed = run(args, env, kill_at=step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = run(args, env)
    assert finished.returncode == 0, finished.stderr
    # consistent, complete state
    assert not list(state_dir.glob(".*.tmp")), "a temp file survived the rerun"
    state = json.loads((state_dir / "state.json").read_text())
    assert state["phase"] == "provisioned"
    assert compute_verifier(secrets.sec_a.encode(), bytes.fromhex(state["srp_salt"])).hex() == state["srp_verifier"]
    assert (state_dir / "sec-b").read_text() == secrets.sec_b
    pin = subprocess.run([sys.executable, "-m", "firsttrust.agent.cli", "show-identity", "--format", "pin", "--state-dir",
                          str(state_dir)], capture_output=True, text=True, cwd=ROOT, timeout=60).stdout.strip()
    assert pin.startswith("sha256:")
    data = vmware_emulator.read_vm(vm)
    if step != "scrub":  # killed before scrubbing: the rerun still scrubbed
        assert secrets.sec_a not in data["guestinfo"]["guestinfo.ovfEnv"]
    assert state["scrub"]["result"] == "done"
    # whatever the crash point, SEC-A reached no file, log line or argv
    blob = b"".join(p.read_bytes() for p in state_dir.rglob("*") if p.is_file())
    assert secrets.sec_a.encode() not in blob
    for text in (killed.stdout, killed.stderr, finished.stdout, finished.stderr, json.dumps(data["argv_log"])):
        assert secrets.sec_a not in text and secrets.sec_b not in text
