"""ISO 9660 reader: label, root files, Joliet, and every hostile offset refused as OvfEnvError."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from isobuild import SECTOR, BuiltIso, IsoFile, build_iso

from firsttrust.agent.errors import OvfEnvError
from firsttrust.agent.sources.iso9660 import (
    MAX_DESCRIPTORS,
    MAX_DIRECTORY_BYTES,
    candidate_devices,
    find_ovf_env_iso,
    read_file,
    read_ovf_env,
    volume_label,
)

PVD = 16 * SECTOR
ROOT_IN_PVD = PVD + 156
DOC = b'<?xml version="1.0" encoding="UTF-8"?>\n<Environment/>\n'
BIG = bytes(range(256)) * 20  # 5120 bytes: three sectors, the last one partial


def write(tmp_path: Path, data: bytes, name: str = "env.iso") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def standard_iso(**kwargs) -> BuiltIso:
    return build_iso([IsoFile("OVF_ENV.XML;1", DOC, "ovf-env.xml"), IsoFile("BIG.BIN;1", BIG, "big.bin")], **kwargs)


def refused(path: Path, name: str = "ovf-env.xml", max_size: int = 1 << 20, read=read_file) -> str:
    """The error's message with the image path cut out (tmp paths contain the test's name)."""
    with pytest.raises(OvfEnvError) as info:
        if read is read_file:
            read_file(path, name, max_size)
        else:
            read(path)
    assert info.value.code == "ovf_env"
    message = str(info.value)
    assert repr(str(path)) in message or "cannot" in message
    return message.replace(repr(str(path)), "IMAGE")


# --- label -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["OVF ENV", "OVFENV", "CIDATA", "A" * 32])
def test_volume_label_is_read_and_space_stripped(tmp_path, label):
    assert volume_label(write(tmp_path, build_iso([], label=label).data)) == label


def test_volume_label_with_joliet_is_the_primary_label(tmp_path):
    assert volume_label(write(tmp_path, standard_iso(joliet=True).data)) == "OVF ENV"


# --- reading files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["OVF_ENV.XML;1", "OVF_ENV.XML", "ovf_env.xml", "Ovf_Env.Xml;1"])
def test_read_file_matches_case_insensitively_without_version(tmp_path, name):
    path = write(tmp_path, standard_iso().data)
    assert read_file(path, name, 4096) == DOC


def test_read_multi_sector_file(tmp_path):
    assert read_file(write(tmp_path, standard_iso().data), "big.bin", len(BIG)) == BIG


def test_file_without_extension_matches_its_bare_name(tmp_path):
    path = write(tmp_path, build_iso([IsoFile("README.;1", b"r")]).data)
    assert read_file(path, "readme", 10) == b"r"


def test_empty_file_reads_as_empty(tmp_path):
    assert read_file(write(tmp_path, build_iso([IsoFile("E.TXT;1", b"")]).data), "e.txt", 10) == b""


def test_joliet_long_names_are_found(tmp_path):
    path = write(tmp_path, standard_iso(joliet=True).data)
    assert read_file(path, "ovf-env.xml", 4096) == DOC
    assert read_file(path, "OVF_ENV.XML", 4096) == DOC  # primary tree as fallback


def test_joliet_names_are_preferred_over_primary_names(tmp_path):
    # Primary A.TXT is Joliet b.txt and vice versa: the answer shows which tree was searched first.
    files = [IsoFile("A.TXT;1", b"first", "b.txt"), IsoFile("B.TXT;1", b"second", "a.txt")]
    path = write(tmp_path, build_iso(files, joliet=True).data)
    assert read_file(path, "a.txt", 10) == b"second"
    assert read_file(write(tmp_path, build_iso(files).data, "plain.iso"), "a.txt", 10) == b"first"


def test_without_joliet_the_hyphenated_name_is_missing(tmp_path):
    assert "no file" in refused(write(tmp_path, standard_iso().data), "ovf-env.xml")


def test_read_ovf_env_tries_both_spellings(tmp_path):
    assert read_ovf_env(write(tmp_path, standard_iso().data, "a.iso")) == DOC
    assert read_ovf_env(write(tmp_path, standard_iso(joliet=True).data, "b.iso")) == DOC
    other = write(tmp_path, build_iso([IsoFile("OTHER.XML;1", DOC)]).data, "c.iso")
    assert "no ovf-env.xml or ovf_env.xml" in refused(other, read=read_ovf_env)


def test_missing_file_is_refused(tmp_path):
    assert "no file" in refused(write(tmp_path, standard_iso().data), "user-data")


def test_file_over_max_size_is_refused(tmp_path):
    path = write(tmp_path, standard_iso().data)
    assert read_file(path, "big.bin", len(BIG)) == BIG
    assert "cap" in refused(path, "big.bin", len(BIG) - 1)


def test_read_ovf_env_defaults_to_the_parser_cap(tmp_path):
    from firsttrust.agent.sources.ovfenv import MAX_DOCUMENT_BYTES

    huge = build_iso([IsoFile("OVF_ENV.XML;1", b" " * (MAX_DOCUMENT_BYTES + 1))])
    assert "cap" in refused(write(tmp_path, huge.data), read=read_ovf_env)


def test_directory_under_the_name_is_refused(tmp_path):
    path = write(tmp_path, build_iso([IsoFile("OVF_ENV.XML;1", DOC, flags=0x02)]).data)
    assert "directory" in refused(path, "ovf_env.xml")


@pytest.mark.parametrize("field, value", [(25, 0x80), (26, 1), (27, 1)], ids=["multi-extent", "unit-size", "gap"])
def test_multi_extent_and_interleaved_files_are_refused(tmp_path, field, value):
    built = standard_iso()
    data = patched(built.data, built.record_offsets["OVF_ENV.XML;1"] + field, bytes([value]))
    assert "not supported" in refused(write(tmp_path, data), "ovf_env.xml")


# --- not an image, truncated images ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * (17 * SECTOR), os.urandom(40 * SECTOR)], ids=["empty", "zeros", "random"]
)
def test_not_iso9660_is_refused(tmp_path, data):
    path = write(tmp_path, data)
    refused(path, read=volume_label)
    refused(path)


@pytest.mark.parametrize(
    "cut",
    [PVD + 100, PVD + SECTOR + 7, 20 * SECTOR, None],
    ids=["in-pvd", "in-terminator", "in-root-directory", "in-file-data"],
)
def test_truncated_image_is_refused(tmp_path, cut):
    built = standard_iso()
    cut = built.file_offsets["BIG.BIN;1"] + 100 if cut is None else cut
    assert "truncated" in refused(write(tmp_path, built.data[:cut]), "big.bin")


def test_no_primary_volume_descriptor_is_refused(tmp_path):
    data = patched(standard_iso().data, PVD, b"\x00")  # type 0: a boot record
    assert "primary" in refused(write(tmp_path, data))


def test_no_terminator_is_refused(tmp_path):
    pvd = standard_iso().data[PVD : PVD + SECTOR]
    data = b"\x00" * PVD + pvd * (MAX_DESCRIPTORS + 2)
    assert "terminator" in refused(write(tmp_path, data))


def test_unsupported_block_size_is_refused(tmp_path):
    data = patched(standard_iso().data, PVD + 128, struct.pack("<H", 512))
    assert "block size" in refused(write(tmp_path, data))


def test_reading_a_directory_path_is_refused(tmp_path):
    assert "cannot" in refused(tmp_path, read=volume_label)
    assert "cannot" in refused(tmp_path / "missing.iso", read=volume_label)


# --- hostile directory records -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 20, 33])
def test_directory_record_shorter_than_the_minimum_is_refused(tmp_path, length):
    built = standard_iso()
    data = patched(built.data, built.record_offsets["OVF_ENV.XML;1"], bytes([length]))
    assert "minimum" in refused(write(tmp_path, data), "big.bin")


def test_root_record_in_descriptor_shorter_than_the_minimum_is_refused(tmp_path):
    data = patched(standard_iso().data, ROOT_IN_PVD, bytes([10]))
    assert "malformed" in refused(write(tmp_path, data))


def test_record_running_past_the_directory_end_is_refused(tmp_path):
    built = standard_iso()
    end_of_first_file = built.record_offsets["BIG.BIN;1"] - built.root_offset
    data = patched(built.data, ROOT_IN_PVD + 10, struct.pack("<I", end_of_first_file + 5))
    assert "past the directory" in refused(write(tmp_path, data), "big.bin")


def test_record_crossing_a_sector_boundary_is_refused(tmp_path):
    # After "." and "..", 46 records of 42 bytes and one of 40 end at byte 2040 of the root's
    # first sector; the last then claims 50 bytes, running into the next (ECMA-119 6.8.1.1).
    names = [f"F{i:02}.TXT;1" for i in range(46)] + ["Z.BIN;1"]
    built = build_iso([IsoFile(name, b"") for name in names[:-1]] + [IsoFile("Z.BIN;1", b"z" * SECTOR)])
    last = built.record_offsets["Z.BIN;1"]
    assert last - built.root_offset + 40 == SECTOR - 8
    data = patched(built.data, ROOT_IN_PVD + 10, struct.pack("<I", 2 * SECTOR))
    data = patched(data, last, bytes([50]))
    assert "crossing a sector boundary" in refused(write(tmp_path, data), "nothing-here")


def test_identifier_overrunning_its_record_is_refused(tmp_path):
    built = standard_iso()
    data = patched(built.data, built.record_offsets["OVF_ENV.XML;1"] + 32, bytes([200]))
    assert "overruns" in refused(write(tmp_path, data), "big.bin")


def test_zero_length_identifier_is_refused(tmp_path):
    built = standard_iso()
    data = patched(built.data, built.record_offsets["OVF_ENV.XML;1"] + 32, bytes([0]))
    assert "overruns" in refused(write(tmp_path, data), "big.bin")


@pytest.mark.parametrize("extent", [0, 5, 10_000, 0xFFFFFFFF])
def test_file_extent_outside_the_volume_is_refused(tmp_path, extent):
    built = standard_iso()
    data = patched(built.data, built.record_offsets["OVF_ENV.XML;1"] + 2, struct.pack("<I", extent))
    assert "outside the volume" in refused(write(tmp_path, data), "ovf_env.xml")


def test_file_size_past_the_volume_end_is_refused(tmp_path):
    built = standard_iso()
    data = patched(built.data, built.record_offsets["OVF_ENV.XML;1"] + 10, struct.pack("<I", 10 * SECTOR))
    assert "outside the volume" in refused(write(tmp_path, data), "ovf_env.xml")


def test_volume_size_larger_than_the_image_reads_as_truncated(tmp_path):
    built = standard_iso()
    data = patched(built.data, PVD + 80, struct.pack("<I", 1 << 30))
    data = patched(data, built.record_offsets["OVF_ENV.XML;1"] + 2, struct.pack("<I", 1 << 29))
    assert "truncated" in refused(write(tmp_path, data), "ovf_env.xml")


def test_oversized_root_directory_is_refused(tmp_path):
    data = patched(standard_iso().data, ROOT_IN_PVD + 10, struct.pack("<I", MAX_DIRECTORY_BYTES + 1))
    assert "cap" in refused(write(tmp_path, data))


def test_root_not_marked_as_directory_is_refused(tmp_path):
    data = patched(standard_iso().data, ROOT_IN_PVD + 25, b"\x00")
    assert "directory" in refused(write(tmp_path, data))


def test_odd_length_joliet_name_is_refused(tmp_path):
    built = build_iso([IsoFile("A.TXT;1", b"a", "a.txt")], joliet=True)
    first_file_record = built.joliet_root_offset + 68
    data = patched(built.data, first_file_record + 32, bytes([9]))  # 10 bytes of UCS-2 -> 9
    assert "UCS-2" in refused(write(tmp_path, data), "zzz")


def test_zero_padding_at_the_end_of_a_directory_sector_is_skipped(tmp_path):
    # A two-sector root whose second sector is all zeros (here: the first file's data).
    built = build_iso([IsoFile("ZERO.BIN;1", b"\x00" * SECTOR), IsoFile("OVF_ENV.XML;1", DOC)])
    assert built.file_offsets["ZERO.BIN;1"] == built.root_offset + SECTOR
    data = patched(built.data, ROOT_IN_PVD + 10, struct.pack("<I", 2 * SECTOR))
    path = write(tmp_path, data)
    assert read_ovf_env(path) == DOC
    assert "no file" in refused(path, "missing.txt")  # walked both sectors, no garbage


def test_a_zero_length_byte_ends_the_sector_whatever_follows(tmp_path):
    # Linux's isofs, like ECMA-119 6.8.1.1, treats a zero length as "next sector": bytes after
    # it in the same sector are never read as records.
    built = build_iso([IsoFile("OVF_ENV.XML;1", DOC)])
    after_last = built.record_offsets["OVF_ENV.XML;1"] + 46
    data = patched(built.data, after_last, b"\x00" + b"\x05" * 100)
    path = write(tmp_path, data)
    assert read_ovf_env(path) == DOC
    assert "no file" in refused(path, "missing.txt")


# --- finding the CD-ROM --------------------------------------------------------------------------------------


def test_find_returns_first_candidate_with_an_ovf_env_label(tmp_path):
    other = write(tmp_path, build_iso([], label="CIDATA").data, "other.iso")
    lower = write(tmp_path, build_iso([], label="ovfenv").data, "lower.iso")
    spaced = write(tmp_path, build_iso([], label="OVF ENV").data, "spaced.iso")
    junk = write(tmp_path, b"\x00" * 50 * SECTOR, "junk.img")
    candidates = [tmp_path / "missing", tmp_path, junk, other, lower, spaced]
    assert find_ovf_env_iso(candidates) == lower
    assert find_ovf_env_iso([other, spaced]) == spaced


def test_find_returns_none_when_no_label_matches(tmp_path):
    other = write(tmp_path, build_iso([], label="OVF ENVIRONMENT").data)
    assert find_ovf_env_iso([other, tmp_path / "missing"]) is None
    assert find_ovf_env_iso([]) is None


def test_candidate_devices_follow_pattern_order_and_dedupe_by_realpath(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "by-label").mkdir()
    sr0 = write(tmp_path / "dev", b"", "sr0")
    sr1 = write(tmp_path / "dev", b"", "sr1")
    (tmp_path / "dev" / "cdrom").symlink_to(sr0)
    (tmp_path / "by-label" / "OVF\\x20ENV").symlink_to(sr1)
    patterns = (
        str(tmp_path / "by-label" / "OVF*ENV*"),
        str(tmp_path / "dev" / "sr*"),
        str(tmp_path / "dev" / "cdrom*"),
    )
    assert candidate_devices(patterns) == [tmp_path / "by-label" / "OVF\\x20ENV", sr0]


def test_find_tries_each_device_once_and_returns_the_path_given(tmp_path):
    iso = write(tmp_path, build_iso([], label="OVF ENV").data)
    link = tmp_path / "cdrom"
    link.symlink_to(iso)
    assert find_ovf_env_iso([link, iso]) == link


def test_find_without_arguments_searches_the_default_device_patterns(tmp_path, monkeypatch):
    """With no candidates, the default patterns' devices are tried in order; a directory, a
    missing device, garbage and a CD with another label are skipped (an empty or foreign drive
    is normal), and the OVF ENV disc is found; without it, None."""
    import firsttrust.agent.sources.iso9660 as iso9660

    garbage = write(tmp_path, os.urandom(40 * SECTOR), name="garbage.iso")
    foreign = write(tmp_path, build_iso([], label="INSTALL").data, name="foreign.iso")
    ovf = write(tmp_path, build_iso([], label="OVF ENV").data, name="ovf.iso")
    devices = [tmp_path, tmp_path / "sr9", garbage, foreign]
    asked = []

    def candidate_devices(patterns=iso9660.DEFAULT_CANDIDATE_PATTERNS):
        asked.append(tuple(patterns))
        return list(devices)

    monkeypatch.setattr(iso9660, "candidate_devices", candidate_devices)
    assert find_ovf_env_iso() is None
    devices.append(ovf)
    assert find_ovf_env_iso() == ovf
    assert asked == [iso9660.DEFAULT_CANDIDATE_PATTERNS] * 2


# --- real images ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("genisoimage") is None, reason="genisoimage not installed")
@pytest.mark.parametrize("flags", [["-J", "-R"], ["-J"], ["-R"], []], ids=["joliet+rr", "joliet", "rr", "level1"])
def test_real_genisoimage_image(tmp_path, flags):
    (tmp_path / "cd").mkdir()
    (tmp_path / "cd" / "ovf-env.xml").write_bytes(DOC)
    out = tmp_path / "out.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-V", "OVF ENV", *flags, "-o", str(out), str(tmp_path / "cd")],
        check=True,
        capture_output=True,
    )
    assert volume_label(out) == "OVF ENV"
    assert read_ovf_env(out) == DOC
    assert find_ovf_env_iso([out]) == out
    if "-J" in flags:
        assert read_file(out, "ovf-env.xml", 4096) == DOC


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso not installed")
def test_real_xorriso_image(tmp_path):
    (tmp_path / "cd").mkdir()
    (tmp_path / "cd" / "ovf-env.xml").write_bytes(DOC)
    out = tmp_path / "out.iso"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-V", "OVF ENV", "-J", "-R", "-o", str(out), str(tmp_path / "cd")],
        check=True,
        capture_output=True,
    )
    assert volume_label(out) == "OVF ENV"
    assert read_ovf_env(out) == DOC


# --- robustness ----------------------------------------------------------------------------------------------------


def _reads_or_refuses(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".iso") as image:
        image.write(data)
        image.flush()
        for call in (
            lambda: volume_label(image.name),
            lambda: read_file(image.name, "ovf-env.xml", 1 << 20),
            lambda: read_file(image.name, "big.bin", 1 << 20),
            lambda: read_ovf_env(image.name),
            lambda: find_ovf_env_iso([image.name]),
        ):
            try:
                call()
            except OvfEnvError:
                pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096).map(lambda tail: b"\x00" * PVD + tail))
def test_arbitrary_bytes_only_ever_raise_ovf_env_error(data):
    _reads_or_refuses(data)


_VALID = standard_iso(joliet=True)
# Where a corruption can matter: the descriptors and both root directories.
_HOT = list(range(PVD, PVD + 3 * SECTOR)) + list(range(_VALID.root_offset, _VALID.root_offset + 256))
_HOT += list(range(_VALID.joliet_root_offset, _VALID.joliet_root_offset + 256))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_HOT), st.integers(0, 255)), min_size=1, max_size=6))
def test_corrupted_image_only_ever_raises_ovf_env_error(changes):
    data = bytearray(_VALID.data)
    for offset, value in changes:
        data[offset] = value
    _reads_or_refuses(bytes(data))
