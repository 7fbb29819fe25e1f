"""The import rule: firsttrust/ is sans-IO and depends on none of agent/, requester/, lab/."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CORE = {"asyncio", "socket", "socketserver", "selectors", "aiohttp", "subprocess",
                     "agent", "requester", "lab"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_nothing_forbidden():
    files = sorted((ROOT / "firsttrust").rglob("*.py"))
    assert files
    for path in files:
        bad = imported_modules(path) & FORBIDDEN_IN_CORE
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_core_does_not_open_files():
    for path in sorted((ROOT / "firsttrust").rglob("*.py")):
        tree = ast.parse(path.read_text())
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "open" not in calls, path


def test_importing_the_core_loads_no_event_loop_or_socket_module():
    code = ("import sys, firsttrust.enrollment, firsttrust.identity, firsttrust.tlspolicy;"
            "print(sorted(m for m in ('asyncio', 'socket', 'aiohttp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # ssl imports socket itself; what matters is that we pull in no event loop or HTTP stack
    assert "asyncio" not in out.stdout and "aiohttp" not in out.stdout


def test_agent_and_requester_never_import_each_other():
    for side, other in (("agent", "requester"), ("requester", "agent")):
        for path in sorted((ROOT / side).rglob("*.py")) if (ROOT / side).exists() else []:
            assert other not in imported_modules(path), f"{path.relative_to(ROOT)} imports {other}"
