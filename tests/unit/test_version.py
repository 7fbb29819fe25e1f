"""`--version` on every CLI: one line, `<prog> <firsttrust.__version__>`, exit 0, nothing on stderr."""

from __future__ import annotations

import subprocess
import sys

import pytest

import firsttrust

CLIS = {
    "firsttrust": "firsttrust.requester.cli",
    "firsttrust-agent": "firsttrust.agent.cli",
    "firsttrust-lab": "firsttrust.lab.cli",
}


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_version_prints_the_package_version(prog: str) -> None:
    result = subprocess.run([sys.executable, "-m", CLIS[prog], "--version"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{prog} {firsttrust.__version__}\n", "")


def test_the_version_is_the_distributions() -> None:
    """The number --version prints is the one pyproject.toml gives the wheel and the .debs."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert firsttrust.__version__ == pyproject["project"]["version"]
