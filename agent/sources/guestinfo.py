"""The agent's client of the VMware guestinfo channel, through open-vm-tools' command-line tools.

`GuestInfo` reads and writes `guestinfo.*` keys of the VM it runs in. It drives the same tools
an administrator would, and nothing else, so it behaves identically against real open-vm-tools
and against the lab's emulator (`lab/vmware_emulator.py`):

    read     vmtoolsd --cmd "info-get guestinfo.KEY"       (vmware-rpctool "info-get ..." when
                                                             vmtoolsd is not installed)
    write    vmtoolsd --cmdfile FILE                        FILE holds "info-set guestinfo.KEY
                                                             VALUE": 0600, in a private 0700
                                                             directory, removed afterwards

A value never reaches argv, where any local user can read it in /proc/PID/cmdline: writing
without vmtoolsd is refused, except the empty value used to scrub a key.

Every tool run has a timeout and bounded output; a transient failure (the host answering
"Permission denied", or a run that stalls) is retried a few times with doubling back-off. Errors
are typed (`HypervisorUnavailable`, `GuestInfoError`) and their messages name keys, tools and exit
codes, never values.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import GuestInfoError, GuestInfoValueError, HypervisorUnavailable

GUESTINFO_PREFIX = "guestinfo."
# What we accept as a key, after the prefix. The VMX is more liberal, but our keys are
# identifiers, and this keeps quoting, spaces and control characters out of the RPC text.
_KEY_CHARS = re.compile(r"[A-Za-z0-9._-]+\Z")
# Keys appear in argv and in error messages; nothing this long is one of ours.
MAX_KEY_CHARS = 256

# open-vm-tools issue #377: `vmtoolsd --cmd` called in a loop sometimes stalls ~2 s before
# answering; 5 s lets that through while a channel that is really stuck fails quickly.
DEFAULT_TIMEOUT = 5.0
# Attempts per operation, and the pause before the second one (doubling after that): three
# attempts with 0.2 s + 0.4 s of back-off ride out a momentary refusal or stall at boot.
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = 0.2

# lib/include/guest_msg_def.h: GUESTMSG_MAX_IN_SIZE, the largest message the VMX accepts from the
# guest (so the largest "info-set guestinfo.KEY VALUE" we can send).
MAX_MESSAGE_BYTES = 64 * 1024
# A reply holds one guestinfo value; vm-operator and cloud-init treat 64 KiB as the practical
# maximum. 1 MiB bounds what a broken or hostile tool can make us buffer, with headroom.
MAX_REPLY_BYTES = 1024 * 1024
# The tools print one line on stderr; keep enough for a message, drop the rest.
MAX_STDERR_BYTES = 4 * 1024
# How much of a tool's stderr line an error message quotes.
_MAX_QUOTED_CHARS = 200

# The tools' answers we act on (see lab/vmware_emulator.py for where each is decided).
NO_VALUE = "No value found"  # VMX reply to info-get for an unset key
PERMISSION_DENIED = "Permission denied"  # VMX refusal, transient at boot
_NOT_IN_VM_MARKERS = (
    "to VMware hypervisor.",  # vmtoolsd: "Unable to send command [from file] to VMware hypervisor."
    "Failed sending message to VMware.",  # vmware-rpctool
    "must be run inside a virtual machine",  # vmware-rpctool 12.2 (Debian 12) outside VMware, exit 255
)
# rpctool.c, as published, exits 1 with the message above outside a VM. Exit status 255 is read
# the same way, in case a build reports the failure so (not seen in the published source).
_RPCTOOL_NOT_IN_VM_EXIT = 255
_CMDLINE_FAILED = "Command line parsing failed"

# vmtoolsd localises its own messages (SU_() in cmdLine.c) and glib's g_print converts output to
# the locale's charset: a UTF-8 C locale gives English messages and passes values through as is.
_TOOL_LOCALE = "C.UTF-8"
# Where the command file goes: /dev/shm is tmpfs on Linux, so the value never touches a disk.
_SECRET_TMP_ROOTS = ("/dev/shm",)


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: bytes
    stderr: str  # decoded leniently, first MAX_STDERR_BYTES only


class _Transient(Exception):
    """One attempt failed in a way worth retrying; the message is the reason."""


class GuestInfo:
    """Read and write `guestinfo.*` keys of this VM through open-vm-tools.

    Args:
        vmtoolsd: name (looked up with `which`) or path of vmtoolsd.
        rpctool: name or path of vmware-rpctool (used for reads when vmtoolsd is absent).
        timeout: seconds one tool run may take before it is killed.
        attempts: tool runs per operation when a run is refused or times out.
        backoff: seconds before the second attempt, doubled before each further one.
        tmp_dir: where the private directory for command files is made; by default /dev/shm
            when usable, else the system temporary directory.
        which: resolves a tool name to a path, or None when not installed (shutil.which).
        sleep: waits between attempts (time.sleep); injectable so tests need not wait.
    """

    def __init__(
        self,
        *,
        vmtoolsd: str = "vmtoolsd",
        rpctool: str = "vmware-rpctool",
        timeout: float = DEFAULT_TIMEOUT,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        tmp_dir: str | os.PathLike[str] | None = None,
        which: Callable[[str], str | None] = shutil.which,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if timeout <= 0 or attempts < 1 or backoff < 0:
            raise ValueError("timeout must be > 0, attempts >= 1 and backoff >= 0")
        self._vmtoolsd = vmtoolsd
        self._rpctool = rpctool
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._tmp_dir = tmp_dir
        self._which = which
        self._sleep = sleep

    # --- public ----------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        """Return the value of `key`, or None when the key is not set.

        Args:
            key: "NAME" or "guestinfo.NAME"; NAME is made of letters, digits, ".", "_", "-".

        Returns:
            The value, with the one newline the tools append removed (a value's own trailing
            newlines are kept).

        Raises:
            HypervisorUnavailable: neither tool is installed, or this is not a VMware VM.
            GuestInfoValueError: a value that is not UTF-8 or larger than MAX_REPLY_BYTES.
            GuestInfoError: a bad key;
                the host refusing or the tool stalling on every attempt; any other failure.
        """
        name = guestinfo_key(key)
        command = f"info-get {name}"
        vmtoolsd = self._resolve(self._vmtoolsd)
        if vmtoolsd is not None:
            run = self._call([vmtoolsd, "--cmd", command], what=f"reading {name}")
        else:
            rpctool = self._resolve(self._rpctool)
            if rpctool is None:
                raise HypervisorUnavailable("neither vmtoolsd nor vmware-rpctool is installed")
            run = self._call([rpctool, command], what=f"reading {name}")
        if run.returncode != 0:
            if _first_line(run.stderr) == NO_VALUE:
                return None
            self._raise_failure(run, what=f"reading {name}")
        reply = run.stdout[:-1] if run.stdout.endswith(b"\n") else run.stdout
        try:
            return reply.decode("utf-8")
        except UnicodeDecodeError:
            raise GuestInfoValueError(f"the value of {name} is not valid UTF-8") from None

    def set(self, key: str, value: str) -> None:
        """Set `key` to `value` (which may be empty, and may hold spaces and newlines).

        The value goes to vmtoolsd in a command file, never in argv. Without vmtoolsd only the
        empty value can be written (through vmware-rpctool's argv, where it reveals nothing).

        Raises:
            HypervisorUnavailable: neither tool is installed, or this is not a VMware VM.
            GuestInfoError: a bad key; a value with NUL, not encodable as UTF-8, or making the
                message larger than MAX_MESSAGE_BYTES; vmtoolsd missing for a non-empty value,
                or too old for --cmdfile; the host refusing or the tool stalling on every
                attempt; any other failure.
        """
        name = guestinfo_key(key)
        if not isinstance(value, str):
            raise GuestInfoError(f"the value for {name} must be a str")
        if "\0" in value:
            # The tools hand the command to the RPC layer as a C string: it would end there.
            raise GuestInfoError(f"the value for {name} contains a NUL character")
        try:
            message = f"info-set {name} {value}".encode("utf-8")
        except UnicodeEncodeError:
            raise GuestInfoError(f"the value for {name} is not encodable as UTF-8") from None
        if len(message) > MAX_MESSAGE_BYTES:
            raise GuestInfoError(
                f"the value for {name} is too large ({len(message)} bytes with the command; "
                f"the VMX accepts at most {MAX_MESSAGE_BYTES})"
            )
        what = f"setting {name}"
        vmtoolsd = self._resolve(self._vmtoolsd)
        if vmtoolsd is not None:
            with self._command_file(message) as path:
                run = self._call([vmtoolsd, "--cmdfile", str(path)], what=what)
        else:
            rpctool = self._resolve(self._rpctool)
            if rpctool is None:
                raise HypervisorUnavailable("neither vmtoolsd nor vmware-rpctool is installed")
            if value:
                raise GuestInfoError(
                    "cannot set guestinfo without vmtoolsd: vmware-rpctool would put the value "
                    "in argv"
                )
            run = self._call([rpctool, f"info-set {name} "], what=what)
        if run.returncode != 0:
            self._raise_failure(run, what=what, secret=value)

    def available(self) -> bool:
        """Whether a tool is installed and the hypervisor answers (an info-get round trip).

        Raises:
            GuestInfoError: the channel exists but refuses or stalls on every attempt.
        """
        try:
            self.get("firsttrust.probe")
        except HypervisorUnavailable:
            return False
        return True

    # --- running the tools -------------------------------------------------------------------

    def _resolve(self, tool: str) -> str | None:
        if os.sep in tool:
            return tool if os.access(tool, os.X_OK) and not os.path.isdir(tool) else None
        return self._which(tool)

    def _call(self, argv: list[str], *, what: str) -> _Run:
        """Run `argv`, retrying transient failures; return the last run that was not one."""
        tool = os.path.basename(argv[0])
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                run = self._run_once(argv, tool)
                if run.returncode != 0 and _first_line(run.stderr) == PERMISSION_DENIED:
                    raise _Transient("the host answered 'Permission denied'")
                return run
            except _Transient as transient:
                reason = str(transient)
            if attempt < self._attempts:
                self._sleep(delay)
                delay *= 2
        raise GuestInfoError(f"{tool} failed {what}: {reason} ({self._attempts} attempts)")

    def _run_once(self, argv: list[str], tool: str) -> _Run:
        env = dict(os.environ, LC_ALL=_TOOL_LOCALE)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as error:
            raise GuestInfoError(f"cannot run {tool}: {error.strerror}") from None
        try:
            stdout, stderr = _read_bounded(proc, self._timeout, tool)
        finally:
            if proc.returncode is None:
                proc.kill()  # timed out, or reply too large: do not leave a stuck tool behind
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        return _Run(proc.returncode, stdout, stderr.decode("utf-8", "replace"))

    def _raise_failure(self, run: _Run, *, what: str, secret: str = "") -> None:
        line = _first_line(run.stderr)
        # open-vm-tools 12.2's vmtoolsd, run outside VMware (seen under QEMU), exits 1 and says
        # nothing at all; inside a VM every failure it reports comes with a message.
        silent_failure = run.returncode == 1 and not run.stdout.strip() and not run.stderr.strip()
        if any(marker in line for marker in _NOT_IN_VM_MARKERS) or silent_failure or (
            run.returncode == _RPCTOOL_NOT_IN_VM_EXIT
        ):
            raise HypervisorUnavailable(
                f"not a VMware VM, or its hypervisor does not answer: {_quote(line, secret)}"
            )
        if line.startswith(_CMDLINE_FAILED) and "--cmdfile" in line:
            raise GuestInfoError(
                "vmtoolsd does not support --cmdfile (open-vm-tools too old); refusing to put "
                "the value in argv"
            )
        code = run.returncode
        status = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        raise GuestInfoError(f"{what} failed ({status}): {_quote(line, secret)}")

    @contextlib.contextmanager
    def _command_file(self, message: bytes) -> Iterator[Path]:
        """A file holding `message`: mode 0600 from creation, in a fresh 0700 directory."""
        directory = Path(tempfile.mkdtemp(prefix="firsttrust-guestinfo-", dir=self._tmp_root()))
        path = directory / "command"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(message)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            directory.rmdir()

    def _tmp_root(self) -> str | None:
        if self._tmp_dir is not None:
            return os.fspath(self._tmp_dir)
        for root in _SECRET_TMP_ROOTS:
            if os.path.isdir(root) and os.access(root, os.W_OK | os.X_OK):
                return root
        return None


def guestinfo_key(key: str) -> str:
    """Normalise `key` to "guestinfo.NAME".

    Raises:
        GuestInfoError: `key` is not a str, is too long, or NAME is empty or has characters
            other than letters, digits, ".", "_" and "-".
    """
    if not isinstance(key, str):
        raise GuestInfoError("a guestinfo key must be a str")
    if len(key) > MAX_KEY_CHARS:
        raise GuestInfoError(
            f"guestinfo key too long ({len(key)} characters, at most {MAX_KEY_CHARS})"
        )
    name = key[len(GUESTINFO_PREFIX):] if key.startswith(GUESTINFO_PREFIX) else key
    if not _KEY_CHARS.match(name):
        raise GuestInfoError(
            f"invalid guestinfo key {_quote(key)}: use letters, digits, '.', '_', '-'"
        )
    return GUESTINFO_PREFIX + name


def _read_bounded(proc: subprocess.Popen, timeout: float, tool: str) -> tuple[bytes, bytes]:
    """Read the child's stdout and stderr until both close and it exits, within `timeout`.

    Raises:
        _Transient: the time ran out (the caller kills the child).
        GuestInfoValueError: stdout exceeded MAX_REPLY_BYTES.
    """
    deadline = time.monotonic() + timeout
    too_slow = f"no answer within {timeout:g} s"
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Transient(too_slow)
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 64 * 1024)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data is out:
                    out += chunk
                    if len(out) > MAX_REPLY_BYTES:
                        raise GuestInfoValueError(f"{tool}: value too large (over {MAX_REPLY_BYTES} bytes)")
                elif len(err) < MAX_STDERR_BYTES:
                    err += chunk[: MAX_STDERR_BYTES - len(err)]
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        raise _Transient(too_slow) from None
    return bytes(out), bytes(err)


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0].strip() if stripped else ""


def _quote(text: str, secret: str = "") -> str:
    """`text` made safe for a one-line error message: printable, short, without `secret`.

    Withheld entirely when it contains the secret or any line of it, so that a tool echoing
    part of a multi-line value cannot leak it either.
    """
    fragments = [secret, *secret.splitlines()] if secret else []
    if any(fragment.strip() and fragment.strip() in text for fragment in fragments):
        return "(message withheld: it contains the value)"
    printable = "".join(c if c.isprintable() else "?" for c in text)
    if len(printable) > _MAX_QUOTED_CHARS:
        printable = printable[:_MAX_QUOTED_CHARS] + "..."
    return repr(printable) if printable else "(no message)"
