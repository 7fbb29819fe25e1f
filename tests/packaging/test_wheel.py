"""The Python distributions: the sdist, the wheel built from it, and that wheel installed in a fresh venv.

One build per session (`python -m build --no-isolation`: offline, about 5 s; it builds the sdist,
then the wheel from the unpacked sdist, so a file missing from the sdist is missing from the wheel
too). The fresh venv gets the wheel alone (`--no-deps --no-index`); its dependencies come from the
test venv's site-packages through PYTHONPATH, which holds no `firsttrust` of its own (the editable
install is a `.pth` hook that PYTHONPATH does not run), so what is imported is the wheel's copy.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import firsttrust

REPO = Path(__file__).resolve().parents[2]
CLIS = ("firsttrust", "firsttrust-agent", "firsttrust-lab")
LAB_LAUNCHERS = ("vmtoolsd", "vmware-rpctool")


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def _only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"{pattern} in {directory}: {found}"
    return found[0]


@pytest.fixture(scope="session")
def wheel(dist: Path) -> Path:
    return _only(dist, f"firsttrust-{firsttrust.__version__}-py3-none-any.whl")


def top_level_names(wheel: Path) -> set[str]:
    """What installing the wheel adds to site-packages: the first component of every RECORDed path."""
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/", 1)[0] for name in archive.namelist()}


def test_the_wheel_adds_one_package_firsttrust(wheel: Path) -> None:
    assert top_level_names(wheel) == {"firsttrust", f"firsttrust-{firsttrust.__version__}.dist-info"}
    with zipfile.ZipFile(wheel) as archive:
        info = f"firsttrust-{firsttrust.__version__}.dist-info"
        assert archive.read(f"{info}/top_level.txt").decode().split() == ["firsttrust"]
        names = set(archive.namelist())
        # The three halves are inside, under the one import name, and nothing compiled is.
        for module in ("firsttrust/enrollment.py", "firsttrust/agent/cli.py", "firsttrust/agent/sources/guestinfo.py",
                       "firsttrust/requester/cli.py", "firsttrust/lab/cli.py"):
            assert module in names
        assert not [name for name in names if name.endswith((".pyc", ".pyo")) or "__pycache__" in name]
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        for script, target in (("firsttrust", "firsttrust.requester.cli:main"),
                               ("firsttrust-agent", "firsttrust.agent.cli:main"),
                               ("firsttrust-lab", "firsttrust.lab.cli:main")):
            assert f"{script} = {target}" in entry_points


def test_the_lab_launchers_are_executable_in_the_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for launcher in LAB_LAUNCHERS:
            mode = archive.getinfo(f"firsttrust/lab/bin/{launcher}").external_attr >> 16
            assert mode & 0o111 == 0o111, f"{launcher}: mode {oct(mode)}"


def test_the_sdist_holds_the_source_tree(dist: Path) -> None:
    """The sdist is a source release: besides the packages, what builds the .debs and runs the tests."""
    sdist = _only(dist, f"firsttrust-{firsttrust.__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for path in ("pyproject.toml", "README.md", "Makefile", "agent/cli.py", "requester/cli.py", "lab/bin/vmtoolsd",
                 "firsttrust/enrollment.py", "systemd/firsttrust-agent.service", "packaging/deb/build.sh",
                 "packaging/man/generate.py",
                 "docs/protocol.md", "tests/conftest.py"):
        assert path in names, f"{path} is not in the sdist"
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and nothing else (no pip either)."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q",
                    "--no-deps", "--no-index", "--no-compile", str(wheel)],
                   check=True, timeout=120, capture_output=True)
    return venv


def _env() -> dict[str, str]:
    """The dependencies (aiohttp, cryptography, srp, ...) from this venv; firsttrust from the wheel."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _site(venv: Path) -> Path:
    return _only(venv / "lib", "python3*") / "site-packages"


def test_the_installed_wheel_adds_only_firsttrust(installed: Path) -> None:
    added = {entry.name for entry in _site(installed).iterdir()}
    assert added == {"firsttrust", f"firsttrust-{firsttrust.__version__}.dist-info"}


@pytest.mark.parametrize("cli", CLIS)
def test_every_cli_of_the_installed_wheel_says_its_version(installed: Path, cli: str) -> None:
    result = subprocess.run([str(installed / "bin" / cli), "--version"], capture_output=True, text=True,
                            env=_env(), timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{cli} {firsttrust.__version__}\n", "")


def test_the_installed_wheel_is_what_runs(installed: Path) -> None:
    """Not the checkout: the package the CLIs import is the venv's copy, launchers included."""
    code = ("import firsttrust, firsttrust.agent.cli, firsttrust.requester.cli, firsttrust.lab.cli, "
            "firsttrust.lab.vmware_emulator as e; print(firsttrust.__file__); print(e.bin_dir())")
    result = subprocess.run([str(installed / "bin/python"), "-c", code], capture_output=True, text=True,
                            env=_env(), cwd=installed, timeout=60)
    assert result.returncode == 0, result.stderr
    package_file, bin_directory = result.stdout.split()
    assert Path(package_file).is_relative_to(_site(installed) / "firsttrust")
    for launcher in LAB_LAUNCHERS:
        path = Path(bin_directory) / launcher
        assert path.is_relative_to(_site(installed)) and path.stat().st_mode & stat.S_IXUSR, path
