"""VM tests: the real appliance OVA's disk under QEMU with EFI firmware, real systemd (tests/vm/harness.py).

They are slow (an image and OVA build when their inputs changed, a minute or more per boot under
TCG) and need root, qemu-system-x86, ovmf and mmdebstrap, so they run only with FIRSTTRUST_VM_TESTS=1
(`make vm-test`); otherwise they are collected and skipped.

FIRSTTRUST_VM_UNITS_DIR=DIR builds the package with the unit files from DIR instead of systemd/;
FIRSTTRUST_VM_DEB=PATH installs that agent .deb instead of building one (and python3-firsttrust, the
core it depends on, from the same directory at the same version).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BUILD, VM, Image, build_image, ensure_ssh_key, make_ovf_iso  # noqa: E402

ENABLED = os.environ.get("FIRSTTRUST_VM_TESTS") == "1"


def pytest_configure(config):
    # Registered here until pyproject.toml's [tool.pytest.ini_options] markers has it.
    config.addinivalue_line("markers", "vm: boots the appliance image in QEMU (FIRSTTRUST_VM_TESTS=1 to run)")


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="VM test: set FIRSTTRUST_VM_TESTS=1 (make vm-test)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def appliance_image() -> Image:
    """The disk of the test variant of the appliance OVA (built, or taken from build/ova/<key>/)."""
    import time

    units = os.environ.get("FIRSTTRUST_VM_UNITS_DIR")
    deb = os.environ.get("FIRSTTRUST_VM_DEB")
    start = time.monotonic()
    image = build_image(variant="test", units_dir=Path(units) if units else None, deb=Path(deb) if deb else None)
    IMAGE_BUILD_SECONDS.append(time.monotonic() - start)
    return image


# How long the session's OVA build took, extraction included (a few seconds when cached).
IMAGE_BUILD_SECONDS: list[float] = []


@pytest.fixture(scope="session")
def ssh_key() -> Path:
    return ensure_ssh_key()


def _requester_command() -> str:
    # The requester CLI of the environment running the tests (.venv/bin/firsttrust under make).
    candidate = Path(sys.executable).parent / "firsttrust"
    return str(candidate) if candidate.exists() else "firsttrust"


@pytest.fixture
def deployment(tmp_path) -> dict:
    """A fresh deployment: secrets (firsttrust secrets new) and their OVF environment document
    (firsttrust deploy-spec --format ovf-env), as the requester makes them.

    Returns:
        {"secrets": path, "sec_a": str, "sec_b": str, "ovf_env": path}
    """
    import json

    cli = _requester_command()
    secrets = tmp_path / "secrets.json"
    ovf_env = tmp_path / "ovf-env.xml"
    subprocess.run([cli, "secrets", "new", "--out", str(secrets)], check=True, capture_output=True)
    subprocess.run([cli, "deploy-spec", "--secrets", str(secrets), "--format", "ovf-env", "--out", str(ovf_env)],
                   check=True, capture_output=True)
    values = json.loads(secrets.read_text())
    return {"secrets": secrets, "sec_a": values["sec_a"], "sec_b": values["sec_b"], "ovf_env": ovf_env}


@pytest.fixture
def ovf_iso(tmp_path):
    """make_ovf_iso(document) -> an "OVF ENV" ISO in this test's tmp_path."""
    counter = iter(range(1000))

    def make(document) -> Path:
        return make_ovf_iso(document, tmp_path / f"ovf-env-{next(counter)}.iso")

    return make


@pytest.fixture
def boot(request, appliance_image, ssh_key):
    """boot(**VM kwargs) -> a powered-on VM named after the test; killed at teardown.

    The serial console log stays in build/vm/<test name>/serial.log.
    """
    vms: list[VM] = []

    def start(*, suffix: str = "", **kwargs) -> VM:
        kwargs.setdefault("ssh_key", ssh_key)
        vm = VM(request.node.name + suffix, appliance_image, **kwargs)
        vms.append(vm)
        return vm

    yield start
    for vm in vms:
        vm.kill()
        print(f"\n{vm.name}: console log {vm.serial_log.relative_to(BUILD.parent)}; events:")
        for label, seconds in vm.events:
            print(f"  +{seconds:6.1f}s  {label}")


@pytest.fixture
def provisioned_appliance(boot, deployment, ovf_iso):
    """A VM provisioned at first boot from a fresh deployment's OVF ENV ISO, ready for enrollment.

    Yields (vm, deployment): enroll against 127.0.0.1:vm.port(8790) with deployment["secrets"],
    use the API at vm.port(8791); vm.ssh() runs commands in the guest as root.
    """
    from appliance_checks import agent_lines, provision_outcome

    vm = boot(iso=ovf_iso(deployment["ovf_env"]))
    assert provision_outcome(vm) == "ok", f"firsttrust-provision.service failed:\n{agent_lines(vm)}"
    vm.wait_for(r"Started firsttrust-agent\.service", 120, label="agent started")
    vm.wait_for_ssh()
    yield vm, deployment
