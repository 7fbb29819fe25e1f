"""Read the OVF environment CD-ROM without mounting it: a minimal ISO 9660 (ECMA-119) reader.

vSphere's "ISO image" OVF transport attaches a CD-ROM labelled "OVF ENV" whose root holds
`ovf-env.xml`. Mounting needs root, a kernel module and a mount point; reading one small file
from the root directory needs none of them. This reader knows exactly that much of ECMA-119
(section numbers as in the 2nd edition, 1987) plus Joliet: the volume descriptors, the root
directory, and single-extent files in it. No subdirectories, no Rock Ridge, no multi-extent or
interleaved files.

The image comes from whoever deployed the VM, so every offset and length it contains is
checked before use; anything malformed raises OvfEnvError, never IndexError or struct.error.
"""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import OvfEnvError
from .ovfenv import MAX_DOCUMENT_BYTES

# ECMA-119 section 6.1.2: a logical sector is 2048 bytes. The logical block size (section
# 8.4.12) may legally be 512 or 1024 too, but vSphere, genisoimage and xorriso all write 2048,
# and Linux's isofs refuses anything else on a CD; so do we.
SECTOR_SIZE = 2048
# Section 6.2.1: sectors 0-15 are the System Area; the Volume Descriptor Set starts at 16.
FIRST_DESCRIPTOR_SECTOR = 16
# A real image has a primary, maybe a Joliet and an El Torito boot descriptor, then the
# terminator (section 8.3). 32 is far beyond that and stops a hostile image from making us
# read the whole device looking for a terminator.
MAX_DESCRIPTORS = 32
# The OVF environment ISO's root holds one or two files: one sector. 64 sectors (128 KiB)
# holds ~2000 directory records and bounds what a hostile root directory makes us read.
MAX_DIRECTORY_BYTES = 64 * SECTOR_SIZE

# vSphere labels the transport CD-ROM "OVF ENV"; "OVFENV" for writers limited to d-characters.
OVF_ENV_LABELS = ("OVF ENV", "OVFENV")
# vSphere's Joliet name first, then the level-1 spelling of the same name ('-' is not a
# d-character, section 7.4.1), as cloud-init's OVF datasource also tries.
OVF_ENV_FILE_NAMES = ("ovf-env.xml", "ovf_env.xml")
# Where the CD-ROM shows up: udev's by-label link (spaces escaped as \x20) first, as the most
# specific, then the SCSI CD-ROM nodes and their conventional aliases.
DEFAULT_CANDIDATE_PATTERNS = ("/dev/disk/by-label/OVF*ENV*", "/dev/sr*", "/dev/cdrom*")

_STANDARD_ID = b"CD001"  # section 8.1.2
_PRIMARY, _SUPPLEMENTARY, _TERMINATOR = 1, 2, 255  # sections 8.4.1, 8.5.1, 8.3.1
_JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")  # Joliet specification: UCS-2 levels 1, 2, 3
_MIN_RECORD = 34  # section 9.1: 33 fixed bytes and at least one identifier byte
_DIRECTORY_FLAG, _MULTI_EXTENT_FLAG = 0x02, 0x80  # section 9.1.6, bits 1 and 7


@dataclass(frozen=True)
class _Record:
    """One Directory Record (ECMA-119 section 9.1), reduced to what this reader uses."""

    identifier: bytes
    extent: int  # first logical block of the extent (9.1.3)
    size: int  # data length in bytes (9.1.4)
    attribute_blocks: int  # extended attribute record length, in blocks (9.1.2)
    flags: int  # file flags (9.1.6)
    interleaved: bool  # file unit size or interleave gap set (9.1.7, 9.1.8)


@dataclass(frozen=True)
class _Volume:
    label: str
    blocks: int  # volume space size (8.4.8)
    primary_root: _Record
    joliet_root: _Record | None


def volume_label(path: str | os.PathLike[str]) -> str:
    """The image's volume identifier (ECMA-119 section 8.4.11), without its space padding.

    Args:
        path: an ISO 9660 image file or block device (e.g. /dev/sr0).

    Returns:
        The primary volume descriptor's label, e.g. "OVF ENV".

    Raises:
        OvfEnvError: the path cannot be read or holds no valid ISO 9660 volume descriptor set.
    """
    with _open(path) as image:
        return _read_volume(image, path).label


def read_file(path: str | os.PathLike[str], name: str, max_size: int) -> bytes:
    """Read a file from the root directory of an ISO 9660 image.

    Names match case-insensitively and without their version (`FILE.XML;1` is `file.xml`).
    When the image has a Joliet tree its long names are searched first, then the primary
    tree's names.

    Args:
        path: an ISO 9660 image file or block device.
        name: the file name, e.g. "ovf-env.xml".
        max_size: the largest file accepted, in bytes.

    Returns:
        The file's contents.

    Raises:
        OvfEnvError: the path cannot be read; the image is malformed or truncated; no file
            of that name is in the root; it is a directory, multi-extent or interleaved; or
            it is larger than max_size.
    """
    with _open(path) as image:
        volume = _read_volume(image, path)
        record = _find(image, volume, name, path)
        if record is None:
            raise OvfEnvError(f"{_show(path)} has no file {name!r} in its root directory")
        return _read_regular_file(image, volume, record, max_size, path)


def read_ovf_env(path: str | os.PathLike[str], max_size: int = MAX_DOCUMENT_BYTES) -> bytes:
    """Read the OVF environment document from the transport CD-ROM.

    Args:
        path: the image or device found by find_ovf_env_iso.
        max_size: the largest document accepted (default: the parser's own cap).

    Returns:
        The raw document, for ovfenv.parse_ovf_env.

    Raises:
        OvfEnvError: as read_file; "no file" when none of OVF_ENV_FILE_NAMES is in the root.
    """
    with _open(path) as image:
        volume = _read_volume(image, path)
        for name in OVF_ENV_FILE_NAMES:
            record = _find(image, volume, name, path)
            if record is not None:
                return _read_regular_file(image, volume, record, max_size, path)
    raise OvfEnvError(f"{_show(path)} has no {' or '.join(OVF_ENV_FILE_NAMES)} in its root directory")


def candidate_devices(patterns: Iterable[str] = DEFAULT_CANDIDATE_PATTERNS) -> list[Path]:
    """Paths matching the glob patterns, in pattern order, one per real device.

    Args:
        patterns: glob patterns; each pattern's matches are taken in sorted order.

    Returns:
        The matches, dropping any whose realpath (symlinks resolved) was already listed.
    """
    return _unique(path for pattern in patterns for path in sorted(glob.glob(pattern)))


def find_ovf_env_iso(candidates: Iterable[str | os.PathLike[str]] | None = None) -> Path | None:
    """Find the OVF environment CD-ROM by its volume label.

    Candidates that cannot be opened or read (no medium, no permission, not ISO 9660) are
    skipped: an empty or foreign CD-ROM drive is normal.

    Args:
        candidates: paths to try in order; default candidate_devices(). Paths that resolve to
            the same device are tried once.

    Returns:
        The first candidate whose label is one of OVF_ENV_LABELS (case-insensitive), or None.
    """
    paths = candidate_devices() if candidates is None else _unique(candidates)
    for path in paths:
        try:
            label = volume_label(path)
        except OvfEnvError:
            continue
        if label.upper() in OVF_ENV_LABELS:
            return path
    return None


# --- volume descriptors --------------------------------------------------------------------------


def _read_volume(image: BinaryIO, path: object) -> _Volume:
    primary: _Volume | None = None
    joliet_root: _Record | None = None
    for index in range(MAX_DESCRIPTORS):
        descriptor = _read_at(image, (FIRST_DESCRIPTOR_SECTOR + index) * SECTOR_SIZE, SECTOR_SIZE, path)
        kind, standard_id = descriptor[0], descriptor[1:6]
        if standard_id != _STANDARD_ID:
            raise OvfEnvError(f"{_show(path)} is not ISO 9660: descriptor {index} lacks the CD001 identifier")
        if kind == _TERMINATOR:
            break
        if kind == _PRIMARY and primary is None:
            primary = _Volume(
                # Section 8.4.11: a-/d-characters padded with spaces; decoded leniently, since a
                # label we do not recognise simply does not match.
                label=descriptor[40:72].decode("ascii", "replace").strip(" \x00"),
                blocks=_block_count(descriptor, path),
                primary_root=_root_record(descriptor, path),
                joliet_root=None,
            )
        elif kind == _SUPPLEMENTARY and joliet_root is None and descriptor[88:91] in _JOLIET_ESCAPES:
            _block_count(descriptor, path)
            joliet_root = _root_record(descriptor, path)
    else:
        raise OvfEnvError(f"{_show(path)} has no volume descriptor set terminator in {MAX_DESCRIPTORS} descriptors")
    if primary is None:
        raise OvfEnvError(f"{_show(path)} has no primary volume descriptor")
    return _Volume(primary.label, primary.blocks, primary.primary_root, joliet_root)


def _block_count(descriptor: bytes, path: object) -> int:
    # Both-byte-order fields (section 7.2.3, 7.3.3): the little-endian half is read, as Linux's
    # isofs does; the big-endian copy is not cross-checked.
    (block_size,) = struct.unpack_from("<H", descriptor, 128)
    if block_size != SECTOR_SIZE:
        raise OvfEnvError(f"{_show(path)} has logical block size {block_size}; only {SECTOR_SIZE} is supported")
    (blocks,) = struct.unpack_from("<I", descriptor, 80)
    return blocks


def _root_record(descriptor: bytes, path: object) -> _Record:
    # Section 8.4.18: the root's Directory Record is embedded at byte 156, 34 bytes long.
    record = _parse_record(descriptor[156:190], path)
    if not record.flags & _DIRECTORY_FLAG:
        raise OvfEnvError(f"{_show(path)} has a root directory record not marked as a directory")
    return record


# --- directories ---------------------------------------------------------------------------------


def _find(image: BinaryIO, volume: _Volume, name: str, path: object) -> _Record | None:
    wanted = _normalize(name)
    trees = [(volume.joliet_root, True)] if volume.joliet_root else []
    trees.append((volume.primary_root, False))
    for root, joliet in trees:
        for record in _root_entries(image, volume, root, path):
            if _normalize(_decode_identifier(record.identifier, joliet, path)) == wanted:
                return record
    return None


def _root_entries(image: BinaryIO, volume: _Volume, root: _Record, path: object) -> Iterator[_Record]:
    if root.size > MAX_DIRECTORY_BYTES:
        raise OvfEnvError(
            f"{_show(path)} has a {root.size}-byte root directory, over the {MAX_DIRECTORY_BYTES}-byte cap"
        )
    directory = _read_extent(image, volume, root, MAX_DIRECTORY_BYTES, path)
    offset = 0
    while offset < len(directory):
        length = directory[offset]
        if length == 0:
            # Section 6.8.1.1: a record never spans sectors; zeros fill the rest of the sector.
            offset = (offset // SECTOR_SIZE + 1) * SECTOR_SIZE
            continue
        if length < _MIN_RECORD:
            raise OvfEnvError(f"{_show(path)} has a {length}-byte directory record; the minimum is {_MIN_RECORD}")
        if offset + length > len(directory):
            raise OvfEnvError(f"{_show(path)} has a directory record running past the directory's end")
        if offset % SECTOR_SIZE + length > SECTOR_SIZE:
            raise OvfEnvError(f"{_show(path)} has a directory record crossing a sector boundary")
        record = _parse_record(directory[offset : offset + length], path)
        offset += length
        if record.identifier in (b"\x00", b"\x01"):
            continue  # section 6.8.2.2: the directory itself and its parent
        yield record


def _parse_record(raw: bytes, path: object) -> _Record:
    if len(raw) < _MIN_RECORD or raw[0] < _MIN_RECORD or raw[0] > len(raw):
        raise OvfEnvError(f"{_show(path)} has a malformed directory record")
    identifier_length = raw[32]
    if identifier_length == 0 or 33 + identifier_length > raw[0]:
        raise OvfEnvError(f"{_show(path)} has a directory record whose name overruns the record")
    extent, size = struct.unpack_from("<I4xI", raw, 2)
    return _Record(
        identifier=raw[33 : 33 + identifier_length],
        extent=extent,
        size=size,
        attribute_blocks=raw[1],
        flags=raw[25],
        interleaved=bool(raw[26] or raw[27]),
    )


def _decode_identifier(identifier: bytes, joliet: bool, path: object) -> str:
    try:
        # Joliet names are UCS-2 big-endian; primary names are d-characters (section 7.4.1),
        # decoded as Latin-1 so that a foreign name never fails the lookup of ours.
        return identifier.decode("utf-16-be") if joliet else identifier.decode("latin-1")
    except UnicodeDecodeError:
        raise OvfEnvError(f"{_show(path)} has a Joliet file name that is not UCS-2") from None


def _normalize(name: str) -> str:
    # Section 7.5: "NAME.EXT;VERSION"; a file without extension is written "NAME.".
    base, separator, version = name.rpartition(";")
    if separator and version.isdigit():
        name = base
    return name.rstrip(".").casefold()


# --- reading -------------------------------------------------------------------------------------


def _read_regular_file(image: BinaryIO, volume: _Volume, record: _Record, max_size: int, path: object) -> bytes:
    if record.flags & _DIRECTORY_FLAG:
        raise OvfEnvError(f"{_show(path)} has a directory, not a file, under the requested name")
    return _read_extent(image, volume, record, max_size, path)


def _read_extent(image: BinaryIO, volume: _Volume, record: _Record, max_size: int, path: object) -> bytes:
    if record.flags & _MULTI_EXTENT_FLAG or record.interleaved:
        raise OvfEnvError(f"{_show(path)} has a multi-extent or interleaved file, which is not supported")
    if record.size > max_size:
        raise OvfEnvError(f"{_show(path)} holds a {record.size}-byte file, over the {max_size}-byte cap")
    if record.size == 0:
        return b""  # writers give empty files extent 0; there is nothing to locate
    # Data follows the extended attribute record, if any (section 9.1.2), as in Linux's isofs.
    first_block = record.extent + record.attribute_blocks
    end_block = first_block + (record.size + SECTOR_SIZE - 1) // SECTOR_SIZE
    if first_block < FIRST_DESCRIPTOR_SECTOR or end_block > volume.blocks:
        raise OvfEnvError(f"{_show(path)} has an extent outside the volume (blocks {first_block}-{end_block})")
    return _read_at(image, first_block * SECTOR_SIZE, record.size, path)


def _read_at(image: BinaryIO, offset: int, length: int, path: object) -> bytes:
    image.seek(offset)
    data = image.read(length)
    if len(data) != length:
        raise OvfEnvError(f"{_show(path)} is truncated: {len(data)} of {length} bytes at offset {offset}")
    return data


class _open:
    """Open an image for reading; any OSError while it is open becomes OvfEnvError."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = path
        self._file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        try:
            self._file = open(self._path, "rb")  # noqa: SIM115 - closed in __exit__
        except OSError as exc:
            raise OvfEnvError(f"cannot open {_show(self._path)}: {exc.strerror or type(exc).__name__}") from None
        return self._file

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        assert self._file is not None
        self._file.close()
        if isinstance(exc, OSError):
            raise OvfEnvError(f"cannot read {_show(self._path)}: {exc.strerror or type(exc).__name__}") from None


def _unique(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    seen: set[str] = set()
    unique: list[Path] = []
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(Path(path))
    return unique


def _show(path: object, limit: int = 120) -> str:
    text = repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(path)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
