"""The appliance's first boot under QEMU: provisioning from the OVF ENV ISO, then a reboot.

One VM: power on with the CD-ROM vSphere's "ISO image" transport would attach, wait for
firsttrust-provision.service, check what it did from inside (root over SSH, test image only), then
power-cycle and check that the appliance keeps its identity. Timings land in
build/vm/<test>/events.log.
"""

from __future__ import annotations

import json
import re

import pytest

from appliance_checks import agent_lines, assert_no_secret_leaked, listening_ports, provision_outcome
from harness import AGENT_PORT, API_PORT


@pytest.mark.vm
def test_first_boot_provisions_from_the_ovf_env_iso_and_a_reboot_keeps_the_identity(boot, deployment, ovf_iso):
    sec_a, sec_b = deployment["sec_a"], deployment["sec_b"]
    vm = boot(iso=ovf_iso(deployment["ovf_env"]))

    outcome = provision_outcome(vm)
    assert outcome == "ok", f"firsttrust-provision.service failed:\n{agent_lines(vm)}"
    vm.wait_for_ssh()

    status = json.loads(vm.ssh("firsttrust-agent status --json").stdout)
    assert status["phase"] == "provisioned"
    assert status["source"].startswith("iso:")
    assert status["password"] == "set"
    assert status["window_open"] is True
    # The CD-ROM cannot be rewritten from the guest; not a VMware VM, so nothing to publish to.
    assert status["scrub"]["result"] == "impossible"
    assert status["published"]["result"] == "impossible"
    pin = vm.ssh("firsttrust-agent show-identity --format pin").stdout.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pin)
    assert status["pin"] == pin

    # SEC-A became the admin account's password (a crypt hash, no longer the locked "!").
    assert vm.ssh("getent shadow admin").stdout.split(":")[1].startswith("$")
    # Only the verifier is kept: SEC-A is nowhere in the agent's files. (SEC-B is, by design.)
    assert vm.ssh(f"grep -rlF -e '{sec_a}' /var/lib/firsttrust /etc/firsttrust", check=False).returncode == 1
    assert_no_secret_leaked(vm, sec_a, sec_b)

    # pysrp's fast backend loads from Debian's packages (firsttrust.srp6a, libssl.so.3).
    backend = vm.ssh("python3 -I -c 'from firsttrust import srp6a; print(srp6a.BACKEND)'").stdout.strip()
    assert backend == "openssl"
    # SSH host keys were made at this first boot (the image has none).
    host_keys = vm.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]
    cert_before = vm.ssh("sha256sum /etc/firsttrust/appliance.crt").stdout.split()[0]
    # Provisioning succeeded, so the sockets listen and the agent serves them.
    units = "firsttrust-enroll.socket firsttrust-api.socket firsttrust-agent.service"
    states = vm.ssh(f"systemctl is-active {units}", check=False).stdout.split()
    assert states == ["active"] * 3, dict(zip(units.split(), states))
    assert listening_ports(vm) == {AGENT_PORT, API_PORT}

    assert vm.reboot(), "the guest did not power off on the ACPI power button"
    assert provision_outcome(vm) == "ok", f"firsttrust-provision.service failed after reboot:\n{agent_lines(vm)}"
    vm.wait_for_ssh()
    status_after = json.loads(vm.ssh("firsttrust-agent status --json").stdout)
    assert status_after["provisioned_at"] == status["provisioned_at"], "the same secrets re-armed the appliance"
    assert vm.ssh("firsttrust-agent show-identity --format pin").stdout.strip() == pin
    assert vm.ssh("sha256sum /etc/firsttrust/appliance.crt").stdout.split()[0] == cert_before, \
        "the certificate was re-issued at reboot"
    assert vm.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1] == host_keys
    assert vm.shutdown(), "the guest did not power off on the ACPI power button"
