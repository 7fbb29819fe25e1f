"""Issue 28: the packages install with one apt line (README.md), the requester's vSphere deployer
comes with them (python3-pyvmomi recommended), and a half alone says which package it lacks.

apt-get's simulation (-s) resolves against this machine's package lists and installs nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_deb import AGENT, CORE, REQUESTER, debs, field  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None,
                                reason="not Debian")


def simulate(*packages: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "install", "-s", "-q", *(f"./{p.name}" for p in packages)],
                          cwd=packages[0].parent, capture_output=True, text=True, timeout=300)


def test_the_readme_s_one_apt_line_installs_both_halves_and_debian_s_pyvmomi(debs):  # noqa: F811
    if subprocess.run(["apt-cache", "show", "python3-aiohttp"], capture_output=True).returncode != 0:
        pytest.skip("no Debian package lists here (apt-get update)")
    result = simulate(debs[CORE], debs[REQUESTER], debs[AGENT])
    assert result.returncode == 0, result.stdout + result.stderr
    installed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("Inst ")}
    assert {CORE, REQUESTER, AGENT} <= installed
    assert field(debs[REQUESTER], "Recommends") == "python3-pyvmomi (>= 6.7.1)"  # Debian 12's deploys
    pyvmomi = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "python3-pyvmomi"], capture_output=True, text=True)
    assert "python3-pyvmomi" in installed or "install ok installed" in pyvmomi.stdout
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "apt-get install ./build/python3-firsttrust_*.deb ./build/firsttrust-requester_*.deb " \
           "./build/firsttrust-agent_*.deb" in readme


def test_a_half_without_the_core_in_the_same_line_names_it(debs):  # noqa: F811
    result = simulate(debs[REQUESTER])
    assert result.returncode != 0 and "python3-firsttrust" in result.stdout + result.stderr
