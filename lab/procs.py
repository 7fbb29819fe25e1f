"""The lab's agent processes as Linux sees them: /proc, process groups, stopping for good.

Every agent the lab starts is the leader of its own session and process group (its PID is the
group's ID), so a stop reaches whatever the agent runs at that moment too (a `vmtoolsd` call in
flight). Processes that another `firsttrust-lab` invocation left running are recognised by their
command line before anything is sent to them: a recorded PID may by now belong to someone else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

# How long an agent gets to finish after SIGTERM before SIGKILL. `serve` closes both listeners
# and its open connections within a few hundred milliseconds; 5 s covers a loaded machine.
STOP_TIMEOUT = 5.0
_POLL = 0.02


def cmdline(pid: int) -> list[str]:
    """The process's argv, or [] if it is gone, a zombie, or not ours to read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode("utf-8", "surrogateescape") for arg in raw.split(b"\0") if arg]


def alive(pid: int) -> bool:
    """Whether `pid` runs. A zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    # "pid (comm) state ...": comm may contain spaces and parentheses, and any bytes (a thread name
    # cut in the middle of a character, a program named in Latin-1), so it is never decoded; the
    # state follows the last ')'.
    return stat.rpartition(b")")[2].split()[0] not in (b"Z", b"X")


def is_lab_agent(pid: int, config_path: Path) -> bool:
    """Whether `pid` is the `serve` process of the appliance whose guest config is `config_path`.

    The config path is unique to one appliance of one lab root, so a PID recycled by the kernel
    for an unrelated process never matches.
    """
    argv = cmdline(pid)
    return "serve" in argv and str(config_path) in argv


def _environ(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return []
    return [item.decode("utf-8", "surrogateescape") for item in raw.split(b"\0") if item]


def guest_processes(root: Path, vm_variable: str) -> list[int]:
    """Live processes that belong to an appliance of the lab root `root`.

    That is, an agent or guest command (its argv names a `<root>/<name>/agent.toml`), or anything
    running with a VM of this root (`vm_variable`=<root>/<name>/vm.json in its environment: the
    emulated tools the agent runs). This process is never counted; nor is a shell that merely has
    the root in its command line.
    """
    prefix = str(root).rstrip("/") + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        argv = cmdline(pid)
        if not argv:
            continue
        ours = any(arg.startswith(prefix) and arg.endswith("/agent.toml") for arg in argv) or any(
            item.startswith(f"{vm_variable}={prefix}") for item in _environ(pid))
        if ours and alive(pid):
            found.append(pid)
    return sorted(found)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_child(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> int:
    """Stop a process group leader we started: SIGTERM to the group, SIGKILL after `timeout`.

    Whatever else is left in its group (a tool the agent ran) is killed while the leader, exited
    but not yet reaped, still holds the PID, so the group ID cannot have been reused.

    Returns:
        its exit status (negative: the signal that ended it), once it has been reaped.
    """
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        if not _exited(proc.pid, timeout):
            _signal_group(proc.pid, signal.SIGKILL)
            _exited(proc.pid, None)
        _signal_group(proc.pid, signal.SIGKILL)
    return proc.wait()


def _exited(pid: int, timeout: float | None) -> bool:
    """Wait until child `pid` has exited, without reaping it (waitid WNOWAIT)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:  # already reaped (by Popen.poll elsewhere)
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def stop_recorded(pid: int, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop a group leader another process started (so we cannot wait() for it): SIGTERM, poll,
    SIGKILL. The caller has checked with `is_lab_agent` that `pid` is ours.

    Returns:
        True once it is gone; False if it outlived SIGKILL for `timeout` (uninterruptible sleep).
    """
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return True
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if group == pid:
            _signal_group(pid, signum)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(pid):
                return True
            time.sleep(_POLL)
    return not alive(pid)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports `pid` itself listens on (from its socket inodes and /proc/net/tcp{,6}).

    Used instead of connecting to find out whether an agent is ready: a probe connection would
    show up in the appliance's audit log as a failed enrollment attempt.
    """
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st ... inode: st 0A is TCP_LISTEN (include/net/tcp_states.h)
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports
