"""The guest's side of the lab vCenter's guest operations (lab/go/vcsim/guestops.go).

The simulator serves GuestOperationsManager's process and file managers; what happens inside the
guest happens here, in the lab process, for the appliance the VM is: the simulator sends one JSON
line per operation to a Unix socket this server listens on (0600, in the simulator's private
working directory, named to it with -guest-ops-socket), and reads one JSON line back.

    server = GuestOpsServer(path, resolve).start()   # resolve(moid) -> Guest | None
    ...; server.stop()

Operations (every request carries "vm", "user", "password"; the password is checked by the
guest, as VMware Tools checks it through PAM, and is never logged or kept):

    start   {program, arguments, workingDirectory, env}  -> {pid}: the program runs in the
            appliance's guest context (Guest.argv: the agent with the guest's configuration),
            its output discarded (as VMware Tools does), its exit code kept for 5 minutes
    list    {pids}   -> {processes: [{pid, name, owner, cmdLine, startTime, endTime?, exitCode?}]}
    mkdtemp {prefix, suffix, path} -> {path}     rmdir {path, recursive} -> {}
    stat    {path}   -> {size}                   read {path} -> {data: base64}
    check-write {path, overwrite} -> {}          write {path, data, overwrite} -> {}

Errors: {"error": CODE, "message": one line} with CODE invalid_login, unavailable, not_found,
exists, permission or failed (the simulator turns them into the vSphere faults).

The lab's guest filesystem is the appliance's directory: a path outside it (after resolving
symbolic links) is refused with "permission" (lab choice: the appliances share the host's
filesystem, and a guest operation must reach its own appliance only). No real Unix account is
made: the guest account is what the appliance's agent recorded (agent/guestaccount.py).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from .lineserver import LineServer

MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_FILE_BYTES = 1024 * 1024
# "the process exit code will be available if queried within 5 minutes after it completes"
KEEP_FINISHED_SECONDS = 300.0
SERVER_TIMEOUT = 20.0


class Guest(Protocol):
    """One appliance's guest, as the lab's hosts know it."""

    root: Path

    def check_login(self, user: str, password: str) -> bool: ...

    def argv(self, program: str, arguments: Sequence[str]) -> list[str] | None: ...

    def env(self) -> dict[str, str]: ...


class GuestFault(Exception):
    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code, self.message = code, message or code


@dataclass
class _Process:
    pid: int
    name: str
    owner: str
    cmd_line: str
    start: float
    end: float | None = None
    exit_code: int | None = None

    def row(self) -> dict:
        row = {"pid": self.pid, "name": self.name, "owner": self.owner, "cmdLine": self.cmd_line,
               "startTime": self.start}
        if self.end is not None:
            row.update(endTime=self.end, exitCode=self.exit_code)
        return row


@dataclass
class _VmState:
    processes: dict[int, _Process] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class GuestOpsServer:
    """Answers the simulator's guest operations on a Unix socket (see the module docstring)."""

    def __init__(self, path: Path, resolve: Callable[[str], Guest | None]) -> None:
        self.path, self.resolve = Path(path), resolve
        self._vms: dict[str, _VmState] = {}
        self._vms_lock = threading.Lock()
        self._children: list[subprocess.Popen] = []
        self._server = LineServer(self.path, self.answer, name="lab-guest-ops", timeout=SERVER_TIMEOUT,
                                  max_request=MAX_REQUEST_BYTES)

    def start(self) -> "GuestOpsServer":
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop answering and stop the programs still running (idempotent)."""
        self._server.stop()
        for child in self._children:
            if child.poll() is None:
                child.kill()
                child.wait(5)

    # -- one request --------------------------------------------------------------------------------

    def answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line) if len(line) <= MAX_REQUEST_BYTES else None
        except (ValueError, RecursionError):
            request = None
        if not (isinstance(request, dict) and all(isinstance(request.get(k), str) for k in ("op", "vm", "user", "password"))):
            return {"error": "failed", "message": "malformed request to the lab's guest side"}
        try:
            guest = self.resolve(request["vm"])
            if guest is None:
                raise GuestFault("unavailable", "no guest agent runs in this VM")
            if not guest.check_login(request["user"], request["password"]):
                raise GuestFault("invalid_login")
            handler = getattr(self, "_op_" + request["op"].replace("-", "_"), None)
            if handler is None:
                raise GuestFault("failed", f"unknown guest operation {request['op'][:40]!r}")
            return handler(request, guest) or {}
        except GuestFault as fault:
            return {"error": fault.code, "message": fault.message}
        except OSError as exc:
            return {"error": "failed", "message": f"the guest failed: {exc.strerror or type(exc).__name__}"}

    def _vm(self, moid: str) -> _VmState:
        with self._vms_lock:
            return self._vms.setdefault(moid, _VmState())

    def _op_start(self, request: dict, guest: Guest) -> dict:
        program = request.get("program") or ""
        try:
            arguments = shlex.split(request.get("arguments") or "")
        except ValueError:
            raise GuestFault("failed", "the arguments are not a valid command line") from None
        argv = guest.argv(program, arguments)
        if argv is None:
            raise GuestFault("not_found", f"no program {program[:100]} in the guest")
        env = guest.env()
        for item in request.get("env") or []:
            if isinstance(item, str) and "=" in item:
                key, value = item.split("=", 1)
                env[key] = value
        cwd = request.get("workingDirectory") or str(guest.root)
        cwd = str(_inside(guest, cwd, must_exist=True))
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, cwd=cwd, env=env, start_new_session=True)
        self._children.append(child)
        state = self._vm(request["vm"])
        process = _Process(child.pid, Path(program).name, request["user"],
                           " ".join([program, request.get("arguments") or ""]).strip(), time.time())
        with state.lock:
            state.processes[child.pid] = process

        def reap() -> None:
            code = child.wait()
            with state.lock:
                process.exit_code, process.end = code, time.time()

        threading.Thread(target=reap, name=f"lab-guest-proc-{child.pid}", daemon=True).start()
        return {"pid": child.pid}

    def _op_list(self, request: dict, guest: Guest) -> dict:
        state = self._vm(request["vm"])
        wanted = {int(pid) for pid in request.get("pids") or [] if isinstance(pid, int)}
        now = time.time()
        with state.lock:
            for pid, process in list(state.processes.items()):
                if process.end is not None and now - process.end > KEEP_FINISHED_SECONDS:
                    del state.processes[pid]
            rows = [p.row() for pid, p in state.processes.items() if not wanted or pid in wanted]
        return {"processes": rows}

    def _op_mkdtemp(self, request: dict, guest: Guest) -> dict:
        parent = request.get("path") or str(guest.root / "tmp")
        if not request.get("path"):
            (guest.root / "tmp").mkdir(mode=0o700, exist_ok=True)
        parent = _inside(guest, parent, must_exist=True)
        made = tempfile.mkdtemp(prefix=request.get("prefix") or "", suffix=request.get("suffix") or "", dir=parent)
        return {"path": made}

    def _op_rmdir(self, request: dict, guest: Guest) -> dict:
        path = _inside(guest, request.get("path") or "", must_exist=True)
        if path == guest.root.resolve() or not path.is_dir():
            raise GuestFault("not_found" if not path.is_dir() else "permission", "not a directory the guest may remove")
        if request.get("recursive"):
            shutil.rmtree(path)
        else:
            path.rmdir()
        return {}

    def _op_stat(self, request: dict, guest: Guest) -> dict:
        path = _file(guest, request.get("path") or "")
        return {"size": path.stat().st_size}

    def _op_read(self, request: dict, guest: Guest) -> dict:
        path = _file(guest, request.get("path") or "")
        data = path.read_bytes()
        if len(data) > MAX_FILE_BYTES:
            raise GuestFault("failed", "the file is larger than the lab transfers")
        return {"data": base64.b64encode(data).decode("ascii")}

    def _op_check_write(self, request: dict, guest: Guest) -> dict:
        _writable(guest, request.get("path") or "", bool(request.get("overwrite")))
        return {}

    def _op_write(self, request: dict, guest: Guest) -> dict:
        path = _writable(guest, request.get("path") or "", bool(request.get("overwrite")))
        try:
            data = base64.b64decode(request.get("data") or "", validate=True)
        except ValueError:
            raise GuestFault("failed", "malformed file data") from None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return {}


def _inside(guest: Guest, path: str, *, must_exist: bool) -> Path:
    if not path.startswith("/"):
        raise GuestFault("failed", "a guest path is absolute")
    resolved = Path(path).resolve()
    root = guest.root.resolve()
    if resolved != root and root not in resolved.parents:
        raise GuestFault("permission", "outside what the guest account may reach")
    if must_exist and not resolved.exists():
        raise GuestFault("not_found", "no such file or directory in the guest")
    return resolved


def _file(guest: Guest, path: str) -> Path:
    """A regular file: "It cannot be a path to a directory or a symbolic link"."""
    if Path(path).is_symlink():
        raise GuestFault("not_found", "a symbolic link is not transferred")
    resolved = _inside(guest, path, must_exist=True)
    if not resolved.is_file():
        raise GuestFault("not_found", "not a regular file")
    return resolved


def _writable(guest: Guest, path: str, overwrite: bool) -> Path:
    if Path(path).is_symlink():
        raise GuestFault("permission", "a symbolic link is not written through")
    resolved = _inside(guest, path, must_exist=False)
    if not resolved.parent.is_dir():
        raise GuestFault("not_found", "the directory does not exist in the guest")
    if resolved.exists() and (not overwrite or resolved.is_dir()):
        raise GuestFault("exists", "the file exists")
    return resolved
