"""lab.procs reads /proc as bytes: a process name is whatever bytes its program chose."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from firsttrust.lab import procs, vcsim

# A child that renames itself to bytes that are not UTF-8 (0xe7 starts a three-byte character that
# never comes), as a thread name cut after 15 bytes or a program named in Latin-1 does, then waits.
RENAME = ("import sys; open('/proc/self/comm', 'wb').write(b'\\xe7a-not-utf8'); "
          "print(flush=True); sys.stdin.read()")


def _renamed_child() -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", RENAME], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    child.stdout.readline()
    assert Path(f"/proc/{child.pid}/comm").read_bytes().startswith(b"\xe7")
    return child


def test_a_process_whose_name_is_not_utf8_is_alive_and_then_gone():
    child = _renamed_child()
    try:
        assert procs.alive(child.pid)
    finally:
        child.stdin.close()
        child.wait()
    assert not procs.alive(child.pid)


def test_the_simulators_sweep_passes_a_workdir_whose_pid_now_names_a_non_utf8_process():
    child = _renamed_child()
    leftover = Path(tempfile.mkdtemp(prefix=f"{vcsim.WORKDIR_PREFIX}{child.pid}-"))
    try:
        assert leftover not in vcsim.sweep_stale_workdirs()
        assert leftover.is_dir()  # its owner's PID runs: not stale
    finally:
        child.stdin.close()
        child.wait()
        leftover.rmdir()
