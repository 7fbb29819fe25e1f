"""SSH keys: install the requester's public key for the appliance account, and read the host
keys the requester pins (so ssh works afterwards with no trust-on-first-use)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import stat
from pathlib import Path
from typing import NamedTuple


from .atomicfile import write_atomic
from .errors import AgentError

HOST_KEY_GLOB = "/etc/ssh/ssh_host_*_key.pub"
MAX_AUTHORIZED_KEYS_FILE = 1024 * 1024


class SSHKeyError(AgentError):
    """The requester's SSH key could not be installed."""

    code = "ssh_key"


def host_public_keys(pattern: str = HOST_KEY_GLOB) -> tuple[str, ...]:
    """The appliance's SSH host public keys as `type base64` (comments dropped), sorted."""
    keys = []
    for path in sorted(glob.glob(pattern)):
        try:
            fields = Path(path).read_text(encoding="ascii").split()
        except (OSError, UnicodeDecodeError):
            continue
        if len(fields) >= 2:
            keys.append(f"{fields[0]} {fields[1]}")
    return tuple(keys)


class AuthorizedKeysTarget(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    """Where an account's authorized_keys lives, checked to be safe to write (not yet written)."""

    account: str
    uid: int
    gid: int
    home: Path

    ssh_dir = property(lambda self: self.home / ".ssh")
    path = property(lambda self: self.home / ".ssh" / "authorized_keys")


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
            directory, someone else's), authorized_keys a symlink or oversized.
    """
    try:
        entry = pwd.getpwnam(account)
    except KeyError:
        raise SSHKeyError(f"account {account!r} does not exist on the appliance") from None
    home = Path(entry.pw_dir)
    if not home.is_dir():
        raise SSHKeyError(f"the home directory {home} of account {account!r} does not exist")
    target = AuthorizedKeysTarget(account, entry.pw_uid, entry.pw_gid, home)
    try:
        info = os.lstat(target.ssh_dir)
    except FileNotFoundError:
        if not os.access(home, os.W_OK):
            raise SSHKeyError(f"{home} is not writable, so {target.ssh_dir} cannot be created") from None
        return target
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (entry.pw_uid, 0):
        raise SSHKeyError(f"{target.ssh_dir} is not a directory owned by {account!r}")
    if os.path.islink(target.path):
        raise SSHKeyError(f"{target.path} is a symlink; refusing to follow it")
    with contextlib.suppress(FileNotFoundError):
        if os.stat(target.path).st_size > MAX_AUTHORIZED_KEYS_FILE:
            raise SSHKeyError(f"{target.path} is larger than {MAX_AUTHORIZED_KEYS_FILE} bytes")
    return target


def install_authorized_key(account: str, key_line: str) -> Path:
    """Add `key_line` to the account's ~/.ssh/authorized_keys (atomic, owned by the account,
    .ssh 0700, file 0600). Idempotent: a line already there is not added twice.

    Raises:
        SSHKeyError: as `authorized_keys_target`, or an unreadable file.
    """
    target = authorized_keys_target(account)
    line = parse_public_key_line(key_line).encode("ascii")
    if not target.ssh_dir.exists():
        os.mkdir(target.ssh_dir, 0o700)
        os.chown(target.ssh_dir, target.uid, target.gid)
    try:
        with open(target.path, "rb") as handle:
            existing = handle.read(MAX_AUTHORIZED_KEYS_FILE + 1)
    except FileNotFoundError:
        existing = b""
    except OSError as exc:
        raise SSHKeyError(f"cannot read {target.path}: {exc.strerror}") from None
    if len(existing) > MAX_AUTHORIZED_KEYS_FILE:
        raise SSHKeyError(f"{target.path} is larger than {MAX_AUTHORIZED_KEYS_FILE} bytes")
    if line in existing.splitlines():
        return target.path
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    write_atomic(target.path, existing + line + b"\n", 0o600, uid=target.uid, gid=target.gid)
    return target.path


def remove_stale_authorized_keys_temps(account: str) -> int:
    """Remove the temp files a killed write of the account's authorized_keys left (the names
    write_atomic gives them). Only at start, before anything could be writing it."""
    try:
        ssh_dir = Path(pwd.getpwnam(account).pw_dir) / ".ssh"
    except KeyError:
        return 0
    removed = 0
    for leftover in ssh_dir.glob(".authorized_keys.*.tmp"):
        if not leftover.is_symlink():
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def has_authorized_key(account: str, key_line: str) -> bool:
    """Whether the account's authorized_keys holds `key_line` (status and tests)."""
    try:
        entry = pwd.getpwnam(account)
        data = (Path(entry.pw_dir) / ".ssh" / "authorized_keys").read_bytes()[: MAX_AUTHORIZED_KEYS_FILE + 1]
    except (KeyError, OSError):
        return False
    return key_line.strip().encode("ascii", "replace") in data.splitlines()
