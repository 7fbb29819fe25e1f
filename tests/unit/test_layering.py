"""The import rule: firsttrust/ is sans-IO and depends on none of agent/, requester/, lab/,
common/ (installed as firsttrust.agent, firsttrust.requester, firsttrust.lab, firsttrust.common).
common/ holds the I/O helpers the others share: agent/, requester/ and lab/ may import it; it
imports only the core.

The two enrollment drivers (agent/conversation.py, requester/enroll.py) share no asyncio helper,
and none is needed where both may import it: the framing layer both use is the state machine
itself (firsttrust/framing.py's FrameDecoder inside firsttrust/enrollment.py, sans-IO, allowed
here). A driver hands the machine whatever a read returned and obeys the events; it asks the
machine nothing about its state and reads no private buffer of asyncio's (checked below)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CORE = {"asyncio", "socket", "socketserver", "selectors", "aiohttp", "subprocess",
                     "firsttrust.agent", "firsttrust.requester", "firsttrust.lab", "firsttrust.common"}
SIDES = {"agent": "firsttrust.agent", "requester": "firsttrust.requester", "lab": "firsttrust.lab"}
# Who may import common/ (firsttrust.common): the folders that do I/O. Not the core.
COMMON_USERS = ("agent", "requester", "lab")


def imported_modules(path: Path) -> set[str]:
    """Top-level names imported by `path`, and firsttrust's subpackages by their two-part name
    (a relative import inside agent/ etc. resolves to the folder's own subpackage)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for module in modules:
            parts = module.split(".")
            names.add(parts[0])
            if parts[0] == "firsttrust" and len(parts) > 1:
                names.add(".".join(parts[:2]))
    return names


def test_imported_modules_sees_subpackages_by_either_import_form(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import firsttrust.agent.state\nfrom firsttrust import requester\nfrom asyncio import sleep\n")
    assert {"firsttrust.agent", "firsttrust.requester", "asyncio"} <= imported_modules(path)


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
        files = sorted((ROOT / side).rglob("*.py"))
        assert files
        for path in files:
            assert SIDES[other] not in imported_modules(path), f"{path.relative_to(ROOT)} imports {SIDES[other]}"


def test_common_imports_only_the_core():
    """common/ sits between the core and the three users: it imports none of them."""
    files = sorted((ROOT / "common").rglob("*.py"))
    assert files
    for path in files:
        bad = imported_modules(path) & set(SIDES.values())
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_agent_requester_and_lab_share_common_and_the_core_does_not_use_it():
    for folder in COMMON_USERS:
        users = [path for path in sorted((ROOT / folder).rglob("*.py"))
                 if "firsttrust.common" in imported_modules(path)]
        assert users, f"{folder}/ no longer uses firsttrust.common: drop it from COMMON_USERS"
    for path in sorted((ROOT / "firsttrust").rglob("*.py")):
        assert "firsttrust.common" not in imported_modules(path), path


def test_no_generic_top_level_import_names_remain():
    """agent/, requester/, lab/ and common/ are imported only as firsttrust.agent etc."""
    folders = ("firsttrust", "agent", "requester", "lab", "common", "tests", "bench", "packaging")
    files = [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]
    for path in files + sorted((ROOT / "lab" / "bin").iterdir()):
        bad = imported_modules(path) & (set(SIDES) | {"common"})
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} by a generic top-level name"


# Modules outside firsttrust/ that are sans-IO all the same: a table and its asyncio adapter live in
# separate modules, and the table imports no event loop and no socket (issue 29).
SANS_IO_OUTSIDE_CORE = {"agent/frontdoor.py": "agent/frontdoor_asyncio.py"}


def test_sans_io_tables_import_no_event_loop_and_their_adapters_exist():
    for table, adapter in SANS_IO_OUTSIDE_CORE.items():
        bad = imported_modules(ROOT / table) & FORBIDDEN_IN_CORE
        assert not bad, f"{table} imports {sorted(bad)}: that belongs in {adapter}"
        assert "asyncio" in imported_modules(ROOT / adapter), f"{adapter} is the asyncio adapter of {table}"


def test_importing_the_front_door_table_loads_no_event_loop():
    code = ("import sys, firsttrust.agent.frontdoor;"
            "print(sorted(m for m in ('asyncio', 'socket', 'aiohttp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_one_import_style_relative_inside_a_package():
    """Inside agent/, requester/ and lab/ a module imports its own package's modules relatively
    (`from ..errors import ...`) and other packages as `firsttrust.` (the lab's bin/ scripts run as
    programs, outside any package, so they import absolutely)."""
    for side, name in SIDES.items():
        for path in sorted((ROOT / side).rglob("*.py")):
            assert name not in imported_modules(path), f"{path.relative_to(ROOT)} imports {name} absolutely"


def test_drivers_ask_no_machine_its_state_and_read_no_private_stream_buffer():
    """Decisions live in the state machines (issue 29): no module of agent/ or requester/
    imports the machines' State, reads a `.state` of anything named like a machine, or touches
    a `_buffer` attribute (asyncio's StreamReader keeps its bytes there)."""
    for side in ("agent", "requester"):
        for path in sorted((ROOT / side).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == "firsttrust.enrollment":
                    assert "State" not in [alias.name for alias in node.names], path
                if isinstance(node, ast.Attribute):
                    assert node.attr != "_buffer", f"{path.relative_to(ROOT)}:{node.lineno} reads _buffer"
                    if node.attr == "state" and isinstance(node.value, ast.Name):
                        assert "machine" not in node.value.id, f"{path.relative_to(ROOT)}:{node.lineno}"
