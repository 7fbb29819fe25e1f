"""A tiny ISO 9660 (ECMA-119) writer for tests: volume descriptors, one root directory, files.

Enough to build the OVF-environment CD-ROM vSphere attaches, plus an optional Joliet tree,
with every offset reported so tests can corrupt exactly one field. Stdlib only, so the tests
need no genisoimage or xorriso.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SECTOR = 2048
_DATE = bytes([124, 1, 1, 0, 0, 0, 0])  # 2024-01-01 00:00:00 UTC (ECMA-119 section 9.1.5)
_LONG_DATE = b"2024010100000000\x00"  # section 8.4.26.1


@dataclass(frozen=True)
class IsoFile:
    name: str  # primary-tree identifier as written, e.g. "OVF_ENV.XML;1"
    data: bytes
    joliet_name: str | None = None  # Joliet-tree name; defaults to `name`
    flags: int = 0  # file flags byte (section 9.1.6), e.g. 0x02 to claim "directory"


@dataclass
class BuiltIso:
    data: bytes
    root_offset: int  # byte offset of the primary root directory's first sector
    joliet_root_offset: int | None
    file_offsets: dict[str, int] = field(default_factory=dict)  # by primary name
    record_offsets: dict[str, int] = field(default_factory=dict)  # primary-tree record, by name


def both16(value: int) -> bytes:
    return struct.pack("<H", value) + struct.pack(">H", value)


def both32(value: int) -> bytes:
    return struct.pack("<I", value) + struct.pack(">I", value)


def directory_record(identifier: bytes, extent: int, size: int, flags: int) -> bytes:
    body = (
        bytes([0, 0])  # length (filled below), extended attribute record length
        + both32(extent)
        + both32(size)
        + _DATE
        + bytes([flags, 0, 0])
        + both16(1)
        + bytes([len(identifier)])
        + identifier
    )
    if len(body) % 2:
        body += b"\x00"  # section 9.1.12: pad to an even length
    return bytes([len(body)]) + body[1:]


def _pad(text: str, size: int, joliet: bool) -> bytes:
    if joliet:
        raw = text.encode("utf-16-be")[:size]
        return raw + " ".encode("utf-16-be") * ((size - len(raw)) // 2) + b" " * ((size - len(raw)) % 2)
    return text.encode("ascii")[:size].ljust(size, b" ")


def _descriptor(kind: int, label: str, blocks: int, root: bytes, path_table: tuple[int, int], joliet: bool) -> bytes:
    d = bytearray(SECTOR)
    d[0] = kind
    d[1:6] = b"CD001"
    d[6] = 1
    d[8:40] = _pad("LINUX", 32, joliet)
    d[40:72] = _pad(label, 32, joliet)
    d[80:88] = both32(blocks)
    if joliet:
        d[88:91] = b"%/E"  # UCS-2 level 3
    d[120:124] = both16(1)
    d[124:128] = both16(1)
    d[128:132] = both16(SECTOR)
    d[132:140] = both32(10)  # one path table record for the root
    d[140:144] = struct.pack("<I", path_table[0])
    d[148:152] = struct.pack(">I", path_table[1])
    d[156:190] = root
    for start, size in ((190, 128), (318, 128), (446, 128), (574, 128), (702, 37), (739, 37), (776, 37)):
        d[start : start + size] = _pad("", size, joliet)
    for start in (813, 830, 864):
        d[start : start + 17] = _LONG_DATE
    d[847 : 847 + 17] = b"0" * 16 + b"\x00"
    d[881] = 1
    return bytes(d)


def _path_table(root_extent: int, big_endian: bool) -> bytes:
    order = ">" if big_endian else "<"
    record = bytes([1, 0]) + struct.pack(order + "IH", root_extent, 1) + b"\x00\x00"
    return record.ljust(SECTOR, b"\x00")


def build_iso(files: list[IsoFile], label: str = "OVF ENV", joliet: bool = False) -> BuiltIso:
    """Lay out: descriptors at 16, terminator, path tables, root directories, file data."""
    sector = 16
    pvd_sector = sector
    sector += 1
    svd_sector = None
    if joliet:
        svd_sector = sector
        sector += 1
    terminator_sector = sector
    sector += 1
    trees = [False, True] if joliet else [False]
    path_tables = {}
    for tree in trees:
        path_tables[tree] = (sector, sector + 1)
        sector += 2
    roots = {}
    for tree in trees:
        roots[tree] = sector
        sector += 1
    extents = []
    for f in files:
        extents.append(sector if f.data else 0)
        sector += (len(f.data) + SECTOR - 1) // SECTOR
    blocks = sector

    image = bytearray(blocks * SECTOR)
    built = BuiltIso(b"", roots[False] * SECTOR, roots[True] * SECTOR if joliet else None)
    for tree in trees:
        root_self = directory_record(b"\x00", roots[tree], SECTOR, 0x02)
        directory = bytearray(root_self + directory_record(b"\x01", roots[tree], SECTOR, 0x02))
        for f, extent in zip(files, extents):
            name = (f.joliet_name or f.name).encode("utf-16-be") if tree else f.name.encode("ascii")
            if not tree:
                built.record_offsets[f.name] = roots[tree] * SECTOR + len(directory)
            directory += directory_record(name, extent, len(f.data), f.flags)
        assert len(directory) <= SECTOR, "isobuild writes one-sector root directories"
        image[roots[tree] * SECTOR : roots[tree] * SECTOR + len(directory)] = directory
        l_table, m_table = path_tables[tree]
        image[l_table * SECTOR : (l_table + 1) * SECTOR] = _path_table(roots[tree], False)
        image[m_table * SECTOR : (m_table + 1) * SECTOR] = _path_table(roots[tree], True)
        descriptor = _descriptor(
            2 if tree else 1, label, blocks, root_self, path_tables[tree], joliet=tree
        )
        at = (svd_sector if tree else pvd_sector) * SECTOR
        image[at : at + SECTOR] = descriptor
    image[terminator_sector * SECTOR : terminator_sector * SECTOR + 7] = b"\xffCD001\x01"
    for f, extent in zip(files, extents):
        image[extent * SECTOR : extent * SECTOR + len(f.data)] = f.data
        built.file_offsets[f.name] = extent * SECTOR
    built.data = bytes(image)
    return built
