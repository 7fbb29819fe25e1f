"""Session resources of the kill -9 matrix: throwaway SSH accounts (one per parallel slot), the
requester's SSH key, and the summary printed at the end of the run."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_cases import RESULTS, SLOTS  # noqa: E402
from fault_harness import REQUESTER, Account, Template  # noqa: E402


@pytest.fixture(scope="session")
def fault_env():
    if os.geteuid() != 0:
        pytest.skip("the kill -9 matrix creates a throwaway account with useradd: run as root (make test)")
    for tool in ("useradd", "userdel", "strace"):
        if not shutil.which(tool):
            pytest.skip(f"the kill -9 matrix needs {tool} (make test installs strace; useradd is in passwd)")
    root = Path(tempfile.mkdtemp(prefix="ftfault-"))
    os.chmod(root, 0o755)  # the accounts' homes live below it
    accounts = []
    try:
        for slot in range(SLOTS):
            name = f"ftfault{os.getpid() % 100000}{chr(ord('a') + slot)}"
            home = root / f"home-{slot}"
            subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
                            name], check=True, capture_output=True, timeout=30)
            accounts.append(Account(name, home))
            pwd.getpwnam(name)
        ssh_pub = root / "k.pub"
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        ssh_pub.write_bytes(public.public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH) + b" fault@requester\n")
        help_text = subprocess.run([REQUESTER, "enroll", "--help"], capture_output=True, text=True, timeout=30).stdout
        yield {"root": root, "accounts": accounts, "ssh_pub": ssh_pub, "deadline_flag": "--deadline" in help_text,
               "template": Template(root / "template")}
    finally:
        for account in accounts:
            subprocess.run(["userdel", "-r", account.name], capture_output=True, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if not any(RESULTS.values()):
        return
    write = terminalreporter.write_line
    terminalreporter.section("kill -9 fault-injection matrix")
    totals = {}
    for side, per_syscall in RESULTS.items():
        totals[side] = 0
        for syscall, outcomes in per_syscall.items():
            kills = [o for o in outcomes if o.killed]
            startup = [o for o in kills if o.where == "start-up" and side != "repair"]
            broken = [o for o in kills if o.violations]
            totals[side] += len(kills) - len(startup)
            write(f"{side:9} {syscall:8} kill points {len(kills) - len(startup):3}"
                  + (f" (+{len(startup)} at start-up)" if startup else "")
                  + f"  broken {len(broken)}" + (f": N={','.join(str(o.n) for o in broken)}" if broken else ""))
    write(f"kill points: agent={totals['agent']} requester={totals['requester']} "
          f"repair at start={totals['repair']}")
