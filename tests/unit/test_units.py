"""systemd/*.service: how the two units relate, and what systemd-analyze says about them.

`systemd-analyze verify` refuses a unit whose ExecStart= binary does not exist, and
/usr/bin/firsttrust-agent exists only once the package is installed. So the tests verify copies
of the units, in tmp_path, whose ExecStart= points at a stub executable there; nothing else in
the copies changes. (--root= does not help: verify and security then look for the unit itself
under the root.) systemd-analyze comes with Debian's `systemd` package, which `make test`
installs; without it those tests are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parents[2] / "systemd"
AGENT = "firsttrust-agent.service"
PROVISION = "firsttrust-provision.service"
INSTALLED_BINARY = "/usr/bin/firsttrust-agent"

# `systemd-analyze security` exposure (0 = perfect, 10 = unprotected). The target is 2.0; this
# design measures 2.1: the agent is root with CAP_CHOWN and CAP_DAC_OVERRIDE (it writes the
# account's authorized_keys) and binds its own TCP ports (no PrivateNetwork=). The unit's comment
# block lists what would go below 2.0. A change that raises the score fails here.
MAX_AGENT_EXPOSURE = 2.1

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze not installed (Debian package systemd)")


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) lists: keys may repeat (After=, ...)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {raw!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {raw!r} is not key=value"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    """All space-separated values of `key` in `section`, in order."""
    return [word for k, v in unit.get(section, []) if k == key for word in v.split()]


@pytest.fixture(scope="module")
def agent():
    return parse_unit(UNIT_DIR / AGENT)


@pytest.fixture(scope="module")
def provision():
    return parse_unit(UNIT_DIR / PROVISION)


@pytest.fixture
def testable_units(tmp_path):
    """Copies of both units whose ExecStart= runs a stub that exists (see the module docstring)."""
    stub = tmp_path / "firsttrust-agent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    for name in (AGENT, PROVISION):
        text = (UNIT_DIR / name).read_text(encoding="utf-8")
        assert f"ExecStart={INSTALLED_BINARY} " in text
        (tmp_path / name).write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={stub} "))
    return tmp_path


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60)


# --- how the units relate ----------------------------------------------------------------------

def test_the_agent_requires_provisioning_and_starts_after_it(agent, provision):
    assert PROVISION in values(agent, "Unit", "Requires")
    assert PROVISION in values(agent, "Unit", "After")
    assert AGENT in values(provision, "Unit", "Before")


def test_the_agent_is_a_notify_service_with_a_watchdog(agent):
    assert values(agent, "Service", "Type") == ["notify"]
    assert values(agent, "Service", "NotifyAccess") == ["main"]
    assert values(agent, "Service", "WatchdogSec") == ["30"]
    assert values(agent, "Service", "Restart") == ["on-failure"]
    assert values(agent, "Service", "ExecStart") == [INSTALLED_BINARY, "serve"]


def test_provisioning_is_a_oneshot_that_runs_every_boot_with_a_time_limit(provision):
    assert values(provision, "Service", "Type") == ["oneshot"]
    assert values(provision, "Service", "RemainAfterExit") == ["yes"]
    assert values(provision, "Service", "ExecStart") == [INSTALLED_BINARY, "provision"]
    assert values(provision, "Install", "WantedBy") == ["multi-user.target"]
    # A oneshot has no start timeout by default: a stalled channel would hold the boot forever.
    assert values(provision, "Service", "TimeoutStartSec") not in ([], ["infinity"], ["0"])


def test_both_units_share_the_private_state_directory(agent, provision):
    for unit in (agent, provision):
        assert values(unit, "Service", "StateDirectory") == ["firsttrust"]
        assert values(unit, "Service", "StateDirectoryMode") == ["0700"]


def test_provisioning_can_read_the_ovf_environment_cdrom(provision):
    # PrivateDevices= would hide /dev/sr0 from the ISO transport.
    assert values(provision, "Service", "PrivateDevices") in ([], ["no"])
    assert "block-sr" in values(provision, "Service", "DeviceAllow")


# --- systemd-analyze ---------------------------------------------------------------------------

@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_both_units(testable_units):
    run = analyze("verify", str(testable_units / PROVISION), str(testable_units / AGENT))
    # verify exits 0 on warnings such as an unknown key; any output at all is a finding.
    assert run.returncode == 0 and run.stdout == "" and run.stderr == "", run.stdout + run.stderr


@needs_systemd_analyze
def test_systemd_analyze_verify_reports_a_broken_unit(testable_units):
    unit = testable_units / AGENT
    unit.write_text(unit.read_text().replace("WatchdogSec=30", "WatchdogSec=30\nWatchdogSecs=30"))
    run = analyze("verify", str(testable_units / PROVISION), str(unit))
    assert "WatchdogSecs" in run.stdout + run.stderr


def exposure(run: subprocess.CompletedProcess, unit: str) -> float:
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", run.stdout)
    assert match, run.stdout[-2000:] + run.stderr
    return float(match.group(1))


@needs_systemd_analyze
def test_the_agent_sandbox_exposure(testable_units):
    run = analyze("security", "--offline=true", str(testable_units / AGENT))
    assert run.returncode == 0, run.stderr
    assert exposure(run, AGENT) <= MAX_AGENT_EXPOSURE


@needs_systemd_analyze
def test_the_exposure_check_can_fail(testable_units):
    unit = testable_units / AGENT
    unit.write_text(re.sub(r"^(PrivateDevices|ProtectSystem|SystemCallFilter|CapabilityBoundingSet)=.*$", "",
                           unit.read_text(), flags=re.MULTILINE))
    run = analyze("security", "--offline=true", str(unit))
    assert exposure(run, AGENT) > MAX_AGENT_EXPOSURE
