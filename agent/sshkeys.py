"""SSH keys: install the requester's public key for the appliance account, and read the host
keys the requester pins (so ssh works afterwards with no trust-on-first-use)."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import pwd
import stat
from pathlib import Path
from typing import NamedTuple

from firsttrust.common.files import write_atomic_at

from .errors import AgentError

HOST_KEY_GLOB = "/etc/ssh/ssh_host_*_key.pub"
MAX_AUTHORIZED_KEYS_FILE = 1024 * 1024


class SSHKeyError(AgentError):
    """The requester's SSH key could not be installed."""

    code = "ssh_key"


def host_public_keys(pattern: str = HOST_KEY_GLOB) -> tuple[str, ...]:
    """The appliance's SSH host public keys as `type base64` (comments dropped), sorted."""
    return _read_host_keys(sorted(glob.glob(pattern)))


def _read_host_keys(paths: list[str]) -> tuple[str, ...]:
    keys = []
    for path in paths:
        try:
            fields = Path(path).read_text(encoding="ascii").split()
        except (OSError, UnicodeDecodeError):
            continue
        if len(fields) >= 2:
            keys.append(f"{fields[0]} {fields[1]}")
    return tuple(keys)


class HostKeys:
    """`host_public_keys(pattern)`, read again only when what it read may have changed: the
    directory's stamp (a key added, removed or renamed into place) or one of the files' (a key
    rewritten in place). An enrollment sends the keys; the agent reads them when it starts
    (EnrollmentServer.prepare), so the enrollment itself stats the directory and the files
    instead of listing it and reading each key (bench/README.md, issue 29)."""

    def __init__(self, pattern: str = HOST_KEY_GLOB) -> None:
        self.pattern = pattern
        self._directory = os.path.dirname(pattern) or "."
        self._paths: list[str] = []
        self._stamp: tuple | None = None
        self._keys: tuple[str, ...] = ()

    def _stamp_now(self, directory: tuple | None = None) -> tuple | None:
        try:
            stamps = [directory or _stamp(os.stat(self._directory))]
            stamps += [_stamp(os.stat(path)) for path in self._paths]
        except OSError:
            return None  # read again: glob finds what there is
        return tuple(stamps)

    def __call__(self) -> tuple[str, ...]:
        stamp = self._stamp_now()
        if stamp is None or stamp != self._stamp:
            # The directory is stamped before it is listed and the files before they are read,
            # so a change made meanwhile shows at the next call.
            directory = stamp[0] if stamp is not None else None
            self._paths = sorted(glob.glob(self.pattern))
            stamp = self._stamp_now(directory)
            self._keys = _read_host_keys(self._paths)
            self._stamp = stamp
        return self._keys


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


class AuthorizedKeysTarget(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    """Where an account's authorized_keys lives, checked to be safe to write (not yet written)."""

    account: str
    uid: int
    gid: int
    home: Path

    ssh_dir = property(lambda self: self.home / ".ssh")
    path = property(lambda self: self.home / ".ssh" / "authorized_keys")


# Root writes under a home directory whose content the account's user controls: every name
# under it is opened relative to a descriptor, never followed if it is a symlink (O_NOFOLLOW),
# and what was opened is checked on the descriptor (fstat), so a path component swapped between
# the check and the use is refused, not followed (to /etc/shadow, say). O_NONBLOCK: a FIFO put in
# place of authorized_keys cannot hang the agent on open.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
AUTHORIZED_KEYS = "authorized_keys"


def _unsafe(what: Path, exc: OSError) -> SSHKeyError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return SSHKeyError(f"{what} is a symlink or not a directory; refusing to follow it")
    return SSHKeyError(f"cannot open {what}: {exc.strerror}")


def _check_ssh_dir(fd: int, target: AuthorizedKeysTarget) -> None:
    """~/.ssh as opened: a directory, the account's (or root's), writable by no one else (as
    sshd's StrictModes requires)."""
    info = os.fstat(fd)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (target.uid, 0):
        raise SSHKeyError(f"{target.ssh_dir} is not a directory owned by {target.account!r}")
    if info.st_mode & 0o022:
        raise SSHKeyError(f"{target.ssh_dir} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})")


def _check_authorized_keys(fd: int, target: AuthorizedKeysTarget) -> None:
    """authorized_keys as opened: a regular file of one link (not a hard link to another
    file), the account's (or root's), writable by no one else, not oversized."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid not in (target.uid, 0):
        raise SSHKeyError(f"{target.path} is not a regular file of {target.account!r} with one link")
    if info.st_mode & 0o022:
        raise SSHKeyError(f"{target.path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})")
    if info.st_size > MAX_AUTHORIZED_KEYS_FILE:
        raise SSHKeyError(f"{target.path} is larger than {MAX_AUTHORIZED_KEYS_FILE} bytes")


def _target(account: str) -> AuthorizedKeysTarget:
    try:
        entry = pwd.getpwnam(account)
    except KeyError:
        raise SSHKeyError(f"account {account!r} does not exist on the appliance") from None
    return AuthorizedKeysTarget(account, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def _open_ssh_dir(target: AuthorizedKeysTarget, *, create: bool = False) -> int | None:
    """A checked O_DIRECTORY|O_NOFOLLOW descriptor of the account's ~/.ssh, or None when it
    does not exist (and `create` is false). The home directory itself is the administrator's
    choice (/etc/passwd) and is followed; nothing under it is.

    Raises:
        SSHKeyError: no home; ~/.ssh a symlink, not a directory, someone else's, or writable by
            group or others.
    """
    try:
        home_fd = os.open(target.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise SSHKeyError(f"the home directory {target.home} of account {target.account!r} does not exist") from None
    try:
        try:
            fd = os.open(".ssh", _DIR_FLAGS, dir_fd=home_fd)
        except FileNotFoundError:
            if not create:
                if not os.access(target.home, os.W_OK):
                    raise SSHKeyError(f"{target.home} is not writable, so {target.ssh_dir} cannot be created") from None
                return None
            try:
                os.mkdir(".ssh", 0o700, dir_fd=home_fd)
                fd = os.open(".ssh", _DIR_FLAGS, dir_fd=home_fd)
            except OSError as exc:
                raise _unsafe(target.ssh_dir, exc) from None
            try:  # what was created is what is opened: a link swapped in since fails the open above
                # The mode first, while root owns it: after the chown, changing it needs CAP_FOWNER,
                # which the agent's unit does not grant (systemd/firsttrust-agent.service).
                os.fchmod(fd, 0o700)
                os.fchown(fd, target.uid, target.gid)
            except OSError as exc:
                os.close(fd)
                raise SSHKeyError(f"cannot give {target.ssh_dir} to {target.account!r}: {exc.strerror}") from None
        except OSError as exc:
            raise _unsafe(target.ssh_dir, exc) from None
    finally:
        os.close(home_fd)
    try:
        _check_ssh_dir(fd, target)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_authorized_keys(ssh_fd: int, target: AuthorizedKeysTarget) -> bytes:
    """The content of authorized_keys under the checked ~/.ssh descriptor (b"" if absent).

    Raises:
        SSHKeyError: a symlink, not a regular file, hard-linked, someone else's, oversized.
    """
    try:
        fd = os.open(AUTHORIZED_KEYS, _FILE_FLAGS, dir_fd=ssh_fd)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SSHKeyError(f"{target.path} is a symlink; refusing to follow it") from None
        raise SSHKeyError(f"cannot read {target.path}: {exc.strerror}") from None
    try:
        _check_authorized_keys(fd, target)
        chunks, size = [], 0
        while size <= MAX_AUTHORIZED_KEYS_FILE:
            chunk = os.read(fd, MAX_AUTHORIZED_KEYS_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SSHKeyError(f"cannot read {target.path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_AUTHORIZED_KEYS_FILE:
        raise SSHKeyError(f"{target.path} is larger than {MAX_AUTHORIZED_KEYS_FILE} bytes")
    return data


def parse_public_key_line(key_line: str) -> str:
    """The key line, stripped, if it is an OpenSSH public key cryptography can load.

    Raises:
        SSHKeyError: not a public key line of a supported type.
    """
    from cryptography.exceptions import UnsupportedAlgorithm  # only when a key is installed
    from cryptography.hazmat.primitives import serialization

    line = key_line.strip()
    try:
        serialization.load_ssh_public_key(line.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise SSHKeyError("the SSH key is not an OpenSSH public key of a supported type") from None
    return line


def authorized_keys_target(account: str) -> AuthorizedKeysTarget:
    """Check, without writing anything, that a key can be installed for `account`.

    Raises:
        SSHKeyError: unknown account, no home directory, an unsafe ~/.ssh (a symlink, not a
            directory, someone else's, writable by others), authorized_keys a symlink, not a
            regular file, hard-linked or oversized.
    """
    target = _target(account)
    ssh_fd = _open_ssh_dir(target)
    if ssh_fd is not None:
        try:
            _read_authorized_keys(ssh_fd, target)
        finally:
            os.close(ssh_fd)
    return target


def install_authorized_key(account: str, key_line: str) -> Path:
    """Add `key_line` to the account's ~/.ssh/authorized_keys (atomic, owned by the account,
    .ssh 0700, file 0600). Idempotent: a line already there is not added twice. Everything is
    opened and written relative to one checked descriptor of ~/.ssh (see _open_ssh_dir).

    Raises:
        SSHKeyError: as `authorized_keys_target`, or an unreadable file.
    """
    target = _target(account)
    line = parse_public_key_line(key_line).encode("ascii")
    ssh_fd = _open_ssh_dir(target, create=True)
    try:
        existing = _read_authorized_keys(ssh_fd, target)
        if line in existing.splitlines():
            return target.path
        if existing and not existing.endswith(b"\n"):
            existing += b"\n"
        write_atomic_at(ssh_fd, AUTHORIZED_KEYS, existing + line + b"\n", 0o600, uid=target.uid, gid=target.gid)
    finally:
        os.close(ssh_fd)
    return target.path


def remove_stale_authorized_keys_temps(account: str) -> int:
    """Remove the temp files a killed write of the account's authorized_keys left (the names
    write_atomic_at gives them), as names in the checked ~/.ssh descriptor: never through a
    symlinked ~/.ssh, and a symlink among them is removed as a name, not followed. Only at
    start, before anything could be writing it."""
    try:
        ssh_fd = _open_ssh_dir(_target(account))
    except SSHKeyError:
        return 0
    if ssh_fd is None:
        return 0
    removed = 0
    try:
        for entry in os.scandir(ssh_fd):
            if entry.name.startswith(f".{AUTHORIZED_KEYS}.") and entry.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=ssh_fd)
                    removed += 1
    finally:
        os.close(ssh_fd)
    return removed


def has_authorized_key(account: str, key_line: str) -> bool:
    """Whether the account's authorized_keys holds `key_line` (status and tests); False for an
    unsafe ~/.ssh or authorized_keys (which is then refused when a key is installed)."""
    try:
        target = _target(account)
        ssh_fd = _open_ssh_dir(target)
    except SSHKeyError:
        return False
    if ssh_fd is None:
        return False
    try:
        data = _read_authorized_keys(ssh_fd, target)
    except SSHKeyError:
        return False
    finally:
        os.close(ssh_fd)
    return key_line.strip().encode("ascii", "replace") in data.splitlines()
