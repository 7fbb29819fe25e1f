"""An emulated VMware guestinfo channel: `vmtoolsd` and `vmware-rpctool` backed by a JSON file
or by a VM of a vCenter (lab/vsphere_channel.py).

One JSON file is one VM: either the VM itself (below) or, in a lab on vcsim, a channel file
naming the simulator's VM, whose guestinfo the tools then read and write as its guest sees it,
by way of the lab's channel server and the simulator's lab endpoints (lab/vsphere_channel.py; the failure modes and the argv
log exist for file VMs only). The launchers in `lab/bin/` find it through the environment variable
FIRSTTRUST_VMWARE_EMULATOR, so every agent process the lab starts talks to its own VM, and the
agent's client (`firsttrust.agent.sources.guestinfo`) runs unchanged against these tools and the real ones.

The argv, output and exit codes follow open-vm-tools (sources cited where each one is decided):

    vmtoolsd --cmd "info-get guestinfo.K"      value + "\\n" on stdout, exit 0
    vmware-rpctool "info-get guestinfo.K"      same
    ... key not set                            "No value found" on stderr, exit 1
    vmtoolsd --cmd "info-set guestinfo.K V"    "\\n" on stdout, exit 0 (an empty reply, printed)
    vmtoolsd --cmdfile FILE                    the RPC command is the content of FILE
    not in a VM                                vmtoolsd: "Unable to send command to VMware
                                               hypervisor.", exit 1; vmware-rpctool: "Failed
                                               sending message to VMware.", exit 1

The VM file (written atomically, under an flock on the sibling `<file>.lock`)::

    {
      "guestinfo": {"guestinfo.key": "value", ...},
      "argv_log": [["/.../vmtoolsd", "--cmd", "info-get guestinfo.key"], ...],
      "mode": null
    }

Values and argv are str; bytes that are not UTF-8 are carried as lone surrogates (PEP 383
"surrogateescape"), which JSON stores as "\\udcXX", so a test can plant a non-UTF-8 value.
`mode` injects failures; see MODES. Stdlib only: the launchers run under whatever `python3`
is on PATH.

One module, over 450 lines, because both tools answer the same RPCs from the same VM file under
the same lock, and each guestinfo call of a lab agent starts a launcher that imports it: one
stdlib-only module is the least a guest process loads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

ENV_VAR = "FIRSTTRUST_VMWARE_EMULATOR"
GUESTINFO_PREFIX = "guestinfo."

# Failure injection. The "-once" modes clear themselves (mode -> null) on the call they fail.
MODES = {
    "no-vm": "no hypervisor: the tools fail exactly as the real ones do on a machine that is not a VM",
    "permission-denied": "every RPC is refused by the host with 'Permission denied'",
    "permission-denied-once": "the next RPC is refused with 'Permission denied'",
    "hang": "every RPC hangs forever (the caller must time out and kill the tool)",
    "hang-once": "the next RPC hangs forever",
    "no-cmdfile": "vmtoolsd predates --cmdfile and rejects it as an unknown option",
}

# --- texts and exit codes of the real tools -------------------------------------------------
# Replies of the VMX, printed verbatim by both tools (cloud-init's DataSourceVMware matches
# NOVAL = "No value found"; "Permission denied": open-vm-tools issue #690).
NO_VALUE = "No value found"
PERMISSION_DENIED = "Permission denied"
# Not confirmed against a real VMX: the exact replies to an unknown command, malformed
# arguments, a non-guestinfo key and an over-long message.
UNKNOWN_COMMAND = "Unknown command"
BAD_ARGUMENTS = "Two and exactly two arguments expected"
BAD_KEY = "Invalid key"
MESSAGE_TOO_LARGE = "Message too large"
# services/vmtoolsd/cmdLine.c, ToolsCoreRunCommand: VmCheck_IsVirtualWorld() false -> exit(1).
VMTOOLSD_NOT_IN_VM = "Unable to send command to VMware hypervisor."
# services/vmtoolsd/l10n/en.vmsg (cmdline.cmdfile.*): the --cmdfile variants.
VMTOOLSD_CMDFILE_NOT_IN_VM = "Unable to send command from file to VMware hypervisor."
VMTOOLSD_CMDFILE_UNREADABLE = "Unable to read command from file {path}."
# rpctool/rpctool.c: the backdoor access faults outside a VM; the SIGSEGV handler prints
# NOT_VMWARE_ERROR and calls exit(1). (Exit 1, not 255: see RPCTOOL_NOT_IN_VM_EXIT.)
RPCTOOL_NOT_IN_VM = "Failed sending message to VMware."
RPCTOOL_NOT_IN_VM_EXIT = 1
# No hypervisor at all (the "no-vm" mode, or no VM file): measured with Debian 12's
# open-vm-tools 12.2.0 on a machine that is not a VM. Both tools check for the hypervisor before
# they look at their arguments: vmtoolsd exits 1 and prints nothing, whatever its argv;
# vmware-rpctool prints this line (with its argv[0] as given) and exits 255, whatever its argv.
# tests/unit/test_guestinfo.py compares the emulator with the real tools byte for byte.
VMTOOLSD_NO_HYPERVISOR_EXIT = 1
RPCTOOL_NO_HYPERVISOR = "Error: {argv0} must be run inside a virtual machine on a VMware hypervisor product."
RPCTOOL_NO_HYPERVISOR_EXIT = 255
# glib's GOptionContext errors, as vmtoolsd prints them ("%s: %s\n", N_("Command line parsing
# failed"), error->message) before returning a failure exit status.
CMDLINE_FAILED = "Command line parsing failed: {reason}"
# lib/include/guest_msg_def.h: GUESTMSG_MAX_IN_SIZE, the largest guest-to-host message the
# VMX accepts ("to prevent denial of host service attacks from guest applications").
GUESTMSG_MAX_IN_SIZE = 64 * 1024

# The emulator itself is misused (bad VM file, unknown mode): EX_SOFTWARE from sysexits.h, so
# it can never be mistaken for an answer of the real tools.
EMULATOR_ERROR_EXIT = 70

# vmtoolsd's own options that take a value or none (services/vmtoolsd/cmdLine.c); accepted
# and ignored so that an argv valid for the real daemon parses here too.
_VMTOOLSD_VALUE_OPTIONS = frozenset(
    {"-n", "--name", "--common-path", "-p", "--plugin-path", "-b", "--background",
     "--blockFd", "--uinputFd", "-c", "--config", "-g", "--debug"}
)
_VMTOOLSD_FLAG_OPTIONS = frozenset({"-l", "--log"})
_VMTOOLSD_VERSION = "VMware Tools daemon, version 12 (firsttrust emulator)"

# How long a "hang" sleeps per round; it loops forever, this only bounds each sleep call.
_HANG_SLEEP_SECONDS = 3600


class EmulatorError(Exception):
    """The VM file or the emulator's configuration is broken (not an answer of the tools)."""


# --- public API for tests and the lab ----------------------------------------------------------


def bin_dir() -> Path:
    """The directory holding the `vmtoolsd` and `vmware-rpctool` launchers (put it on PATH)."""
    return Path(__file__).resolve().parent / "bin"


def guest_tools_path(rest: str = os.defpath) -> str:
    """PATH for a process in an emulated guest: the emulated tools first, then this interpreter's
    directory (whose `python3` runs the launchers, with firsttrust installed, and starts in ~30 ms
    where a version-manager shim takes ~200 ms), then `rest`."""
    return os.pathsep.join([str(bin_dir()), str(Path(sys.executable).parent), rest])


def link_interpreter(directory: Path) -> Path:
    """Make `directory/python3` start this interpreter, for the launchers' `#!/usr/bin/env python3`.

    A two-line shell script rather than a symlink: a symlink to a venv's python would not find
    the venv (and so firsttrust), which Python looks for beside the name it was started by.
    """
    launcher = directory / "python3"
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    launcher.chmod(0o755)
    return launcher


def create_vm(
    path: str | os.PathLike[str],
    guestinfo: Mapping[str, str | bytes],
    *,
    mode: str | None = None,
) -> None:
    """Create (or replace) the VM file at `path`.

    Args:
        path: where the VM file goes; point FIRSTTRUST_VMWARE_EMULATOR at it.
        guestinfo: keys with or without the "guestinfo." prefix; values as str, or as bytes
            (kept byte-exact, so a value need not be UTF-8).
        mode: a failure to inject (a key of MODES), or None.

    Raises:
        ValueError: an unknown mode, or a key or value that is not a str/bytes.
    """
    _check_mode(mode)
    entries = {}
    for key, value in guestinfo.items():
        if not isinstance(key, str) or not isinstance(value, (str, bytes)):
            raise ValueError("guestinfo keys must be str and values str or bytes")
        name = key if key.startswith(GUESTINFO_PREFIX) else GUESTINFO_PREFIX + key
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        entries[name] = value
    state = {"guestinfo": entries, "argv_log": [], "mode": mode}
    path = Path(path)
    with _locked(path):
        _store(path, state)


def read_vm(path: str | os.PathLike[str]) -> dict:
    """Return the VM file's content: {"guestinfo": {...}, "argv_log": [[...], ...], "mode": ...}.

    Raises:
        FileNotFoundError: there is no VM file at `path`.
        EmulatorError: the file is not a valid VM file.
    """
    # No lock needed: writers replace the file by rename, so a reader sees a whole version.
    state = _load(Path(path))
    if state is None:
        raise FileNotFoundError(path)
    return state


def set_mode(path: str | os.PathLike[str], mode: str | None) -> None:
    """Change the failure mode of an existing VM (a key of MODES, or None for a healthy VM)."""
    _check_mode(mode)
    path = Path(path)
    with _locked(path):
        state = _load(path)
        if state is None:
            raise FileNotFoundError(path)
        state["mode"] = mode
        _store(path, state)


# --- the two tools -------------------------------------------------------------------------------


def main_rpctool(argv: list[str] | None = None) -> int:
    """`vmware-rpctool TEXT`: send TEXT as one RPC; reply on stdout (ok) or stderr (failure).

    Mirrors rpctool/rpctool.c: no argument -> usage on stderr, exit 1; "-h..." or "--help..."
    (a prefix match, as the C code's strncmp) -> usage, exit 0; extra arguments are ignored.
    """
    argv = list(sys.argv if argv is None else argv)
    try:
        state = _record(argv)
        if state is None or state["mode"] == "no-vm":
            _err(RPCTOOL_NO_HYPERVISOR.format(argv0=argv[0]))
            return RPCTOOL_NO_HYPERVISOR_EXIT
        if len(argv) < 2:
            _print_rpctool_usage()
            return 1
        if argv[1].startswith("-h") or argv[1].startswith("--help"):
            _print_rpctool_usage()
            return 0
        outcome = _send(argv[1])
        if outcome is None:
            _err(RPCTOOL_NOT_IN_VM)
            return RPCTOOL_NOT_IN_VM_EXIT
        return _print_reply(*outcome)
    except EmulatorError as error:
        _err(f"vmware-rpctool (firsttrust emulator): {error}")
        return EMULATOR_ERROR_EXIT


def main_vmtoolsd(argv: list[str] | None = None) -> int:
    """`vmtoolsd --cmd TEXT` or `vmtoolsd --cmdfile FILE`: send one RPC and exit.

    Options are handled left to right as glib's GOptionContext does: the first --cmd or
    --cmdfile runs at once and exits; an unknown option before it is a parse error. Without
    either option the real tool would start the daemon, which is not emulated.
    """
    argv = list(sys.argv if argv is None else argv)
    try:
        state = _record(argv)
        if state is None or state["mode"] == "no-vm":
            return VMTOOLSD_NO_HYPERVISOR_EXIT  # silently, as the real one
        # An old vmtoolsd ("no-cmdfile") does not know --cmdfile: it is then an unknown option.
        rpc_options = {"--cmd", "--cmdfile"}
        if state is not None and state["mode"] == "no-cmdfile":
            rpc_options.discard("--cmdfile")
        args = argv[1:]
        i = 0
        while i < len(args):
            option, has_inline, inline = args[i].partition("=")
            if option in rpc_options:
                if has_inline:
                    operand = inline
                elif i + 1 < len(args):
                    operand = args[i + 1]
                else:
                    _err(CMDLINE_FAILED.format(reason=f"Missing argument for {option}"))
                    return 1
                if option == "--cmd":
                    return _vmtoolsd_send(operand, VMTOOLSD_NOT_IN_VM)
                return _vmtoolsd_send_file(operand)
            if option in ("-h", "--help", "-?"):
                print("Usage:\n  vmtoolsd [OPTION?]\n\nRuns the VMware Tools daemon.")
                return 0
            if option in ("-v", "--version"):
                print(_VMTOOLSD_VERSION)
                return 0
            if option in _VMTOOLSD_VALUE_OPTIONS:
                i += 1 if has_inline else 2
                continue
            if option in _VMTOOLSD_FLAG_OPTIONS:
                i += 1
                continue
            if args[i].startswith("-"):
                _err(CMDLINE_FAILED.format(reason=f"Unknown option {args[i]}"))
                return 1
            i += 1  # glib leaves positional arguments alone
        _err("vmtoolsd (firsttrust emulator): only --cmd and --cmdfile are emulated")
        return 1
    except EmulatorError as error:
        _err(f"vmtoolsd (firsttrust emulator): {error}")
        return EMULATOR_ERROR_EXIT


def _vmtoolsd_send(command: str, not_in_vm: str) -> int:
    outcome = _send(command)
    if outcome is None:
        _err(not_in_vm)
        return 1
    return _print_reply(*outcome)


def _vmtoolsd_send_file(path: str) -> int:
    if _is_no_vm():
        _err(VMTOOLSD_CMDFILE_NOT_IN_VM)
        return 1
    try:
        raw = Path(path).read_bytes()
    except OSError:
        _err(VMTOOLSD_CMDFILE_UNREADABLE.format(path=path))
        return 1
    return _vmtoolsd_send(raw.decode("utf-8", "surrogateescape"), VMTOOLSD_CMDFILE_NOT_IN_VM)


# --- one RPC, as the VMX would answer it ------------------------------------------------------


def answer_rpc(guestinfo, command: str) -> tuple[bool, str]:
    """Answer one RPC against `guestinfo` (mutated by info-set): a dict for a file VM, a
    vsphere_channel.ApiGuestinfo for a VM of the lab's vCenter. Returns (ok, reply)."""
    # The tools pass the command to RpcChannel_SendOne through "%s": a NUL ends it.
    command = command.split("\0", 1)[0]
    if len(command.encode("utf-8", "surrogateescape")) > GUESTMSG_MAX_IN_SIZE:
        return False, MESSAGE_TOO_LARGE
    verb, _, rest = command.partition(" ")
    if verb == "info-get":
        value = guestinfo.get(rest)
        return (True, value) if value is not None else (False, NO_VALUE)
    if verb == "info-set":
        key, separator, value = rest.partition(" ")
        if not key or not separator:
            return False, BAD_ARGUMENTS
        if not key.startswith(GUESTINFO_PREFIX) or key == GUESTINFO_PREFIX:
            return False, BAD_KEY
        guestinfo[key] = value
        return True, ""
    return False, UNKNOWN_COMMAND


def _send(command: str) -> tuple[bool, str] | None:
    """Apply the VM's mode and answer `command`; None when there is no VM to talk to."""
    path = _vm_path()
    if path is None:
        return None
    with _locked(path):
        state = _load(path)
        if state is None or state["mode"] == "no-vm":
            return None
        if "vsphere" in state:
            return _send_through_api(state, command)
        mode = state["mode"]
        if mode in ("permission-denied-once", "hang-once"):
            state["mode"] = None  # consumed before hanging, so the retry finds a healthy VM
        if mode in ("permission-denied", "permission-denied-once"):
            outcome = (False, PERMISSION_DENIED)
        elif mode in ("hang", "hang-once"):
            outcome = None
        else:
            outcome = answer_rpc(state["guestinfo"], command)
        _store(path, state)
    if outcome is None:
        _hang()
    return outcome


def _send_through_api(state: dict, command: str) -> tuple[bool, str]:
    from .vsphere_channel import ChannelError, request

    try:
        return request(state, command)
    except ChannelError as error:
        raise EmulatorError(str(error)) from None


def _hang() -> None:
    while True:
        time.sleep(_HANG_SLEEP_SECONDS)


def _print_reply(ok: bool, reply: str) -> int:
    # Both tools: printf("%s\n", result) on success, fprintf(stderr, "%s\n", ...) on failure.
    stream = sys.stdout if ok else sys.stderr
    stream.flush()
    stream.buffer.write(reply.encode("utf-8", "surrogateescape") + b"\n")
    stream.buffer.flush()
    return 0 if ok else 1


def _print_rpctool_usage() -> None:
    _err("rpctool syntax:\n\n  -h | --help\tprint usage.\n"
         "  rpctool <text>\tsend <text> as an RPC command.")


def _err(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


# --- the VM file ---------------------------------------------------------------------------------


def _vm_path() -> Path | None:
    value = os.environ.get(ENV_VAR)
    return Path(value) if value else None


def _is_no_vm() -> bool:
    path = _vm_path()
    state = _load(path) if path is not None else None
    return state is None or state["mode"] == "no-vm"


def _record(argv: list[str]) -> dict | None:
    """Append `argv` to the VM's argv_log; return the VM's state, or None if there is no VM."""
    path = _vm_path()
    if path is None:
        return None
    with _locked(path):
        state = _load(path)
        if state is None:
            return None
        if "vsphere" not in state:  # a channel file is the lab's, read-only here
            state["argv_log"].append(argv)
            _store(path, state)
        return state


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A sibling lock file, not the VM file itself: the VM file is replaced by rename, and a
    # lock on a replaced inode would not exclude the next writer.
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(path: Path) -> dict | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise EmulatorError(f"cannot read VM file {path}: {error.strerror}") from None
    try:
        state = json.loads(raw)
    except (ValueError, RecursionError):
        raise EmulatorError(f"VM file {path} is not JSON") from None
    if isinstance(state, dict) and "vsphere" in state:
        return {"vsphere": state["vsphere"], "argv_log": [], "mode": None}
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("guestinfo"), dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in state["guestinfo"].items())
    ):
        raise EmulatorError(f"VM file {path}: 'guestinfo' must map str to str")
    state.setdefault("argv_log", [])
    state.setdefault("mode", None)
    if not isinstance(state["argv_log"], list):
        raise EmulatorError(f"VM file {path}: 'argv_log' must be a list")
    try:
        _check_mode(state["mode"])
    except ValueError as error:
        raise EmulatorError(f"VM file {path}: {error}") from None
    return state


def _store(path: Path, state: dict) -> None:
    # Temp file in the same directory + rename: readers see the old or the new file, never a
    # half-written one. No fsync: an emulated VM need not survive a host crash, and the tests
    # run thousands of these writes.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise EmulatorError(f"cannot write next to VM file {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            json.dump(state, handle, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_mode(mode: object) -> None:
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown emulator mode {mode!r}; known: {', '.join(sorted(MODES))}")
