"""verify: each invariant is reported with the object and its offset; severities."""

from __future__ import annotations

import struct

from cimsnap.cim import format as fmt
from cimsnap.cim.reader import CimReader
from cimsnap.cim.regions import open_image
from cimsnap.cim.verify import Severity, verify_path, verify_reader
from tests.unit.cim.imagebuilder import ImageBuilder
from tests.unit.cim.test_reader import SYMLINK, sample


def problems(built):
    return verify_reader(CimReader(built.views(), built.offsets["filesystem"]))


def record_at(built, file_id):
    region, offset = built.locate("table:0")
    return built.regions[region], offset + (file_id - 1) * fmt.FILE_RECORD_SIZE


def test_metadata_accessors():
    built = sample().build()
    r = CimReader(built.views(), built.offsets["filesystem"])
    link = r.lookup("link")
    assert r.reparse_data(link) == SYMLINK
    assert r.security_descriptor(link) == bytes.fromhex("01000480") + bytes(16)
    assert r.extended_attributes(r.lookup("withea")) == b"\x00" * 12 + b"EANAME\x00ab"
    assert r.extended_attributes(link) == b"" and r.reparse_data(r.lookup("dir")) == b""


def test_missing_sd_and_undefined_flags_are_warnings():
    b = ImageBuilder()
    f = b.add_file(1, "f", b"x", flags=0x40)
    built = b.build()
    region, record = record_at(built, f)
    struct.pack_into("<Q", region, record + 56, 0)
    found = problems(built)
    assert {p.severity for p in found} == {Severity.WARNING}
    assert sorted(p.why for p in found) == ["no security descriptor", "undefined Flags bits 0x40"]
    assert all(p.what == f"file record {f}" for p in found)


def test_reparse_tag_mismatch_and_ea_disagreement():
    b = ImageBuilder()
    f = b.add_file(1, "l", b"", reparse=SYMLINK)
    built = b.build()
    region, record = record_at(built, f)
    struct.pack_into("<I", region, record + 4, 0xA0000003)
    struct.pack_into("<H", region, record + 2, 5)  # EaLength without EaOffset
    found = problems(built)
    assert [p.severity for p in found] == [Severity.ERROR, Severity.WARNING]
    assert "EaOffset and EaLength disagree" in found[0].why
    assert "ReparseTag" in found[1].why


def test_directory_parent_file_id_is_a_convention_warning():
    b = ImageBuilder()
    d = b.mkdir(1, "d")
    built = b.build()
    region, record = record_at(built, d)
    struct.pack_into("<I", region, record + 88, 7)
    (problem,) = problems(built)
    assert problem.severity is Severity.WARNING and "ParentFileId 7" in problem.why


def test_misaligned_data_is_a_warning_with_offset():
    b = ImageBuilder()
    f = b.add_file(1, "f", bytes(5000))
    built = b.build()
    region, record = record_at(built, f)
    (offset,) = struct.unpack_from("<Q", region, record + 40)
    struct.pack_into("<Q", region, record + 40, offset - 8)
    (problem,) = problems(built)
    assert problem.severity is Severity.WARNING and problem.offset == 4096 - 8
    assert problem.region == 1


def test_problem_cap_bounds_the_report():
    b = ImageBuilder()
    for i in range(50):
        b.add_file(1, f"bad:{i}", b"")
    built = b.build()
    found = verify_reader(CimReader(built.views(), built.offsets["filesystem"]), max_problems=10)
    assert len(found) == 11 and "stopped after 10" in found[-1].why


def test_file_level_checks(tmp_path):
    built = sample().build()
    struct.pack_into("<H", built.regions[2], 32, 5)  # wrong Index in region header
    cim = built.write(tmp_path, "x.cim")
    next(tmp_path.glob("objectid_*_1")).unlink()
    found = verify_path(cim)
    whats = sorted((p.severity.value, p.what.split()[0]) for p in found)
    assert whats == [("error", "region"), ("warning", "objectid")]
    with open_image(cim) as image:
        assert image.reader.open_stream("dir/file.txt").read() == b"hello"


def test_verify_path_reports_unopenable_image(tmp_path):
    built = sample().build()
    cim = built.write(tmp_path, "x.cim")
    next(tmp_path.glob("region_*_0")).unlink()
    (problem,) = verify_path(cim)
    assert problem.severity is Severity.ERROR and problem.region == 0
    assert "region file" in str(problem) and "region 0" in str(problem)
