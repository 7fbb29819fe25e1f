"""requester/vsphere.py says plainly which pyVmomi it needs, and the agent never imports it."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest

from firsttrust.requester import vsphere

ROOT = Path(__file__).resolve().parents[2]


def test_a_pyvmomi_older_than_debian_12s_is_refused_by_name_and_debian_12s_is_not(monkeypatch):
    pytest.importorskip("pyVmomi")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "6.5.0")
    with pytest.raises(vsphere.PyvmomiMissing) as caught:
        vsphere.connect("https://vc.example/sdk", "u", "p", None)
    assert "pyVmomi 6.7.1 or later, found 6.5.0" in str(caught.value) and "apt-get install python3-pyvmomi" in \
        str(caught.value)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "6.7.1")
    vsphere._pyvmomi()  # accepted


def test_only_the_requester_s_vsphere_module_imports_pyvmomi():
    importers = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        parts = path.relative_to(ROOT).parts
        # .venv*: pyVmomi's own files (the Debian-versions venv has it too); build/: staged packages
        if parts[0].startswith(".venv") or {"tests", "build"} & set(parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] in ("pyVmomi", "pyVim") for name in names):
                importers.append(str(path.relative_to(ROOT)))
    assert sorted(set(importers)) == ["requester/vsphere.py"]
