"""The interpreter appliances run the agent on: Debian 12's /usr/bin/python3 with Debian's own
python3-* packages (aiohttp 3.8.4, cryptography 38, srp 1.0.20), not the development venv's
wheels (whose cryptography carries its own OpenSSL).

`debian_python()` installs the missing packages with apt (as root; nothing when all are there),
then makes build/bench/debian12-venv: a venv with --system-site-packages, so Debian's packages
are what it imports (made once, redone when pyproject.toml changes). firsttrust itself is laid
out as the .deb installs it, on every run: the package tree (firsttrust/, firsttrust/common/, firsttrust/agent/,
firsttrust/requester/) copied to build/bench/debian12-tree, byte-compiled by Debian's python3
as the package's postinst does (py3compile), and put on the venv's path by a .pth file. Not an
editable install: its import hook costs ~20 ms of start-up (pathlib, importlib.util) that no
appliance pays, and without bytecode every start would compile the sources again.
Returns None (and says why) when that is impossible, e.g. not Debian or not root with
packages missing; the bench then uses its own interpreter.
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
TREE = ROOT / "build" / "bench" / "debian12-tree"
# Where each part of the source tree is installed (pyproject.toml's package-dir; the lab is not
# on appliances).
LAYOUT = {"firsttrust": "firsttrust", "common": "firsttrust/common", "agent": "firsttrust/agent",
          "requester": "firsttrust/requester"}


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
    # Redone when the dependencies or this way of installing change.
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + b"\0package tree by .pth").hexdigest()
    if not (python.exists() and stamp.exists() and stamp.read_text() == want):
        shutil.rmtree(VENV, ignore_errors=True)
        if subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--system-site-packages", str(VENV)]).returncode:
            return None, f"could not make {VENV}"
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        Path(site, "firsttrust-bench.pth").write_text(f"{TREE}\n")
        stamp.write_text(want)
    _install_tree()
    if subprocess.run([str(SYSTEM_PYTHON), "-m", "compileall", "-q", str(TREE)], stdout=subprocess.DEVNULL).returncode:
        return None, f"Debian's python3 could not byte-compile {TREE}"
    return str(python), (f"{SYSTEM_PYTHON} (Debian's python3-* packages) via {VENV.relative_to(ROOT)}, "
                         f"firsttrust as installed by the .deb in {TREE.relative_to(ROOT)}")


def _install_tree() -> None:
    """Copy the sources into TREE in the installed package layout (fresh each run: the sources
    may have changed; the agent runs with its working directory outside the checkout, so the
    checkout's own firsttrust/ cannot shadow it)."""
    shutil.rmtree(TREE, ignore_errors=True)
    for source, target in LAYOUT.items():
        shutil.copytree(ROOT / source, TREE / target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
