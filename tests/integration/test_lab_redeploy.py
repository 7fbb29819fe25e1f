"""Issue 28's first case, in the lab as a user ran it: `firsttrust-lab up 1`, enroll app-01, `down`,
`up 1` again, enroll again with the new secrets file: refused naming the change (exit 3), and
`--replace` pins the new appliance. `up` writes targets.csv in name order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_lab import lab_root  # noqa: F401 - the fixture

from firsttrust.lab.cli import main as lab
from firsttrust.requester.truststore import TrustStore

FIRSTTRUST = [sys.executable, "-m", "firsttrust.requester.cli"]


def test_a_redeployed_lab_appliance_is_refused_naming_the_change_and_replace_pins_it(lab_root, tmp_path, capsys):
    env = {**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")}
    secrets = lab_root / "secrets"
    try:
        assert lab(["up", "1", "--root", str(lab_root)]) == 0
        capsys.readouterr()
        lines = (secrets / "targets.csv").read_text().splitlines()
        assert lines == ["name,address,secrets", "app-01,127.0.0.2:8790,app-01.json"]
        enrolled = subprocess.run([*FIRSTTRUST, "enroll", "--targets", str(secrets / "targets.csv"), "--json"],
                                  env=env, capture_output=True, text=True, timeout=300)
        assert enrolled.returncode == 0, enrolled.stderr
        old = TrustStore(tmp_path / "home").get("app-01")
        old_id = json.loads((secrets / "app-01.json").read_text())["deployment_id"]
        assert old.deployment_id == old_id
        address = lines[1].split(",")[1]

        assert lab(["down", "--root", str(lab_root)]) == 0
        assert not (secrets / "targets.csv").exists()
        assert lab(["up", "1", "--root", str(lab_root)]) == 0  # redeployed: the same name and address
        capsys.readouterr()
        new_id = json.loads((secrets / "app-01.json").read_text())["deployment_id"]
        command = [*FIRSTTRUST, "enroll", address, "--secrets", str(secrets / "app-01.json"), "--name", "app-01"]
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 3, refused.stderr
        assert old_id in refused.stderr and new_id in refused.stderr and old.pin in refused.stderr
        assert "--replace" in refused.stderr and "redeployed" in refused.stderr

        called = subprocess.run([*FIRSTTRUST, "call", "app-01", "GET", "/v1/identity"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert called.returncode == 3 and "looks redeployed or reset" in called.stderr, called.stderr

        replaced = subprocess.run([*command, "--replace"], env=env, capture_output=True, text=True, timeout=300)
        assert replaced.returncode == 0, replaced.stderr
        new = TrustStore(tmp_path / "home").get("app-01")
        assert new.pin != old.pin and new.deployment_id == new_id
        called = subprocess.run([*FIRSTTRUST, "call", "app-01", "GET", "/v1/identity"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert called.returncode == 0 and json.loads(called.stdout)["pin"] == new.pin, called.stderr
    finally:
        lab(["down", "--root", str(lab_root)])
