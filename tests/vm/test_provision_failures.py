"""First boot without usable deployment properties: provisioning fails loudly and writes nothing.

Each test boots its own VM (test image) and checks, on the serial console (with the journal
forwarded to it) and from inside over SSH, that firsttrust-provision.service failed with one clear
line, that the appliance says "unprovisioned", and that nothing was half-written.
"""

from __future__ import annotations

import pytest

from harness import VM
from appliance_checks import agent_lines, assert_no_secret_leaked, listening_ports, provision_outcome

UNPROVISIONED_EXIT = 3  # agent/cli.py: EXIT_NOT_PROVISIONED


def assert_nothing_written(vm: VM) -> None:
    status = vm.ssh("firsttrust-agent status", check=False)
    assert status.returncode == UNPROVISIONED_EXIT, status.stdout + status.stderr
    assert status.stdout.startswith("unprovisioned")
    # The units' StateDirectory= creates /var/lib/firsttrust; it must stay empty.
    leftovers = vm.ssh("find /var/lib/firsttrust /etc/firsttrust -mindepth 1 ! -name agent.toml", check=False).stdout
    assert leftovers.split() == [], f"written despite the failure: {leftovers}"
    # The admin account stays locked: no password was set.
    assert vm.ssh("getent shadow admin").stdout.split(":")[1].startswith("!")
    # An appliance whose provisioning failed does not listen at all (systemd/*.socket).
    assert listening_ports(vm) == set()


@pytest.mark.vm
def test_malformed_ovf_env_fails_provisioning_with_a_clear_message(boot, deployment, ovf_iso):
    document = deployment["ovf_env"].read_bytes()
    broken = document[: document.rindex(b"</Environment>")]  # secrets inside, root never closed
    vm = boot(iso=ovf_iso(broken))

    assert provision_outcome(vm) == "failed", agent_lines(vm)
    vm.wait_for(r"firsttrust-agent: error: .*(not well-formed|XML)", 30, label="error line")
    vm.wait_for_ssh()
    assert_nothing_written(vm)
    assert_no_secret_leaked(vm, deployment["sec_a"], deployment["sec_b"])
    assert vm.shutdown()


@pytest.mark.vm
def test_no_ovf_environment_fails_provisioning_and_stays_unprovisioned(boot):
    vm = boot(iso=None)

    assert provision_outcome(vm) == "failed", agent_lines(vm)
    vm.wait_for(r"firsttrust-agent: error: no firsttrust properties found", 30, label="error line")
    vm.wait_for_ssh()
    assert_nothing_written(vm)
    assert vm.shutdown()
