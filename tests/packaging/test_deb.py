"""The Debian packages (packaging/deb/build.sh): three of them, no file in two, lintian-clean, and
the split halves importing together on Debian's own python3 and python3-* packages.

One build per session into tmp (about 5 s). Needs dpkg-deb and Debian 12's python3 with
python3-aiohttp, -cryptography, -srp, -defusedxml, and lintian: `make test` installs them (the
Makefile's DEB_PACKAGES); without dpkg-deb (not Debian) the module is skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import firsttrust

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging/deb/build.sh"
DEB_PYTHON = "/usr/bin/python3"  # Debian's, not the test venv's: the packages run on it
SITE = "usr/lib/python3/dist-packages"
CORE, REQUESTER, AGENT = "python3-firsttrust", "firsttrust-requester", "firsttrust-agent"
VERSION = firsttrust.__version__  # a release version: the Debian version is the same string

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed (not Debian)")


def build(out: Path, *args: str) -> list[Path]:
    result = subprocess.run([str(BUILD), "--out-dir", str(out), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [Path(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = build(tmp_path_factory.mktemp("debs"))
    # The agent's comes last: packaging/image/build.sh and tests/vm take the last line.
    assert [path.name for path in paths] == [f"{name}_{VERSION}_all.deb" for name in (CORE, REQUESTER, AGENT)]
    return {name: path for name, path in zip((CORE, REQUESTER, AGENT), paths)}


def files_of(deb: Path) -> dict[str, tarfile.TarInfo]:
    """The package's files (not directories), by path without the leading './', from `dpkg-deb --fsys-tarfile`."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {member.name.removeprefix("./"): member for member in archive.getmembers() if not member.isdir()}


def listing(deb: Path) -> set[str]:
    """What `dpkg-deb -c` lists, directories left out."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].removeprefix("./") for line in out.splitlines() if not line.endswith("/")}


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_no_file_is_shipped_by_two_packages(debs: dict[str, Path]) -> None:
    lists = {name: listing(deb) for name, deb in debs.items()}
    for name, files in lists.items():
        assert files, f"{name} ships nothing"
        for other, other_files in lists.items():
            if other != name:
                assert not files & other_files, f"{name} and {other} both ship {sorted(files & other_files)}"


def test_each_package_holds_its_part_of_the_one_import_name(debs: dict[str, Path]) -> None:
    def modules(name: str) -> set[str]:
        return {path.removeprefix(f"{SITE}/") for path in files_of(debs[name]) if path.startswith(f"{SITE}/")}

    core = {path.name for path in (REPO / "firsttrust").glob("*.py")}
    common = {f"firsttrust/common/{p.relative_to(REPO / 'common')}" for p in (REPO / "common").rglob("*.py")}
    assert modules(CORE) == {f"firsttrust/{module}" for module in core} | common
    assert modules(REQUESTER) == {f"firsttrust/requester/{p.relative_to(REPO / 'requester')}"
                                  for p in (REPO / "requester").rglob("*.py")}
    assert modules(AGENT) == {f"firsttrust/agent/{p.relative_to(REPO / 'agent')}" for p in (REPO / "agent").rglob("*.py")}
    # Only firsttrust/ in dist-packages, and no byte-code anywhere (the postinst compiles).
    for name, deb in debs.items():
        for path in files_of(deb):
            assert not path.startswith(SITE) or path.startswith(f"{SITE}/firsttrust/"), (name, path)
            assert "__pycache__" not in path and not path.endswith((".pyc", ".pyo")), (name, path)


def test_the_commands_units_and_man_pages_are_where_debian_expects_them(debs: dict[str, Path]) -> None:
    requester, agent = files_of(debs[REQUESTER]), files_of(debs[AGENT])
    assert requester["usr/bin/firsttrust"].mode == 0o755
    assert agent["usr/bin/firsttrust-agent"].mode == 0o755
    assert {path for path in agent if path.startswith("lib/systemd/system/")} == {
        f"lib/systemd/system/{unit.name}" for unit in (REPO / "systemd").iterdir()}
    for files, page in ((requester, "firsttrust"), (agent, "firsttrust-agent")):
        assert f"usr/share/man/man1/{page}.1.gz" in files
    for name, deb in debs.items():
        files = files_of(deb)
        assert {f"usr/share/doc/{name}/copyright", f"usr/share/doc/{name}/changelog.gz"} <= set(files)
        for path, member in files.items():
            assert (member.uname, member.gname) == ("root", "root"), (name, path)
            assert member.mode == (0o755 if path.startswith("usr/bin/") else 0o644), (name, path, oct(member.mode))


def test_both_halves_depend_on_the_core_at_their_own_version(debs: dict[str, Path]) -> None:
    for name in (REQUESTER, AGENT):
        assert f"{CORE} (= {VERSION})" in field(debs[name], "Depends").split(", ")
    assert CORE not in field(debs[CORE], "Depends")
    # All three come from Debian 12's own packages; the vSphere deployer's pyVmomi is recommended, not required.
    assert {"python3-srp (>= 1.0.20)", "python3-cryptography"} <= set(field(debs[CORE], "Depends").split(", "))
    assert {"python3-aiohttp", "python3-cryptography"} <= set(field(debs[REQUESTER], "Depends").split(", "))
    assert "pyvmomi" not in field(debs[REQUESTER], "Depends")
    assert field(debs[REQUESTER], "Recommends") == "python3-pyvmomi (>= 6.7.1)"
    assert "python3-pyvmomi" in field(debs[REQUESTER], "Description")


def test_the_man_pages_are_reproducible_roff_that_man_reads_without_a_warning(debs: dict[str, Path], tmp_path: Path) -> None:
    for name, page in ((REQUESTER, "firsttrust"), (AGENT, "firsttrust-agent")):
        subprocess.run(["dpkg-deb", "-x", str(debs[name]), str(tmp_path)], check=True)
        path = tmp_path / f"usr/share/man/man1/{page}.1.gz"
        raw = path.read_bytes()
        assert raw[4:8] == b"\0\0\0\0", "gzip -n: no timestamp in the header"
        roff = gzip.decompress(raw).decode()
        assert roff.splitlines()[1].startswith(".TH " + page.upper().replace("-", "\\-") + ' 1 "'), roff[:300]
        assert f'"firsttrust {VERSION}"' in roff.splitlines()[1]
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "FILES"):
            assert f"\n.SH {section}\n" in roff, (page, section)
        assert "--version" in roff.replace("\\-", "-")
        if shutil.which("man"):
            run = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(path)],
                                 capture_output=True, text=True, env={**os.environ, "MANWIDTH": "80"}, timeout=60)
            assert run.returncode == 0 and run.stderr == "", run.stderr
    requester_page = gzip.decompress((tmp_path / "usr/share/man/man1/firsttrust.1.gz").read_bytes()).decode()
    assert "FIRSTTRUST_HOME" in requester_page.replace("\\-", "-")
    for subcommand in ("secrets new", "enroll", "pins list", "identity"):
        assert ".SS " + subcommand.replace("-", "\\-") + "\n" in requester_page


def extract_all(debs: dict[str, Path], root: Path, names=(CORE, REQUESTER, AGENT)) -> Path:
    for name in names:
        subprocess.run(["dpkg-deb", "-x", str(debs[name]), str(root)], check=True)
    return root / SITE


# Runs under Debian's python3 in isolated mode with only the extracted tree added to the path,
# pyVmomi made unimportable (the deployer is an optional extra), and then each launcher as shipped.
IMPORT_CHECK = r"""
import importlib.abc, sys
site, root = sys.argv[1], sys.argv[2]
class NoPyVmomi(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pyVmomi", "pyVim"):
            raise ImportError("pyVmomi is not installed (python3-pyvmomi is only recommended)")
sys.meta_path.insert(0, NoPyVmomi())
sys.path.insert(0, site)
import firsttrust, firsttrust.agent.cli, firsttrust.requester.cli, firsttrust.requester.library
assert firsttrust.__file__.startswith(site), firsttrust.__file__
for module in ("aiohttp", "cryptography", "srp"):
    assert sys.modules[module].__file__.startswith("/usr/lib/python3/dist-packages/"), sys.modules[module].__file__
from firsttrust import srp6a
print(srp6a.BACKEND)
for command in ("firsttrust", "firsttrust-agent"):
    sys.argv = [command, "--version"]
    try:
        exec(compile(open(root + "/usr/bin/" + command).read(), command, "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
"""


def test_the_three_packages_import_together_on_debians_python(debs: dict[str, Path], tmp_path: Path) -> None:
    site = extract_all(debs, tmp_path)
    run = subprocess.run([DEB_PYTHON, "-I", "-B", "-c", IMPORT_CHECK, str(site), str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n") == ["openssl", f"firsttrust {VERSION}", f"firsttrust-agent {VERSION}", ""]


def test_without_the_core_neither_half_imports(debs: dict[str, Path], tmp_path: Path) -> None:
    """The split is real: the halves hold no copy of the core."""
    site = extract_all(debs, tmp_path, names=(REQUESTER, AGENT))
    for module in ("firsttrust.agent.cli", "firsttrust.requester.cli"):
        run = subprocess.run([DEB_PYTHON, "-I", "-B", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); import {module}"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert run.returncode != 0 and "No module named" in run.stderr, (module, run.stderr)


def test_the_build_is_reproducible(debs: dict[str, Path], tmp_path: Path) -> None:
    again = build(tmp_path)
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    assert [digest(path) for path in again] == [digest(debs[name]) for name in (CORE, REQUESTER, AGENT)]


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian not installed (make test installs it)")
def test_lintian_reports_no_error_and_no_warning(debs: dict[str, Path]) -> None:
    run = subprocess.run(["lintian", "--tag-display-limit", "0", *map(str, debs.values())],
                         capture_output=True, text=True, timeout=600)
    complaints = [line for line in run.stdout.splitlines() if line.startswith(("E: ", "W: "))]
    assert complaints == [], run.stdout
