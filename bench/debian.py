"""The interpreter appliances run the agent on: Debian 12's /usr/bin/python3 with Debian's own
python3-* packages (aiohttp 3.8.4, cryptography 38, srp 1.0.20), not the development venv's
wheels (whose cryptography carries its own OpenSSL).

`debian_python()` installs the missing packages with apt (as root; nothing when all are there),
then makes build/bench/debian12-venv: a venv with --system-site-packages, so Debian's packages
are what it imports, plus firsttrust itself as an editable install without dependencies. Made
once, redone when pyproject.toml changes. Returns None (and says why) when that is impossible,
e.g. not Debian or not root with packages missing; the bench then uses its own interpreter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")
PACKAGES = ("python3-venv", "python3-srp", "python3-aiohttp", "python3-cryptography", "python3-openssl",
            "python3-defusedxml", "python3-systemd")
VENV = ROOT / "build" / "bench" / "debian12-venv"


def _missing(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for package in packages:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "install ok installed" not in status.stdout:
            missing.append(package)
    return missing


def debian_python() -> tuple[str | None, str]:
    """(path of the venv's python or None, one line saying what was used or why not)."""
    if not SYSTEM_PYTHON.exists() or shutil.which("dpkg-query") is None:
        return None, "no Debian /usr/bin/python3 here"
    missing = _missing(PACKAGES)
    if missing:
        if os.geteuid() != 0:
            return None, f"Debian packages missing and not root to install them: {' '.join(missing)}"
        print(f"installing Debian packages: {' '.join(missing)}", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "update", "-qq"], env=env).returncode or subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env).returncode:
            return None, f"apt-get could not install {' '.join(missing)}"
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not (python.exists() and stamp.exists() and stamp.read_text() == want):
        shutil.rmtree(VENV, ignore_errors=True)
        steps = [[str(SYSTEM_PYTHON), "-m", "venv", "--system-site-packages", str(VENV)],
                 [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)]]
        for step in steps:
            if subprocess.run(step, cwd=ROOT).returncode:
                return None, f"could not make {VENV} ({' '.join(step[:4])} failed)"
        stamp.write_text(want)
    return str(python), f"{SYSTEM_PYTHON} (Debian's python3-* packages) via {VENV.relative_to(ROOT)}"
