"""Files that matter, written atomically: temp file in the same directory, created with its
final mode, fsync, rename over the target, fsync the directory. A crash at any point leaves
either the old file or the new one, never a mix, and never a moment with looser permissions."""

from __future__ import annotations

import os
from pathlib import Path


def ensure_private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create `path` (and parents) if missing, and make sure it has exactly `mode`."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o7777 != mode:
        os.chmod(path, mode)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, uid: int | None = None,
                 gid: int | None = None, sync_directory: bool = True) -> None:
    """Replace `path` with `data`, atomically and durably, with permissions `mode`: as
    `write_atomic_at` in the directory holding `path`."""
    path = Path(path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_atomic_at(dir_fd, path.name, data, mode, uid=uid, gid=gid, sync_directory=sync_directory)
    finally:
        os.close(dir_fd)


def write_atomic_at(dir_fd: int, name: str, data: bytes, mode: int = 0o600, *, uid: int | None = None,
                    gid: int | None = None, sync_directory: bool = True) -> None:
    """Replace `name` in the directory open as `dir_fd` with `data`, atomically and durably,
    with permissions `mode`. Every step is relative to `dir_fd`, so a directory whose path a
    user can swap (an account's ~/.ssh) is written where it was checked, not where a symlink
    points now.

    The temp file is opened O_EXCL|O_NOFOLLOW with `mode` (the umask can only remove bits, and
    we fchmod after to undo it), so the content is never readable by anyone `mode` does not
    allow. After the rename the directory itself is fsynced: the rename is what makes the new
    content the file, and until the directory is on disk a crash can bring the old one back.

    `sync_directory=False` skips that directory fsync: only for files that are rebuilt from a
    durable record when a crash loses the rename (the old file, or none, is then what the next
    start finds and rolls forward). The content is always fsync'ed before the rename, so the
    name never points at an empty or partial file.
    """
    tmp = f".{name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_at(dir_fd, tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_at(dir_fd, tmp)
        raise
    if sync_directory:
        os.fsync(dir_fd)


def _unlink_at(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def remove_durably(path: Path) -> None:
    """Delete `path` if present and make the deletion durable."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    _fsync_dir(Path(path).parent)


def clean_stale_temps(directory: Path) -> int:
    """Remove temp files a crash left behind (names as write_atomic makes them)."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:  # the names glob(".*.tmp") matches, without compiling its pattern (start-up)
        if len(entry.name) >= 5 and entry.name.startswith(".") and entry.name.endswith(".tmp"):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed
