"""From the host, as bring-up code would: enroll the freshly booted appliance, call its API over
pinned mTLS, ssh in with a known_hosts made from the enrollment (no trust on first use), check the
inside, reboot, and check that nothing re-armed. Prints the three durations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from appliance_checks import agent_lines, provision_outcome
from conftest import IMAGE_BUILD_SECONDS

from harness import AGENT_PORT, API_PORT


def firsttrust(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).parent / "firsttrust"
    result = subprocess.run([str(cli) if cli.exists() else "firsttrust", *args], capture_output=True, text=True,
                            env={**os.environ, "FIRSTTRUST_HOME": str(home)}, timeout=180, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"firsttrust {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def pinned_ssh(vm, user: str, key: Path, known_hosts: Path, command: str) -> subprocess.CompletedProcess:
    """ssh that trusts only the host keys firsttrust pinned: StrictHostKeyChecking=yes, no prompt."""
    return subprocess.run(["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(vm.port(22)),
                           "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                           "-o", f"UserKnownHostsFile={known_hosts}", "-o", "LogLevel=ERROR",
                           "-o", "ConnectTimeout=20", f"{user}@127.0.0.1", "--", command],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.vm
def test_enroll_call_ssh_without_tofu_then_reboot(boot, deployment, ovf_iso, ssh_key, tmp_path):
    home = tmp_path / "requester-home"
    vm = boot(iso=ovf_iso(deployment["ovf_env"]))
    assert provision_outcome(vm) == "ok", f"firsttrust-provision.service failed:\n{agent_lines(vm)}"
    # Type=notify: systemd prints "Started" only once the agent has sent READY=1.
    vm.wait_for(r"Started firsttrust-agent\.service", 300, label="agent READY")
    boot_to_ready = vm.uptime()

    # 1. enroll with the secrets and an SSH key, as the requester would
    enrolled = firsttrust("enroll", f"127.0.0.1:{vm.port(AGENT_PORT)}", "--secrets", str(deployment["secrets"]),
                          "--name", "app", "--ssh-key", f"{ssh_key}.pub",
                          "--api-address", f"127.0.0.1:{vm.port(API_PORT)}", home=home)
    power_on_to_pinned = vm.uptime()
    pin = enrolled.stdout.split()[-1]

    # 2. the API over pinned mutual TLS
    identity = json.loads(firsttrust("call", "app", "GET", "/v1/identity", home=home).stdout)
    assert identity["pin"] == pin

    # 3. ssh with StrictHostKeyChecking=yes and a known_hosts made by firsttrust: no prompt, no TOFU
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(firsttrust("pins", "export", "app", "--format", "known_hosts", "--ssh-port",
                                      str(vm.port(22)), home=home).stdout)
    admin = pinned_ssh(vm, "admin", ssh_key, known_hosts, "id -un")
    assert admin.returncode == 0 and admin.stdout.strip() == "admin", admin.stderr
    stranger_hosts = tmp_path / "other_known_hosts"
    stranger_hosts.write_text(f"[127.0.0.1]:{vm.port(22)} ssh-ed25519 "
                              "AAAAC3NzaC1lZDI1NTE5AAAAIHRoaXMtaXMtbm90LXRoZS1hcHBsaWFuY2Uta2V5MDA=\n")
    assert pinned_ssh(vm, "admin", ssh_key, stranger_hosts, "true").returncode != 0  # a wrong pin is refused

    # 4. inside (root: the test image's fw_cfg key; same pinned known_hosts)
    def inside(command: str) -> str:
        result = pinned_ssh(vm, "root", ssh_key, known_hosts, command)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        return result.stdout

    verify = ("python3 -W ignore -c 'import crypt,sys; h=open(\"/etc/shadow\").read().split(\"admin:\")[1]"
              ".split(\":\")[0]; print(crypt.crypt(sys.stdin.read(), h) == h)'")
    checked = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(ssh_key), "-p", str(vm.port(22)),
                              "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                              "-o", f"UserKnownHostsFile={known_hosts}", "-o", "LogLevel=ERROR",
                              "root@127.0.0.1", "--", verify], input=deployment["sec_a"], capture_output=True,
                             text=True, timeout=120)
    assert checked.stdout.strip() == "True", checked.stderr  # SEC-A went over stdin, not argv
    assert inside("test -e /var/lib/firsttrust/sec-b && stat -c %a /var/lib/firsttrust/sec-b || echo gone"
                  ).strip() in ("gone", "600")
    assert inside("systemctl is-active firsttrust-agent.service").strip() == "active"
    events = [json.loads(line) for line in inside("journalctl -o json FIRSTTRUST_EVENT=enrolled").splitlines()]
    assert events and events[-1]["FIRSTTRUST_OUTCOME"] == "enrolled"
    status = json.loads(inside("firsttrust-agent status --json"))
    assert status["phase"] == "enrolled" and status["scrub"]["result"] == "impossible"
    assert status["pin"] == pin

    # 5. reboot: no re-provisioning, same pin, the old secrets refused
    assert vm.reboot(), "the guest did not power off on the ACPI power button"
    assert provision_outcome(vm) == "ok", f"provision failed after reboot:\n{agent_lines(vm)}"
    vm.wait_for(r"Started firsttrust-agent\.service", 300, label="agent READY after reboot")
    after = json.loads(firsttrust("call", "app", "GET", "/v1/identity", home=home).stdout)
    assert after["pin"] == pin
    again = firsttrust("enroll", f"127.0.0.1:{vm.port(AGENT_PORT)}", "--secrets", str(deployment["secrets"]),
                       "--name", "app-again", home=home, check=False)
    assert again.returncode == 1 and "already_enrolled" in again.stderr, again.stderr
    status_after = json.loads(inside("firsttrust-agent status --json"))
    assert status_after["provisioned_at"] == status["provisioned_at"] and status_after["phase"] == "enrolled"
    vm.shutdown()

    build = IMAGE_BUILD_SECONDS[0] if IMAGE_BUILD_SECONDS else float("nan")
    summary = (f"image build {build:.1f} s; boot to agent READY {boot_to_ready:.1f} s; "
               f"power-on to pinned {power_on_to_pinned:.1f} s")
    print(f"\nDURATIONS: {summary}")
    (vm.dir / "durations.txt").write_text(summary + f"\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
