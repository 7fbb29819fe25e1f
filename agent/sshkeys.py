"""SSH keys: install the requester's public key for the appliance account, and read the host
keys the requester pins (so ssh works afterwards with no trust-on-first-use)."""

from __future__ import annotations

import glob
import os
import pwd
import stat
from pathlib import Path

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


def install_authorized_key(account: str, key_line: str) -> Path:
    """Add `key_line` to the account's ~/.ssh/authorized_keys (atomic, owned by the account,
    .ssh 0700, file 0600). Idempotent. Refuses a ~/.ssh that is a symlink or someone else's.

    Raises:
        SSHKeyError: unknown account, unsafe ~/.ssh, unreadable or oversized file.
    """
    try:
        entry = pwd.getpwnam(account)
    except KeyError:
        raise SSHKeyError(f"account {account!r} does not exist") from None
    home = Path(entry.pw_dir)
    ssh_dir = home / ".ssh"
    try:
        info = os.lstat(ssh_dir)
    except FileNotFoundError:
        os.mkdir(ssh_dir, 0o700)
        os.chown(ssh_dir, entry.pw_uid, entry.pw_gid)
        info = os.lstat(ssh_dir)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (entry.pw_uid, 0):
        raise SSHKeyError(f"{ssh_dir} is not a directory owned by {account!r}")
    target = ssh_dir / "authorized_keys"
    try:
        if os.path.islink(target):
            raise SSHKeyError(f"{target} is a symlink; refusing to follow it")
        with open(target, "rb") as handle:
            existing = handle.read(MAX_AUTHORIZED_KEYS_FILE + 1)
    except FileNotFoundError:
        existing = b""
    if len(existing) > MAX_AUTHORIZED_KEYS_FILE:
        raise SSHKeyError(f"{target} is larger than {MAX_AUTHORIZED_KEYS_FILE} bytes")
    line = key_line.strip().encode("ascii")
    if line in existing.splitlines():
        return target
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    write_atomic(target, existing + line + b"\n", 0o600, uid=entry.pw_uid, gid=entry.pw_gid)
    return target
