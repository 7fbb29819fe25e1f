"""What the VM tests look for on the appliance's console and inside it (shared by tests/vm)."""

from __future__ import annotations

from harness import AGENT_PORT, API_PORT, VM

BOOT_TIMEOUT = 600  # ~20-45 s on an idle host under TCG; other test sessions may share the CPUs
PROVISION = {"ok": r"Finished firsttrust-provision\.service", "failed": r"Failed to start firsttrust-provision\.service"}
MULTI_USER = r"Reached target multi-user\.target"


def agent_lines(vm: VM) -> str:
    return "\n".join(line for line in vm.console().splitlines() if "firsttrust" in line)


def provision_outcome(vm: VM) -> str:
    outcome, _ = vm.wait_for_any(PROVISION, BOOT_TIMEOUT)
    vm.wait_for(MULTI_USER, BOOT_TIMEOUT, label="multi-user")
    return outcome


def assert_no_secret_leaked(vm: VM, *secrets: str) -> None:
    console = vm.console()
    journal = vm.ssh("journalctl -b --no-pager -o cat").stdout
    for name, secret in zip(("SEC-A", "SEC-B"), secrets):
        assert secret not in console, f"{name} on the serial console"
        assert secret not in journal, f"{name} in the journal"


def listening_ports(vm: VM) -> set[int]:
    """Which of the agent's TCP ports (8790, 8791) something listens on in the guest."""
    out = vm.ssh(f"ss -Hltn '( sport = :{AGENT_PORT} or sport = :{API_PORT} )'").stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}
