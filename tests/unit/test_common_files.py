"""common/files.py: the one durable private writer and the one bounded reader."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
import time

import pytest

from firsttrust.common.files import FileTooLarge, read_at_most, read_bounded, read_bounded_stat, write_atomic, \
    write_new


class CallerError(Exception):
    pass


class OtherError(Exception):
    pass


def test_read_bounded_takes_exactly_the_limit_and_refuses_one_byte_more(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_bounded(path, 10) == b"x" * 10
    with pytest.raises(FileTooLarge, match=f"^{path} is larger than 9 bytes$"):
        read_bounded(path, 9)


def test_read_bounded_raises_the_callers_classes_with_the_callers_name(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5)
    with pytest.raises(CallerError, match="^cannot read the thing: No such file or directory$"):
        read_bounded(tmp_path / "missing", 4, what="the thing", error=CallerError)
    with pytest.raises(CallerError, match="^the thing is larger than 4 bytes$"):
        read_bounded(big, 4, what="the thing", error=CallerError)
    with pytest.raises(OtherError, match="^the thing is larger than 4 bytes$"):
        read_bounded(big, 4, what="the thing", error=CallerError, too_large=OtherError)


def test_without_an_error_class_the_os_error_comes_as_it_was(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing", 4)
    with pytest.raises(IsADirectoryError):
        read_bounded(tmp_path, 4, too_large=CallerError)


def test_a_stream_is_bounded_too_and_has_no_mode():
    assert read_bounded_stat(io.BytesIO(b"abc"), 3) == (b"abc", 0)
    with pytest.raises(FileTooLarge, match="^- is larger than 2 bytes$"):
        read_bounded(io.BytesIO(b"abc"), 2, what="-")


def test_the_mode_check_comes_before_the_size_and_sees_the_file_as_opened(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    os.chmod(path, 0o640)
    seen = []

    def check(mode):
        seen.append(stat.S_IMODE(mode))
        raise CallerError("mode")

    with pytest.raises(CallerError, match="mode"):
        read_bounded_stat(path, 1, check=check)
    assert seen == [0o640]


def test_a_file_of_any_size_costs_at_most_the_limit_in_memory():
    with open("/dev/zero", "rb") as zero:
        assert read_at_most(zero, 8) == (b"\0" * 8, 0)
    with pytest.raises(FileTooLarge):
        read_bounded("/dev/zero", 1024)
    assert read_at_most("/dev/zero", 8)[0] == b"\0" * 8  # a size of 0 that says nothing


def test_a_file_that_grew_after_it_was_opened_is_read_on_to_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "grows"
    path.write_bytes(b"x" * 10)
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 3, *real_fstat(fd)[7:])))
    assert read_at_most(path, 8)[0] == b"x" * 8  # st_size 3 when opened: read on, stop at 8
    assert read_at_most(path, 100)[0] == b"x" * 10
    monkeypatch.undo()
    assert read_at_most(path, 100)[0] == b"x" * 10
    assert read_at_most(path, 10)[0] == b"x" * 10
    assert read_at_most(path, 4)[0] == b"x" * 4


def test_a_pipe_that_delivers_in_pieces_is_read_to_its_end_or_the_limit(tmp_path):
    # A short read ends a regular file only: a FIFO (or /proc, a character device) may hand out
    # less than is coming.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write_in_pieces(*pieces):
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb", buffering=0) as sink:
            for piece in pieces:  # the reader may have stopped at its limit
                sink.write(piece)
                time.sleep(0.05)

    for limit, expected in ((100, b"abcdef"), (3, b"abc")):
        writer = threading.Thread(target=write_in_pieces, args=(b"ab", b"cd", b"ef"))
        writer.start()
        try:
            data, mode = read_at_most(fifo, limit)
        finally:
            writer.join()
        assert data == expected and stat.S_ISFIFO(mode)


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_write_new_is_private_from_creation_and_durable(tmp_path, monkeypatch, umask):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real_fsync(fd)))
    old = os.umask(umask)
    try:
        write_new(tmp_path / "secrets.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
    assert synced == [False, True]  # the content, then the directory that names it


def test_write_new_never_replaces_or_follows(tmp_path):
    (tmp_path / "kept").write_bytes(b"old")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    for name in ("kept", "link"):
        with pytest.raises(FileExistsError):
            write_new(tmp_path / name, b"new")
    assert (tmp_path / "kept").read_bytes() == b"old"
    assert not (tmp_path / "elsewhere").exists()


def test_write_atomic_replaces_with_the_final_mode_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    write_atomic(path, b"new", 0o600)
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_directory_where_a_file_was_expected_is_named_in_the_error(tmp_path):
    # A directory opens read-only and fails only at read(2), which names no file.
    with pytest.raises(IsADirectoryError) as raised:
        read_at_most(tmp_path, 10)
    assert raised.value.filename == str(tmp_path)
    with pytest.raises(IsADirectoryError) as raised:
        read_bounded(str(tmp_path), 10)
    assert raised.value.filename == str(tmp_path)


def test_a_failed_write_atomic_names_the_file_it_writes_not_its_temp_file(tmp_path, monkeypatch):
    """A read-only file system (or an I/O error) fails the temp file's steps; the error that
    reaches a one-line message (common/cli.py os_error_line) names the file being written."""
    import errno

    def failing_fsync(fd):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    path = tmp_path / "state.json"
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as caught:
        write_atomic(path, b"{}")
    assert caught.value.filename == str(path) and caught.value.errno == errno.EROFS
    assert list(tmp_path.iterdir()) == []
