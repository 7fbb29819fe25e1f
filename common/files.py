"""Files that matter, for the agent, the requester and the lab: one durable private writer, one
bounded reader.

Writes are atomic: temp file in the same directory, created with its final mode, fsync, rename
over the target, fsync the directory. A crash at any point leaves either the old file or the
new one, never a mix, and never a moment with looser permissions. `write_new` creates a file
that must not replace anything (a secrets file may be the only copy of its secrets).

Reads are bounded: at most `limit` + 1 bytes are read, and more than `limit` is refused, so a
wrong path (a disk image, /dev/zero) is never read into memory. Each caller keeps its own typed
error: the reader raises the OSError as it came, or the caller's class with the one-line message
`cannot read WHAT: REASON` / `WHAT is larger than LIMIT bytes`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO, Callable


def ensure_private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create `path` (and parents) if missing, and make sure it has exactly `mode`.

    Raises:
        PermissionError: another user owns it (it could have planted files there, and could swap
            them later: no mode makes that directory private); its mode is left as it is.
    """
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    status = path.stat()
    if status.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"it belongs to uid {status.st_uid}, not to this process's user "
                                           f"(uid {os.geteuid()})", os.fspath(path))
    if status.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
    return path


def fsync_directory(path: Path) -> None:
    """Make a rename, a new file or a deletion in the directory `path` durable."""
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
    except OSError as exc:  # it names the temp file, relative to dir_fd: name what is being written
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
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
        _write_all(fd, data)
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


def write_new(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Create `path` with `data` and permissions `mode` from its creation, durably (the file and
    then its directory fsynced). Never replaces a file: O_EXCL|O_NOFOLLOW, so an existing file
    or symlink at `path` is neither overwritten nor followed (FileExistsError). A failed write
    removes the partial file: half a secrets file helps nobody.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        raise
    os.close(fd)
    fsync_directory(Path(os.path.abspath(path)).parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def remove_durably(path: Path) -> None:
    """Delete `path` if present and make the deletion durable."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_directory(Path(path).parent)


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


# -- bounded reads -----------------------------------------------------------------------------


class FileTooLarge(ValueError):
    """More than the limit: a wrong path, not an input (the neutral error, when the caller names
    no class of its own)."""

    def __init__(self, what: str, limit: int, mode: int = 0) -> None:
        super().__init__(f"{what} is larger than {limit} bytes")
        self.limit = limit
        self.mode = mode  # the file's st_mode, for a caller that checks it first (0 for a stream)


def read_at_most(source: Path | str | BinaryIO, count: int) -> tuple[bytes, int]:
    """The first `count` bytes of `source` (a path, or an open binary stream) and the st_mode of
    the file as opened (0 for a stream). For a reader whose parser refuses what is cut off (a
    JSON record): never more than `count` bytes in memory, whatever the file's size.

    Raises:
        OSError: as open or read raised it.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source.read(count), 0
    if "\0" in str(source):  # os.open's ValueError is no OSError: every caller's handling would miss it
        raise OSError(errno.EINVAL, "the path holds a NUL byte", str(source).replace("\0", "\\0"))
    # The descriptor itself, not open(): io's buffered file object adds an lseek, an isatty
    # ioctl and ~15 us of Python per read, and the agent reads state.json, SEC-B and
    # authorized.json five times an enrollment (bench/README.md).
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_descriptor(fd, count)
    except OSError as exc:  # os.read names no file (a directory opens, then fails to read: EISDIR)
        if exc.filename is None:
            exc.filename = os.fspath(source)
        raise
    finally:
        os.close(fd)


def _read_descriptor(fd: int, count: int) -> tuple[bytes, int]:
    status = os.fstat(fd)
    # Sized by the file as opened: a read of `count` bytes allocates `count` up front (a
    # megabyte for a state file of 1.4 kB, given back at once), several times an enrollment.
    # A file that grew since, or whose size says nothing (a pipe, /dev/zero, /proc), is read
    # on, never past `count`.
    first = min(count, status.st_size + 1)
    data = os.read(fd, first)
    parts, total = [data], len(data)
    while data and total < count:  # to the end or `count`, however short each read
        data = os.read(fd, min(count - total, 1 << 16))
        parts.append(data)
        total += len(data)
    return b"".join(parts), status.st_mode


def read_bounded(source: Path | str | BinaryIO, limit: int, *, what: str | None = None,
                 error: type[Exception] | None = None, too_large: type[Exception] | None = None) -> bytes:
    """The content of `source` (a path, or an open binary stream such as stdin.buffer).

    Args:
        limit: the most bytes accepted; limit + 1 are read at most.
        what: how messages name the input (default: the path).
        error: the caller's class for an unreadable input, `cannot read WHAT: REASON`; without
            it the OSError is raised as it came (a caller that tells a missing file apart).
        too_large: the caller's class for `WHAT is larger than LIMIT bytes` (default `error`,
            else FileTooLarge).
    """
    return read_bounded_stat(source, limit, what=what, error=error, too_large=too_large)[0]


def read_bounded_stat(source: Path | str | BinaryIO, limit: int, *, what: str | None = None,
                      error: type[Exception] | None = None, too_large: type[Exception] | None = None,
                      check: Callable[[int], None] | None = None) -> tuple[bytes, int]:
    """As read_bounded, with the st_mode of the file as opened (0 for a stream): the mode of
    the file actually read, not of whatever the path names a moment later.

    Args:
        check: called with that mode before the size is checked, to refuse a file others may
            write or read (its own error wins over the size's).
    """
    what = (str(source) if what is None else what).replace("\0", "\\0")  # no NUL in a message
    try:
        data, mode = read_at_most(source, limit + 1)
    except OSError as exc:
        if error is None:
            raise
        raise error(f"cannot read {what}: {exc.strerror}") from None
    if check is not None:
        check(mode)
    if len(data) > limit:
        cls = too_large or error
        if cls is None or cls is FileTooLarge:
            raise FileTooLarge(what, limit, mode)
        raise cls(f"{what} is larger than {limit} bytes")
    return data, mode
